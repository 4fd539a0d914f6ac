#!/usr/bin/env bash
# Issue 17's targets on the GPU machine's 16-core host, both numerics side by side, within 9 minutes
# (every step has a timeout; the later ones start only while they can end by 9 minutes):
#   bash infra/gpu/numerics.sh
#   HEAD=/path/to/head bash infra/gpu/numerics.sh   (default: the shipped head of qwen-coder-1.5b; HEAD=none: the draft model)
#   LAYERS=0-7 bash infra/gpu/numerics.sh           (the profiled stage; default 7-14, a middle stage of 4)
# 1. the probes' answers (linear row blocks per weight shape, attention tile) on 1, 2 and 4 threads;
# 2. profile forward, Qwen2.5-Coder 1.5B layers $LAYERS, 1/16/256 rows, pinned to 2 cores, per op (--ops 12);
# 3. bench --pin, 4 stages x 2 cores, local/ar/chunk/flowspec, row-invariant then --fused-numerics;
# 4. profile forward as in 2 on 1 core, then on 4 cores;
# 5. one summary table (rows x threads: row-invariant ms, fused ms, ratio; bench: mode x numerics tok/s), printed last.
# Writes $OUT/numerics-*.txt (printed tables), $OUT/numerics-bench-{invariant,fused}.json, $OUT/numerics-summary.txt.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD FLOWRING_HOME=${FLOWRING_HOME:-/root/fh} PYTHONUNBUFFERED=1
started=$SECONDS
models=${MODELS:-/root/models}
layers=${LAYERS:-7-14}
head=${HEAD:-common/speculation/heads/shipped/qwen-coder-1.5b}
budget=540  # seconds: every step must end by then
filter() { grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored|USDT' || true; }
fits() {  # SECONDS_NEEDED NAME: whether a step of that timeout still ends within the budget
  if (( SECONDS - started + $1 > budget )); then
    echo "skipped $2: $((SECONDS - started)) s gone" | tee -a "$OUT/numerics-skipped.txt"
    return 1
  fi
}
probes() {
  timeout 90 python3 infra/gpu/numerics_report.py probes "$models/qwen-coder-1.5b" 2 1 4 2>&1 | filter | tee "$OUT/numerics-probes.txt" \
    || echo "probes stopped (exit $?)" | tee -a "$OUT/numerics-probes.txt"
}
profile() {  # THREADS CPUS TIMEOUT
  timeout "$3" python3 -m services.cli.main profile forward --base "$models/qwen-coder-1.5b" --layers "$layers" \
    --rows 1,16,256 --threads "$1" --cpus "$2" --repeats 7 --no-transformers --ops 12 2>&1 | filter \
    | tee "$OUT/numerics-profile-$1t.txt" || echo "profile $1t stopped (exit $?)" | tee -a "$OUT/numerics-profile-$1t.txt"
}
drafting=(--draft "$models/qwen-coder-0.5b")
if [[ "$head" != none ]]; then drafting+=(--draft-head "$head"); fi
bench() {  # NAME [extra bench args]
  local name=$1
  shift
  timeout 170 python3 -m services.cli.main bench --pin --base "$models/qwen-coder-1.5b" "${drafting[@]}" \
    --stages 4 --cores-per-service 2 --prompts infra/data/code_prompts.jsonl --num-prompts 3 \
    --modes local,ar,chunk,flowspec --max-new-tokens 48 --temperature 0 --json "$OUT/numerics-$name.json" "$@" 2>&1 \
    | filter | tee "$OUT/numerics-$name.txt" || echo "$name stopped (exit $?)" | tee -a "$OUT/numerics-$name.txt"
}
probes
profile 2 0-1 110
if fits 170 bench-invariant; then bench bench-invariant; fi
if fits 170 bench-fused; then bench bench-fused --fused-numerics; fi
if fits 130 profile-1t; then profile 1 0 130; fi
if fits 90 profile-4t; then profile 4 0-3 90; fi
echo "numerics.sh done in $((SECONDS - started)) s" | tee "$OUT/numerics-done.txt"
python3 infra/gpu/numerics_report.py summary "$OUT" | tee "$OUT/numerics-summary.txt"
