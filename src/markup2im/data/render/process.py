"""Running an external renderer: in a sandbox, under a watchdog, dying with its parent.

Renderers are separate processes (``latex``, ``dvipng``, ``lilypond``, ``wkhtmltoimage``, a
Python worker for RDKit), and the markup they read is untrusted: LilyPond runs any Scheme code
in its input, TeX reads any file it is pointed at, wkhtmltoimage fetches remote images. So every
renderer runs in a sandbox made by bubblewrap (``bwrap``, Debian package ``bubblewrap``): no
network, a private PID, IPC, UTS and (where possible) user namespace, the system visible read-only,
home directories and other places that hold people's files or the machine's secrets hidden
behind empty read-only directories (the temporary directory too, where the work directories of
all items lie), the files that name the machine replaced, and only the run's own work directory
(plus a private, size-limited ``/tmp`` that vanishes with it) writable. Each item gets a work
directory of its own (the renderer modules decide which items may share one run, see
``markup2im.data.render.base``), so no item can read or write another's files. The renderer also gets a small environment of its own, not this process's (which may
hold tokens). There is no switch to turn the sandbox off: where bwrap is missing or cannot run,
rendering stops with a RenderError that says so (``check_sandbox``).

Each renderer runs in its own process group, so that killing it also kills its children
(LilyPond starts Ghostscript, for instance). A batch that renders many items reports its
progress on its output; the watchdog restarts the per-item clock whenever progress shows, and
kills the whole group when one item takes longer than the timeout. That is what makes a per-item
timeout possible for a batch of many items.

Each renderer process is bounded (``Limits``): its address space (``prlimit --as``, so an
allocation past it fails inside the renderer) and what it writes (``prlimit --fsize`` for any one
file, the watchdog for the work directory as a whole, the private ``/tmp`` a tmpfs of that size).
A run that reaches a bound reports it in ``Outcome.limit``, a message naming the limit.

Renderers die with this process: bwrap's ``--die-with-parent`` kills the sandbox when the thread
that started it ends, however this process ends (even by SIGKILL), and ``stop_on_signal`` kills
every running renderer group at once on SIGTERM or SIGINT before this process stops.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from markup2im.errors import RenderError

SANDBOX_PROGRAM = "bwrap"
SANDBOX_INSTALL = "install the Debian package bubblewrap (`apt-get install bubblewrap`)"
SANDBOX_HOSTNAME = "sandbox"  # what the host name reads as inside the sandbox
LIMIT_PROGRAM = "prlimit"  # util-linux: sets the resource limits of the renderer it starts
MIB = 1024 * 1024
# Bounds of one renderer process (MiB), measured: wkhtmltoimage needs 1.3-1.5 GiB of address
# space for the smallest table (RDKit, LilyPond with LilyPond's documentation examples and TeX
# render every item measured under 512 MiB), and no work directory of a real item holds more
# than a few MiB.
DEFAULT_MEMORY_MB = 3072
DEFAULT_DISK_MB = 256
MAX_MEMORY_MB = 1024 * 1024  # 1 TiB: larger is a typo
MAX_DISK_MB = 1024 * 1024
# what a renderer prints when an allocation fails (glibc, Python, C++, Guile's collector, which
# only warns and may still finish: an item that reached the limit fails all the same)
_OUT_OF_MEMORY = re.compile(
    r"out of memory|cannot allocate memory|MemoryError|bad_alloc|memory exhausted", re.IGNORECASE
)
_GC_OUT_OF_MEMORY = "GC Warning: Out of Memory!"

# Directories shown empty and read-only inside the sandbox: homes, runtime state (sockets,
# secrets mounted by container runtimes), logs, mail, spools, backups (shadow copies), host keys
# and other places where people keep files. The user's own $HOME is added when it lies elsewhere.
HIDDEN_DIRS = (
    "/root",
    "/home",
    "/run",
    "/var/tmp",
    "/var/log",
    "/var/mail",
    "/var/spool",
    "/var/backups",
    "/etc/ssh",
    "/etc/ssl/private",
    "/mnt",
    "/media",
    "/srv",
)
# Files replaced inside the sandbox: those that name the machine (an image or an error message
# must not carry the host name) and the password hashes (readable when the renderer runs as root).
_LOCALHOST = "127.0.0.1 localhost\n::1 localhost\n"
MASKED_FILES: dict[str, str] = {
    "/etc/hostname": f"{SANDBOX_HOSTNAME}\n",
    "/etc/hosts": _LOCALHOST,
    "/etc/mailname": f"{SANDBOX_HOSTNAME}\n",
    "/etc/machine-id": "0" * 32 + "\n",
    "/var/lib/dbus/machine-id": "0" * 32 + "\n",
    "/etc/shadow": "",
    "/etc/shadow-": "",
    "/etc/gshadow": "",
    "/etc/gshadow-": "",
}
# The only variables a renderer inherits (plus those starting with these prefixes): where
# programs and libraries are, and nothing else of this process's environment.
_KEPT_VARIABLES = (
    "PATH",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "TZ",
    "SOURCE_DATE_EPOCH",
)
_KEPT_PREFIXES = ("TEXMF", "LILYPOND_")


@dataclass(frozen=True)
class Limits:
    """Bounds of each renderer process: address space and bytes written, in MiB."""

    memory_mb: int = DEFAULT_MEMORY_MB
    disk_mb: int = DEFAULT_DISK_MB

    def __post_init__(self) -> None:
        for name, value, top in (
            ("memory limit", self.memory_mb, MAX_MEMORY_MB),
            ("disk limit", self.disk_mb, MAX_DISK_MB),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= top:
                raise RenderError(f"{name} must be a whole number of MiB in 1..{top}, got {value}")

    def memory_message(self) -> str:
        """The error of an item whose renderer ran out of its address space."""
        return (
            f"memory limit reached: a renderer may use {self.memory_mb} MiB of address space "
            "(--memory-limit)"
        )

    def disk_message(self) -> str:
        """The error of an item whose renderer wrote too much."""
        return (
            f"disk limit reached: a renderer may write {self.disk_mb} MiB in its work directory "
            "(--disk-limit)"
        )


@dataclass(frozen=True)
class Outcome:
    """How a watched process ended."""

    returncode: int | None  # None when it was killed
    timed_out: bool
    cancelled: bool
    output: str  # stdout and stderr, interleaved as written
    progress: int  # progress marks seen (see ``run_watched``)
    seconds: float
    limit: str = ""  # the message naming the bound the run reached (``Limits``), if any


def renderer_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for renderer processes: English messages, home and runtime dir in ``workdir``.

    Only the variables that locate programs and libraries are passed on (see
    ``_KEPT_VARIABLES``): a renderer that can run code (LilyPond's Scheme) could otherwise
    print a token from this process's environment into an image.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key in _KEPT_VARIABLES or key.startswith(_KEPT_PREFIXES)
    }
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    env["HOME"] = str(workdir)
    env["TMPDIR"] = "/tmp"
    runtime = workdir / ".runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    if extra:
        env.update(extra)
    return env


# ---- the sandbox --------------------------------------------------------------------------------


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _hidden_dirs() -> list[Path]:
    """Directories shown empty: ``HIDDEN_DIRS``, the user's home and the temporary directory.

    The temporary directory holds the work directories of all items (and of other runs): each
    run sees only its own, bound back over the empty one (``/tmp`` is always a private tmpfs).
    """
    dirs = [Path(d) for d in HIDDEN_DIRS]
    system = [Path(p) for p in ("/usr", "/etc", "/bin", "/lib", "/tmp")]
    for extra in (os.path.expanduser("~"), tempfile.gettempdir()):
        path = Path(extra).resolve()
        # one that holds the system (``/``), lies in it, or is already hidden is left as it is
        if not any(_under(p, path) or _under(path, p) for p in system) and not any(
            _under(path, d) for d in dirs
        ):
            dirs.append(path)
    return [d for d in dirs if d.is_dir() and not d.is_symlink()]


def _code_dirs() -> list[Path]:
    """This Python and this package's code: read-only inside the sandbox even under a hidden dir."""
    package_root = Path(__file__).resolve().parents[3]  # the directory holding markup2im/
    return [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), package_root]


