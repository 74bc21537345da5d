"""The benchmarks (bench_model.py), the GPU check script and its wheel kit, on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flops_count_forward_backward_and_attention_on_any_device():
    linear = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    # forward 2*4*8*16, backward twice that (input and weight gradients)
    assert bench_model.count_flops(lambda: linear(x).sum().backward()) == 3 * 1024
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    # attention goes through the math kernel, which the counter sees on the CPU too:
    # QK^T and AV, 2*B*H*L*L*D each, forward + 2x backward
    flops = bench_model.count_flops(
        lambda: F.scaled_dot_product_attention(q, q, q).sum().backward()
    )
    assert flops == 3 * 2 * (2 * 2 * 4 * 16 * 16 * 8)


def test_peak_flops_table_and_override(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert bench_model.peak_flops(torch.device("cuda"), None) == (989e12, "H200 bf16 dense")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert bench_model.peak_flops(torch.device("cuda"), None)[0] == 312e12
    assert bench_model.peak_flops(torch.device("cpu"), 2.5) == (2.5e12, "--peak-tflops")
    assert bench_model.peak_flops(torch.device("cpu"), None)[0] is None


def _row(method, precision, steps_per_s, flops=1e12, mfu=0.4):
    return {"method": method, "precision": precision, "steps_per_s": steps_per_s,
            "s_per_step": 1 / steps_per_s, "images_per_s": 16 * steps_per_s,
            "flops_per_step": flops, "tflops_per_s": flops * steps_per_s / 1e12, "mfu": mfu,
            "peak_mem_gib": 10.0, "mean_m": 1.0}  # fmt: skip


def test_summary_table_states_the_goals():
    results = {
        "config": {"preset": "paper", "width": 320, "height": 64, "channels": 1, "batch_size": 16},
        "device_name": "NVIDIA H200", "encoder_width": 768,
        "train": [_row("ss", "fp32", 4.0, mfu=0.05), _row("ss", "bf16", 12.0, mfu=0.38)],
        "sample": [
            {"sampler": "ddpm", "steps": 1000, "timed_steps": 1000, "images_per_s": 1.0,
             "precision": "bf16"},
            {"sampler": "dpmsolver++", "steps": 20, "timed_steps": 20, "images_per_s": 45.0,
             "precision": "bf16"},
        ],
    }  # fmt: skip
    table = bench_model.summary_table(results, "5 passed in 3.0s")
    assert "| `pytest -m gpu` | 5 passed in 3.0s | all pass |" in table
    assert "| bf16 / fp32 step rate, ss | 3.00x | >= 2.5x |" in table
    assert "| MFU bf16, ss | 38.0%" in table and ">= 35% |" in table
    assert "1.000 / 45.00 = 45.0x | >= 40x |" in table


def test_bench_runs_on_cpu_and_counts_the_rollout(tmp_path):
    results = bench_model.main([
        "--preset", "tiny", "--batch-size", "2", "--height", "32", "--width", "64",
        "--steps", "1", "--warmup", "0", "--precisions", "fp32,bf16", "--device", "cpu",
        "--sample-runs", "ddpm:1000,dpmsolver++:20", "--max-sample-steps", "2",
        "--json", str(tmp_path / "bench.json"),
    ])  # fmt: skip
    rows = {(r["method"], r["precision"]): r for r in results["train"]}
    assert set(rows) == {("baseline", "fp32"), ("baseline", "bf16"), ("ss", "fp32"), ("ss", "bf16")}
    base, ss = rows["baseline", "fp32"]["flops_per_step"], rows["ss", "fp32"]["flops_per_step"]
    # scheduled sampling adds one no-grad forward to forward + backward (~3 forwards)
    assert 1.2 < ss / base < 1.45
    assert rows["ss", "bf16"]["flops_per_step"] == ss  # the same model FLOPs in bf16
    assert all(r["mfu"] is None and r["mean_m"] in (0.0, 1.0) for r in rows.values())
    samplers = [(r["sampler"], r["steps"], r["timed_steps"]) for r in results["sample"]]
    assert samplers == [("ddpm", 1000, 2), ("dpmsolver++", 20, 2)]
    assert (tmp_path / "bench.json").is_file()


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel of package ``name`` (version 0.1) that pip installs offline."""
    dist = f"{name}-0.1.dist-info"
    files = {
        f"{name}/__init__.py": "KIT = True\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }  # fmt: skip
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


@pytest.mark.slow
def test_gpu_check_script_runs_its_cpu_smoke_variant(tmp_path):
    # a kit of one wheel: the script installs it offline before anything else
    (tmp_path / "kit" / "wheels").mkdir(parents=True)
    _wheel(tmp_path / "kit" / "wheels", "markup2im_kit_probe")
    site = tmp_path / "site" / "site-packages"
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "GPU_KIT": str(tmp_path / "kit"), "GPU_CHECK_SITE": str(site)}  # fmt: skip
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "installing 1 wheels" in done.stderr
    assert (site / "markup2im_kit_probe" / "__init__.py").is_file()
    assert "| `pytest -m gpu` |" in done.stdout and "skipped" in done.stdout
    assert "| bf16 / fp32 step rate, ss |" in done.stdout
    assert "| images/s DDPM-1000 (projected) / DPM-Solver++-20, fp32 |" in done.stdout
    # the short learning run: both methods scored on the test split at each snapshot
    assert "| step | minutes | baseline test | scheduled_sampling test |" in done.stdout
    out = tmp_path / "out"
    curves = json.loads((out / "learning.json").read_text(encoding="utf-8"))
    assert set(curves) == {"baseline", "scheduled_sampling"}
    assert all(point["test"] > 0 for points in curves.values() for point in points)
    assert len(curves["baseline"]) == 2  # --points 2
    for name in ("bench.json", "pytest.log", "learning.md", "summary.md"):
        assert (out / name).is_file(), name
    # what comes back from a device call: at most 8 files, none in folders
    assert len(list(out.iterdir())) <= 8 and all(p.is_file() for p in out.iterdir())


