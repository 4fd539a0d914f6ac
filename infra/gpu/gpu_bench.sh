#!/usr/bin/env bash
# Issue 20 on the lent GPU machine, in one call under 9 minutes (every step has a timeout and starts only
# while it can end in time; a step that fails or is skipped says so and the next one runs):
#   bash infra/gpu/gpu_bench.sh                      (HEAD=/path/to/head: another head than the shipped one)
#   MPS=1 CHECK=0 bash infra/gpu/gpu_bench.sh        (the services share the GPU through MPS, no time-slicing)
# 1. infra/cuda_check.py: tiny fp32 models, the ring greedy-equal to generate on the GPU, 2 stages;
# 2. flowring up --device cuda --stages 2 --draft-head HEAD --dtype bfloat16, then flowring bench:
#    3 held-out code prompts x 48 tokens, T = 0, modes local,ar,chunk,flowspec (row-invariant numerics);
# 3. infra/gpu/cuda_profile.py: stage forward of 1 and 16 rows, head extend/fill/grow, verifier decision;
# 4. the bench of 2 again with --fused-numerics;
# 5. if time is left: that bench with --nondeterministic (torch's defaults), then infra/cuda_check.py at 4 stages.
# Prints one table last (infra/gpu/bench_table.py); writes under $OUT: gpu-*.txt (each step's output),
# gpu-bench-*.json (bench records), gpu-bench-*-trace.json.gz, gpu-profile.json, gpu-logs-*/ (service logs).
# CPU dry run of the logic: DEVICE=cpu DTYPE=float32 BASE=tiny-folder HEAD=tiny-head CHECK=0 OUT=/tmp/o bash ...
set -uo pipefail
: "${OUT:?set OUT to the folder the results go to}"
export PYTHONPATH=/tmp/site:$PWD FLOWRING_HOME=${FLOWRING_HOME:-/root/fh} PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda} DTYPE=${DTYPE:-bfloat16} BASE=${BASE:-/root/models/qwen-coder-1.5b}
HEAD=${HEAD:-common/speculation/heads/shipped/qwen-coder-1.5b}
PROMPTS=${PROMPTS:-infra/data/code_prompts.jsonl} NUM_PROMPTS=${NUM_PROMPTS:-3} TOKENS=${TOKENS:-48}
STEPS=${STEPS:-10} CHECK=${CHECK:-1} BUDGET_S=${BUDGET_S:-530}  # PROFILE_ARGS: more cuda_profile.py flags
RUN=$(mktemp -d /tmp/flowring-gpu-XXXX)
started=$SECONDS
filter() { grep -v -E 'Loading weights|UNEXPECTED|^Key |^---|LOAD REPORT|can be ignored|USDT' || true; }
left() { echo $((BUDGET_S - (SECONDS - started))); }
step() {  # NAME LIMIT_S COMMAND...: run with timeout min(LIMIT_S, time left); skipped under 30 s left
  local name=$1 limit=$2
  shift 2
  local budget
  limit=$((limit * ${LIMIT_SCALE:-1}))  # a slow machine (the CPU dry run) scales every step's limit
  budget=$(left)
  ((budget < limit)) && limit=$budget
  if ((limit < 30)); then
    echo "$name skipped: $((SECONDS - started)) s gone" | tee "$OUT/gpu-$name.txt"
    return 1
  fi
  echo "== $name (at most $limit s, $((SECONDS - started)) s gone)"
  timeout -k 5 "$limit" "$@" 2>&1 | filter | tee "$OUT/gpu-$name.txt"
  local rc=${PIPESTATUS[0]}
  ((rc != 0)) && echo "$name stopped (exit $rc)" | tee -a "$OUT/gpu-$name.txt"
  return "$rc"
}
down() { timeout 120 python3 -m services.cli.main down --run-dir "$RUN" >/dev/null 2>&1 || true; }
MPS=${MPS:-0}  # 1: the services share the GPU through an MPS daemon started here (and quit at the end)
finish() {
  down
  if ((MPS)); then echo quit | nvidia-cuda-mps-control 2>/dev/null || true; fi
}
trap finish EXIT
if ((MPS)); then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/flowring-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/flowring-mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && echo "MPS daemon started" || { echo "MPS daemon did not start"; MPS=0; }
fi
bench() {  # NAME UP_LIMIT_S BENCH_LIMIT_S [extra up flags]: a cluster on the device, the four modes, stopped
  local name=$1 up_limit=$2 bench_limit=$3
  shift 3
  step "up-$name" "$up_limit" python3 -m services.cli.main up --base "$BASE" --draft-head "$HEAD" --device "$DEVICE" \
    --stages 2 --dtype "$DTYPE" --mode flowspec --api-port 0 --run-dir "$RUN" "$@" || { down; return 1; }
  step "bench-$name" "$bench_limit" python3 -m services.cli.main bench --prompts "$PROMPTS" \
    --num-prompts "$NUM_PROMPTS" --max-new-tokens "$TOKENS" --temperature 0 --modes local,ar,chunk,flowspec \
    --json "$OUT/gpu-bench-$name.json" --trace "$OUT/gpu-bench-$name-trace.json" --run-dir "$RUN"
  cp -r "$RUN/logs" "$OUT/gpu-logs-$name" 2>/dev/null
  down
  gzip -f "$OUT/gpu-bench-$name-trace.json" 2>/dev/null
  return 0
}
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'GPU(s)')" \
  | tee "$OUT/gpu-machine.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$OUT/gpu-machine.txt"
git log -1 --format='commit %H %s' 2>/dev/null | tee -a "$OUT/gpu-machine.txt"
if ((CHECK)); then step check-2stages 90 python3 infra/cuda_check.py --stages 2 --prompts 8; fi
bench invariant 90 150
# shellcheck disable=SC2086
step profile 120 python3 infra/gpu/cuda_profile.py --base "$BASE" --head "$HEAD" --device "$DEVICE" --dtype "$DTYPE" \
  --steps "$STEPS" --json "$OUT/gpu-profile.json" ${PROFILE_ARGS:-}
bench fused 90 150 --fused-numerics
# What torch's deterministic settings cost the ring, only while a whole bench still fits.
if (($(left) >= 200)); then bench fused-nondet 90 150 --fused-numerics --nondeterministic; fi
if ((CHECK)); then step check-4stages 90 python3 infra/cuda_check.py --stages 4 --prompts 8; fi
echo "gpu_bench.sh done in $((SECONDS - started)) s" | tee "$OUT/gpu-done.txt"
echo
grep -h -E "greedy-equal|^device:" "$OUT"/gpu-check-*.txt 2>/dev/null
if [[ -f "$OUT/gpu-profile.txt" ]]; then sed -n '/^step .*wall ms/,$p' "$OUT/gpu-profile.txt"; fi
python3 infra/gpu/bench_table.py "row-invariant=$OUT/gpu-bench-invariant.json" "fused=$OUT/gpu-bench-fused.json" \
  "fused-nondeterministic=$OUT/gpu-bench-fused-nondet.json" | tee "$OUT/gpu-table.txt"
