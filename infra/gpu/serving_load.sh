#!/usr/bin/env bash
# Issue 19's serving targets on the GPU machine's 16-core host, in one lease (at most about 8.5 minutes):
#   bash infra/gpu/serving_load.sh [NAME]                 (drafts with the shipped head for qwen-coder-1.5b)
#   HEAD=/path/to/head bash infra/gpu/serving_load.sh     (drafts with that head folder)
# 4 stages pinned 2 cores each (flowring bench --pin: drafter, 4 stages and verifier on 12 of the 16 cores),
# default (row-invariant) numerics, held-out code prompts (infra/data/code_prompts.jsonl) x 48 tokens, T = 0,
# modes ar and flowspec. Run 1: 4 prompts solo (1 in flight), then 4 in flight; run 2: 8 prompts solo, then 8 in
# flight (bench --pin admits K in flight). Each phase also records every service's busy ratio and rows and
# requests per forward (its Prometheus counters). Writes $OUT/NAME-conc{4,8}.{json,txt} and $OUT/NAME-table.md;
# the table (infra/serving_load_table.py) is printed last. Each run is bounded by `timeout`, so a stuck one
# leaves the other's files.
# Overrides (dry runs on a small machine): BASE, DRAFT, HEAD (none: draft with DRAFT), STAGES, CORES, TOKENS,
# PROMPTS, LOADS ("4 8"), FLOWRING (the command), T_RUN (seconds per run; default 200 for 4 in flight, else 300).
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
name=${1:-load}
export PYTHONPATH=${PYTHONPATH:-/tmp/site:$PWD} FLOWRING_HOME=${FLOWRING_HOME:-/root/fh} PYTHONUNBUFFERED=1
base=${BASE:-/root/models/qwen-coder-1.5b}
draft=${DRAFT:-/root/models/qwen-coder-0.5b}
head=${HEAD:-$PWD/common/speculation/heads/shipped/qwen-coder-1.5b}
read -r -a flowring <<< "${FLOWRING:-python3 -m services.cli.main}"
if [[ "$head" == none ]]; then drafting=(); else drafting=(--draft-head "$head"); fi
started=$SECONDS
filter() { grep --line-buffered -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored|USDT' || true; }
run() {  # run K: K prompts solo, then K in flight, for ar and flowspec
  local k=$1
  timeout "${T_RUN:-$(( k == 4 ? 200 : 300 ))}" "${flowring[@]}" bench --pin --base "$base" --draft "$draft" "${drafting[@]}" \
    --stages "${STAGES:-4}" --cores-per-service "${CORES:-2}" --prompts "${PROMPTS:-infra/data/code_prompts.jsonl}" \
    --num-prompts "$k" --max-new-tokens "${TOKENS:-48}" --temperature 0 --concurrency "$k" --modes ar,flowspec \
    --json "$OUT/$name-conc$k.json" 2>&1 | filter | tee "$OUT/$name-conc$k.txt"
  local status=${PIPESTATUS[0]}
  (( status == 0 )) || echo "run $k in flight: exit $status after $((SECONDS - started)) s" | tee -a "$OUT/$name-errors.txt"
}
for k in ${LOADS:-4 8}; do run "$k"; done
reports=()
for k in ${LOADS:-4 8}; do [[ -s "$OUT/$name-conc$k.json" ]] && reports+=("$OUT/$name-conc$k.json"); done
echo "serving_load.sh done in $((SECONDS - started)) s (head: ${head})"
python3 infra/serving_load_table.py "${reports[@]}" | tee "$OUT/$name-table.md"
