"""markup2im.training.lock: one training per output directory, its holder named, stale locks
of this host taken over, other hosts' locks explained, released on exit and on exceptions."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from markup2im.errors import Markup2ImError
from markup2im.training.lock import (
    LOCK_NAME,
    Holder,
    TrainingLock,
    TrainingLockedError,
    is_main_process,
    process_start,
)

# A second process that takes the lock of a directory, says so and holds it until stdin closes.
HOLDER = textwrap.dedent(
    """
    import sys
    from markup2im.training.lock import TrainingLock
    with TrainingLock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
    """
)


def hold_in_another_process(directory: Path) -> subprocess.Popen[str]:
    """A real second process holding the lock of ``directory`` (close its stdin to end it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def dead_pid() -> int:
    """The PID of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(directory: Path, **fields: object) -> Path:
    path = directory / LOCK_NAME
    holder = {"host": socket.gethostname(), "pid": 1, "started": None, "since": time.time()}
    path.write_text(json.dumps({**holder, **fields}), encoding="utf-8")
    return path


def test_a_second_process_is_stopped_with_the_holders_name(tmp_path: Path) -> None:
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(TrainingLockedError) as info, TrainingLock(tmp_path):
            pytest.fail("took a lock that another process holds")
        message = str(info.value)
        assert f"PID {holder.pid} on host {socket.gethostname()}" in message
        assert f"kill {holder.pid}" in message and str(tmp_path) in message
        assert isinstance(info.value, Markup2ImError)  # the CLI prints it, exit status 2
        assert (tmp_path / LOCK_NAME).is_file()  # the holder's lock is left alone
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not (tmp_path / LOCK_NAME).exists()  # released when the holder ended
    with TrainingLock(tmp_path) as lock:  # and free again
        assert lock.holder is not None and lock.holder.pid > 0


def test_released_on_an_exception_and_never_anothers(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), TrainingLock(tmp_path):
        assert (tmp_path / LOCK_NAME).is_file()
        raise RuntimeError("training failed")
    assert not (tmp_path / LOCK_NAME).exists()

    lock = TrainingLock(tmp_path)
    lock.acquire()
    other = write_lock(tmp_path, pid=dead_pid())  # replaced behind its back
    lock.release()
    assert other.is_file()


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path: Path, caplog) -> None:
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    with caplog.at_level("WARNING"), TrainingLock(tmp_path) as lock:
        assert lock.holder is not None
        assert Holder.parse((tmp_path / LOCK_NAME).read_text()).pid == lock.holder.pid
    assert f"PID {pid} on host" in caplog.text and "no longer runs" in caplog.text


def test_a_reused_pid_is_stale_but_a_live_holder_is_not(tmp_path: Path) -> None:
    holder = hold_in_another_process(tmp_path)
    try:
        start = process_start(holder.pid)
        assert start is not None
        # the same PID started at another time: another process that reuses the PID
        write_lock(tmp_path, pid=holder.pid, started=start - 1)
        with TrainingLock(tmp_path):
            pass
        write_lock(tmp_path, pid=holder.pid, started=start)
        with pytest.raises(TrainingLockedError):
            TrainingLock(tmp_path).acquire()
    finally:
        holder.communicate("")


def test_another_hosts_lock_says_how_to_remove_it(tmp_path: Path) -> None:
    path = write_lock(tmp_path, host="node-17", pid=dead_pid())
    with pytest.raises(TrainingLockedError) as info:
        TrainingLock(tmp_path).acquire()
    message = str(info.value)
    assert "on host node-17" in message and f"remove {path}" in message
    assert path.is_file()


def test_an_unreadable_lock_is_stale_only_when_old(tmp_path: Path) -> None:
    import os

    path = tmp_path / LOCK_NAME
    path.write_text("", encoding="utf-8")  # being written by another host right now
    with pytest.raises(TrainingLockedError):
        TrainingLock(tmp_path).acquire()
    os.utime(path, (time.time() - 3600, time.time() - 3600))  # left by a crash
    with TrainingLock(tmp_path):
        pass


@pytest.mark.parametrize(
    ("environ", "main"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"RANK": "1", "LOCAL_RANK": "1"}, False),
        ({"PMI_RANK": "2"}, False),
        ({"OMPI_COMM_WORLD_RANK": "0"}, True),
    ],
)
def test_only_the_main_process_takes_the_lock(
    tmp_path: Path, environ: dict[str, str], main: bool
) -> None:
    assert is_main_process(environ) is main
    holder = hold_in_another_process(tmp_path)
    try:
        # the other processes of a run neither take nor check the lock that their main holds
        with TrainingLock(tmp_path, active=False):
            pass
        assert (tmp_path / LOCK_NAME).is_file()
    finally:
        holder.communicate("")
