#!/usr/bin/env bash
# The kit that benchmarks/gpu_check.sh needs on a bare GPU machine that reaches no package
# registry (issue 24): the wheels that machine lacks for markup2im and its GPU tests, for CPython
# 3.12 on manylinux x86-64, and the default's math data rendered here (the machine may lack LaTeX).
#
#   benchmarks/gpu_wheels.sh                    # -> benchmarks/gpu_kit/{wheels,data}, prints its size
#   benchmarks/gpu_wheels.sh --machine minimal  # wheels for a machine with only torch, accelerate
#                                               #   and transformers (too big to carry: a local test)
#   benchmarks/gpu_wheels.sh --dest DIR --no-data
#   benchmarks/gpu_wheels.sh --list             # only print the resolved list (name==version)
#
# The list is resolved, not written down: pip resolves (dry run, for cp312 manylinux) the project's
# dependencies (pyproject.toml) and pytest on top of the machine's pinned torch / accelerate /
# transformers / huggingface_hub, with every other version pinned by requirements-lock.txt; the
# kit is what that adds, less what the machine holds. `--machine image` (default) takes away the
# packages of the GPU machine's image (its package list as of 2026-11-17: pyarrow,
# pandas, numba, scikit-image, matplotlib, pytest... are there), which keeps the kit near 5 MiB;
# `--machine minimal` takes away only what torch, accelerate and transformers pull in, which adds
# pyarrow, pandas, scipy, scikit-image, numba/llvmlite and matplotlib (about 190 MiB, over the
# 64 MiB that a device call carries with the working tree).
#
# Carry it with the device call (`carry: ["benchmarks/gpu_kit"]`; benchmarks/*/ is git-ignored).
# Needs network (PyPI) and, for the data, this checkout's .venv with LaTeX ($PYTHON overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

dest=benchmarks/gpu_kit machine=image data=1 list=0
while (($#)); do
    case "$1" in
        --dest) dest=$2; shift ;;
        --machine) machine=$2; shift ;;
        --no-data) data=0 ;;
        --list) list=1 ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "gpu_wheels: unknown option $1" >&2; exit 64 ;;
    esac
    shift
done
case "$machine" in image | minimal) ;; *) echo "gpu_wheels: --machine image|minimal" >&2; exit 64 ;; esac
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=.venv/bin/python
fi

# What the GPU machine's python3 (3.12.3) holds, as listed for that machine. Pinned:
# the versions a session's `pip list` showed; transformers 5.17 wants huggingface_hub < 2, so the
# lock's 2.4.0 must not come along (it would shadow the machine's 1.33.0).
MACHINE_PINS=(torch==2.11.0 accelerate==1.15.0 transformers==5.17.0 huggingface_hub==1.33.0
    tokenizers==0.23.2 safetensors==0.8.0 numpy==2.5.2)
IMAGE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
# pip matches each manylinux_2_N tag exactly: name every glibc the machine's (2.39) runs
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3
    --abi none --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for n in $(seq 5 39); do PLATFORM+=(--platform "manylinux_2_${n}_x86_64"); done

work=$(mktemp -d -t gpu_wheels.XXXXXX)
trap 'rm -rf "$work"' EXIT
# the lock's pins, less the packages the machine pins itself
"$PY" - "${MACHINE_PINS[@]}" >"$work/constraints.txt" <<'EOF'
import re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
machine = {norm(pin.split("==")[0]) for pin in sys.argv[1:]}
for line in open("requirements-lock.txt", encoding="utf-8"):
    line = line.strip()
    if line and not line.startswith("#") and norm(line.split("==")[0]) not in machine:
        print(line)
EOF
mapfile -t needs < <("$PY" -c '
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + ["pytest"]))')

resolve() {  # resolve REPORT REQUIREMENT... : the closure, for cp312 manylinux, as a pip report
    local report=$1
    shift
    "$PY" -m pip install --quiet --dry-run --ignore-installed --target "$work/target" \
        "${PLATFORM[@]}" -c "$work/constraints.txt" --report "$report" "$@" \
        2> >(grep -v "^WARNING: Location" >&2)
}
echo "gpu_wheels: resolving markup2im's requirements for CPython 3.12 on the machine's set" >&2
resolve "$work/need.json" "${MACHINE_PINS[@]}" "${needs[@]}"
resolve "$work/machine.json" "${MACHINE_PINS[@]}"
mapfile -t kit < <("$PY" - "$work/need.json" "$work/machine.json" "$machine" "$IMAGE_PACKAGES" <<'EOF'
import json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
def closure(path):
    return {norm(i["metadata"]["name"]): i["metadata"]["version"]
            for i in json.load(open(path, encoding="utf-8"))["install"]}
need, have = closure(sys.argv[1]), set(closure(sys.argv[2]))
if sys.argv[3] == "image":
    have |= set(sys.argv[4].split())
for name in sorted(set(need) - have):
    print(f"{name}=={need[name]}")
EOF
)
if ((list)); then
    printf '%s\n' "${kit[@]}"
    exit 0
fi
echo "gpu_wheels: the machine lacks ${#kit[@]}: ${kit[*]}" >&2
rm -rf "$dest/wheels"
mkdir -p "$dest/wheels"
"$PY" -m pip download --quiet --no-deps "${PLATFORM[@]}" -d "$dest/wheels" "${kit[@]}" \
    2> >(grep -v "^WARNING: Location" >&2)
printf '%s\n' "${kit[@]}" >"$dest/wheels/kit.txt"

if ((data)); then
    echo "gpu_wheels: rendering the default's math data (config.yaml) into $dest/data" >&2
    "$PY" benchmarks/bench_learning.py --data-only --data-dir "$dest/data" >&2
fi

kit_bytes=$(du -sb "$dest" | cut -f1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null |
    tail -1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "gpu_wheels: $dest: $(mib "$kit_bytes") (wheels $(mib "$(du -sb "$dest/wheels" | cut -f1)"));" \
    "with the working tree $(mib $((kit_bytes + tree_bytes))) of the 64 MiB a device call carries"
if ((kit_bytes + tree_bytes > 60 * 1048576)); then
    echo "gpu_wheels: too big to carry with the working tree" >&2
    [ "$machine" = minimal ] || exit 1
fi
