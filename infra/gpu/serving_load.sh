#!/usr/bin/env bash
# Issue 19's serving targets on the GPU machine's 16-core host, in one lease (about 6 to 9 minutes):
#   HEAD=/path/to/head/folder bash infra/gpu/serving_load.sh [NAME]
# 4 stages pinned 2 cores each, the trained head ($HEAD), default (row-invariant) numerics, held-out code prompts
# x 48 tokens, T = 0, modes ar and flowspec. Run A: 4 prompts solo (1 in flight) then 4 in flight; run B: 8 prompts
# solo then 8 in flight (bench --pin admits K in flight). Writes $OUT/NAME-conc4.{json,txt}, $OUT/NAME-conc8.{json,txt}.
# Each run is bounded (timeout) so that a stuck one leaves the other's files and the lease.
set -euo pipefail
: "${HEAD:?set HEAD to the trained head folder}" "${OUT:?set OUT to the output folder}"
name=${1:-load}
export PYTHONPATH=/tmp/site:$PWD FLOWRING_HOME=/root/fh PYTHONUNBUFFERED=1
run() {  # run NAME PROMPTS CONCURRENCY SECONDS
  timeout "$4" python3 -m services.cli.main bench --pin --base /root/models/qwen-coder-1.5b \
    --draft /root/models/qwen-coder-0.5b --draft-head "$HEAD" --stages 4 --cores-per-service 2 \
    --prompts infra/data/code_prompts.jsonl --num-prompts "$2" --max-new-tokens 48 --temperature 0 \
    --concurrency "$3" --modes ar,flowspec --json "$OUT/$1.json" 2>&1 \
    | grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored' | tee "$OUT/$1.txt"
}
status=0
run "$name-conc4" 4 4 210 || status=$?
run "$name-conc8" 8 8 320 || status=$?
exit "$status"
