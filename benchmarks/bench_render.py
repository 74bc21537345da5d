"""Renderer throughput: items per second per domain with the real renderers.

Renders seeded synthetic markup of each domain with ``--workers`` parallel workers (default 2,
the CI machine's cores) and prints items/s. Math is shown with batching (many formulas per LaTeX
document, the default) and, for comparison, one formula per document.

Every renderer runs in its sandbox (bubblewrap, see ``markup2im.data.render.process``). With
``--sandbox-cost`` each case is also run with the sandbox taken out (inside this benchmark only:
the library has no way to turn it off), right after the sandboxed run, and the time of starting
one sandbox is measured on its own.

    .venv/bin/python benchmarks/bench_render.py [--workers 2] [--scale 1.0] [--domains math,...]
        [--sandbox-cost]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from markup2im.data.render import process, render_markups
from markup2im.data.synth import generate

# domain -> (items at scale 1, batch size override or None, label)
CASES = [
    ("math", 512, None, "math (batched)"),
    ("math", 64, 1, "math (one per document)"),
    ("tables", 48, None, "tables"),
    ("music", 48, None, "music"),
    ("molecules", 512, None, "molecules"),
]


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@contextlib.contextmanager
def _unsandboxed() -> Iterator[None]:
    """Renderer commands run as they are, for measuring what the sandbox costs."""
    original = process.sandbox_argv
    process.sandbox_argv = lambda cmd, **_: list(cmd)
    try:
        yield
    finally:
        process.sandbox_argv = original


def _sandbox_start_ms(repeats: int = 50) -> tuple[float, float]:
    """Milliseconds to run ``true`` in the sandbox and directly."""
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for wrap in (True, False):
            fds = process._mask_descriptors() if wrap else {}
            cmd = ["true"]
            if wrap:
                cmd = process.sandbox_argv(cmd, workdir=Path(tmp), cwd=Path(tmp), mask_fds=fds)
            start = time.perf_counter()
            for _ in range(repeats):
                for fd in fds.values():
                    os.lseek(fd, 0, os.SEEK_SET)
                subprocess.run(cmd, check=True, pass_fds=list(fds.values()))
            times.append(1000 * (time.perf_counter() - start) / repeats)
            for fd in fds.values():
                os.close(fd)
    return times[0], times[1]


def _run_case(domain: str, markups: list[str], workers: int, batch_size: int | None):
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    items = render_markups(domain, markups, workers=workers, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    cpu_ms = 1000 * (_cpu_seconds() - cpu_before) / len(markups)
    return sum(i.ok for i in items), seconds, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the item counts")
    parser.add_argument("--domains", default="math,tables,music,molecules")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sandbox-cost",
        action="store_true",
        help="also run each case without the sandbox, to measure what it costs",
    )
    args = parser.parse_args()
    wanted = set(args.domains.split(","))
    print(f"workers={args.workers}")
    if args.sandbox_cost:
        sandboxed, direct = _sandbox_start_ms()
        print(f"starting a process: {sandboxed:.1f} ms in the sandbox, {direct:.1f} ms without")
    # CPU time (this process and its renderer processes) shows the cost apart from machine load
    print(f"{'case':<34}{'items':>7}{'ok':>7}{'seconds':>10}{'items/s':>10}{'cpu ms/item':>13}")
    for domain, count, batch_size, label in CASES:
        if domain not in wanted:
            continue
        n = max(2, round(count * args.scale))
        markups = generate(domain, n, seed=args.seed)
        runs = [(label, contextlib.nullcontext())]
        if args.sandbox_cost:
            runs.append((f"{label}, no sandbox", _unsandboxed()))
        for name, context in runs:
            with context:
                ok, seconds, cpu_ms = _run_case(domain, markups, args.workers, batch_size)
            print(
                f"{name:<34}{n:>7}{ok:>7}{seconds:>10.2f}{n / seconds:>10.1f}{cpu_ms:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
