#!/usr/bin/env bash
# Append the carried weight piece(s) to the assembly file; print its size so far.
set -euo pipefail
mkdir -p /root/w
cat .weights/chunk.* >> /root/w/all.bin
stat -c '%s bytes assembled' /root/w/all.bin
