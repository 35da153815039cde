#!/usr/bin/env bash
# Issue 18: the papers' settings on one CUDA GPU, and their speed, in one run of at most ~9 minutes
# (8 expected on an H100/H200). Steps, each with its own time limit, each logged; the run goes on
# after a failed step and exits non-zero at the end if any failed:
#
#   install     the lock over the machine's Python (its CUDA torch kept), wheels from --wheels
#   tests       pytest -m cuda tests/cuda (bf16 every model, GAN steps, CUDA resume, evaluate/predict)
#   throughput  benchmarks/gpu_throughput.py: multiscale 224x224 bf16 + channels_last vs a bare loop
#   gan         benchmarks/gan.py --preset paper: MU-ACGAN and ACGAN at 256x96, batch 2 and 8
#   exp         dvc exp run of the yu2023 + paper settings for 2 epochs (benchmarks/gpu_exp.py) up to
#               `evaluate` (no registry), tracking off, in a scratch copy of the project (git-initialised
#               there; this tree is left untouched)
#
# --tiny runs every step on the CPU at tiny sizes (tests/cuda via BONESCAN_CUDA_TESTS_ON_CPU=1), so the
# script is checked before GPU time is spent. Outputs (at most 8 files) go to --out, default $OUT (the
# device tool's folder) or /tmp/bonescan-gpu-out: summary.json, install.json, tests.log,
# throughput.json, gan.json, exp.json, exp.log.
#
# Usage: benchmarks/gpu.sh [--tiny] [--no-install | --venv DIR] [--wheels DIR] [--out DIR]
#                          [--steps install,tests,throughput,gan,exp]
#   --no-install  use $PYTHON (default python3) as it is; --venv DIR: a pre-made environment
#   --wheels DIR  wheels of the locked packages the machine lacks (default .whl; see benchmarks/README.md)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TINY=0
MODE=install
VENV=""
WHEELS="$ROOT/.whl"
OUTDIR="${OUT:-/tmp/bonescan-gpu-out}"
STEPS="install,tests,throughput,gan,exp"
BUDGET_S=540  # the device tool stops a command at 600 s; leave time to copy the outputs back

while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --no-install) MODE=none ;;
    --venv) MODE=venv; VENV=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --out) OUTDIR=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$TINY" = 1 ]; then
  BUDGET_S=1200  # a busy 2-core CPU is slow; the device's 600 s limit does not apply here
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # two OpenMP threads fighting other jobs run ~10x slower
fi
mkdir -p "$OUTDIR"
START=$(date +%s)
WORK=$(mktemp -d /tmp/bonescan-gpu.XXXXXX)
declare -A RC SECONDS_OF
ORDER=()

say() { echo "[gpu.sh $(($(date +%s) - START))s] $*"; }
wants() { [[ ",$STEPS," == *",$1,"* ]]; }
left() { echo $((START + BUDGET_S - $(date +%s))); }

# step NAME LIMIT_S LOG COMMAND...: run COMMAND with a time limit, its output to LOG and to stdout.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local room
  room=$(left)
  [ "$limit" -gt "$room" ] && limit=$room
  ORDER+=("$name")
  if [ "$limit" -le 10 ]; then
    say "$name: skipped, the time budget is spent"
    RC[$name]=124; SECONDS_OF[$name]=0
    return
  fi
  say "$name: start (limit ${limit}s)"
  local tic=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > >(tee "$log") 2>&1
  RC[$name]=$?
  SECONDS_OF[$name]=$(($(date +%s) - tic))
  say "$name: exit ${RC[$name]} after ${SECONDS_OF[$name]}s"
}

# ---------------------------------------------------------------- environment
case "$MODE" in
  venv) PY="$VENV/bin/python" ;;
  none) PY=$(command -v "${PYTHON:-python3}") ;;
  install)
    # The machine's Python keeps its CUDA torch; the carried wheels go to a folder first on PYTHONPATH
    # (that Python is a venv itself: a venv made from it would not see its packages).
    PY=$(command -v "${PYTHON:-python3}")
    SITE="$WORK/site"
    mkdir -p "$SITE"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if wants install; then
      step install 120 "$OUTDIR/install.log" \
        "$PY" "$ROOT/benchmarks/gpu_install.py" --lock "$ROOT/requirements.lock" --wheels "$WHEELS" \
        --target "$SITE" --allow-missing  # Prefect and MLflow are not carried (benchmarks/gpu_wheels.py): install.json lists them
      # The plan (JSON) is the log's first part; keep it as install.json.
      "$PY" - "$OUTDIR/install.log" "$OUTDIR/install.json" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
try:
    plan, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
except ValueError:
    plan = {"error": text[-3000:]}
json.dump(plan, open(sys.argv[2], "w"), indent=2)
EOF
      rm -f "$OUTDIR/install.log"
    fi
    ;;
esac

