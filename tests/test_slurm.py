"""The Slurm profile, run with the real slurm executor plugin against a real single-node cluster.

The session fixture starts the cluster with scripts/slurm_cluster.sh (munge, MariaDB + slurmdbd,
slurmctld, slurmd with two fake GPUs) and stops it at the end unless it was already running.
Every Snakemake run uses tests/slurm_profile and is killed, with its process group and its Slurm
jobs, when it exceeds its time limit. Outside CI the Slurm tests skip when they cannot start
the cluster (not root, or the Debian packages absent); in CI (CI=true) they fail instead.
"""

from __future__ import annotations

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
        # Both GPUs are taken, so this higher-tier job preempts the workflow's job.
        slurm_cluster.slurm(
            "sbatch", "--parsable", "-p", "urgent", "--gpus=2", "--mem=100", "-o", "/dev/null",
            "--wrap", "sleep 1",
        )  # fmt: skip
        # Slurm holds a requeued job for ~2 minutes before it is eligible again; release it now.
        released = False
        deadline = time.monotonic() + 120
        while run.process.poll() is None and time.monotonic() < deadline:
            reason = slurm_cluster.slurm("squeue", "-h", "-j", job_id, "-o", "%r").strip()
            if reason == "BeginTime" and not released:
                slurm_cluster.slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
                released = True
            time.sleep(1)
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
