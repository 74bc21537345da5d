"""Renderer throughput: items per second per domain with the real renderers.

Renders seeded synthetic markup of each domain with ``--workers`` parallel workers (default 2,
the CI machine's cores) and prints items/s. Math is shown with batching (many formulas per LaTeX
document, the default) and, for comparison, one formula per document.

    .venv/bin/python benchmarks/bench_render.py [--workers 2] [--scale 1.0] [--domains math,...]
"""

from __future__ import annotations

import argparse
import os
import time

from markup2im.data.render import render_markups
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the item counts")
    parser.add_argument("--domains", default="math,tables,music,molecules")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    wanted = set(args.domains.split(","))
    print(f"workers={args.workers}")
    # CPU time (this process and its renderer processes) shows the cost apart from machine load
    print(f"{'case':<26}{'items':>7}{'ok':>7}{'seconds':>10}{'items/s':>10}{'cpu ms/item':>13}")
    for domain, count, batch_size, label in CASES:
        if domain not in wanted:
            continue
        n = max(2, round(count * args.scale))
        markups = generate(domain, n, seed=args.seed)
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        items = render_markups(
            domain, markups, workers=args.workers, batch_size=batch_size, progress=False
        )
        seconds = time.perf_counter() - start
        cpu_ms = 1000 * (_cpu_seconds() - cpu_before) / n
        ok = sum(i.ok for i in items)
        print(
            f"{label:<26}{n:>7}{ok:>7}{seconds:>10.2f}{n / seconds:>10.1f}{cpu_ms:>13.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
