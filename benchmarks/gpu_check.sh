#!/usr/bin/env bash
# The GPU check of issue 15: `pytest -m gpu`, then the paper-preset benchmark, in at most 8 minutes
# on one GPU, and one table of the figures (step rate fp32 vs bf16, MFU, peak memory, DDPM-1000 vs
# DPM-Solver++-20 images/s). Exits 1 when a test fails, 2 when the benchmark fails, 3 when the
# Python ($PYTHON, else .venv/bin/python, else python3) lacks the project's dependencies.
#
#   benchmarks/gpu_check.sh                # on a CUDA machine
#   benchmarks/gpu_check.sh --cpu-smoke    # anywhere: tiny sizes on the CPU, exercises the script
#
# Without CUDA it runs the CPU smoke variant by itself. Logs and bench.json go to $GPU_CHECK_OUT
# (default: a new temporary directory, named at the end).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) mode=cpu ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown option $arg" >&2; exit 64 ;;
    esac
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=.venv/bin/python
fi
# the package from this checkout even where it is not installed (a bare GPU machine)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import diffusers, datasets, transformers, accelerate, pytest, markup2im' 2>/dev/null; then
    echo "gpu_check: $PY lacks the project's dependencies (diffusers, datasets, transformers," \
        "accelerate, pytest); install them first (offline: pip install --no-index from wheels)" >&2
    exit 3
fi
if [ "$mode" = gpu ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: no CUDA device; running the CPU smoke variant" >&2
    mode=cpu
fi
out=${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$mode" = gpu ]; then
    # 8 minutes in all: tests first (they must pass), then the benchmark
    tests_limit=300 bench_limit=170
    bench_args=(--preset paper --encoder stand-in --batch-size 16 --height 64 --width 320
        --steps 20 --warmup 5 --precisions fp32,tf32,bf16,bf16-cl --methods baseline,ss
        --sample-runs ddpm:1000,dpmsolver++:20 --device cuda)
else
    tests_limit=120 bench_limit=120
    bench_args=(--preset tiny --batch-size 2 --height 32 --width 64 --steps 1 --warmup 0
        --precisions fp32,bf16 --methods baseline,ss --sample-runs ddpm:1000,dpmsolver++:20
        --max-sample-steps 3 --device cpu --threads 1)
fi

started=$(date +%s)
echo "gpu_check ($mode): pytest -m gpu (limit ${tests_limit} s), log $out/pytest.log" >&2
timeout -k 10 "$tests_limit" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    tests >"$out/pytest.log" 2>&1
tests_rc=$?
tests_line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|deselected|error)' "$out/pytest.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
[ "$tests_rc" = 124 ] && tests_line="timed out after ${tests_limit} s"
[ -n "$tests_line" ] || tests_line="no summary (exit $tests_rc)"

echo "gpu_check ($mode): benchmark (limit ${bench_limit} s), log $out/bench.log" >&2
timeout -k 10 "$bench_limit" "$PY" benchmarks/bench_model.py "${bench_args[@]}" \
    --json "$out/bench.json" >"$out/bench.log" 2>&1
bench_rc=$?

echo
if [ "$bench_rc" = 0 ]; then
    "$PY" - "$out/bench.json" "$tests_line" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
from bench_model import summary_table
with open(sys.argv[1], encoding="utf-8") as handle:
    print(summary_table(json.load(handle), sys.argv[2]))
EOF
else
    echo "| \`pytest -m gpu\` | $tests_line | all pass |"
    echo "benchmark failed (exit $bench_rc); the end of $out/bench.log:"
    tail -20 "$out/bench.log"
fi
echo
echo "gpu_check ($mode): $(( $(date +%s) - started )) s; logs in $out"
if [ "$tests_rc" != 0 ]; then
    echo "gpu_check: tests failed (exit $tests_rc); the end of $out/pytest.log:" >&2
    tail -30 "$out/pytest.log" >&2
    exit 1
fi
[ "$bench_rc" = 0 ] || exit 2
exit 0
