#!/usr/bin/env bash
# Train the shipped draft head of qwen-coder-1.5b on one GPU: the offline code corpus plus Magpie prose,
# stored as int8 with a scale per row (common/speculation/heads/packing.py), acceptance per domain.
#
#   bash infra/gpu/train_head.sh      # call 1: prompts, answers, the first minutes of training; pauses
#   bash infra/gpu/train_head.sh      # call 2: resumes, finishes, writes $OUT/head (and a third call if asked)
#
# Each call stops itself after STOP_AFTER_MIN minutes (checkpointed), so it stays within a 10-minute
# command; the work folder ($WORK, under the ignored .device/) carries the run between calls while the
# machine stays warm. STOP_AFTER_MIN= (empty) runs the whole budget in one call where time allows.
# Needs: the base folder ($BASE, as infra/gpu/setup.sh converts it) and the wheels setup.sh installs.
# Writes to $OUT: head/ (config.json, head-*-of-*.safetensors, acceptance.json: each file under 16 MiB),
# train-log.txt, and prompts.json.gz (every training prompt, for checking against benchmarks elsewhere).
set -euo pipefail
BASE=${BASE:-/root/models/qwen-coder-1.5b}
WORK=${WORK:-.device/head-qwen-coder-1.5b}
BUDGET_MIN=${BUDGET_MIN:-12}
STOP_AFTER_MIN=${STOP_AFTER_MIN-8.5}
OUT=${OUT:-.device/out}
DEVICE=${DEVICE:-cuda}  # cpu: a smoke test of this script on a tiny base
PYTHON=${PYTHON:-python3}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
args=(--base "$BASE" --device "$DEVICE" --out "$WORK" --time-budget-min "$BUDGET_MIN" --weights int8-rows ${EXTRA:-})
[ -n "$STOP_AFTER_MIN" ] && args+=(--stop-after-min "$STOP_AFTER_MIN")
[ -d "$WORK/work" ] && args+=(--resume)
LOG=$WORK.log  # every call's lines: OUT starts empty at each call
mkdir -p "$OUT" "$(dirname "$WORK")"
[ -d "$WORK/work" ] || rm -f "$LOG"
"$PYTHON" -m services.cli.heads train "${args[@]}" 2>&1 | tr '\r' '\n' \
  | grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored' | tee -a "$LOG" | tail -40
cp "$LOG" "$OUT/train-log.txt"
if [ -d "$WORK/work" ]; then
  echo "paused: run this script again to resume"
else
  mkdir -p "$OUT/head"
  cp "$WORK"/config.json "$WORK"/acceptance.json "$WORK"/head-*-of-*.safetensors "$OUT/head/"
  gzip -c "$WORK/training-prompts.json" > "$OUT/prompts.json.gz"
  ls -l "$OUT/head" "$OUT/prompts.json.gz"
  cat "$OUT/head/acceptance.json"
fi
