#!/usr/bin/env bash
# One pinned serving run on the GPU machine's cores: bash infra/gpu/serving.sh NAME STAGES [extra bench args]
# (e.g. --concurrency 4 --modes ar,flowspec, or --ttft). Writes $OUT/NAME.json and NAME.txt.
set -euo pipefail
name=$1 stages=$2
shift 2
export PYTHONPATH=/tmp/site:$PWD FLOWRING_HOME=/root/fh PYTHONUNBUFFERED=1
python3 -m services.cli.main bench --pin --base /root/models/qwen-coder-1.5b --draft /root/models/qwen-coder-0.5b \
  --stages "$stages" --cores-per-service 2 --prompts infra/data/code_prompts.jsonl --num-prompts 4 \
  --max-new-tokens 48 --temperature 0 --json "$OUT/$name.json" "$@" 2>&1 \
  | grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored' | tee "$OUT/$name.txt"
