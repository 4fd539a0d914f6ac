#!/usr/bin/env bash
# The 2-core targets of issues 17, 18 and 19 on the machine that runs it, one local cluster at a time
# (Qwen2.5-Coder 1.5B in bf16, held-out code prompts, T = 0, `flowring up` then `flowring bench`):
#   bash infra/two_core_checks.sh [numerics|load|load-speculating|head ...]     (default: numerics load head)
# numerics: 2 stages, ar and chunk, row-invariant numerics then --fused-numerics (issue 17: chunk >= 0.95x);
# load:     2 stages with the 0.5B draft model, 4 prompts one at a time then 4 in flight, ar and flowspec
#           (issue 19: flowspec's aggregate >= ar's with 4 in flight; up's default budget on 2 cores is the root
#           alone: no speculation); load-speculating: the same with the default budget of larger machines;
# head:     the default cluster (1 stage), ar, chunk and flowspec with the 0.5B draft model then the shipped head
#           (issue 18: the default mode against ar, the head against the draft model).
# Every cluster runs without a standby scheduler (--scheduler-standby 0: one process less on 2 cores).
# Writes OUTDIR (default infra/results/DATE-2core-checks)/NAME.txt and NAME.json; needs `make up`'s venv and
# `flowring models pull qwen-coder`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUTDIR:-infra/results/$(date -u +%F)-2core-checks}
TOKENS=${TOKENS:-32}
flowring=.venv/bin/flowring
prompts=infra/data/code_prompts.jsonl
head=common/speculation/heads/shipped/qwen-coder-1.5b
spec="--speculation-budget 128 --speculation-max-in-flight 0"  # speculate as on a larger machine (up's 2-core default: none)
mkdir -p "$OUTDIR"
filter() { grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored' || true; }
measure() {  # NAME "UP ARGS" BENCH ARGS...
  local name=$1 up_args=$2 run_dir
  shift 2
  run_dir=$(mktemp -d /tmp/flowring-2core-XXXX)
  # shellcheck disable=SC2086
  "$flowring" up --model qwen-coder --api-port 0 --scheduler-standby 0 --run-dir "$run_dir" $up_args \
    2>&1 | filter | tee "$OUTDIR/$name.txt"
  "$flowring" bench --run-dir "$run_dir" --prompts "$prompts" --max-new-tokens "$TOKENS" --temperature 0 \
    --timeout 600 --json "$OUTDIR/$name.json" "$@" 2>&1 | filter | tee -a "$OUTDIR/$name.txt" || true
  "$flowring" down --run-dir "$run_dir" >/dev/null 2>&1 || true
  rm -rf "$run_dir"
}
for what in "${@:-numerics load head}"; do
  for w in $what; do
    case $w in
      numerics)
        measure numerics-invariant "--stages 2 --mode chunk $spec" --modes ar,chunk --num-prompts 2
        measure numerics-fused "--stages 2 --mode chunk --fused-numerics $spec" --modes ar,chunk --num-prompts 2 ;;
      load)
        measure load-conc4 "--stages 2 --no-head" --concurrency 4 --modes ar,flowspec --num-prompts 4 ;;
      load-speculating)  # the same, speculating at any load (no --speculation-max-in-flight limit)
        measure load-conc4-speculating "--stages 2 --no-head $spec" --concurrency 4 \
          --modes ar,flowspec --num-prompts 4 ;;
      head)
        measure head-draft-model "--stages 1 --no-head $spec" --modes ar,chunk,flowspec --num-prompts 2
        measure head-shipped "--stages 1 --draft-head $head $spec" --modes ar,chunk,flowspec --num-prompts 2 ;;
      *) echo "unknown check $w (numerics, load, load-speculating, head)" >&2; exit 2 ;;
    esac
  done
done
echo "results in $OUTDIR"
