"""Learning curves at CPU scale: DTW ratio to a blank page against training steps, both methods.

Trains the baseline and the scheduled-sampling model of one dataset of a workflow config (the
embedded default unless told otherwise) for a number of minutes or steps, saves a snapshot of
each every --every steps, and scores each snapshot on the test split and on formulas from another
generator seed that no model saw. A ratio below 1 means closer to the gold images than a blank
page (lower is better). The two methods train side by side in two processes of --threads CPU
threads each (as the workflow runs them), and the snapshots are scored the same way.

    python benchmarks/bench_learning.py --minutes 6 --every 200
    python benchmarks/bench_learning.py --steps 400 --every 100 --config config.yaml --dataset math
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml

from markup2im.data.datasets import build_dataset
from markup2im.generate import generate
from markup2im.metrics import evaluate_dirs
from markup2im.training.config import TrainConfig
from markup2im.training.trainer import train

METHODS = ("baseline", "scheduled_sampling")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config.yaml", help="workflow config to take settings from")
    p.add_argument("--dataset", default="math", help="dataset of the config")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training minutes per method")
    budget.add_argument(
        "--steps", type=int, default=None, help="steps per method (default: config)"
    )
    p.add_argument("--every", type=int, default=100, help="steps between scored snapshots")
    p.add_argument("--unseen-seed", type=int, default=99, help="generator seed of unseen formulas")
    p.add_argument("--unseen", type=int, default=16, help="unseen formulas scored")
    p.add_argument("--sampler", default=None, help="sampler name of the config (default: first)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="benchmarks/.learning", help="datasets and runs go here")
    p.add_argument("--json", default=None, help="also write the curves to this JSON file")
    return p.parse_args()


def load_settings(path: str, dataset: str) -> tuple[dict, dict, dict]:
    """(dataset entry, scheduled_sampling block, sampler entry) of a workflow config."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return config["datasets"][dataset], config.get("scheduled_sampling", {}), config["samplers"]


def build(entry: dict, root: Path, seed: int | None = None, test: int | None = None) -> Path:
    """The config's rendered dataset (another generator seed and test size when given)."""
    render = dict(entry["source"]["render"])
    if seed is not None:
        render.update(seed=seed, train=1, validation=1, test=test)
    name = f"seed{render.get('seed', 0)}-n{render.get('train')}"
    out = root / name
    if not out.exists():
        build_dataset(
            entry["domain"], out, synthetic=True, difficulty=render.get("difficulty"),
            train=render.get("train"), validation=render.get("validation"),
            test=render.get("test"), seed=render.get("seed", 0), width=render.get("width"),
            height=render.get("height"), progress=False,
        )  # fmt: skip
    return out


def train_config(entry: dict, ss: dict, method: str, data: Path, out: Path, steps: int, every: int):
    model, settings = entry.get("model", {}), dict(entry.get("train", {}))
    for key in ("max_steps", "epochs", "checkpoint_every", "checkpoints_total_limit"):
        settings.pop(key, None)
    extra = {}
    if method == "scheduled_sampling":
        extra = dict(ss_max_m=ss.get("max_m", 1), ss_start=tuple(ss.get("start", [0.0])),
                     ss_end=tuple(ss.get("end", [0.8])), ss_min_t=ss.get("min_t"))  # fmt: skip
    keep = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(
        dataset_dir=data, output_dir=out, method=method, model_preset=model.get("preset", "small"),
        encoder=model.get("encoder", "offline"), prediction_type=model.get("prediction_type", "epsilon"),
        train_encoder=model.get("train_encoder", False), max_steps=steps, snapshot_every=every,
        checkpoint_every=10**9, **{k: v for k, v in settings.items() if k in keep}, **extra,
    )  # fmt: skip


def steps_for(minutes: float, entry: dict, ss: dict, data: Path, root: Path) -> int:
    """Steps that fit ``minutes``, from the timed rate of a short scheduled-sampling run."""
    probe = root / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    config = train_config(entry, ss, "scheduled_sampling", data, probe, 30, 30)
    started = time.perf_counter()
    train(config)
    rate = 30 / (time.perf_counter() - started)
    return max(1, int(minutes * 60 * rate))


def score(model_dir: Path, data: Path, out: Path, sampler: dict, seed: int) -> float | None:
    generate(model_dir, data, out, sampler=sampler["sampler"],
             num_inference_steps=sampler.get("steps"), seed=seed, device="cpu")  # fmt: skip
    summary = evaluate_dirs(out / "images", out / "gold", out / "metrics.csv", workers=1)
    return summary["dtw_ratio_to_blank"]


def run_method(job: tuple) -> list[dict]:
    """Train one method with snapshots and score every snapshot (runs in its own process)."""
    method, entry, ss, data, unseen, run, steps, every, sampler, threads = job
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    train(train_config(entry, ss, method, data, run, steps, every))
    seconds = time.perf_counter() - started
    points = []
    for snapshot in sorted((run / "snapshots").iterdir(), key=lambda p: int(p.name[5:])):
        step = int(snapshot.name[5:])
        scored = run / "scored" / snapshot.name
        points.append({
            "step": step,
            "minutes": seconds / 60 * step / steps,
            "test": score(snapshot, data, scored / "test", sampler, 0),
            "unseen": score(snapshot, unseen, scored / "unseen", sampler, 0),
        })  # fmt: skip
    return points


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    entry, ss, samplers = load_settings(args.config, args.dataset)
    sampler = samplers[args.sampler or next(iter(samplers))]
    root = Path(args.workdir)
    data = build(entry, root / "data")
    unseen = build(entry, root / "data", seed=args.unseen_seed, test=args.unseen)
    steps = args.steps or entry.get("train", {}).get("max_steps")
    if args.minutes is not None:
        steps = steps_for(args.minutes, entry, ss, data, root)
    if not steps:
        raise SystemExit("give --steps or --minutes (the config sets no max_steps)")
    every = min(args.every, steps)
    jobs = [
        (m, entry, ss, data, unseen, root / "runs" / m, steps, every, sampler, args.threads)
        for m in METHODS
    ]
    for job in jobs:
        shutil.rmtree(job[5], ignore_errors=True)
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
        curves = dict(zip(METHODS, pool.map(run_method, jobs), strict=True))
    print(f"DTW ratio to a blank page (lower is better; {sampler['sampler']} "
          f"{sampler.get('steps')} steps), {steps} steps per method")  # fmt: skip
    print(f"{'step':>6} {'minutes':>8} {'base test':>10} {'ss test':>8} {'base unseen':>12} "
          f"{'ss unseen':>10}")  # fmt: skip
    for b, s in zip(curves["baseline"], curves["scheduled_sampling"], strict=True):
        cells = [b["test"], s["test"], b["unseen"], s["unseen"]]
        shown = [f"{c:.3f}" if c is not None and math.isfinite(c) else "-" for c in cells]
        print(f"{b['step']:>6} {b['minutes']:>8.1f} {shown[0]:>10} {shown[1]:>8} {shown[2]:>12} "
              f"{shown[3]:>10}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(curves, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