def sandbox_argv(
    cmd: Sequence[str],
    *,
    workdir: Path,
    cwd: Path,
    mask_fds: Mapping[str, int],
    limits: Limits | None = None,
) -> list[str]:
    """The bwrap command line that runs ``cmd`` in ``cwd`` with only ``workdir`` writable.

    ``mask_fds`` maps each file to replace (``MASKED_FILES``) to a readable descriptor of its
    replacement content (see ``_mask_descriptors``). ``cmd`` runs under ``limits`` (default
    ``Limits()``): ``prlimit`` sets them inside the sandbox and then becomes ``cmd``.
    """
    limits = limits or Limits()
    workdir = workdir.resolve()
    hidden = _hidden_dirs()
    argv = [
        SANDBOX_PROGRAM,
        "--die-with-parent",
        "--unshare-all",  # no network; own PID, IPC, UTS, cgroup (and user) namespaces
        # the renderer itself is PID 1 of its namespace: its CPU time is then accounted to this
        # process (bwrap's own PID 1 would not wait for it), and its end ends the namespace
        "--as-pid-1",
        "--hostname",
        SANDBOX_HOSTNAME,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--size",
        str(limits.disk_mb * MIB),
        "--tmpfs",
        "/tmp",
    ]
    for directory in hidden:
        argv += ["--tmpfs", str(directory)]
    for path, fd in mask_fds.items():
        argv += ["--perms", "0644", "--ro-bind-data", str(fd), path]
    # this Python and this package come back read-only where /tmp's or a hidden directory's
    # empty mount covers them (a checkout or virtualenv under /tmp or a home directory)
    covered = [*hidden, Path("/tmp")]
    for directory in _code_dirs():
        if directory.is_dir() and any(_under(directory, h) for h in covered):
            argv += ["--ro-bind", str(directory), str(directory)]
    argv += ["--bind", str(workdir), str(workdir)]
    # read-only last: bwrap makes the mount points of the binds above inside these first
    for directory in hidden:
        argv += ["--remount-ro", str(directory)]
    bounds = [f"--as={limits.memory_mb * MIB}", f"--fsize={limits.disk_mb * MIB}"]
    argv += ["--chdir", str(cwd.resolve()), "--", LIMIT_PROGRAM, *bounds, "--", *cmd]
    return argv


