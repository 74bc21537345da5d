"""Samplers on trained models: DTW ratio to a blank page and seconds, side by side in one run.

Generates a dataset split with each sampler (the paper's 1000-step DDPM, DDIM and DPM-Solver++ at
a few step counts), each epsilon scale (``--eps-scales``: 1 is the plain sampler), each
classifier-free guidance scale (``--guidance-scales``, for models trained with markup dropout: 1
is the plain sampler) and each trained model, and scores it against the gold images. "vs ddpm"
is the mean DTW over 1000-step DDPM's of the same model (1.00 = as good); "img/s" is images generated per second (whole
generate call) and "speed" its ratio to 1000-step DDPM's (the goal on a GPU: DPM-Solver++ with 20
steps at least 40x). With ``--paired-against LABEL``, every other run gets the paired comparison
of its per-image DTW with that model's plain run of the same sampler (mean difference, 95%
bootstrap interval, win rate): the comparison of methods, epsilon and guidance scales on equal
terms. By default it uses what `make run` trained (results/math).

    python benchmarks/bench_samplers.py
    python benchmarks/bench_samplers.py --runs ddpm:1000 ddim:25 dpmsolver++:20 --threads 2
    python benchmarks/bench_samplers.py --device cuda --precision bf16 --batch-size 16
    python benchmarks/bench_samplers.py --runs ddim:10 --eps-scales 1 1.005 1.01 \\
        --models baseline=results/math/baseline/train/model ip=run/model --paired-against baseline
    python benchmarks/bench_samplers.py --runs ddim:10 --guidance-scales 1 1.5 2 3 \
        --models dropout=run/model
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from markup2im.eps_scaling import EpsScale
from markup2im.figures.paired import paired_comparison
from markup2im.generate import generate
from markup2im.guidance import check_guidance_scale, guided
from markup2im.metrics import evaluate_dirs
from markup2im.names import PAPER_METHODS, PRECISIONS

DEFAULT_RUNS = ("ddpm:1000", "ddim:10", "ddim:25", "ddim:50", "dpmsolver++:10", "dpmsolver++:20")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results/math", help="a dataset's results directory")
    p.add_argument("--methods", nargs="+", default=list(PAPER_METHODS),
                   help="methods whose models under --results are run")  # fmt: skip
    p.add_argument("--models", nargs="+", default=None, metavar="LABEL=DIR",
                   help="model directories to run instead of --methods")  # fmt: skip
    p.add_argument("--data", default=None, help="dataset directory (default: RESULTS/data/dataset)")
    p.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="SAMPLER:STEPS ...")
    p.add_argument("--eps-scales", nargs="+", default=["1"], help="epsilon scales (1: plain)")
    p.add_argument("--guidance-scales", nargs="+", type=float, default=[1.0],
                   help="classifier-free guidance scales (1: plain)")  # fmt: skip
    p.add_argument("--paired-against", default=None, metavar="LABEL",
                   help="compare every run with this model's plain run of the same sampler")  # fmt: skip
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="first N examples of the split")
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    return p.parse_args()


def model_dirs(args: argparse.Namespace) -> dict[str, Path]:
    """The models to run, by label: --models, else each method's model under --results."""
    if args.models:
        pairs = [item.split("=", 1) for item in args.models]
        return {label: Path(path) for label, path in pairs}
    results = Path(args.results)
    return {method: results / method / "train" / "model" for method in args.methods}


def run_one(args: argparse.Namespace, model_dir: Path, data: Path, run: str, scale: EpsScale,
            guidance: float, out: Path) -> dict:  # fmt: skip
    """Generate and score one (model, sampler, epsilon scale, guidance scale): the table's row."""
    sampler, steps = run.rsplit(":", 1)
    started = time.perf_counter()
    generate(model_dir, data, out, split=args.split, sampler=sampler,
             num_inference_steps=int(steps), seed=args.seed, device=args.device,
             precision=args.precision, batch_size=args.batch_size, limit=args.limit,
             eps_scale=scale, guidance_scale=guidance)  # fmt: skip
    seconds = time.perf_counter() - started
    summary = evaluate_dirs(out / "images", out / "gold", out / "metrics.csv", workers=1)
    return {"sampler": sampler, "steps": int(steps), "eps_scale": str(scale),
            "guidance_scale": guidance,
            "seconds": seconds, "dtw": summary["dtw"]["mean"],
            "blank_dtw": summary["blank"]["dtw"]["mean"], "ratio": summary["dtw_ratio_to_blank"],
            "count": summary["count"], "images_per_s": summary["count"] / seconds,
            "metrics_csv": str(out / "metrics.csv")}  # fmt: skip


def is_plain(row: dict) -> bool:
    """Whether a row ran the plain sampler (no epsilon scaling, no guidance)."""
    return EpsScale.parse(row["eps_scale"]).identity and not guided(row["guidance_scale"])


def add_paired(rows: list[dict], against: str) -> None:
    """Each row's paired DTW comparison with ``against``'s plain run of the same sampler."""
    plain = {(r["sampler"], r["steps"]): r for r in rows
             if r["model"] == against and is_plain(r)}  # fmt: skip
    for r in rows:
        reference = plain.get((r["sampler"], r["steps"]))
        if reference is None or reference is r:
            continue
        dtw = paired_comparison(reference["metrics_csv"], r["metrics_csv"])[0]
        r["paired"] = {k: dtw[k] for k in ("mean_difference", "ci_low", "ci_high", "win_rate")}


def print_table(rows: list[dict]) -> None:
    reference = {r["model"]: r for r in rows if (r["sampler"], r["steps"]) == ("ddpm", 1000)
                 and is_plain(r)}  # fmt: skip
    print(f"{'model':<19} {'sampler':<12} {'steps':>5} {'eps':>14} {'w':>5} {'seconds':>8} {'img/s':>8} "
          f"{'speed':>7} {'dtw':>7} {'/ blank':>8} {'vs ddpm':>8}  paired DTW (95% CI, win)")  # fmt: skip
    for r in rows:
        ref = reference.get(r["model"])
        versus = f"{r['dtw'] / ref['dtw']:.2f}" if ref else "-"
        speed = f"{r['images_per_s'] / ref['images_per_s']:.1f}x" if ref else "-"
        paired = r.get("paired")
        shown = (f"{paired['mean_difference']:+.3f} ({paired['ci_low']:+.3f} to "
                 f"{paired['ci_high']:+.3f}, {paired['win_rate']:.2f})" if paired else "-")  # fmt: skip
        print(f"{r['model']:<19} {r['sampler']:<12} {r['steps']:>5} {r['eps_scale']:>14} "
              f"{r['guidance_scale']:>5g} "
              f"{r['seconds']:>8.1f} {r['images_per_s']:>8.3f} {speed:>7} {r['dtw']:>7.2f} "
              f"{r['ratio']:>8.3f} {versus:>8}  {shown}")  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data) if args.data else Path(args.results) / "data" / "dataset"
    scales = [EpsScale.parse(s, "--eps-scales") for s in args.eps_scales]
    adjustments = [(scale, check_guidance_scale(w, "--guidance-scales"))
                   for w in args.guidance_scales for scale in scales]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model_dir in model_dirs(args).items():
            for run in args.runs:
                for k, (scale, w) in enumerate(adjustments):
                    out = Path(tmp) / label / run.replace(":", "-") / str(k)
                    row = run_one(args, model_dir, data, run, scale, w, out)
                    rows.append({"model": label, **row})
        if args.paired_against:
            add_paired(rows, args.paired_against)
    for r in rows:
        r.pop("metrics_csv")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
