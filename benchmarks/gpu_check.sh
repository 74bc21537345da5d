#!/usr/bin/env bash
# The GPU check of issues 15 and 24: `pytest -m gpu`, the paper-preset benchmark (step rate fp32 /
# TF32 / bf16, MFU, peak memory, DDPM-1000 vs DPM-Solver++-20 images/s) and a short learning run
# (the default's math data, both methods side by side on the GPU for about 3 minutes, then DTW /
# blank on the test split), in at most 8 minutes on one H100, ending with one table. Exits 1 when
# a test fails, 2 when the benchmark fails, 3 when the Python ($PYTHON, else .venv/bin/python, else
# python3) lacks the project's dependencies, 4 when the learning run fails.
#
#   benchmarks/gpu_wheels.sh                  # here, once: the kit (wheels + data) for a bare machine
#   benchmarks/gpu_check.sh                   # on a CUDA machine (carry benchmarks/gpu_kit)
#   benchmarks/gpu_check.sh --cpu-smoke       # anywhere: tiny sizes on the CPU, exercises the script
#
# Without CUDA it runs the CPU smoke variant by itself. With the kit ($GPU_KIT, default
# benchmarks/gpu_kit) it first installs the kit's wheels offline into $GPU_CHECK_SITE (default
# /tmp/markup2im-gpu/site-packages) and puts that on PYTHONPATH, and the learning run reads the kit's data
# (a GPU machine may lack LaTeX); without it, it renders the data here. Logs, JSON and the tables
# (summary.md) go to $GPU_CHECK_OUT, else $OUT (the device call's), else a new temporary directory.
#
# The 8 minutes on an H100: installing the kit ~10 s; `pytest -m gpu` at most 80 s; the benchmark
# at most 120 s; the learning run at most 270 s (a 60-step timing run of both methods side by side,
# 3 minutes of training, stopped at the latest 15% + 15 s past that, then 4 snapshots of each
# method drawn with 10-step DDIM on the test split and on unseen formulas).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) mode=cpu ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown option $arg" >&2; exit 64 ;;
    esac
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=.venv/bin/python
fi
started=$(date +%s)
kit=${GPU_KIT:-benchmarks/gpu_kit}
if compgen -G "$kit/wheels/*.whl" >/dev/null; then
    # a folder named site-packages: dill (datasets' fingerprints) pickles the modules of any other
    # folder by value, and pyarrow's then fails ("Can't pickle <class 'MonthDayNano'>")
    site=${GPU_CHECK_SITE:-/tmp/markup2im-gpu/site-packages}
    echo "gpu_check: installing $(ls "$kit"/wheels/*.whl | wc -l) wheels of $kit offline into $site" >&2
    if ! "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" \
        "$kit"/wheels/*.whl; then
        echo "gpu_check: installing $kit/wheels failed" >&2
        exit 3
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# the package from this checkout even where it is not installed (a bare GPU machine)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import diffusers, datasets, transformers, accelerate, pytest, markup2im' 2>/dev/null; then
    echo "gpu_check: $PY lacks the project's dependencies (diffusers, datasets, transformers," \
        "accelerate, pytest); install them first (offline: benchmarks/gpu_wheels.sh makes a kit)" >&2
    exit 3
fi
if [ "$mode" = gpu ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: no CUDA device; running the CPU smoke variant" >&2
    mode=cpu
fi
out=${GPU_CHECK_OUT:-${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}}
mkdir -p "$out"
# the learning run's datasets, runs and snapshots: many files, kept out of $out
work=$(mktemp -d -t gpu_check_work.XXXXXX)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$mode" = gpu ]; then
    tests_limit=80 bench_limit=120 learn_limit=270
    bench_args=(--preset paper --encoder stand-in --batch-size 16 --height 64 --width 320
        --steps 20 --warmup 5 --precisions fp32,tf32,bf16,bf16-cl --methods baseline,ss
        --sample-runs ddpm:1000,dpmsolver++:20 --device cuda)
    # batch 16: the paper's per-GPU batch (config/paper.yaml), which is also the default's
    learn_args=(--minutes 3 --points 4 --probe-steps 60 --batch-size 16 --device cuda --threads 4)
    if [ -d "$kit/data" ]; then
        learn_args+=(--data-dir "$kit/data")
    fi
else
    tests_limit=120 bench_limit=120 learn_limit=240
    bench_args=(--preset tiny --batch-size 2 --height 32 --width 64 --steps 1 --warmup 0
        --precisions fp32,bf16 --methods baseline,ss --sample-runs ddpm:1000,dpmsolver++:20
        --max-sample-steps 3 --device cpu --threads 1)
    learn_args=(--minutes 0.05 --points 2 --probe-steps 4 --batch-size 4 --train-examples 32
        --test-examples 4 --unseen 4 --device cpu --threads 1)
fi

# only the modules that hold GPU tests: collecting the others would need their extras (rdkit...)
mapfile -t gpu_tests < <(grep -lE 'requires_cuda|mark\.gpu' tests/test_*.py)
echo "gpu_check ($mode): pytest -m gpu (limit ${tests_limit} s), log $out/pytest.log" >&2
timeout -k 10 "$tests_limit" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    "${gpu_tests[@]}" >"$out/pytest.log" 2>&1
tests_rc=$?
tests_line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|deselected|error)' "$out/pytest.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
[ "$tests_rc" = 124 ] && tests_line="timed out after ${tests_limit} s"
[ -n "$tests_line" ] || tests_line="no summary (exit $tests_rc)"

echo "gpu_check ($mode): benchmark (limit ${bench_limit} s), log $out/bench.log" >&2
timeout -k 10 "$bench_limit" "$PY" benchmarks/bench_model.py "${bench_args[@]}" \
    --json "$out/bench.json" >"$out/bench.log" 2>&1
bench_rc=$?

echo "gpu_check ($mode): learning run (limit ${learn_limit} s), log $out/learning.log" >&2
timeout -k 10 "$learn_limit" "$PY" benchmarks/bench_learning.py "${learn_args[@]}" \
    --workdir "$work" --json "$out/learning.json" --table "$out/learning.md" >"$out/learning.log" 2>&1
learn_rc=$?

{
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
    if [ "$learn_rc" = 0 ]; then
        cat "$out/learning.md"
    else
        echo "learning run failed (exit $learn_rc); the end of $out/learning.log:"
        tail -20 "$out/learning.log"
    fi
} | tee "$out/summary.md"
echo
echo "gpu_check ($mode): $(( $(date +%s) - started )) s; logs in $out"
if [ "$tests_rc" != 0 ]; then
    echo "gpu_check: tests failed (exit $tests_rc); the end of $out/pytest.log:" >&2
    tail -30 "$out/pytest.log" >&2
    exit 1
fi
[ "$bench_rc" = 0 ] || exit 2
[ "$learn_rc" = 0 ] || exit 4
exit 0