# This tree's bonescan wins over any installed copy; `bonescan` (dvc.yaml's stage commands) runs it.
BASE_PYTHONPATH=${PYTHONPATH:-}
export PYTHONPATH="$ROOT/src:$ROOT${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec "%s" -m bonescan.cli "$@"\n' "$PY" > "$WORK/bin/bonescan"
chmod +x "$WORK/bin/bonescan"
export PATH="$WORK/bin:$(dirname "$PY"):$PATH"
export PYTHONUNBUFFERED=1
# The exp run stops at `evaluate` with tracking off: MLflow (tracking, the registry) and Prefect are not
# GPU paths, and their wheels would not fit in what the device carries (see benchmarks/gpu_wheels.py).
export BONESCAN_TRACKING=0
DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo "no torch")
TORCH=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "no torch")
say "python $PY, torch $TORCH, device $DEVICE, tiny=$TINY"
if [ "$TINY" = 0 ] && [ "$DEVICE" = cpu ]; then
  say "no CUDA device: pass --tiny to run on the CPU"
  exit 2
fi

if [ "$TINY" = 1 ]; then
  export BONESCAN_CUDA_TESTS_ON_CPU=1
  THROUGHPUT_ARGS=(--size 32 32 --batch 2 --steps 2 --repeats 1 --threads 1 --device cpu)
  GAN_ARGS=(--device cpu --preset paper --sizes 32x16 --batch-sizes 2 --steps 2 --warmup 1 --threads 1)
  EXP_ARGS="--epochs 1 --tiny"
else
  THROUGHPUT_ARGS=(--size 224 224 --batch 256 --steps 8 --repeats 3 --device cuda)
  GAN_ARGS=(--device cuda --preset paper --sizes 256x96 --batch-sizes 2,8 --steps 20 --warmup 3)
  EXP_ARGS="--epochs 2"
fi

cd "$ROOT" || exit 2

# ---------------------------------------------------------------- tests
if wants tests; then
  step tests "$([ "$TINY" = 1 ] && echo 600 || echo 150)" "$OUTDIR/tests.log" "$PY" -m pytest tests/cuda -m cuda -q -p no:cacheprovider --durations=10
fi

# ---------------------------------------------------------------- throughput
if wants throughput; then
  step throughput 150 "$WORK/throughput.log" "$PY" benchmarks/gpu_throughput.py "${THROUGHPUT_ARGS[@]}"
  sed -n '/^{/,$p' "$WORK/throughput.log" > "$OUTDIR/throughput.json"
fi

# ---------------------------------------------------------------- gan
if wants gan; then
  step gan 90 "$WORK/gan.log" "$PY" benchmarks/gan.py "${GAN_ARGS[@]}"
  sed -n '/^{/,$p' "$WORK/gan.log" > "$OUTDIR/gan.json"
fi

# ---------------------------------------------------------------- exp
run_exp() {
  local scratch=$WORK/project
  mkdir -p "$scratch"
  # The project as git would hold it: no environment, data, stores or carried wheels.
  tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./.whl --exclude=./data --exclude=./mlflow.db \
      --exclude=./mlartifacts --exclude=./.dvc/cache --exclude=./.dvc/tmp --exclude=./.secrets -cf - . \
    | tar -C "$scratch" -xf - || return 1
  cd "$scratch" || return 1
  export PYTHONPATH="$scratch/src:$scratch${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
  export GIT_AUTHOR_NAME=gpu.sh GIT_AUTHOR_EMAIL=gpu@localhost GIT_COMMITTER_NAME=gpu.sh GIT_COMMITTER_EMAIL=gpu@localhost
  git init -q && git add -A && git commit -qm "gpu.sh snapshot" || return 1
  BONESCAN_SECRET=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
  export BONESCAN_SECRET
  local args
  # shellcheck disable=SC2086  # EXP_ARGS: plain words
  mapfile -t args < <("$PY" "$ROOT/benchmarks/gpu_exp.py" $EXP_ARGS)
  [ "$TINY" = 0 ] && args+=(-S ingest.workers=8)  # 16 cores there; workers do not change the pixels
  echo "dvc exp run ${args[*]}"
  "$PY" -m dvc exp run "${args[@]}" evaluate || return 1
  "$PY" -m dvc metrics show --json > "$WORK/exp_metrics.json" || return 1
}
if wants exp; then
  export -f run_exp
  export WORK ROOT PY TINY EXP_ARGS BASE_PYTHONPATH
  step exp "$([ "$TINY" = 1 ] && echo 480 || echo 330)" "$OUTDIR/exp.log" bash -c run_exp
  [ -s "$WORK/exp_metrics.json" ] && cp "$WORK/exp_metrics.json" "$OUTDIR/exp.json"
fi

# ---------------------------------------------------------------- summary
FAILED=0
{
  echo "{"
  echo "  \"device\": \"$DEVICE\", \"torch\": \"$TORCH\", \"tiny\": $TINY, \"python\": \"$PY\","
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"seconds\": $(($(date +%s) - START)),"
  echo "  \"steps\": {"
  sep=""
  for name in "${ORDER[@]}"; do
    printf '%s    "%s": {"rc": %s, "seconds": %s}' "$sep" "$name" "${RC[$name]}" "${SECONDS_OF[$name]}"
    sep=$',\n'
    [ "${RC[$name]}" = 0 ] || FAILED=1
  done
  printf '\n  },\n  "ok": %s\n}\n' "$([ $FAILED = 0 ] && echo true || echo false)"
} > "$OUTDIR/summary.json"
cat "$OUTDIR/summary.json"
rm -rf "$WORK"
exit $FAILED
