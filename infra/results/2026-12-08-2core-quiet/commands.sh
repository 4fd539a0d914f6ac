#!/usr/bin/env bash
# The 2026-12-08 quiet-machine measurements (nothing else running): bash infra/results/2026-12-08-2core-quiet/commands.sh (files into $OUT)
set -uo pipefail
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/2core-quiet}; mkdir -p $O
F=.venv/bin/flowring
filter() { grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored|^USDT' || true; }
date -u +%FT%T | tee $O/start.txt
timeout 400 $F profile forward --layers 0-28 --rows 1 --threads 2 --repeats 7 --ops 12 2>&1 | filter | tee $O/profile-1row-28layers.txt
timeout 600 $F profile forward --layers 0-4 --rows 1,16,256 --threads 2 --repeats 3 --no-transformers 2>&1 | filter | tee $O/profile-4layers.txt
timeout 300 .venv/bin/python -c "
import torch; torch.set_num_threads(2)
from services.discovery.speed import reference_row_cost
for dt in ('bfloat16', 'float32', 'bfloat16', 'float32'):
    print(dt, '2 threads: a 16-row forward of the reference layer costs', round(reference_row_cost(dt, repeats=5), 2), 'one-row forwards')
" 2>&1 | filter | tee $O/row-cost.txt
for run in 1 2; do
  d=$(mktemp -d /tmp/fr-m-XXXX)
  $F up --model qwen-coder --api-port 0 --run-dir $d 2>&1 | filter | tee $O/default-$run.txt
  $F bench --run-dir $d --prompts infra/data/code_prompts.jsonl --max-new-tokens 32 --temperature 0 --num-prompts 2 \
    --modes local,ar --timeout 600 --json $O/default-$run.json 2>&1 | filter | tee -a $O/default-$run.txt
  $F down --run-dir $d >/dev/null 2>&1; rm -rf $d
done
date -u +%FT%T | tee $O/end.txt
