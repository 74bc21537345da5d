"""Learning curves: DTW ratio to a blank page against training steps, methods side by side.

Trains a model per training method (--methods: any registered ones, the paper's two by default)
on one dataset of a workflow config (the embedded default unless told otherwise) for a number of
minutes or steps, saves a snapshot of each every --every steps, and scores each snapshot on the
test split and on formulas from another generator seed that no model saw. A ratio below 1 means
closer to the gold images than a blank page (lower is better). The methods train side by side,
one process of --threads CPU threads each (as the workflow runs them; on one GPU they share it),
and the snapshots are scored the same way. The data is rendered by `markup2im build-dataset` with the workflow's flags for the
dataset (--data-only renders it and stops: benchmarks/gpu_wheels.sh ships it to a GPU machine).

    python benchmarks/bench_learning.py --minutes 6 --every 200
    python benchmarks/bench_learning.py --steps 400 --every 100 --config config.yaml --dataset math
    python benchmarks/bench_learning.py --minutes 3 --points 4 --device cuda --threads 4  # a GPU
    python benchmarks/bench_learning.py --steps 800 --every 400 \
        --methods baseline scheduled_sampling input_perturbation
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml

from markup2im.generate import generate
from markup2im.metrics import evaluate_dirs
from markup2im.names import METHODS, PAPER_METHODS
from markup2im.training.config import TrainConfig
from markup2im.training.stopping import TrainingInterrupted
from markup2im.training.trainer import train
from markup2im.workflow.config import load_config
from markup2im.workflow.flags import render_flags

ROOT = Path(__file__).resolve().parents[1]
PROBE_SKIP = 10  # probe steps left out of the timed rate (start-up, cuDNN autotuning)
# with --minutes, training stops (and says so) this long after it starts: 15% past its budget
# and the start-up (building the model, CUDA), so that a slower run still ends in time
DEADLINE_FACTOR, DEADLINE_SLACK = 1.15, 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config.yaml", help="workflow config to take settings from")
    p.add_argument("--dataset", default="math", help="dataset of the config")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(PAPER_METHODS),
                   help="training methods, side by side (default: the paper's two)")  # fmt: skip
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training minutes per method")
    budget.add_argument(
        "--steps", type=int, default=None, help="steps per method (default: config)"
    )
    p.add_argument("--every", type=int, default=100, help="steps between scored snapshots")
    p.add_argument("--points", type=int, default=None,
                   help="scored snapshots, evenly spaced (instead of --every)")  # fmt: skip
    p.add_argument("--probe-steps", type=int, default=40,
                   help="steps of the timing run that turns --minutes into steps")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None, help="per process (default: config)")
    p.add_argument("--train-examples", type=int, default=None,
                   help="render this many train formulas (default: config)")  # fmt: skip
    p.add_argument("--test-examples", type=int, default=None,
                   help="render this many validation and test formulas (default: config)")  # fmt: skip
    p.add_argument("--unseen-seed", type=int, default=99, help="generator seed of unseen formulas")
    p.add_argument("--unseen", type=int, default=16, help="unseen formulas scored")
    p.add_argument("--sampler", default=None, help="sampler name of the config (default: first)")
    p.add_argument("--device", default="cpu", help="where snapshots draw: cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="benchmarks/.learning", help="datasets and runs go here")
    p.add_argument("--data-dir", default=None, help="rendered datasets (default: WORKDIR/data)")
    p.add_argument("--data-only", action="store_true", help="render the datasets and stop")
    p.add_argument("--json", default=None, help="also write the curves to this JSON file")
    p.add_argument("--table", default=None, help="also write the table (Markdown) to this file")
    return p.parse_args(argv)


def load_settings(path: str, dataset: str) -> tuple[dict, dict, dict]:
    """(dataset entry, method settings, samplers) of a validated workflow config; the method
    settings are its scheduled_sampling block with input perturbation's gamma as ``ip``."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    config = load_config(raw, {}, ROOT / "schemas" / "config.schema.yaml")
    methods = {**config["scheduled_sampling"], "ip": config["input_perturbation"]["gamma"]}
    return config["datasets"][dataset], methods, config["samplers"]


