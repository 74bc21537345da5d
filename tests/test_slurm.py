"""The Slurm profile, run with the real slurm executor plugin against a real single-node cluster.

The session fixture starts the cluster with scripts/slurm_cluster.sh (munge, MariaDB + slurmdbd,
slurmctld, slurmd with two fake GPUs) and stops it at the end unless it was already running.
Every Snakemake run uses tests/slurm_profile and is killed, with its process group and its Slurm
jobs, when it exceeds its time limit. Outside CI the Slurm tests skip when they cannot start
the cluster (not root, or the Debian packages absent); in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
TEST_PROFILE = REPO / "tests" / "slurm_profile"
SLURM_PROFILE = REPO / "profiles" / "slurm"
VENV_BIN = Path(sys.executable).parent
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/slurmdbd", "/usr/sbin/munged")
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+?)/rule_(\w+)/")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass
class Cluster:
    """A running test cluster: the environment that reaches it (SLURM_CONF, venv first on PATH)."""

    env: dict[str, str]

    def slurm(self, *args: str, timeout: float = 30) -> str:
        """Run a Slurm client command against the cluster; its stdout."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{shlex.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def sacct(self, job_id: str, fields: str, duplicates: bool = False) -> list[list[str]]:
        """Accounting rows (allocation only, not steps) of one job, as lists of fields."""
        args = ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", fields]
        if duplicates:
            args.append("-D")  # every record of a requeued job, not only the last one
        lines = self.slurm(*args).splitlines()
        return [line.split("|") for line in lines if line.strip()]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    """Start the local cluster (or use the running one) and stop it afterwards if started here."""
    problem = None
    if os.geteuid() != 0:
        problem = "starting the Slurm daemons needs root"
    elif not all(Path(d).exists() for d in DAEMONS):
        problem = (
            "Slurm is not installed (apt-get install slurmctld slurmd slurm-client slurmdbd"
            " munge mariadb-server, or scripts/setup.sh --test)"
        )
    if problem and not _in_ci():
        pytest.skip(problem)
    if problem and os.geteuid() != 0:
        pytest.fail(f"CI must run the Slurm test: {problem}")
    # In CI as root, missing packages are installed by the script itself.

    def script(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    was_running = script("status", 30).returncode == 0
    started = time.monotonic()
    start = script("start", 600)
    if start.returncode != 0:
        pytest.fail(f"could not start the Slurm cluster:\n{start.stdout}\n{start.stderr}")
    print(f"slurm cluster ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    env = dict(os.environ)
    for word in shlex.split(script("env", 30).stdout):
        if "=" in word and word != "export":
            key, value = word.split("=", 1)
            env[key] = value
    # Jobs inherit this environment (sbatch --export=ALL): the venv's snakemake and markup2im.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("SLURM_JOB_ID", None)  # a test run inside a Slurm job must not look like a job step
    yield Cluster(env=env)
    if not was_running:
        stop = script("stop", 300)
        assert stop.returncode == 0, f"stopping the cluster failed:\n{stop.stderr}"


class SnakemakeRun:
    """One `snakemake` process in its own process group, output in a file, killed on timeout."""

    def __init__(self, args: list[str], workdir: Path, cluster: Cluster):
        self.cluster = cluster
        self.output_file = workdir / f"snakemake-{time.monotonic_ns()}.out"
        self.args = [str(VENV_BIN / "snakemake"), *args]
        with self.output_file.open("w") as out:
            self.process = subprocess.Popen(
                self.args,
                cwd=workdir,
                env=cluster.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.output_file.read_text(errors="replace")

    def job_ids(self, rule: str) -> list[str]:
        """Slurm job ids that Snakemake reported for ``rule``'s jobs so far."""
        return [m.group(1) for m in SUBMITTED.finditer(self.output) if m.group(3) == rule]

    def kill(self) -> None:
        """Kill Snakemake with its process group if it still runs, and cancel its Slurm jobs."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        run_id = re.search(r"SLURM run ID: (\S+)", self.output)
        if run_id:
            subprocess.run(["scancel", "--name", run_id.group(1)], env=self.cluster.env, timeout=30)

    def wait(self, timeout: float) -> int:
        """Exit status; on timeout kill the whole process group, cancel its jobs and fail."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"{shlex.join(self.args)} ran over {timeout:.0f} s and was killed; output:\n"
                + self.output[-6000:]
            )


def run_snakemake(args: list[str], workdir: Path, cluster: Cluster, timeout: float):
    """Run Snakemake through the test profile to the end; (exit status, run)."""
    run = SnakemakeRun(["--profile", str(TEST_PROFILE), *args], workdir, cluster)
    return run.wait(timeout), run


def write_snakefile(workdir: Path, text: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(text)


@pytest.mark.slow
def test_slurm_profiles_are_accepted_by_snakemake(tmp_path):
    """Every key of both profiles is a valid Snakemake/plugin option (a dry run rejects others)."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-requeue"] is True
    write_snakefile(tmp_path, 'rule all:\n    output: "x.txt"\n    shell: "touch {output}"\n')
    for directory in (SLURM_PROFILE, TEST_PROFILE):
        done = subprocess.run(
            [str(VENV_BIN / "snakemake"), "--profile", str(directory), "-n"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{directory}:\n{done.stdout}\n{done.stderr}"
        assert "rule all" in done.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_gpu_job_environment_and_a_failing_rule(slurm_cluster, tmp_path):
    """A GPU rule gets a GPU and the venv; a failing rule fails the run and is named with its job.

    One run (with --keep-going, like profiles/slurm) covers both to spare a round of polling.
    """
    write_snakefile(
        tmp_path,
        """
rule all:
    input: "gpu.txt", "cpu.txt", "broken.txt"

rule use_gpu:
    output: "gpu.txt"
    resources: gpu=1
    shell: 'echo "$SLURM_JOB_ID $CUDA_VISIBLE_DEVICES $(command -v python)" > {output}'

rule use_cpu:
    output: "cpu.txt"
    shell: 'echo "$SLURM_JOB_ID ${{CUDA_VISIBLE_DEVICES:-none}}" > {output}'

rule broken:
    output: "broken.txt"
    shell: "echo 'deliberate failure in broken' >&2; exit 3"
""",
    )
    rc, run = run_snakemake(["--keep-going"], tmp_path, slurm_cluster, timeout=300)

    (gpu_job,) = run.job_ids("use_gpu")
    (cpu_job,) = run.job_ids("use_cpu")
    job_id, devices, python = (tmp_path / "gpu.txt").read_text().split()
    assert job_id == gpu_job
    assert devices in {"0", "1"}
    assert Path(python) == VENV_BIN / "python"
    assert (tmp_path / "cpu.txt").read_text().split() == [cpu_job, "none"]
    ((state, tres),) = slurm_cluster.sacct(gpu_job, "State,AllocTRES")
    assert state == "COMPLETED"
    assert "gres/gpu=1" in tres.split(",")
    ((_, tres),) = slurm_cluster.sacct(cpu_job, "State,AllocTRES")
    assert "gres/gpu" not in tres

    assert rc != 0
    (broken_job,) = run.job_ids("broken")
    assert "Error in rule broken" in run.output
    assert f"SLURM-job '{broken_job}' failed" in run.output
    assert not (tmp_path / "broken.txt").exists()
    ((state, exit_code),) = slurm_cluster.sacct(broken_job, "State,ExitCode")
    assert state == "FAILED"
    assert exit_code != "0:0"
    log = tmp_path / ".snakemake" / "slurm_logs" / "rule_broken" / f"{broken_job}.log"
    assert "deliberate failure in broken" in log.read_text()


def preempt(cluster: Cluster, run: SnakemakeRun, job_id: str, timeout: float) -> bool:
    """Preempt ``job_id`` (it holds a GPU, so a higher-tier job asking for both GPUs preempts
    it), release it once requeued, and wait while Snakemake runs; whether it was requeued."""
    cluster.slurm(
        "sbatch", "--parsable", "-p", "urgent", "--gpus=2", "--mem=100", "-o", "/dev/null",
        "-A", "markup2im", "--wrap", "sleep 1",
    )  # fmt: skip
    # Slurm holds a requeued job for ~2 minutes before it is eligible again; release it now.
    released = False
    deadline = time.monotonic() + timeout
    while run.process.poll() is None and time.monotonic() < deadline:
        reason = cluster.slurm("squeue", "-h", "-j", job_id, "-o", "%r").strip()
        if reason == "BeginTime" and not released:
            cluster.slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            released = True
        time.sleep(1)
    return released


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_job_is_requeued_and_the_run_completes(slurm_cluster, tmp_path):
    """A job of the default partition preempted by the `urgent` partition runs again and succeeds.

    The test cluster has JobRequeue=0, so only the profile's `slurm-requeue` (sbatch --requeue)
    makes Slurm requeue the preempted job rather than cancel it.
    """
    write_snakefile(
        tmp_path,
        """
rule all:
    input: "trained.txt"

rule long_gpu:
    output: "trained.txt"
    resources: gpu=2, runtime=5
    shell:
        '''
        echo "$SLURM_JOB_ID" >> attempts.txt
        if [ ! -e started ]; then touch started; sleep 300; fi
        echo done > {output}
        '''
""",
    )
    run = SnakemakeRun(["--profile", str(TEST_PROFILE)], tmp_path, slurm_cluster)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert run.process.poll() is None, run.output[-6000:]
            assert time.monotonic() < deadline, "the job never started:\n" + run.output[-6000:]
            time.sleep(0.5)
        (job_id,) = run.job_ids("long_gpu")
        released = preempt(slurm_cluster, run, job_id, timeout=120)
        rc = run.wait(timeout=120)
    finally:
        run.kill()  # only if an assertion above left it running
    assert rc == 0, run.output[-6000:]
    assert released, "the job was never requeued"
    assert (tmp_path / "trained.txt").read_text().strip() == "done"
    assert (tmp_path / "attempts.txt").read_text().split() == [job_id, job_id]
    states = [row[0] for row in slurm_cluster.sacct(job_id, "State", duplicates=True)]
    assert states[0] == "PREEMPTED" and states[-1] == "COMPLETED", states


def micro_config_with_gpu(workdir: Path) -> Path:
    """config/micro.yaml with one GPU per training job (the node's GPUs are fake; torch uses CPU)."""
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    for dataset in config["datasets"].values():
        dataset["gpu"] = 1
    path = workdir / "micro_gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slurm
@pytest.mark.slow
def test_micro_workflow_end_to_end_on_slurm(slurm_cluster, tmp_path):
    config = micro_config_with_gpu(tmp_path)
    args = ["-s", str(REPO / "Snakefile"), "--configfile", str(config)]
    rc, run = run_snakemake(args, tmp_path, slurm_cluster, timeout=1200)
    assert rc == 0, run.output[-8000:]

    # Everything the workflow would make is there and up to date.
    done = SnakemakeRun(["--profile", str(TEST_PROFILE), *args, "-n"], tmp_path, slurm_cluster)
    assert done.wait(timeout=180) == 0, done.output[-4000:]
    assert "Nothing to be done" in done.output, done.output[-4000:]
    table = (tmp_path / "results" / "summary" / "metrics_table.csv").read_text()
    for method in ("baseline", "scheduled_sampling"):
        assert method in table
        assert (tmp_path / "results" / "micro" / method / "train" / "model").is_dir()

    # The training command starts one accelerate process per GPU of its job.
    assert re.search(r"accelerate launch [^\n]*--num_processes 1\b", run.output)
    assert not re.search(r"accelerate launch [^\n]*--cpu\b", run.output)
    train_jobs = run.job_ids("train")
    assert len(train_jobs) == 2, run.output[-4000:]
    for job_id in train_jobs:
        ((state, tres),) = slurm_cluster.sacct(job_id, "State,AllocTRES")
        assert state == "COMPLETED"
        assert "gres/gpu=1" in tres.split(","), tres
    for job_id in run.job_ids("evaluate"):
        ((_, tres),) = slurm_cluster.sacct(job_id, "State,AllocTRES")
        assert "gres/gpu" not in tres


def test_cluster_script_refuses_unknown_commands():
    done = subprocess.run(["bash", str(CLUSTER_SCRIPT), "bogus"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "usage" in done.stderr


# ---- the workflow's own profile (profiles/slurm), installed as the named profile `slurm` -------

INSTALL_SCRIPT = REPO / "scripts" / "install_profile.sh"
# What the local cluster needs besides profiles/slurm: its account, smaller defaults, quick polling.
LOCAL_OVERRIDES = [
    "--jobs", "4",
    "--latency-wait", "5",
    "--seconds-between-status-checks", "2",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
    "--default-resources", "slurm_account=markup2im", "runtime=10", "mem_mb=500",
]  # fmt: skip


def install_profile(config_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    return subprocess.run(
        ["bash", str(INSTALL_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_named_profile_is_installed_once_and_never_overwritten(tmp_path):
    home = tmp_path / "config"
    installed = home / "snakemake" / "slurm" / "config.yaml"
    first = install_profile(home)
    assert first.returncode == 0, first.stderr
    assert installed.read_text() == (SLURM_PROFILE / "config.yaml").read_text()
    again = install_profile(home)
    assert again.returncode == 0 and "already installed" in again.stdout
    installed.write_text(installed.read_text() + "# my partition\n")
    changed = install_profile(home)
    assert changed.returncode == 1 and "differs" in changed.stderr
    assert installed.read_text().endswith("# my partition\n")  # the user's edit stays
    assert install_profile(home, "../x").returncode == 2
    # `snakemake --profile slurm` finds it (a dry run checks every key of the profile)
    write_snakefile(
        tmp_path / "wf", 'rule all:\n    output: "x.txt"\n    shell: "touch {output}"\n'
    )
    done = subprocess.run(
        [str(VENV_BIN / "snakemake"), "--profile", "slurm", "-n"],
        cwd=tmp_path / "wf",
        env={**os.environ, "XDG_CONFIG_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rule all" in done.stdout


def workflow_config(workdir: Path, name: str, **changes) -> Path:
    """config/micro.yaml with ``changes`` merged into the micro dataset (and ``resources``)."""
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    dataset = config["datasets"]["micro"]
    for key, value in changes.items():
        target = config if key == "resources" else dataset
        if isinstance(value, dict):
            for sub, entry in value.items():
                if isinstance(entry, dict):
                    target.setdefault(key, {}).setdefault(sub, {}).update(entry)
                else:
                    target.setdefault(key, {})[sub] = entry
        else:
            target[key] = value
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class NamedProfileRun(SnakemakeRun):
    """Snakemake with `--profile slurm` (profiles/slurm installed under XDG_CONFIG_HOME)."""

    def __init__(self, args: list[str], workdir: Path, cluster: Cluster, env: dict[str, str]):
        home = workdir / "xdg-config"
        installed = install_profile(home)
        assert installed.returncode == 0, installed.stderr
        local = Cluster(env={**cluster.env, "XDG_CONFIG_HOME": str(home), **env})
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            ["--profile", "slurm", *LOCAL_OVERRIDES, "-s", str(REPO / "Snakefile"), *args],
            workdir,
            local,
        )

    def submitted_rules(self) -> set[str]:
        return {m.group(3) for m in SUBMITTED.finditer(self.output)}


@pytest.mark.slurm
@pytest.mark.slow
def test_workflow_on_the_real_profile_two_gpus_on_one_node_and_no_network_jobs(
    slurm_cluster, tmp_path
):
    """The micro workflow through profiles/slurm with a hub encoder and 2 GPUs per training job:
    the encoder fetch, the example lists and the figures run where Snakemake runs; each training
    job is one node with two accelerate processes; sacct shows what the config asked for."""
    from tiny_model import tiny_hub_cache

    config = workflow_config(
        tmp_path, "two_gpus", gpu=2,
        model={"encoder": "markup2im-test/tiny-gpt-neo", "max_markup_length": 48},
        resources={"train": {"threads": 2, "mem_mb": 1800, "runtime": 9}},
    )  # fmt: skip
    env = {
        "HF_HUB_CACHE": str(tiny_hub_cache(tmp_path)),
        # the node's GPUs are fake: accelerate's --multi_gpu processes then run on the CPU (gloo)
        "ACCELERATE_USE_CPU": "1",
    }
    workdir = tmp_path / "run"
    args = ["--configfile", str(config), "--set-resources", "generate:mem_mb=1500"]
    run = NamedProfileRun(args, workdir, slurm_cluster, env)
    rc = run.wait(timeout=1500)
    assert rc == 0, run.output[-8000:]

    assert run.submitted_rules() <= {"build_dataset", "train", "generate", "frames", "evaluate"}
    assert {"train", "generate", "frames", "evaluate"} <= run.submitted_rules()
    assert "markup2im fetch-encoder" in run.output  # it ran, on this machine
    # every job of the run in the accounting database is one Snakemake submitted
    run_id = re.search(r"SLURM run ID: (\S+)", run.output).group(1)
    accounted = slurm_cluster.slurm("sacct", "-n", "-X", "-P", "--name", run_id, "-o", "JobID")
    submitted = {m.group(1) for m in SUBMITTED.finditer(run.output)}
    assert set(accounted.split()) == submitted

    for job_id in run.job_ids("train"):
        ((state, nodes, cpus, mem, limit, tres),) = slurm_cluster.sacct(
            job_id, "State,NNodes,ReqCPUS,ReqMem,Timelimit,AllocTRES"
        )
        assert (state, nodes, cpus, mem, limit) == ("COMPLETED", "1", "2", "1800M", "00:09:00")
        assert "gres/gpu=2" in tres.split(","), tres
    for method in ("baseline", "scheduled_sampling"):
        log = (workdir / "logs" / "train" / "micro" / f"{method}.log").read_text()
        for rank in (0, 1):  # each process with its share of the job's 2 CPUs
            assert re.search(rf"process {rank} of 2 \(cpu[:0-9]*, 1 torch threads\)", log), log[
                -3000:
            ]
    for job_id in run.job_ids("generate"):
        ((state, cpus, mem, limit, tres),) = slurm_cluster.sacct(
            job_id, "State,ReqCPUS,ReqMem,Timelimit,AllocTRES"
        )
        assert (state, cpus, mem, limit) == ("COMPLETED", "1", "1500M", "00:10:00")
        assert "gres/gpu=1" in tres.split(","), tres
    model = json.loads(
        (workdir / "results/micro/baseline/train/model/markup2im_model.json").read_text()
    )
    assert model["encoder"] == "markup2im-test/tiny-gpt-neo"


# long enough that no job of a 1-minute limit with a 40 s margin can finish it: about 600 / 14
# = 43 s of training here, of which a job has about 15 s
LONG_TRAINING = {"max_steps": 600, "checkpoint_every": 100}


def trained_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.rglob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    return {str(f.relative_to(model_dir)): load_file(f) for f in files}


def assert_same_weights(a: Path, b: Path) -> None:
    import torch

    left, right = trained_weights(a), trained_weights(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].keys() == right[name].keys()
        for key in left[name]:
            assert torch.equal(left[name][key], right[name][key]), f"{name}: {key} differs"


@pytest.fixture(scope="module")
def uninterrupted_model(tmp_path_factory) -> Path:
    """The baseline model of the long-training config, trained in one go here (no Slurm)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = workflow_config(workdir, "long", gpu=1, train=LONG_TRAINING)
    target = "results/micro/baseline/train/model"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [str(VENV_BIN / "snakemake"), target, "-s", str(REPO / "Snakefile"), "--cores", "1",
         "--configfile", str(config)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return workdir / target


@pytest.mark.slurm
@pytest.mark.slow
def test_training_longer_than_its_time_limit_spans_several_jobs(
    slurm_cluster, tmp_path, uninterrupted_model
):
    """The real train rule with a 1-minute limit: it checkpoints and stops 40 s before the limit,
    the retry resumes, and the model is bit for bit the one trained in one go."""
    config = workflow_config(
        tmp_path, "long", gpu=1, train=LONG_TRAINING,
        resources={"train": {"runtime": 1, "walltime_margin": 40, "chunks": 10}},
    )  # fmt: skip
    workdir = tmp_path / "run"
    run = NamedProfileRun(
        ["results/micro/baseline/train/model", "--configfile", str(config)],
        workdir,
        slurm_cluster,
        {},
    )
    rc = run.wait(timeout=900)
    assert rc == 0, run.output[-8000:]
    jobs = run.job_ids("train")
    assert len(jobs) >= 2, run.output[-4000:]
    states = [slurm_cluster.sacct(j, "State,Timelimit,ElapsedRaw")[0] for j in jobs]
    assert states[-1][:2] == ["COMPLETED", "00:01:00"], states
    # the others stopped by themselves, well before the limit (not TIMEOUT, not killed)
    assert all(state == "FAILED" and int(s) < 55 for state, _, s in states[:-1]), states
    # and only the main Snakemake retried: never the job itself, with no time left
    for log in (workdir / "logs" / "slurm" / "rule_train").rglob("*.log"):
        assert "Trying to restart" not in log.read_text(), log
    # the last job's log (each job rewrites it) starts from the previous job's checkpoint
    log = (workdir / "logs" / "train" / "micro" / "baseline.log").read_text()
    assert "resum" in log.lower(), log[-3000:]
    assert_same_weights(workdir / "results/micro/baseline/train/model", uninterrupted_model)


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_training_job_resumes_and_ends_with_the_same_model(
    slurm_cluster, tmp_path, uninterrupted_model
):
    """The real train rule preempted by a higher-tier job: SIGTERM, a checkpoint, a requeue, a
    resume, and the model of an uninterrupted run."""
    config = workflow_config(tmp_path, "long", gpu=1, train=LONG_TRAINING)
    workdir = tmp_path / "run"
    train_log = workdir / "results" / "micro" / "baseline" / "train" / "train_log.csv"
    run = NamedProfileRun(
        ["results/micro/baseline/train/model", "--configfile", str(config)],
        workdir,
        slurm_cluster,
        {},
    )
    try:
        deadline = time.monotonic() + 300
        while not (train_log.exists() and len(train_log.read_text().splitlines()) > 30):
            assert run.process.poll() is None, run.output[-6000:]
            assert time.monotonic() < deadline, "training never started:\n" + run.output[-6000:]
            time.sleep(0.5)
        (job_id,) = run.job_ids("train")
        released = preempt(slurm_cluster, run, job_id, timeout=300)
        rc = run.wait(timeout=300)
    finally:
        run.kill()
    assert rc == 0, run.output[-6000:]
    assert released, "the training job was never requeued"
    states = [row[0] for row in slurm_cluster.sacct(job_id, "State", duplicates=True)]
    assert states[0] == "PREEMPTED" and states[-1] == "COMPLETED", states
    log = (workdir / "logs" / "train" / "micro" / "baseline.log").read_text()
    assert "resum" in log.lower(), log[-3000:]  # the requeued job's log
    assert_same_weights(workdir / "results/micro/baseline/train/model", uninterrupted_model)