def _mask_descriptors() -> dict[str, int]:
    """A descriptor holding the replacement content of each masked file that exists here."""
    fds: dict[str, int] = {}
    for path, content in MASKED_FILES.items():
        if os.path.isfile(path) and not os.path.islink(path):  # a link's target is listed
            fd = os.memfd_create("markup2im-mask")
            os.write(fd, content.encode())
            os.lseek(fd, 0, os.SEEK_SET)
            fds[path] = fd
    return fds


def check_sandbox() -> None:
    """Raise RenderError when bwrap is missing or cannot make a sandbox on this machine."""
    path = shutil.which(SANDBOX_PROGRAM)
    if path is None:
        raise RenderError(
            "renderers run in a sandbox made by bubblewrap, but `bwrap` is not on PATH; "
            f"{SANDBOX_INSTALL}"
        )
    if shutil.which(LIMIT_PROGRAM) is None:
        raise RenderError(
            "renderers run under memory and disk limits set by `prlimit`, which is not on PATH; "
            "install the Debian package util-linux"
        )
    _probe(path)


@functools.cache
def _probe(path: str) -> None:
    """Start ``true`` in the sandbox once per bwrap found (a failure is not cached)."""
    with tempfile.TemporaryDirectory(prefix="markup2im-sandbox-") as tmp:
        fds = _mask_descriptors()
        try:
            argv = sandbox_argv(["true"], workdir=Path(tmp), cwd=Path(tmp), mask_fds=fds)
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                pass_fds=list(fds.values()),
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RenderError(f"cannot start the renderer sandbox ({path}): {exc}") from exc
        finally:
            for fd in fds.values():
                os.close(fd)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", errors="replace").strip() or (
            f"exit status {proc.returncode}"
        )
        raise RenderError(
            f"the renderer sandbox (bubblewrap, {path}) cannot run here: {message}. bwrap needs "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 and "
            "user.max_user_namespaces > 0) or root; in a container, allow namespaces (e.g. "
            "docker run --security-opt seccomp=unconfined) or run as root"
        )


# ---- renderers die with this process ----------------------------------------------------------

_LIVE: dict[int, subprocess.Popen[bytes]] = {}  # pid -> running renderer (its group id)
_LIVE_LOCK = threading.Lock()