def _pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file's ``name==version`` lines (names normalised)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.slow
def test_gpu_wheel_kit_is_what_the_machine_lacks_at_the_locked_versions():
    """The kit as pip resolves it (a dry run against the package index, no download): diffusers,
    datasets and their missing requirements, one version each, at requirements-lock.txt's
    versions, and nothing the GPU machine holds (its transformers 5.17 wants huggingface_hub < 2,
    so the lock's 2.4 must not come along)."""
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_wheels.sh"), "--list"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    kit = dict(line.split("==") for line in done.stdout.split())
    assert {"diffusers", "datasets", "jsonschema"} <= set(kit)
    assert not {"torch", "transformers", "accelerate", "huggingface-hub", "numpy"} & set(kit)
    # pyarrow, pandas, numba, scikit-image, pytest... are on the machine's image: not carried
    assert not {"pyarrow", "pandas", "numba", "llvmlite", "scipy", "pytest"} & set(kit)
    lock = _pins(ROOT / "requirements-lock.txt")
    assert len(kit) == len(done.stdout.split())  # one version of each
    assert {name: kit[name] for name in kit if name in lock} == {
        name: lock[name] for name in kit if name in lock
    }


def test_learning_table_has_a_column_per_method_and_split():
    """bench_learning trains any set of methods; its table shows each on both splits."""
    import bench_learning

    curves = {
        m: [
            {
                "step": s,
                "minutes": s / 100,
                "test": 0.9 - s / 10000 - i / 100,
                "unseen": 0.95 - i / 100,
            }
            for s in (400, 800)
        ]  # fmt: skip
        for i, m in enumerate(("baseline", "scheduled_sampling", "input_perturbation"))
    }
    table = bench_learning.curve_table(curves, {"sampler": "ddim", "steps": 10}, 800, 16)
    lines = table.splitlines()
    assert "| input_perturbation test |" in lines[2] and "| input_perturbation unseen |" in lines[2]
    assert lines[2].count("|") == 9 and len(lines) == 6
    assert lines[-1] == "| 800 | 8.0 | 0.820 | 0.810 | 0.800 | 0.950 | 0.940 | 0.930 |"
    settings = bench_learning.parse_args(["--methods", "baseline", "input_perturbation"])
    assert settings.methods == ["baseline", "input_perturbation"]
    entry, methods, _ = bench_learning.load_settings(str(ROOT / "config.yaml"), "math")
    config = bench_learning.train_config(entry, methods, "input_perturbation", Path("d"),
                                         Path("o"), 10, 5)  # fmt: skip
    assert config.method == "input_perturbation" and config.ip_gamma == 0.1