def build(entry: dict, root: Path, **sizes: int | None) -> Path:
    """The config's rendered dataset, through `markup2im build-dataset` as the workflow calls it;
    ``sizes`` (seed, train, validation, test) replace the config's where given."""
    render = {**entry["source"]["render"], **{k: v for k, v in sizes.items() if v is not None}}
    out = root / f"seed{render['seed']}-n{render['train']}-t{render['test']}"
    if not out.exists():
        flags = render_flags(entry["domain"], render)
        command = [sys.executable, "-m", "markup2im", "build-dataset", *flags.split(),
                   "--workers", "2", "--output-dir", str(out)]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def build_all(args: argparse.Namespace, entry: dict) -> tuple[Path, Path]:
    """(the dataset, the unseen formulas) under --data-dir, rendered unless already there."""
    root = Path(args.data_dir) if args.data_dir else Path(args.workdir) / "data"
    tests = args.test_examples
    data = build(entry, root, train=args.train_examples, validation=tests, test=tests)
    unseen = build(entry, root, seed=args.unseen_seed, train=1, validation=1, test=args.unseen)
    return data, unseen


def train_config(entry: dict, ss: dict, method: str, data: Path, out: Path, steps: int,
                 every: int, batch_size: int | None = None) -> TrainConfig:  # fmt: skip
    model, settings = entry.get("model", {}), dict(entry.get("train", {}))
    for key in ("max_steps", "epochs", "checkpoint_every", "checkpoints_total_limit"):
        settings.pop(key, None)
    if batch_size is not None:
        settings["batch_size"] = batch_size
    extra = {}
    if method == "scheduled_sampling":
        extra = dict(ss_max_m=ss.get("max_m", 1), ss_start=tuple(ss.get("start", [0.0])),
                     ss_end=tuple(ss.get("end", [0.8])), ss_min_t=ss.get("min_t"),
                     ip_gamma=ss.get("ip_gamma") or None)  # fmt: skip
    elif method == "input_perturbation":
        extra = dict(ip_gamma=ss.get("ip"))
    keep = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(
        dataset_dir=data, output_dir=out, method=method, model_preset=model.get("preset", "small"),
        encoder=model.get("encoder", "offline"), prediction_type=model.get("prediction_type", "epsilon"),
        train_encoder=model.get("train_encoder", False), attention_from=model.get("attention_from"),
        max_steps=steps, snapshot_every=every,
        checkpoint_every=10**9, **{k: v for k, v in settings.items() if k in keep}, **extra,
    )  # fmt: skip


def timed_rate(log: Path, skip: int) -> float:
    """Steps per second of a run's train_log.csv, leaving out its first ``skip`` steps."""
    with log.open(encoding="utf-8") as handle:
        rows = [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(handle)]
    (first, start), (last, end) = rows[min(skip, len(rows) - 2)], rows[-1]
    return (last - first) / max(end - start, 1e-9)


