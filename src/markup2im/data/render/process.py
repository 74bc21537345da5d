"""Running an external renderer under a watchdog.

Renderers are separate processes (``latex``, ``lilypond``, ``wkhtmltoimage``, a Python worker for
RDKit). Each runs in its own process group, so that killing it also kills its children (LilyPond
starts Ghostscript, for instance). A batch that renders many items reports its progress on its
output; the watchdog restarts the per-item clock whenever progress shows, and kills the whole group
when one item takes longer than the timeout. That is what makes a per-item timeout possible for a
batch of many items.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    """How a watched process ended."""

    returncode: int | None  # None when it was killed
    timed_out: bool
    cancelled: bool
    output: str  # stdout and stderr, interleaved as written
    progress: int  # progress marks seen (see ``run_watched``)
    seconds: float


def renderer_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for renderer processes: English messages, a private runtime dir."""
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    env.pop("LANGUAGE", None)
    runtime = workdir / ".runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    if extra:
        env.update(extra)
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_watched(
    cmd: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    progress: re.Pattern[str] | None = None,
    items: int = 1,
    startup: float = 0.0,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    stdin_path: Path | None = None,
) -> Outcome:
    """Run ``cmd`` in ``cwd``; kill its process group when it stalls.

    Without ``progress`` the process gets ``timeout`` seconds in all. With ``progress`` (a regex
    matched against the output; each new match is one finished item) it gets ``timeout`` seconds
    per item: the clock restarts at every new match, and the whole run is capped at
    ``startup + timeout * (items + 1)`` so that output that never stops cannot keep it alive.
    ``startup`` is extra time for the first match only (starting LilyPond alone takes seconds).
    """
    log_path = cwd / f".{Path(cmd[0]).name}-{time.monotonic_ns()}.out"
    start = time.monotonic()
    with open(log_path, "wb") as log, open(stdin_path or os.devnull, "rb") as stdin:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    timed_out = cancelled = False
    seen = 0
    try:
        if progress is None and cancel is None:
            try:
                proc.wait(timeout=startup + timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        else:
            last_progress = start + startup  # the first window also covers starting up
            hard_deadline = start + startup + timeout * (items + 1)
            poll = 0.005
            while True:
                try:
                    proc.wait(timeout=poll)
                    break
                except subprocess.TimeoutExpired:
                    pass
                poll = min(poll * 2, 0.1)
                now = time.monotonic()
                if progress is not None:
                    found = len(progress.findall(_read(log_path)))
                    if found > seen:
                        seen, last_progress = found, now
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    _kill_group(proc)
                    break
                if now - last_progress > timeout or now > hard_deadline:
                    timed_out = True
                    _kill_group(proc)
                    break
    except BaseException:
        _kill_group(proc)
        raise
    output = _read(log_path)
    log_path.unlink(missing_ok=True)
    if progress is not None:
        seen = len(progress.findall(output))
    return Outcome(
        returncode=None if (timed_out or cancelled) else proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        output=output,
        progress=seen,
        seconds=time.monotonic() - start,
    )


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
