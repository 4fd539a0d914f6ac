#!/usr/bin/env bash
# Train the shipped draft head of qwen-coder-1.5b on one GPU: the offline code corpus plus Magpie prose,
# stored as int8 with a scale per row (common/speculation/heads/packing.py), acceptance per domain.
#
# In the background, beside other work of the same lease (the usual way; docs/draft-head.md):
#   MODE=start   bash infra/gpu/train_head.sh   # launches the whole run (setsid nohup, pinned to $CPUS), returns
#   MODE=status  bash infra/gpu/train_head.sh   # the log's tail; running, or finished with its exit status
#   MODE=collect bash infra/gpu/train_head.sh   # copies head/, the log and the prompts into $OUT
# In the foreground (MODE=run, the default), in calls of at most STOP_AFTER_MIN minutes each (checkpointed;
# run it again to resume; STOP_AFTER_MIN= empty runs the whole budget in one call).
#
# The whole run never takes more than BUDGET_MIN minutes from MODE=start: training itself gets
# BUDGET_MIN - RESERVE_MIN (imports, loading the base, the copy), every phase keeps to its share of that
# (common/speculation/heads/train.py), and `timeout` stops the process at BUDGET_MIN in any case.
# Needs: the base folder ($BASE, as infra/gpu/setup.sh converts it) and the wheels setup.sh installs.
# Writes to $OUT: head/ (config.json, head-*-of-*.safetensors, acceptance.json: each file under 16 MiB),
# train-log.txt, and prompts.json.gz (every training prompt, for checking against benchmarks elsewhere).
set -euo pipefail
MODE=${MODE:-run}
BASE=${BASE:-/root/models/qwen-coder-1.5b}
WORK=${WORK:-.device/head-qwen-coder-1.5b}
BUDGET_MIN=${BUDGET_MIN:-15}
RESERVE_MIN=${RESERVE_MIN:-1}
STOP_AFTER_MIN=${STOP_AFTER_MIN-8.5}
CPUS=${CPUS-12-15}  # MODE=start pins the run to these cores (empty: no pinning)
OUT=${OUT:-.device/out}
DEVICE=${DEVICE:-cuda}  # cpu: a smoke test of this script on a tiny base
PYTHON=${PYTHON:-python3}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
LOG=$WORK.log  # every line of the run (OUT starts empty at each call)
RC=$WORK.rc    # MODE=start: the exit status, once finished
PID=$WORK.pid  # MODE=start: the background run's process
# The recipe (docs/draft-head.md says why): most of the budget answers prompts, a fifth of it at most writes
# Magpie prose, batches of 512; EXTRA (flags of `flowring heads train`) overrides any of it.
RECIPE=(--generation-share 0.6 --prose-share 0.2 --max-prose 16384 --generate-batch 512 --max-new-tokens 256)

train_budget() { awk -v b="$BUDGET_MIN" -v r="$RESERVE_MIN" 'BEGIN { printf "%.3f", b - r }'; }

train() {  # the training command, its log appended to $LOG; STOP_AFTER_MIN as set
  local args=(--base "$BASE" --device "$DEVICE" --out "$WORK" --time-budget-min "$(train_budget)" --weights int8-rows
              "${RECIPE[@]}" ${EXTRA:-})
  [ -n "$STOP_AFTER_MIN" ] && args+=(--stop-after-min "$STOP_AFTER_MIN")
  [ -d "$WORK/work" ] && args+=(--resume)
  mkdir -p "$(dirname "$WORK")"
  [ -d "$WORK/work" ] || rm -f "$LOG"
  "$PYTHON" -m services.cli.heads train "${args[@]}" 2>&1 | stdbuf -oL tr '\r' '\n' \
    | grep --line-buffered -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored' >> "$LOG"
}

collect() {  # a finished run's head, log and prompts into $OUT
  mkdir -p "$OUT"
  cp "$LOG" "$OUT/train-log.txt"
  if [ -d "$WORK/work" ] || [ ! -f "$WORK/acceptance.json" ]; then
    echo "no finished head in $WORK (paused or failed: see $OUT/train-log.txt)"
    return 1
  fi
  mkdir -p "$OUT/head"
  cp "$WORK"/config.json "$WORK"/acceptance.json "$WORK"/head-*-of-*.safetensors "$OUT/head/"
  gzip -c "$WORK/training-prompts.json" > "$OUT/prompts.json.gz"
  ls -l "$OUT/head" "$OUT/prompts.json.gz"
  cat "$OUT/head/acceptance.json"
}

running() { [ -f "$PID" ] && [ ! -f "$RC" ] && kill -0 "$(cat "$PID")" 2>/dev/null; }

case "$MODE" in
  run)
    train || echo "training failed: see $LOG"
    tail -40 "$LOG"
    if [ -d "$WORK/work" ]; then echo "paused: run this script again to resume"; else collect; fi
    ;;
  start)
    if running; then echo "a run is already under way (pid $(cat "$PID")): MODE=status"; exit 1; fi
    rm -rf "$WORK" "$LOG" "$RC" "$PID" "$WORK.started"
    mkdir -p "$(dirname "$WORK")"
    pin=()
    [ -n "$CPUS" ] && pin=(taskset -c "$CPUS")
    # Detached from this call (new session, no terminal); the hard stop at BUDGET_MIN minutes is `timeout`'s.
    # It runs a copy of this script: bash reads a script as it goes, and a later call may replace the checkout's.
    cp "$0" "$WORK.run.sh"
    MODE=background STOP_AFTER_MIN= setsid nohup "${pin[@]}" bash "$WORK.run.sh" > "$WORK.nohup" 2>&1 < /dev/null &
    for _ in $(seq 50); do [ -f "$PID" ] && break; sleep 0.1; done
    echo "started: pid $(cat "$PID" 2>/dev/null || echo '?'), budget $BUDGET_MIN min, cores ${CPUS:-any}, log $LOG"
    echo "MODE=status bash $0   # progress;   MODE=collect bash $0   # the head into \$OUT once finished"
    ;;
  background)  # what MODE=start runs: the whole budget in one go, stopped by `timeout` at BUDGET_MIN at the latest
    echo $$ > "$PID"
    date -u +%s > "$WORK.started"
    set +e
    MODE=once timeout -k 10 "$(awk -v b="$BUDGET_MIN" 'BEGIN { printf "%d", b * 60 - 5 }')" bash "$0"
    rc=$?
    [ $rc -eq 124 ] && echo "stopped by timeout at $BUDGET_MIN minutes" >> "$LOG"
    echo "finished in $(( $(date -u +%s) - $(cat "$WORK.started") )) s, exit status $rc" >> "$LOG"
    echo $rc > "$RC"
    ;;
  once)
    train
    ;;
  status)
    if [ -f "$LOG" ]; then  # the run's own lines, then the progress bar's last
      grep -v '^training: ' "$LOG" | tail -n "${TAIL:-15}" || true
      grep '^training: ' "$LOG" | tail -1 || true
    fi
    if running; then
      echo "running: $(( $(date -u +%s) - $(cat "$WORK.started") )) s of $BUDGET_MIN min"
    elif [ -f "$RC" ]; then
      echo "finished: exit status $(cat "$RC") ($( [ -f "$WORK/acceptance.json" ] && echo 'head ready: MODE=collect' || echo 'no head'))"
    else
      echo "not running and not finished (never started here, or killed: see ${WORK}.nohup)"
    fi
    ;;
  collect)
    if running; then echo "still running: MODE=status"; exit 1; fi
    collect
    ;;
  *) echo "MODE must be run, start, status or collect, not $MODE"; exit 2 ;;
esac
