#!/usr/bin/env bash
# Issue 17's targets on the GPU machine's 16-core host, both numerics side by side, within 9 minutes
# (every step has a timeout; the optional ones start only while they can end by 9 minutes):
#   bash infra/gpu/numerics.sh            (HEAD=/path/to/head bash infra/gpu/numerics.sh: draft with a trained head)
# 1. profile forward, Qwen2.5-Coder 1.5B layers 0-7 (one stage of 4), 1/16/256 rows, pinned to 2 cores;
# 2. bench --pin, 4 stages x 2 cores, local/ar/chunk/flowspec, row-invariant then --fused-numerics;
# 3. if time is left: profile forward on 1 and on 4 cores.
# Writes $OUT/numerics-*.txt (printed tables) and $OUT/numerics-bench-{invariant,fused}.json.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD FLOWRING_HOME=/root/fh PYTHONUNBUFFERED=1
started=$SECONDS
models=/root/models
filter() { grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored|USDT' || true; }
profile() {  # NAME CPUS ROWS
  timeout 120 python3 -m services.cli.main profile forward --base "$models/qwen-coder-1.5b" --layers 0-7 \
    --rows "$3" --cpus "$2" --repeats 9 --no-transformers --ops 12 2>&1 | filter | tee "$OUT/numerics-$1.txt" \
    || echo "$1 stopped (exit $?)" | tee -a "$OUT/numerics-$1.txt"
}
if [[ -n "${HEAD:-}" ]]; then drafting=(--draft-head "$HEAD"); else drafting=(--draft "$models/qwen-coder-0.5b"); fi
bench() {  # NAME [extra bench args]
  local name=$1
  shift
  timeout 180 python3 -m services.cli.main bench --pin --base "$models/qwen-coder-1.5b" "${drafting[@]}" \
    --stages 4 --cores-per-service 2 --prompts infra/data/code_prompts.jsonl --num-prompts 3 \
    --modes local,ar,chunk,flowspec --max-new-tokens 48 --temperature 0 --json "$OUT/numerics-$name.json" "$@" 2>&1 \
    | filter | tee "$OUT/numerics-$name.txt" || echo "$name stopped (exit $?)" | tee -a "$OUT/numerics-$name.txt"
}
profile profile-2cores 0-1 1,16,256
bench bench-invariant
bench bench-fused --fused-numerics
for run in "profile-4cores 0-3 1,16,256" "profile-1core 0 1,16"; do
  if (( SECONDS - started > 420 )); then echo "skipped $run: $((SECONDS - started)) s gone" | tee -a "$OUT/numerics-skipped.txt"; continue; fi
  # shellcheck disable=SC2086
  profile $run
done
echo "numerics.sh done in $((SECONDS - started)) s" | tee "$OUT/numerics-done.txt"
