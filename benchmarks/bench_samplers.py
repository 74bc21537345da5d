"""Samplers on trained models: DTW ratio to a blank page and seconds, side by side in one run.

Generates the test split of a dataset with each sampler (the paper's 1000-step DDPM, DDIM and
DPM-Solver++ at a few step counts) for each trained model and scores it against the gold images.
The column "vs ddpm" is the sampler's mean DTW over 1000-step DDPM's (1.00 = as good); "img/s"
is images generated per second (whole generate call) and "speed" its ratio to 1000-step DDPM's
(the goal on a GPU: DPM-Solver++ with 20 steps at least 40x). By default it uses what `make run`
trained (results/math).

    python benchmarks/bench_samplers.py
    python benchmarks/bench_samplers.py --runs ddpm:1000 ddim:25 dpmsolver++:20 --threads 2
    python benchmarks/bench_samplers.py --device cuda --precision bf16 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from markup2im.generate import generate
from markup2im.metrics import evaluate_dirs
from markup2im.names import PRECISIONS

DEFAULT_RUNS = ("ddpm:1000", "ddim:10", "ddim:25", "ddim:50", "dpmsolver++:10", "dpmsolver++:20")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results/math", help="a dataset's results directory")
    p.add_argument("--methods", nargs="+", default=["baseline", "scheduled_sampling"])
    p.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="SAMPLER:STEPS ...")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="first N examples of the split")
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    results = Path(args.results)
    data = results / "data" / "dataset"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            model_dir = results / method / "train" / "model"
            for run in args.runs:
                sampler, steps = run.rsplit(":", 1)
                out = Path(tmp) / method / run.replace(":", "-")
                started = time.perf_counter()
                generate(model_dir, data, out, split=args.split, sampler=sampler,
                         num_inference_steps=int(steps), seed=args.seed, device=args.device,
                         precision=args.precision, batch_size=args.batch_size,
                         limit=args.limit)  # fmt: skip
                seconds = time.perf_counter() - started
                summary = evaluate_dirs(out / "images", out / "gold", out / "m.csv", workers=1)
                rows.append({"method": method, "sampler": sampler, "steps": int(steps),
                             "seconds": seconds, "dtw": summary["dtw"]["mean"],
                             "blank_dtw": summary["blank"]["dtw"]["mean"],
                             "ratio": summary["dtw_ratio_to_blank"], "count": summary["count"]})  # fmt: skip
    reference = {r["method"]: r for r in rows if (r["sampler"], r["steps"]) == ("ddpm", 1000)}
    for r in rows:
        r["images_per_s"] = r["count"] / r["seconds"]
    print(f"{'method':<19} {'sampler':<12} {'steps':>5} {'seconds':>8} {'img/s':>8} "
          f"{'speed':>7} {'dtw':>7} {'/ blank':>8} {'vs ddpm':>8}")  # fmt: skip
    for r in rows:
        ref = reference.get(r["method"])
        versus = f"{r['dtw'] / ref['dtw']:.2f}" if ref else "-"
        speed = f"{r['images_per_s'] / ref['images_per_s']:.1f}x" if ref else "-"
        print(f"{r['method']:<19} {r['sampler']:<12} {r['steps']:>5} {r['seconds']:>8.1f} "
              f"{r['images_per_s']:>8.3f} {speed:>7} {r['dtw']:>7.2f} {r['ratio']:>8.3f} "
              f"{versus:>8}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
