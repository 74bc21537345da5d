"""One training per output directory: a lock file that names its holder.

Two trainers writing checkpoints into one directory corrupt each other's resume points (one
removes the other's half-written ``.tmp-checkpoint-N``, both prune, the log mixes two runs). The
main process of a run therefore creates ``O/.markup2im_train.lock`` (atomically, ``O_EXCL``, which
also holds on NFS between hosts) holding its host, PID and start time, and removes it when the
run ends, with an exception too. A second trainer stops at once with a
:class:`TrainingLockedError` that says whose the lock is.

A lock left by a process that died without cleaning up (SIGKILL, a crashed node) is stale. On
the same host that is recognised (the PID is gone, or it is another process now) and the lock is
taken over; on another host this host cannot tell, so the message says how to remove it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markup2im.errors import Markup2ImError

logger = logging.getLogger(__name__)

LOCK_NAME = ".markup2im_train.lock"
# seconds after which a lock file that holds no readable holder counts as left by a crash
UNREADABLE_GRACE = 10.0
# Where accelerate (torchrun, MPI) says which process this is; the same list accelerate reads.
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


class TrainingLockedError(Markup2ImError):
    """Another training holds the output directory (the message says whose and what to do)."""


def is_main_process(environ: dict[str, str] | None = None) -> bool:
    """Whether this is the main process of its run (rank 0), read before accelerate starts: a
    plain process is; under ``accelerate launch`` only the process of rank 0."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.lstrip("-").isdigit() and int(value) >= 0:
            return int(value) == 0
    return True


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None where unknown.

    With the PID this tells a live holder from a new process that reuses its PID.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: host, PID, the PID's start time and when the lock was taken."""

    host: str
    pid: int
    started: int | None
    since: float

    @classmethod
    def me(cls) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid), time.time())

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder written in a lock file (None: unreadable, e.g. cut short by a crash)."""
        try:
            data: Any = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), data.get("started"),
                       float(data["since"]))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_stale(self) -> bool:
        """Recognisably dead: on this host, and the PID is gone or is another process now."""
        if not self.on_this_host():
            return False
        if not process_alive(self.pid):
            return True
        now = process_start(self.pid)
        return self.started is not None and now is not None and now != self.started

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"PID {self.pid} on host {self.host} (since {when})"


class TrainingLock:
    """The lock of one training output directory; a context manager that takes and releases
    it. Only the main process of a run takes it (``active=False`` for the others)."""

    def __init__(self, output_dir: str | Path, active: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self.active = active
        self.holder: Holder | None = None

    def __enter__(self) -> TrainingLock:
        if self.active:
            self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, taking over a stale one of this host; TrainingLockedError if held."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        me = Holder.me()
        # a guard serialises the takeover of a stale lock between trainers of this host
        with self._guard():
            if self._create(me):
                return
            other = self._read()
            if not self._stale(other):
                raise TrainingLockedError(self._held_message(other))
            logger.warning(
                "%s: taking over the lock of %s, which no longer runs",
                self.path,
                other.describe() if other else "an unknown process (unreadable lock file)",
            )
            self.path.unlink(missing_ok=True)
            if not self._create(me):
                other = self._read()
                raise TrainingLockedError(self._held_message(other))

    def release(self) -> None:
        """Remove the lock if this process holds it (never another's)."""
        if self.holder is None:
            return
        found = self._read()
        if found is not None and (found.host, found.pid) == (self.holder.host, self.holder.pid):
            self.path.unlink(missing_ok=True)
        self.holder = None

    # -- helpers ---------------------------------------------------------------------------------
    def _create(self, me: Holder) -> bool:
        """Create the lock file holding ``me``; False if one exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(me.dumps())
        self.holder = me
        return True

    def _stale(self, holder: Holder | None) -> bool:
        """Whether the lock found (``holder``: None if unreadable) may be taken over."""
        if holder is not None:
            return holder.is_stale()
        # unreadable: cut short by a crash, or being written right now by another host
        try:
            return time.time() - self.path.stat().st_mtime > UNREADABLE_GRACE
        except FileNotFoundError:
            return True

    def _read(self) -> Holder | None:
        try:
            return Holder.parse(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """An advisory lock on the directory while the lock is checked and taken (skipped where
        the file system has no locks)."""
        fd = os.open(self.output_dir, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _held_message(self, other: Holder | None) -> str:
        who = other.describe() if other else "another process"
        if other is not None and not other.on_this_host():
            what = (
                f"This host cannot tell whether it still runs. If no training runs there any more "
                f"(its job was killed or its node failed), remove {self.path} and run again"
            )
        else:
            what = (
                "Wait for it to finish, or stop it (`kill "
                f"{other.pid if other else 'PID'}`: it saves a checkpoint that the next run "
                "resumes) and run again; a lock whose process is gone is taken over by itself"
            )
        return (
            f"{self.output_dir} is in use by another training, {who}: two trainings in one "
            f"directory would overwrite each other's checkpoints. {what}"
        )