def kill_all() -> None:
    """Kill the process group of every renderer this process is running."""
    with _LIVE_LOCK:
        pids = list(_LIVE)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def stop_on_signal(cancel: threading.Event) -> Iterator[None]:
    """While inside: on SIGTERM or SIGINT, set ``cancel``, kill all renderers, then stop.

    Stopping is what the signal did before (KeyboardInterrupt for SIGINT, a previous handler
    if one was installed), or ``SystemExit(128 + signal)`` for SIGTERM's default, which unwinds
    so that temporary directories are removed. Signals that were ignored stay ignored. Only the
    main thread can handle signals; elsewhere this does nothing (``--die-with-parent`` still
    ends the renderers when this process dies).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, object] = {}

    def handler(signum: int, frame: object) -> None:
        cancel.set()
        kill_all()
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        else:
            raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        before = signal.getsignal(signum)
        if before in (signal.SIG_IGN, None):
            continue
        previous[signum] = before
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, before)  # type: ignore[arg-type]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ---- the watchdog ------------------------------------------------------------------------------


def run_watched(
    cmd: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    workdir: Path | None = None,
    progress: re.Pattern[str] | None = None,
    items: int = 1,
    startup: float = 0.0,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    stdin_path: Path | None = None,
    limits: Limits | None = None,
) -> Outcome:
    """Run ``cmd`` in ``cwd`` in the sandbox (``workdir`` writable, default ``cwd``).

    The process group is killed when it stalls. Without ``progress`` the process gets
    ``timeout`` seconds in all. With ``progress`` (a regex matched against the output; each new
    match is one finished item) it gets ``timeout`` seconds per item: the clock restarts at
    every new match, and the whole run is capped at ``startup + timeout * (items + 1)`` so that
    output that never stops cannot keep it alive. ``startup`` is extra time for the first match
    only (starting LilyPond alone takes seconds). It is killed too when ``workdir`` grows past
    the disk limit of ``limits`` (default ``Limits()``, which also bounds its address space).
    The output goes to an unnamed file of this process: no renderer can reach it by name.
    """
    workdir = workdir or cwd
    limits = limits or Limits()
    start = time.monotonic()
    if cancel is not None and cancel.is_set():
        return Outcome(None, False, True, "", 0, 0.0)
    fds = _mask_descriptors()
    with tempfile.TemporaryFile(prefix="markup2im-output-") as log:
        try:
            argv = sandbox_argv(cmd, workdir=workdir, cwd=cwd, mask_fds=fds, limits=limits)
            with open(stdin_path or os.devnull, "rb") as stdin:
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    stdin=stdin,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else renderer_env(workdir),
                    start_new_session=True,
                    pass_fds=list(fds.values()),
                )
        finally:
            for fd in fds.values():
                os.close(fd)
        with _LIVE_LOCK:
            _LIVE[proc.pid] = proc
        try:
            ending = _watch(proc, log.fileno(), workdir, timeout, progress, items, startup, cancel,
                            limits, start)  # fmt: skip
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
        output = _read(log.fileno())
    timed_out, cancelled, over_disk = ending
    if cancel is not None and cancel.is_set() and proc.returncode != 0:
        cancelled = True  # killed by ``stop_on_signal`` (or cancelled as it ended)
    limit = ""
    if over_disk or _written_bytes(workdir, limits.disk_mb * MIB) >= limits.disk_mb * MIB:
        limit = limits.disk_message()
    elif (proc.returncode != 0 and _OUT_OF_MEMORY.search(output)) or _GC_OUT_OF_MEMORY in output:
        limit = limits.memory_message()
    return Outcome(
        returncode=None if (timed_out or cancelled or over_disk) else proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        output=output,
        progress=len(progress.findall(output)) if progress is not None else 0,
        seconds=time.monotonic() - start,
        limit=limit,
    )


def _watch(
    proc: subprocess.Popen[bytes],
    log_fd: int,
    workdir: Path,
    timeout: float,
    progress: re.Pattern[str] | None,
    items: int,
    startup: float,
    cancel: threading.Event | None,
    limits: Limits,
    start: float,
) -> tuple[bool, bool, bool]:
    """Wait for ``proc``, killing its group on a stall, cancel or full disk (which one: flags)."""
    seen = 0
    last_progress = start + startup  # the first window also covers starting up
    hard_deadline = start + startup + timeout * (items + 1)
    cap = limits.disk_mb * MIB
    poll = 0.005
    while True:
        try:
            proc.wait(timeout=poll)
            return False, False, False
        except subprocess.TimeoutExpired:
            pass
        poll = min(poll * 2, 0.1)
        now = time.monotonic()
        if progress is not None:
            found = len(progress.findall(_read(log_fd)))
            if found > seen:
                seen, last_progress = found, now
        ending = (
            cancel is not None and cancel.is_set(),
            now - last_progress > timeout or now > hard_deadline,
            _written_bytes(workdir, cap) >= cap,
        )
        if any(ending):
            _kill_group(proc)
            cancelled, timed_out, over_disk = ending
            return timed_out and not cancelled, cancelled, over_disk and not cancelled


def _written_bytes(workdir: Path, cap: int) -> int:
    """Disk used below ``workdir`` (each entry at least one 4 KiB block), counted up to ``cap``."""
    total = 0
    todo = [workdir]
    while todo and total < cap:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += max(stat.st_blocks * 512, stat.st_size, 4096)
            if entry.is_dir(follow_symlinks=False):
                todo.append(Path(entry.path))
    return total


def _read(fd: int) -> str:
    """Everything written to the output so far (``pread``: the renderer's offset is untouched)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")