def probe(job: tuple) -> float:
    """Steps per second of one method, from a short run (in its own process, like the runs)."""
    method, entry, ss, data, run, steps, batch_size, threads = job
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(run, ignore_errors=True)
    train(train_config(entry, ss, method, data, run, steps, steps, batch_size))
    return timed_rate(run / "train_log.csv", min(PROBE_SKIP, steps // 4))


def score(model_dir: Path, data: Path, out: Path, sampler: dict, device: str) -> float | None:
    generate(model_dir, data, out, sampler=sampler["sampler"],
             num_inference_steps=sampler.get("steps"), seed=0, device=device,
             eps_scale=sampler.get("eps_scale"), guidance_scale=sampler.get("guidance_scale"))  # fmt: skip
    summary = evaluate_dirs(out / "images", out / "gold", out / "metrics.csv", workers=1)
    return summary["dtw_ratio_to_blank"]


def run_method(job: tuple) -> list[dict]:
    """Train one method with snapshots and score every snapshot (runs in its own process)."""
    method, entry, ss, data, unseen, run, steps, every, sampler, options = job
    torch.set_num_threads(options["threads"])
    logging.basicConfig(level=logging.WARNING)
    config = train_config(entry, ss, method, data, run, steps, every, options["batch_size"])
    if options["budget"] is not None:
        deadline = time.time() + DEADLINE_FACTOR * options["budget"] + DEADLINE_SLACK
        config = dataclasses.replace(config, deadline=deadline)
    started = time.perf_counter()
    try:
        train(config)
    except TrainingInterrupted as stopped:  # past the deadline: score the snapshots so far
        print(f"{method}: {stopped}", file=sys.stderr)
    seconds = time.perf_counter() - started
    points = []
    snapshots = (run / "snapshots").iterdir() if (run / "snapshots").is_dir() else []
    for snapshot in sorted(snapshots, key=lambda p: int(p.name[5:])):
        step = int(snapshot.name[5:])
        scored = run / "scored" / snapshot.name
        points.append({
            "step": step,
            "minutes": seconds / 60 * step / steps,
            "test": score(snapshot, data, scored / "test", sampler, options["device"]),
            "unseen": score(snapshot, unseen, scored / "unseen", sampler, options["device"]),
        })  # fmt: skip
    return points


def curve_table(curves: dict[str, list[dict]], sampler: dict, steps: int, batch: int) -> str:
    """The curves as a Markdown table: one row per scored step, the methods side by side."""
    methods = list(curves)
    titles = [f"{m} {split}" for split in ("test", "unseen") for m in methods]
    lines = [
        f"DTW ratio to a blank page (lower is better; {sampler['sampler']} "
        f"{sampler.get('steps')} steps), {steps} steps of batch {batch} per method",
        "",
        "| step | minutes | " + " | ".join(titles) + " |",
        "|---:|---:|" + "---:|" * len(titles),
    ]
    for points in zip(*curves.values(), strict=False):
        cells = [p[split] for split in ("test", "unseen") for p in points]
        shown = [f"{c:.3f}" if c is not None and math.isfinite(c) else "-" for c in cells]
        first = points[0]
        lines.append(f"| {first['step']} | {first['minutes']:.1f} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]] | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    entry, ss, samplers = load_settings(args.config, args.dataset)
    data, unseen = build_all(args, entry)
    if args.data_only:
        print(f"datasets: {data}, {unseen}")
        return None
    sampler = samplers[args.sampler or next(iter(samplers))]
    root = Path(args.workdir)
    batch = args.batch_size or entry["train"]["batch_size"]
    steps = args.steps or entry["train"].get("max_steps")
    methods = args.methods
    pool = ProcessPoolExecutor(max_workers=len(methods), mp_context=get_context("spawn"))
    with pool:
        if args.minutes is not None:
            # both methods at once, as they train: on one GPU they share it
            jobs = [(m, entry, ss, data, root / "probe" / m, args.probe_steps, batch, args.threads)
                    for m in methods]  # fmt: skip
            steps = max(1, int(args.minutes * 60 * min(pool.map(probe, jobs))))
        if not steps:
            raise SystemExit("give --steps or --minutes (the config sets no max_steps)")
        every = min(args.every, steps)
        if args.points:  # the last point at the last step
            every = max(1, steps // args.points)
            steps = every * min(args.points, steps)
        budget = args.minutes * 60 if args.minutes is not None else None
        options = {"threads": args.threads, "batch_size": batch, "device": args.device,
                   "budget": budget}  # fmt: skip
        jobs = [(m, entry, ss, data, unseen, root / "runs" / m, steps, every, sampler, options)
                for m in methods]  # fmt: skip
        for job in jobs:
            shutil.rmtree(job[5], ignore_errors=True)
        curves = dict(zip(methods, pool.map(run_method, jobs), strict=True))
    table = curve_table(curves, sampler, steps, batch)
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(curves, indent=2), encoding="utf-8")
    return curves


if __name__ == "__main__":
    main()
