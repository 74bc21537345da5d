"""The Snakemake workflow: config validation, the planned DAGs of the shipped configs, and real
runs of config/micro.yaml (partial reruns, reproducibility, the report in headless Chromium).

Every workflow run happens in a temporary directory (``--directory``), never in the repository's
results/. The complete micro run is a session fixture that tests only read; a test that changes
a run works on its own copy (``micro_copy``), so no test depends on another's order or effects.
Waits are for events (a logged training step, a message in a log), never fixed sleeps; the
timeouts only stop a run that hangs.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from chromium import CHROMIUM, Chromium
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
MICRO = REPO / "config" / "micro.yaml"
PAPER = REPO / "config" / "paper.yaml"
RELEASED = REPO / "config" / "released.yaml"

# Only against hangs: generous, because the 2 cores may be shared with other work.
QUICK_TIMEOUT = 600  # dry runs, lint (seconds alone)
RUN_TIMEOUT = 1800  # a full micro run (about 2-3 minutes on 2 idle cores)


def offline_env() -> dict[str, str]:
    """The environment of workflow runs: no hub access, venv tools first on PATH."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake_command(workdir: Path, *args: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *map(str, args),
    ]


def snakemake(
    workdir: Path, *args: str | Path, timeout: float = QUICK_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run the repository's workflow with ``workdir`` as working directory."""
    cmd = snakemake_command(workdir, *args)
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        cmd,
        cwd=workdir,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output_of(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def job_counts(text: str) -> dict[str, int]:
    """The first "Job stats" table of Snakemake's output as {rule: count} (empty: nothing to do)."""
    match = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal\s+\d+", text, re.S)
    if not match:
        return {}
    counts = {}
    for line in match.group(1).splitlines():
        rule, count = line.split()
        counts[rule] = int(count)
    return counts


def shell_commands(text: str) -> list[str]:
    """Shell commands printed by ``--printshellcmds`` in a dry run."""
    return [
        line.removeprefix("Shell command: ")
        for line in text.splitlines()
        if line.startswith("Shell command: ")
    ]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def assert_ok(proc: subprocess.CompletedProcess[str], workdir: Path) -> None:
    """Fail with Snakemake's output and the logs' tails when a run failed."""
    if proc.returncode == 0:
        return
    logs = []
    for log in sorted((workdir / "logs").rglob("*.log")):
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        logs.append(f"--- {log.relative_to(workdir)}\n{tail}")
    pytest.fail(
        f"snakemake failed ({proc.returncode}):\n{output_of(proc)[-4000:]}\n" + "\n".join(logs)
    )


# ---- quick checks: style, validation, planned DAGs --------------------------------------------


def test_lint_passes(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "--lint")
    assert proc.returncode == 0, output_of(proc)
    assert "Congratulations" in output_of(proc)


def test_snakefmt_check_passes() -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def minimal_dataset() -> dict:
    return {"domain": "math", "source": {"render": {"synthetic": True}}}


BAD_CONFIGS = {
    "unknown key": (
        {"datasets": {"m": {**minimal_dataset(), "train": {"bath_size": 3}}}},
        ["datasets.m.train", "bath_size"],
    ),
    "wrong type": (
        {"datasets": {"m": {**minimal_dataset(), "train": {"batch_size": "three"}}}},
        ["datasets.m.train.batch_size", "three"],
    ),
    "missing value": (
        {"datasets": {"m": {"source": {"render": {"synthetic": True}}}}},
        ["datasets.m", "'domain' is a required property"],
    ),
    "two sources": (
        {
            "datasets": {
                "m": {
                    **minimal_dataset(),
                    "source": {"render": {"synthetic": True}, "hub": {"id": "x/y"}},
                }
            }
        },
        ["datasets.m.source", "exactly one of hub, render"],
    ),
    "unknown sampler": (
        {
            "datasets": {"m": minimal_dataset()},
            "samplers": {"fast": {"sampler": "euler", "steps": 2}},
        },
        ["samplers.fast.sampler", "euler"],
    ),
    "unknown top-level key": (
        {"datasets": {"m": minimal_dataset()}, "dataset": {}},
        ["top level", "'dataset' was unexpected"],
    ),
    "undefined sampler name": (
        {"datasets": {"m": {**minimal_dataset(), "samplers": ["nope"]}}},
        ["datasets.m.samplers", "nope"],
    ),
    "weights and M disagree": (
        {"datasets": {"m": minimal_dataset()}, "scheduled_sampling": {"max_m": 2}},
        ["scheduled_sampling.start", "max_m"],
    ),
    "negative input perturbation": (
        {"datasets": {"m": minimal_dataset()}, "input_perturbation": {"gamma": -0.1}},
        ["input_perturbation.gamma", "-0.1"],
    ),
    "missing markup file": (
        {"datasets": {"m": {"domain": "math", "source": {"render": {"markup_file": "f.txt"}}}}},
        ["datasets.m.source.render.markup_file", "'f.txt'", "does not exist"],
    ),
    "missing local hub copy": (
        {
            "datasets": {
                "m": {"domain": "math", "source": {"hub": {"id": "a/b", "local_path": "c"}}}
            }
        },
        ["datasets.m.source.hub.local_path", "'c'", "does not exist"],
    ),
    "missing released checkpoint": (
        {
            "datasets": {
                "m": {**minimal_dataset(), "released": {"baseline": {"checkpoint": "b.pt"}}}
            }
        },
        ["datasets.m.released.baseline.checkpoint", "'b.pt'", "does not exist"],
    ),
    "missing local encoder": (
        {"datasets": {"m": {**minimal_dataset(), "model": {"encoder": "./enc"}}}},
        ["datasets.m.model.encoder", "'./enc'", "does not exist"],
    ),
    "eps_scale not positive": (
        {
            "datasets": {"m": minimal_dataset()},
            "samplers": {"es": {"sampler": "ddim", "steps": 2, "eps_scale": 0}},
        },
        ["samplers.es.eps_scale", "> 0"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_fails_before_any_job(tmp_path: Path, case: str) -> None:
    config, expected = BAD_CONFIGS[case]
    keep = tmp_path / "results" / "keep.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("made earlier\n")
    configfile = write_config(tmp_path / "bad.yaml", config)
    proc = snakemake(tmp_path, "--configfile", configfile)  # a real run, not a dry run
    text = output_of(proc)
    assert proc.returncode != 0
    for fragment in expected:
        assert fragment in text, text
    assert not (tmp_path / "logs").exists()  # no job started
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["keep.txt"]
    assert keep.read_text() == "made earlier\n"


def test_a_missing_markup_file_never_reuses_the_old_dataset(tmp_path: Path) -> None:
    """The markup file of a dataset built earlier is gone (renamed, a typo in the config):
    the run stops, naming key and path, instead of keeping the old dataset as if it were the
    file's ("Nothing to be done", exit 0: Snakemake takes an output whose input is missing for
    a source)."""
    config = yaml.safe_load(MICRO.read_text())
    render = config["datasets"]["micro"]["source"]["render"]
    del render["synthetic"]
    render["markup_file"] = "gone.txt"
    configfile = write_config(tmp_path / "c.yaml", config)
    old = tmp_path / "results" / "micro" / "data" / "dataset"
    old.mkdir(parents=True)
    (old / "dataset_dict.json").write_text("{}")
    target = "results/micro/data/dataset"
    for args in (["-n"], []):
        proc = snakemake(tmp_path, "--configfile", configfile, *args, "--", target)
        text = output_of(proc)
        assert proc.returncode != 0, text
        assert "datasets.micro.source.render.markup_file names 'gone.txt'" in text, text
        assert "Nothing to be done" not in text
    assert not (tmp_path / "logs").exists()


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    """A dataset given only domain and source trains with the paper's values."""
    configfile = write_config(tmp_path / "c.yaml", {"datasets": {"m": minimal_dataset()}})
    proc = snakemake(tmp_path, "--configfile", configfile, "-n", "-p")
    assert proc.returncode == 0, output_of(proc)
    train = [c for c in shell_commands(output_of(proc)) if "markup2im train" in c]
    assert len(train) == 2
    for flags in (
        "--model-preset paper",
        "--epochs 100",
        "--batch-size 16",
        "--learning-rate 0.0001",
        "--warmup-steps 500",
        "--max-grad-norm 1.0",
        "--seed 1234",
        "--resume auto",
    ):
        assert all(flags in c for c in train), (flags, train)
    ss = next(c for c in train if "--method scheduled_sampling" in c)
    assert "--ss-max-m 1 --ss-start 0.0 --ss-end 0.8" in ss
    assert "--ss-min-t" not in ss  # min_t 0 means no guard, not a guard at t = 0
    assert all("--prediction-type epsilon" in c and "--train-encoder" not in c for c in train)
    assert "--ss-" not in next(c for c in train if "--method baseline" in c)


def test_default_config_plans_the_whole_dag(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", "-p")
    text = output_of(proc)
    assert proc.returncode == 0, text
    assert job_counts(text) == {
        "build_dataset": 1,
        "select_examples": 1,
        "train": 2,
        "generate": 2,
        "evaluate": 2,
        "loss_curves": 1,
        "sample_grid": 1,
        "metric_plots": 1,
        "metrics_table": 1,
        "paired": 1,
        "paired_table": 1,
        "all": 1,
    }
    commands = shell_commands(text)
    (paired,) = [c for c in commands if "markup2im figures paired " in c]
    assert "--baseline results/math/baseline/ddim10/metrics.csv" in paired, paired
    assert "--treatment results/math/scheduled_sampling/ddim10/metrics.csv" in paired, paired
    assert "--resamples 10000 --seed 0" in paired
    build = next(c for c in commands if "build-dataset" in c)
    assert "--domain math --synthetic" in build
    for c in (c for c in commands if "markup2im train" in c):
        assert c.startswith("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 accelerate launch ")
        assert "--num_cpu_threads_per_process 1 --cpu --num_processes 1" in c
        assert "--model-preset small-p2 --encoder offline" in c
        assert (
            "--checkpoint-every 400 --checkpoints-total-limit 2 --log-every 10 --num-workers 0"
            " --walltime-margin 300"
        ) in c
    generate = [c for c in commands if "markup2im generate" in c]
    assert len(generate) == 2
    assert all("--sampler ddim --num-inference-steps 10" in c for c in generate)
    build = next(c for c in commands if "build-dataset" in c)
    assert "--difficulty simple" in build and "--width 128 --height 32" in build
    for c in (c for c in commands if "markup2im train" in c):
        assert "--prediction-type sample --train-encoder" in c


def test_paired_comparison_needs_both_methods(tmp_path: Path) -> None:
    config = yaml.safe_load(MICRO.read_text())
    config["methods"] = ["baseline"]
    proc = snakemake(tmp_path, "--configfile", write_config(tmp_path / "one.yaml", config), "-n")
    counts = job_counts(output_of(proc))
    assert proc.returncode == 0 and counts["evaluate"] == 1, output_of(proc)
    assert "paired" not in counts and "paired_table" not in counts


def test_paper_config_plans_hub_datasets_on_gpus(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "--configfile", PAPER, "-n", "-p")
    text = output_of(proc)
    assert proc.returncode == 0, text
    counts = job_counts(text)
    assert counts["download_dataset"] == 4
    assert counts["fetch_encoder"] == 2  # gpt-neo-125M for three datasets, ChemBERTa
    assert counts["train"] == 8
    assert counts["generate"] == counts["evaluate"] == 16  # 4 datasets x 2 methods x 2 samplers
    assert counts["paired"] == 8 and counts["paired_table"] == 1  # 4 datasets x 2 samplers
    commands = shell_commands(text)
    downloads = [c for c in commands if "markup2im download" in c]
    for hub_id in (
        "yuntian-deng/im2latex-100k",
        "yuntian-deng/im2html-100k",
        "yuntian-deng/im2ly-35k-syn",
        "yuntian-deng/im2smiles-20k",
    ):
        assert any(f"--dataset {hub_id} --revision" in c for c in downloads), hub_id
    train = [c for c in commands if "markup2im train" in c]
    music = [c for c in train if "results/music/" in c]
    assert len(music) == 2
    assert all("--num_processes 4 --multi_gpu --main_process_port 0" in c for c in music)
    others = [c for c in train if "results/music/" not in c]
    assert all("--num_processes 1 --main_process_port 0" in c and "--cpu" not in c for c in others)
    assert all("--model-preset paper" in c and "--batch-size 16" in c for c in train)
    # training reads the encoders that fetch_encoder saved (compute nodes need no internet)
    molecules = [c for c in train if "results/molecules/" in c]
    assert all("--encoder results/encoders/DeepChem--ChemBERTa-77M-MLM " in c for c in molecules)
    assert all(
        "--encoder results/encoders/EleutherAI--gpt-neo-125M " in c
        for c in others + music
        if c not in molecules
    )
    fetches = [c for c in commands if "markup2im fetch-encoder" in c]
    assert sorted(fetches) == [
        "markup2im fetch-encoder --encoder DeepChem/ChemBERTa-77M-MLM --revision main"
        " --output-dir results/encoders/DeepChem--ChemBERTa-77M-MLM > "
        "logs/encoders/DeepChem--ChemBERTa-77M-MLM.log 2>&1",
        "markup2im fetch-encoder --encoder EleutherAI/gpt-neo-125M --revision main"
        " --output-dir results/encoders/EleutherAI--gpt-neo-125M > "
        "logs/encoders/EleutherAI--gpt-neo-125M.log 2>&1",
    ]
    # music: 4 processes share the job's threads (16, capped to the 2 of --cores here)
    assert all("--num_cpu_threads_per_process 1 " in c for c in music)
    generate = [c for c in commands if "markup2im generate" in c]
    assert sum("--sampler ddpm --num-inference-steps 1000" in c for c in generate) == 8
    assert sum("--sampler dpmsolver++" in c for c in generate) == 8
    assert not any("--limit" in c for c in generate)  # full test sets
    # the gpu resource that Slurm turns into --gpus, per training job, always on one node
    gpus = re.findall(r"rule train:.*?resources: [^\n]*?gpu=(\d+)", text, re.S)
    assert sorted(gpus) == ["1"] * 6 + ["4"] * 2
    nodes = re.findall(r"rule train:.*?resources: [^\n]*?nodes=(\d+)", text, re.S)
    assert nodes == ["1"] * 8


def released_checkpoints(workdir: Path, config: dict) -> list[Path]:
    """Empty stand-ins for the released checkpoints that ``config`` names (a dry run only needs
    them to exist)."""
    paths = []
    for ds in config["datasets"].values():
        for entry in ds.get("released", {}).values():
            path = workdir / entry["checkpoint"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            paths.append(path)
    return paths


def test_released_config_imports_generates_and_evaluates_without_training(tmp_path: Path) -> None:
    config = yaml.safe_load(RELEASED.read_text())
    assert len(released_checkpoints(tmp_path, config)) == 8
    proc = snakemake(tmp_path, "--configfile", RELEASED, "-n", "-p")
    text = output_of(proc)
    assert proc.returncode == 0, text
    counts = job_counts(text)
    assert counts["import_original"] == 8  # 4 datasets x 2 methods
    assert counts["generate"] == counts["evaluate"] == 16  # x 2 samplers
    assert counts["paired"] == 8 and counts["paired_table"] == counts["metrics_table"] == 1
    assert "train" not in counts and "loss_curves" not in counts
    commands = shell_commands(text)
    imports = [c for c in commands if "markup2im import-original" in c]
    math_ss = next(c for c in imports if "results/math/scheduled_sampling/" in c)
    assert (
        "--checkpoint released/math/scheduled_sampling/model_e100_lr0.0001.pt.100 --domain math"
        " --encoder results/encoders/EleutherAI--gpt-neo-125M --model-preset paper"
        " --output-dir results/math/scheduled_sampling/released/model"
    ) in math_ss
    molecules = [c for c in imports if "--domain molecules" in c]
    assert len(molecules) == 2
    assert all("--encoder results/encoders/DeepChem--ChemBERTa-77M-MLM" in c for c in molecules)
    generate = [c for c in commands if "markup2im generate" in c]
    assert all("/released/model " in c for c in generate)
    assert sum("--sampler ddpm --num-inference-steps 1000" in c for c in generate) == 8
    evaluate = [c for c in commands if "markup2im evaluate" in c]
    assert all(
        "--clip-model openai/clip-vit-base-patch32 --clip-batch-size 64" in c for c in evaluate
    )
    (table,) = [c for c in commands if "figures metrics-table" in c]
    assert "'math/released baseline (ddpm1000)=" in table
    assert "'math/released scheduled_sampling (ddpm1000)=" in table
    paired = [c for c in commands if "markup2im figures paired " in c]
    assert any(
        "--baseline results/music/baseline/dpmsolver50/metrics.csv" in c
        and "released scheduled sampling - released baseline" in c
        for c in paired
    ), paired

    # one method trained here, the other imported; no CLIP score unless configured
    mixed = yaml.safe_load(RELEASED.read_text())
    mixed["datasets"] = {"math": mixed["datasets"]["math"]}
    del mixed["datasets"]["math"]["released"]["scheduled_sampling"]
    mixed["evaluate"] = {"clip_model": None}
    proc = snakemake(
        tmp_path, "--configfile", write_config(tmp_path / "mixed.yaml", mixed), "-n", "-p"
    )
    text = output_of(proc)
    assert proc.returncode == 0, text
    counts = job_counts(text)
    assert counts["import_original"] == counts["train"] == counts["loss_curves"] == 1
    commands = shell_commands(text)
    assert not any("--clip-model" in c for c in commands)
    (curves,) = [c for c in commands if "figures loss-curves" in c]
    assert "results/math/scheduled_sampling/train_log.csv" in curves and "baseline" not in curves

    # a checkpoint that is not there stops the run before any job, naming the file
    (tmp_path / config["datasets"]["tables"]["released"]["baseline"]["checkpoint"]).unlink()
    proc = snakemake(tmp_path, "--configfile", RELEASED, "-n")
    assert proc.returncode != 0
    assert "released/tables/baseline/model_e100_lr0.0001.pt.100" in output_of(proc)


# Snakemake's CLI as a dry run that also writes each job's params (what its `params` rerun
# trigger compares) and inputs, one JSON line per job, to the file named by $JOB_PARAMS.
DUMP_JOB_PARAMS = """
import json, os, sys
from snakemake.cli import main
from snakemake.executors import dryrun

run_job = dryrun.Executor.run_job


def dump(self, job):
    with open(os.environ["JOB_PARAMS"], "a", encoding="utf-8") as out:
        out.write(json.dumps({
            "job": [job.rule.name, sorted(dict(job.wildcards_dict).items())],
            "params": [[k, repr(v)] for k, v in job.params.items()],
            "input": sorted(map(str, job.input)),
        }) + "\\n")
    return run_job(self, job)


dryrun.Executor.run_job = dump
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


def job_params(workdir: Path, configfile: Path) -> dict[str, dict]:
    """{rule and wildcards: params and inputs} of every job of a dry run of ``configfile``."""
    dump = workdir / f"{configfile.stem}.jobs.jsonl"
    cmd = [sys.executable, "-c", DUMP_JOB_PARAMS, *snakemake_command(workdir)[3:]]
    proc = subprocess.run(
        [*cmd, "--configfile", str(configfile), "-n"],
        cwd=workdir,
        env={**offline_env(), "JOB_PARAMS": str(dump)},
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, output_of(proc)
    jobs = {}
    for line in dump.read_text(encoding="utf-8").splitlines():
        job = json.loads(line)
        jobs[json.dumps(job.pop("job"))] = job
    return jobs


def reversed_keys(node: object) -> object:
    """``node`` with the keys of every mapping in reverse order (lists kept in order)."""
    if isinstance(node, dict):
        return {k: reversed_keys(v) for k, v in reversed(list(node.items()))}
    if isinstance(node, list):
        return [reversed_keys(v) for v in node]
    return node


@pytest.mark.parametrize(
    "shipped", [REPO / "config.yaml", PAPER, RELEASED], ids=["default", "paper", "released"]
)
def test_reordered_config_keys_change_no_jobs_params(tmp_path: Path, shipped: Path) -> None:
    """The same config with the keys of every mapping in reverse order plans the same jobs
    with the same params (the order of the flags used to follow the keys: "Params have
    changed", a retraining of everything)."""
    config = yaml.safe_load(shipped.read_text())
    released_checkpoints(tmp_path, config)
    first = job_params(tmp_path, write_config(tmp_path / "config.yaml", config))
    second = job_params(tmp_path, write_config(tmp_path / "reordered.yaml", reversed_keys(config)))
    assert len(first) > 10
    assert any(job.startswith('["train"') for job in first) == (shipped != RELEASED)
    assert first.keys() == second.keys()
    for job, planned in first.items():
        assert planned == second[job], job


# ---- real runs of the micro configuration ------------------------------------------------------


def micro_outputs(workdir: Path) -> dict[str, Path]:
    """Metrics CSVs of the micro run by relative path."""
    return {
        str(p.relative_to(workdir)): p for p in sorted(workdir.glob("results/*/*/*/metrics.csv"))
    }


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One complete run of config/micro.yaml, shared by the tests that only read it."""
    workdir = tmp_path_factory.mktemp("micro_run")
    start = time.monotonic()
    proc = snakemake(workdir, "--configfile", MICRO, timeout=RUN_TIMEOUT)
    assert_ok(proc, workdir)
    print(f"micro workflow: {time.monotonic() - start:.0f} s")
    yield workdir


@pytest.fixture
def micro_copy(micro_run: Path, tmp_path: Path) -> Path:
    """A private copy of the complete micro run, for a test that changes it: outputs, logs and
    Snakemake's metadata, with their modification times (which Snakemake compares)."""
    copy = tmp_path / "micro_run"
    shutil.copytree(micro_run, copy, symlinks=True)
    return copy


def wait_until(
    condition, what: str, proc: subprocess.Popen | None = None, timeout: float = RUN_TIMEOUT
) -> None:
    """Poll ``condition`` until it holds; fail when ``proc`` ends first or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(0.01)


def logged_steps(train_log: Path, since_ns: int = 0) -> int:
    """Training steps in a run directory's train_log.csv so far: 0 when there is none, or
    when it was last written before ``since_ns`` (the log of an earlier run)."""
    try:
        if train_log.stat().st_mtime_ns < since_ns:
            return 0
        return max(0, len(train_log.read_text(encoding="utf-8").splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_micro_run_makes_every_output(micro_run: Path) -> None:
    results = micro_run / "results"
    for method in ("baseline", "scheduled_sampling"):
        run = results / "micro" / method
        assert (run / "train" / "model").is_dir()
        assert not (run / "train" / "checkpoints").exists()  # removed after a complete run
        header = (run / "train_log.csv").read_text().splitlines()[0]
        assert header.split(",")[:3] == ["step", "epoch", "loss"]
        metrics = (run / "ddim4" / "metrics.csv").read_text().splitlines()
        assert metrics[0].split(",")[:5] == ["filename", "dtw", "dtw_shift", "ssim", "mse"]
        assert len(metrics) == 1 + 4  # the whole test split
        summary = json.loads((run / "ddim4" / "metrics_summary.json").read_text())
        assert "ssim" in json.dumps(summary)
        gifs = list((run / "ddim4" / "gifs").glob("*.gif"))
        assert len(gifs) == 1
        assert Image.open(gifs[0]).n_frames > 1
    assert len(list((results / "micro" / "figures" / "ddim4" / "compare").glob("*.gif"))) == 1
    for figure in ("loss_curves.png", "ddim4/metric_distributions.png", "ddim4/samples_grid.png"):
        assert Image.open(results / "micro" / "figures" / figure).size[0] > 0
    assert "dtw" in (results / "summary" / "metrics_table.csv").read_text()
    assert (micro_run / "logs" / "train" / "micro" / "baseline.log").is_file()
    assert (micro_run / "benchmarks" / "train" / "micro" / "baseline.tsv").is_file()


METRIC_NAMES = ("dtw", "dtw_shift", "ssim", "mse")


def assert_in_range(metric: str, value: float, where: str) -> None:
    """A metric value is finite and within the metric's range."""
    assert math.isfinite(value), (where, metric, value)
    if metric in ("dtw", "dtw_shift"):
        assert value >= 0, (where, metric, value)
    elif metric == "mse":
        assert 0 <= value <= 255**2, (where, metric, value)
    else:
        assert -1 <= value <= 1, (where, metric, value)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_micro_run_metrics_are_in_range_with_blank_and_paired(micro_run: Path) -> None:
    """Values, not only files: per-image metrics and summaries in range, the blank-page reference
    equal to sqrt(ink) of the gold pages, and a paired comparison consistent with both runs."""
    results = micro_run / "results" / "micro"
    values, summaries = {}, {}
    for method in ("baseline", "scheduled_sampling"):
        run = results / method / "ddim4"
        rows = read_rows(run / "metrics.csv")
        assert len(rows) == 4
        values[method] = {r["filename"]: {m: float(r[m]) for m in METRIC_NAMES} for r in rows}
        for name, scores in values[method].items():
            for metric, value in scores.items():
                assert_in_range(metric, value, f"{method}/{name}")
            assert scores["dtw_shift"] <= scores["dtw"] + 1e-9
        summary = json.loads((run / "metrics_summary.json").read_text())
        summaries[method] = summary
        assert summary["count"] == 4
        for metric in METRIC_NAMES:
            for entry in (summary[metric], summary["blank"][metric]):
                assert entry["count"] == 4
                for stat in ("mean", "median", "min", "max"):
                    assert_in_range(metric, entry[stat], f"{method} summary {stat}")
                assert math.isfinite(entry["std"]) and entry["std"] >= 0
                assert entry["min"] <= entry["mean"] <= entry["max"]
            mean = sum(v[metric] for v in values[method].values()) / 4
            assert summary[metric]["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
        # a blank page against the gold formulas: dtw is the root of each page's ink
        gold = sorted((run / "samples" / "gold").glob("*.png"))
        assert [p.name for p in gold] == sorted(values[method])
        ink = [int((np.asarray(Image.open(p).convert("L")) < 150).sum()) for p in gold]
        assert min(ink) > 0
        blank_dtw = sum(math.sqrt(k) for k in ink) / len(ink)
        assert summary["blank"]["dtw"]["mean"] == pytest.approx(blank_dtw, rel=1e-12)
        assert summary["dtw_ratio_to_blank"] == pytest.approx(
            summary["dtw"]["mean"] / summary["blank"]["dtw"]["mean"], rel=1e-12
        )
        assert summary["dtw_ratio_to_blank"] >= 0
    # both methods score the same gold pages, so their blank references agree
    assert summaries["baseline"]["blank"] == summaries["scheduled_sampling"]["blank"]

    table = {r["method"]: r for r in read_rows(micro_run / "results/summary/metrics_table.csv")}
    assert set(table) == {"baseline (ddim4)", "scheduled_sampling (ddim4)"}
    for method, summary in summaries.items():
        row = table[f"{method} (ddim4)"]
        assert float(row["dtw_ratio_to_blank"]) == pytest.approx(summary["dtw_ratio_to_blank"])
        assert float(row["blank_mse_mean"]) == pytest.approx(summary["blank"]["mse"]["mean"])
        assert "\u00b1" in row["blank_ssim"]

    paired = read_rows(results / "figures" / "ddim4" / "paired.csv")
    assert [r["metric"] for r in paired] == list(METRIC_NAMES)
    base, treat = values["baseline"], values["scheduled_sampling"]
    for row in paired:
        metric = row["metric"]
        differences = [treat[n][metric] - base[n][metric] for n in sorted(base)]
        low, mean, high = (float(row[k]) for k in ("ci_low", "mean_difference", "ci_high"))
        assert int(row["n"]) == 4 and int(row["resamples"]) == 10000
        assert mean == pytest.approx(sum(differences) / 4, rel=1e-9, abs=1e-12)
        assert min(differences) - 1e-12 <= low <= mean + 1e-12
        assert mean - 1e-12 <= high <= max(differences) + 1e-12
        assert float(row["baseline_mean"]) == pytest.approx(
            summaries["baseline"][metric]["mean"], rel=1e-12
        )
        win = float(row["win_rate"])
        assert 0 <= win <= 1 and (8 * win).is_integer()  # 4 images, ties count half
    assert (results / "figures" / "ddim4" / "paired.html").stat().st_size > 0
    summary_rows = read_rows(micro_run / "results" / "summary" / "paired_table.csv")
    assert [(r["dataset"], r["sampler"]) for r in summary_rows] == [("micro", "ddim4")] * 4
    assert [r["mean_difference"] for r in summary_rows] == [r["mean_difference"] for r in paired]
    assert "<table>" in (micro_run / "results" / "summary" / "paired_table.html").read_text()


@pytest.mark.slow
def test_every_method_is_compared_with_the_baseline_per_sampler(tmp_path: Path) -> None:
    """Three methods and two samplers (one with epsilon scaling): three trainings, and for each
    sampler the paired comparison of each other method with the baseline, in the paired table,
    the metrics table and the compare GIFs. Shorter training than the micro run's."""
    methods = ["baseline", "scheduled_sampling", "input_perturbation"]
    samplers = ["ddim4", "ddim4_es1.05"]
    config = yaml.safe_load(MICRO.read_text())
    config["methods"] = methods
    config["datasets"]["micro"]["train"]["max_steps"] = 6
    config["samplers"]["ddim4_es1.05"] = {**config["samplers"]["ddim4"], "eps_scale": 1.05}
    configfile = write_config(tmp_path / "three.yaml", config)
    proc = snakemake(tmp_path, "--configfile", configfile, "-p", timeout=RUN_TIMEOUT)
    assert_ok(proc, tmp_path)
    counts = job_counts(output_of(proc))
    assert counts["train"] == 3 and counts["generate"] == counts["evaluate"] == 6, counts
    assert counts["paired"] == counts["paired_method"] == 2, counts  # two per sampler
    commands = shell_commands(output_of(proc))
    generate = [c for c in commands if "markup2im generate" in c]
    assert sum("--eps-scale 1.05" in c for c in generate) == 6  # generate and frames, 3 methods
    assert sum("--ip-gamma 0.1" in c for c in commands if "markup2im train" in c) == 1

    results = tmp_path / "results" / "micro"
    metrics = {
        (m, s): read_rows(results / m / s / "metrics.csv") for m in methods for s in samplers
    }
    for m in methods:
        assert (results / m / "train" / "model").is_dir()
    # neither the method nor the scaling is silently ignored: their images differ
    images = {
        (m, s): np.stack(
            [pixels_of(p) for p in sorted((results / m / s / "samples/images").iterdir())]
        )
        for m in methods
        for s in samplers
    }
    assert not np.array_equal(images["input_perturbation", "ddim4"], images["baseline", "ddim4"])
    assert not any(np.array_equal(images[m, "ddim4"], images[m, "ddim4_es1.05"]) for m in methods)

    summary_rows = read_rows(tmp_path / "results" / "summary" / "paired_table.csv")
    for s in samplers:
        figures = results / "figures" / s
        for m, table in (
            ("scheduled_sampling", "paired"),
            ("input_perturbation", "paired_input_perturbation"),
        ):
            rows = read_rows(figures / f"{table}.csv")
            assert [r["metric"] for r in rows] == list(METRIC_NAMES)
            treatment_dtw = sum(float(r["dtw"]) for r in metrics[m, s]) / 4
            assert float(rows[0]["treatment_mean"]) == pytest.approx(treatment_dtw, rel=1e-9)
            page = (figures / f"{table}.html").read_text(encoding="utf-8")
            assert METHOD_LABELS[m] in page
            shown = [r for r in summary_rows if r["sampler"] == f"{s} ({m})"]
            assert [r["mean_difference"] for r in shown] == [r["mean_difference"] for r in rows]
    assert len(summary_rows) == 2 * 2 * len(METRIC_NAMES)

    table = {r["method"] for r in read_rows(tmp_path / "results/summary/metrics_table.csv")}
    assert table == {f"{m} ({s})" for m in methods for s in samplers}
    # the compare GIF: gold and the three methods side by side, wider than three single GIFs
    for s in samplers:
        (compare,) = (results / "figures" / s / "compare").glob("*.gif")
        (single,) = (results / "baseline" / s / "gifs").glob("*.gif")
        assert Image.open(compare).width > 3 * Image.open(single).width


METHOD_LABELS = {
    "scheduled_sampling": "scheduled sampling",
    "input_perturbation": "input perturbation",
}


@pytest.mark.slow
def test_forcerun_evaluate_reruns_evaluation_onward_only(micro_copy: Path) -> None:
    run = micro_copy / "results" / "micro" / "baseline"
    untouched = [run / "train" / "model", run / "ddim4" / "samples", run / "train_log.csv"]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    metrics_before = (run / "ddim4" / "metrics.csv").stat().st_mtime_ns
    proc = snakemake(
        micro_copy, "--configfile", MICRO, "--forcerun", "evaluate", timeout=RUN_TIMEOUT
    )
    assert_ok(proc, micro_copy)
    assert job_counts(output_of(proc)) == {
        "evaluate": 2,
        "metric_plots": 1,
        "metrics_table": 1,
        "paired": 1,
        "paired_table": 1,
        "all": 1,
    }
    assert {p: p.stat().st_mtime_ns for p in untouched} == before
    assert (run / "ddim4" / "metrics.csv").stat().st_mtime_ns > metrics_before


@pytest.mark.slow
def test_changed_generation_setting_reruns_generation_onward_only(micro_run: Path) -> None:
    override = "datasets={micro: {generate: {seed: 7}}}"
    proc = snakemake(micro_run, "--configfile", MICRO, "--config", override, "-n")
    text = output_of(proc)
    assert proc.returncode == 0, text
    assert job_counts(text) == {
        "generate": 2,
        "frames": 2,
        "evaluate": 2,
        "gif_denoise": 2,
        "gif_compare": 1,
        "metric_plots": 1,
        "metrics_table": 1,
        "paired": 1,
        "paired_table": 1,
        "sample_grid": 1,
        "all": 1,
    }
    assert "Params have changed" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "override",
    [
        "datasets={micro: {generate: {batch_size: 1}}}",
        "datasets={micro: {train: {checkpoint_every: 5, checkpoints_total_limit: 7}}}",
        "datasets={micro: {train: {log_every: 3, num_workers: 1}}}",
        "resources={train: {walltime_margin: 60, chunks: 3}}",
    ],
)
def test_settings_that_leave_outputs_alone_rerun_nothing(micro_run: Path, override: str) -> None:
    proc = snakemake(micro_run, "--configfile", MICRO, "--config", override, "-n")
    assert proc.returncode == 0, output_of(proc)
    assert "Nothing to be done" in output_of(proc), output_of(proc)


@pytest.mark.slow
def test_process_count_and_code_version_rerun_what_they_change(micro_run: Path) -> None:
    # more GPUs, more processes: a larger global batch, another model
    proc = snakemake(micro_run, "--configfile", MICRO, "--config", "datasets={micro: {gpu: 2}}",
                     "-n")  # fmt: skip
    text = output_of(proc)
    assert proc.returncode == 0, text
    assert job_counts(text)["train"] == 2 and "Params have changed" in text
    # a bumped code_version.generate reruns generation onward, not training
    proc = snakemake(micro_run, "--configfile", MICRO, "--config", "code_version={generate: 1}",
                     "-n")  # fmt: skip
    counts = job_counts(output_of(proc))
    assert counts["generate"] == counts["frames"] == 2, counts
    assert "train" not in counts and "build_dataset" not in counts


@pytest.mark.slow
def test_frame_settings_rerun_only_the_frames_and_gifs(micro_copy: Path) -> None:
    """Frames are a job of their own: other examples or more frames leave the samples, the
    metrics and the models alone, and the frames end on the very images of the samples."""
    run = micro_copy / "results" / "micro"
    untouched = [*run.glob("*/ddim4/samples/images/*.png"), *run.glob("*/ddim4/metrics.csv")]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    names = sorted(p.name for p in (run / "baseline" / "ddim4" / "samples" / "images").iterdir())
    listed = (run / "data" / "frames_examples.txt").read_text().split()
    chosen = sorted(set(names) - set(listed))[:2]
    override = f"datasets={{micro: {{generate: {{frames_for: [{', '.join(chosen)}]}}}}}}"
    proc = snakemake(micro_copy, "--configfile", MICRO, "--config", override,
                     timeout=RUN_TIMEOUT)  # fmt: skip
    assert_ok(proc, micro_copy)
    ran = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", output_of(proc), re.M)
    counts = {rule: ran.count(rule) for rule in ran}
    assert counts == {
        "select_examples": 1,
        "frames": 2,
        "gif_denoise": 4,
        "gif_compare": 2,
        "all": 1,
    }, counts
    assert {p: p.stat().st_mtime_ns for p in untouched} == before
    for method in ("baseline", "scheduled_sampling"):
        frames = run / method / "ddim4" / "frames"
        stems = [Path(n).stem for n in chosen]
        assert sorted(p.name for p in frames.iterdir() if p.is_dir()) == stems
        last = sorted((frames / stems[1]).iterdir())[-1]
        final = pixels_of(run / method / "ddim4" / "samples" / "images" / chosen[1])
        assert np.abs(pixels_of(last).astype(int) - final.astype(int)).max() <= 1
        assert (run / method / "ddim4" / "gifs" / f"{stems[1]}.gif").is_file()


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


@pytest.mark.slow
def test_deleting_one_gif_rebuilds_only_that_gif(micro_copy: Path) -> None:
    gif = next((micro_copy / "results" / "micro" / "baseline" / "ddim4" / "gifs").glob("*.gif"))
    others = [p for p in (micro_copy / "results").rglob("*.gif") if p != gif]
    before = {p: p.stat().st_mtime_ns for p in others}
    gif.unlink()
    proc = snakemake(micro_copy, "--configfile", MICRO, timeout=RUN_TIMEOUT)
    assert_ok(proc, micro_copy)
    assert job_counts(output_of(proc)) == {"gif_denoise": 1, "all": 1}
    assert Image.open(gif).n_frames > 1
    assert {p: p.stat().st_mtime_ns for p in others} == before


@pytest.mark.slow
def test_ctrl_c_during_forced_training_then_a_plain_rerun_rebuilds_the_models(
    micro_copy: Path,
) -> None:
    """Ctrl-C during `--forcerun train`: the trainers checkpoint, Snakemake removes the
    unfinished models, and a plain rerun resumes training and rebuilds them (it used to say
    "Nothing to be done", since every final target still existed)."""
    steps = yaml.safe_load(MICRO.read_text())["datasets"]["micro"]["train"]["max_steps"]
    methods = ("baseline", "scheduled_sampling")
    rundirs = {m: micro_copy / "results" / "micro" / m / "train" for m in methods}
    logs = {m: micro_copy / "logs" / "train" / "micro" / f"{m}.log" for m in methods}
    started = time.time_ns()
    with (micro_copy / "interrupted.out").open("w", encoding="utf-8") as output:
        proc = subprocess.Popen(
            snakemake_command(micro_copy, "--configfile", MICRO, "--forcerun", "train"),
            cwd=micro_copy,
            env=offline_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, like a terminal's job
        )
    try:
        wait_until(
            lambda: all(logged_steps(d / "train_log.csv", started) for d in rundirs.values()),
            "logged training step in both runs",
            proc,
        )
        # Ctrl-C: SIGINT to every process of the group. The group is stopped first so that no
        # job moves on between seeing the logged step and the signal.
        os.killpg(proc.pid, signal.SIGSTOP)
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGCONT)
        status = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    interrupted = (micro_copy / "interrupted.out").read_text(encoding="utf-8")
    assert status != 0, interrupted
    for method in methods:
        # the trainer outlives its accelerate launcher by the time it takes to checkpoint
        wait_until(
            lambda m=method: "interrupted by a signal (SIGINT)" in logs[m].read_text("utf-8"),
            f"checkpoint on SIGINT in {logs[method]}",
        )
        assert list(rundirs[method].glob("checkpoints/checkpoint-*")), method
        assert not (rundirs[method] / "model").exists()

    proc = snakemake(micro_copy, "--configfile", MICRO, timeout=RUN_TIMEOUT)
    assert_ok(proc, micro_copy)
    assert job_counts(output_of(proc)).get("train") == 2, output_of(proc)
    for method in methods:
        assert (rundirs[method] / "model" / "markup2im_model.json").is_file()
        assert "resuming at step" in logs[method].read_text(encoding="utf-8")
        log = read_rows(micro_copy / "results" / "micro" / method / "train_log.csv")
        assert [r["step"] for r in log] == [str(s) for s in range(1, steps + 1)], method
        assert not (rundirs[method] / "checkpoints").exists()  # removed once complete


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_snakemake_at_a_checkpoint(workdir: Path, method: str, stop: bool) -> int:
    """Train ``method`` of the micro config and SIGKILL Snakemake alone once a checkpoint is
    written; its job runs on as an orphan (stopped, if ``stop``, until SIGCONT to the returned
    process group). Snakemake's own lock, left by the kill, is removed."""
    target = f"results/micro/{method}/train/model"
    with (workdir / f"killed-{method}.out").open("w", encoding="utf-8") as output:
        proc = subprocess.Popen(
            snakemake_command(workdir, "--configfile", MICRO, "--", target),
            cwd=workdir,
            env=offline_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rundir = workdir / "results" / "micro" / method / "train"
    try:
        wait_until(lambda: list(rundir.glob("checkpoints/checkpoint-*")), "checkpoint", proc)
    finally:
        if stop:
            os.killpg(proc.pid, signal.SIGSTOP)
        proc.kill()
        proc.wait()
    assert_ok(snakemake(workdir, "--configfile", MICRO, "--unlock"), workdir)
    return proc.pid


@pytest.mark.slow
def test_after_a_killed_snakemake_the_orphan_holds_the_lock_and_the_rerun_resumes(
    tmp_path: Path,
) -> None:
    """Snakemake killed with SIGKILL leaves its training running as an orphan. Once the orphan
    has finished, the rerun of the job Snakemake marked incomplete resumes from its checkpoints
    (the job used to remove them, so training started from scratch); a rerun while the orphan
    trains stops at once on its lock (they used to share the checkpoints)."""
    steps = yaml.safe_load(MICRO.read_text())["datasets"]["micro"]["train"]["max_steps"]
    methods = ("baseline", "scheduled_sampling")
    rundirs = {m: tmp_path / "results" / "micro" / m / "train" for m in methods}
    logs = {m: tmp_path / "logs" / "train" / "micro" / f"{m}.log" for m in methods}

    orphan = kill_snakemake_at_a_checkpoint(tmp_path, "baseline", stop=False)
    wait_until(lambda: not group_alive(orphan), "end of the orphan training")
    assert (rundirs["baseline"] / "model").is_dir()
    proc = snakemake(tmp_path, "--configfile", MICRO, "--", "results/micro/baseline/train/model")
    assert_ok(proc, tmp_path)
    assert job_counts(output_of(proc)).get("train") == 1, output_of(proc)  # marked incomplete
    assert f"resuming at step {steps}" in logs["baseline"].read_text(encoding="utf-8")
    log_rows = read_rows(tmp_path / "results" / "micro" / "baseline" / "train_log.csv")
    assert [r["step"] for r in log_rows] == [str(s) for s in range(1, steps + 1)]
    assert not (rundirs["baseline"] / "checkpoints").exists()  # removed once recorded done

    method = methods[1]
    target = f"results/micro/{method}/train/model"
    orphan = kill_snakemake_at_a_checkpoint(tmp_path, method, stop=True)
    try:
        lock = json.loads((rundirs[method] / ".markup2im_train.lock").read_text("utf-8"))
        locked = snakemake(tmp_path, "--configfile", MICRO, "--", target)
        assert locked.returncode != 0
        text = logs[method].read_text(encoding="utf-8")
        assert f"is in use by another training, PID {lock['pid']} on host" in text, text
        assert not (rundirs[method] / "model").exists()
    finally:
        os.killpg(orphan, signal.SIGCONT)
    wait_until(lambda: not group_alive(orphan), "end of the orphan training")
    assert_ok(snakemake(tmp_path, "--configfile", MICRO, "--", target), tmp_path)
    log_rows = read_rows(tmp_path / "results" / "micro" / method / "train_log.csv")
    assert [r["step"] for r in log_rows] == [str(s) for s in range(1, steps + 1)]
    assert not list(tmp_path.glob("results/micro/*/train/.markup2im_train.lock"))


@pytest.mark.slow
def test_micro_run_is_reproducible_from_nothing(
    micro_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    second = tmp_path_factory.mktemp("micro_run_again")
    proc = snakemake(second, "--configfile", MICRO, timeout=RUN_TIMEOUT)
    assert_ok(proc, second)
    first_metrics, second_metrics = micro_outputs(micro_run), micro_outputs(second)
    assert len(first_metrics) == 2
    assert first_metrics.keys() == second_metrics.keys()
    for name, path in first_metrics.items():
        assert path.read_bytes() == second_metrics[name].read_bytes(), name


@pytest.mark.slow
def micro_with_hub_encoder(workdir: Path) -> Path:
    """config/micro.yaml whose encoder is a hub name pinned to a commit (served by a local hub
    cache: see tiny_model.tiny_hub_cache)."""
    from tiny_model import TINY_HUB_COMMIT, TINY_HUB_NAME

    config = yaml.safe_load(MICRO.read_text())
    model = config["datasets"]["micro"]["model"]
    model.update(encoder=TINY_HUB_NAME, encoder_revision=TINY_HUB_COMMIT, max_markup_length=48)
    return write_config(workdir / "hub_encoder.yaml", config)


@pytest.mark.slow
def test_hub_encoder_is_saved_once_and_training_needs_no_hub(tmp_path: Path, monkeypatch) -> None:
    """fetch_encoder saves the pinned hub encoder; training then reads only that copy (the hub
    cache is gone by then) and the model still records the hub name."""
    from tiny_model import TINY_HUB_COMMIT, TINY_HUB_NAME, tiny_hub_cache

    cache = tiny_hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    workdir = tmp_path / "run"
    config = micro_with_hub_encoder(tmp_path)
    encoder_dir = f"results/encoders/markup2im-test--tiny-gpt-neo@{TINY_HUB_COMMIT}"
    proc = snakemake(workdir, encoder_dir, "--configfile", config, timeout=RUN_TIMEOUT)
    assert_ok(proc, workdir)
    assert job_counts(output_of(proc)) == {"fetch_encoder": 1}
    record = json.loads((workdir / encoder_dir / "markup2im_encoder.json").read_text())
    assert record["name"] == TINY_HUB_NAME

    shutil.rmtree(cache)  # like a compute node: no hub, no cache
    model = "results/micro/baseline/train/model"
    proc = snakemake(workdir, model, "-p", "--configfile", config, timeout=RUN_TIMEOUT)
    assert_ok(proc, workdir)
    assert job_counts(output_of(proc)) == {"build_dataset": 1, "train": 1}
    (train,) = [c for c in shell_commands(output_of(proc)) if "markup2im train" in c]
    assert f"--encoder {encoder_dir} " in train
    saved = json.loads((workdir / model / "markup2im_model.json").read_text())
    assert saved["encoder"] == TINY_HUB_NAME


@pytest.mark.slow
def test_workflow_runs_as_a_module_of_another_workflow(tmp_path: Path) -> None:
    """Every path is read relative to the workflow (workflow.source_path, rule-relative paths),
    so another Snakefile can use it as a module, with its rules renamed."""
    (tmp_path / "Snakefile").write_text(
        f"""configfile: "{MICRO}"


module markup2im:
    snakefile:
        "{SNAKEFILE}"
    config:
        config


use rule * from markup2im as m2i_*
""",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2"],
        cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert_ok(proc, tmp_path)
    ran = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", output_of(proc), re.M))
    assert {"m2i_train", "m2i_frames", "m2i_gif_compare", "m2i_paired_table"} <= ran, ran
    assert (tmp_path / "results" / "summary" / "paired_table.csv").is_file()
    assert list((tmp_path / "results" / "micro" / "figures" / "ddim4" / "compare").glob("*.gif"))


def test_own_markup_file_becomes_a_dataset(tmp_path: Path) -> None:
    """A config entry pointing at a markup file and a domain runs through the workflow."""
    formulas = [
        r"x^{2}+y^{2}=z^{2}",
        r"\frac{a}{b}",
        r"\sqrt{x+1}",
        r"\sum_{i=1}^{n} i",
        r"e^{i\pi}+1=0",
        r"\int_0^1 x\,dx",
        r"\alpha\beta\gamma",
        r"a_{n+1}=2a_n",
        r"\left(x+y\right)^3",
        r"\lim_{x\to0}\frac{\sin x}{x}",
        r"f(x)=x^3-x",
        r"\binom{n}{k}",
        r"\log_2 8 = 3",
        r"\pi r^2",
        r"\vec{v}\cdot\vec{w}",
        r"\mathbb{R}^n",
    ]
    (tmp_path / "formulas.txt").write_text("\n".join(formulas) + "\n", encoding="utf-8")
    config = yaml.safe_load(MICRO.read_text())
    own = config["datasets"].pop("micro")
    own["source"]["render"] = {
        **own["source"]["render"],
        "markup_file": "formulas.txt",
        "train": 10,
        "validation": 2,
        "test": 4,
    }
    del own["source"]["render"]["synthetic"]
    config["datasets"]["own"] = own
    config["methods"] = ["baseline"]
    configfile = write_config(tmp_path / "own.yaml", config)
    target = "results/own/baseline/ddim4/metrics.csv"
    proc = snakemake(tmp_path, target, "--configfile", configfile, timeout=RUN_TIMEOUT)
    assert_ok(proc, tmp_path)
    rows = (tmp_path / target).read_text().splitlines()
    assert len(rows) == 1 + 4
    # editing the markup file rebuilds the dataset and everything after it
    with (tmp_path / "formulas.txt").open("a", encoding="utf-8") as handle:
        handle.write(r"\gamma^2" + "\n")
    # newer than the dataset whatever the file system's time resolution (no sleep needed)
    built = (tmp_path / "results" / "own" / "data" / "dataset").stat().st_mtime
    os.utime(tmp_path / "formulas.txt", (built + 10, built + 10))
    proc = snakemake(tmp_path, target, "-n", "--configfile", configfile)
    counts = job_counts(output_of(proc))
    assert counts.get("build_dataset") == 1 and counts.get("train") == 1, output_of(proc)


# ---- the report in headless Chromium -----------------------------------------------------------


class ReportBrowser(Chromium):
    """Chromium on the Snakemake report: its menu, its result rows and the page it shows."""

    def click_link(self, text: str) -> None:
        self.wait_for(
            "(() => { const a = [...document.querySelectorAll('a')]"
            f".find(a => a.innerText.trim() === {json.dumps(text)}); if (a) a.click(); return !!a; }})()"
        )

    def open_result(self, row_text: str) -> None:
        """Press the eye button of the results-table row that mentions ``row_text``."""
        self.wait_for(
            "(() => { const r = [...document.querySelectorAll('tr')]"
            f".find(r => r.innerText.includes({json.dumps(row_text)}));"
            " const b = r && r.querySelector('a[iconname=eye]'); if (b) b.click(); return !!b; })()"
        )

    def in_shown_page(self, expression: str, seconds: float = 120):
        """Evaluate ``expression`` inside the result page the report shows (its iframe).

        Retries until it gives a true value: the iframe may still be loading its data URL, which
        replaces the frame's JavaScript context.
        """
        self.wait_for("!!document.querySelector('iframe')")
        end, value = time.monotonic() + seconds, None
        while time.monotonic() < end:
            tree = self.send("Page.getFrameTree", self.session)["frameTree"]
            frames = [c["frame"] for c in tree.get("childFrames", [])]
            shown = [f for f in frames if f["url"].startswith("data:")]
            if shown:
                try:
                    world = self.send(
                        "Page.createIsolatedWorld",
                        self.session,
                        frameId=shown[-1]["id"],
                        worldName="report-check",
                    )
                    value = self.evaluate(expression, world["executionContextId"])
                except RuntimeError:
                    value = None
                if value:
                    return value
            time.sleep(0.3)
        return value

    def home(self) -> None:
        self.evaluate(
            "app.setView({navbarMode: 'menu', category: undefined, subcategory: undefined})"
        )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_shows_metrics_table_and_gif(micro_run: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"  # outside the shared run, which the tests only read
    proc = snakemake(micro_run, "--configfile", MICRO, "--report", report, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, output_of(proc)
    browser = ReportBrowser(report.as_uri(), tmp_path / "chromium-profile")
    try:
        browser.wait_for("document.body.innerText.includes('Metrics')")
        # the metrics table: Metrics -> Summary -> the table's row
        browser.click_link("Metrics")
        browser.click_link("Summary")
        browser.open_result("metrics table")
        table = browser.in_shown_page(
            "(() => { const t = document.querySelector('table'); if (!t) return null;"
            " const r = t.getBoundingClientRect();"
            " return {rows: t.rows.length, text: t.innerText, width: r.width, height: r.height}; })()"
        )
        assert table, "no table shown for the metrics table"
        assert table["rows"] >= 3 and table["width"] > 0 and table["height"] > 0
        for word in ("micro", "baseline", "scheduled", "dtw", "ssim", "blank"):
            assert word in table["text"].lower(), (word, table["text"])
        # the paired comparison: Metrics -> Summary -> its row
        browser.home()
        browser.click_link("Metrics")
        browser.click_link("Summary")
        browser.open_result("paired comparison table")
        paired = browser.in_shown_page(
            "(() => { const t = document.querySelector('table');"
            " return t && t.innerText.includes('better') ? t.innerText : null; })()"
        )
        assert paired and "micro" in paired and "scheduled sampling" in paired, paired
        # a GIF: Denoising -> the comparison of gold and both methods
        browser.home()
        browser.click_link("Denoising")
        browser.open_result("gold")
        image = browser.in_shown_page(
            "(() => { const i = [...document.images].find(i => i.src.startsWith('data:image/gif'));"
            " if (!i || !i.complete || !i.naturalWidth) return null;"
            " const r = i.getBoundingClientRect();"
            " return {src: i.src, width: r.width, height: r.height}; })()"
        )
        assert image, "no GIF shown in the report"
        assert image["width"] > 0 and image["height"] > 0
        gif = Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1])))
        assert gif.format == "GIF" and gif.n_frames > 1
    finally:
        browser.close()
