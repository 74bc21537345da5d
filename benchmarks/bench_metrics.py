"""Speed of ``markup2im evaluate`` against the original metric stack (tslearn DTW + sewar SSIM/RMSE).

Generates N pairs of formula-like 320x64 grayscale images without any renderer (random LaTeX-ish
token strings drawn with PIL's default font, fraction bars, and a "prediction" that is the gold
string with a few token edits, an offset, a blur and noise), then

* times the WHOLE ``markup2im evaluate`` command as a subprocess (interpreter start-up, imports,
  loading the compiled kernels from the numba cache, worker processes, reading all images, writing
  the CSV and summary), once with a fresh numba cache (first run ever: compiles) and then warm;
* times the baseline the way the original evaluation computed it, one pair after another in one
  process: read both images, ``tslearn.metrics.dtw`` on the ink columns, ``sewar.full_ref.ssim``
  (ws=11) and ``sewar.full_ref.rmse``. Its start-up (imports, tslearn's JIT) is NOT counted, and it
  is measured on ``--baseline-pairs`` pairs and reported per pair (extrapolated to N).

Usage: .venv/bin/python benchmarks/bench_metrics.py --pairs 2000 --baseline-pairs 200
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WIDTH, HEIGHT = 320, 64
TOKENS = list("abcdxyznmkfgst0123456789+-=()[]<>|/*") + ["sin", "log", "lim"]


def random_formula(rng: np.random.Generator) -> list[str]:
    return [TOKENS[i] for i in rng.integers(0, len(TOKENS), size=int(rng.integers(4, 22)))]


def draw_formula(
    tokens: list[str], size: int, offset: tuple[int, int], frac_at: int | None
) -> Image.Image:
    """Draw tokens left to right; a fraction puts part of the string above a bar."""
    font = ImageFont.load_default(size=size)
    image = Image.new("L", (WIDTH, HEIGHT), 255)
    draw = ImageDraw.Draw(image)
    x, y = 6 + offset[0], HEIGHT // 2 - size // 2 + offset[1]
    for k, token in enumerate(tokens):
        if frac_at is not None and k == frac_at:
            top = tokens[k : k + 3]
            width = sum(draw.textlength(t, font=font) for t in top)
            draw.text((x, y - size // 2 - 2), "".join(top), font=font, fill=0)
            draw.line((x, y + size // 2, x + width, y + size // 2), fill=0, width=1)
            x += int(width) + 2
            continue
        if frac_at is not None and frac_at < k < frac_at + 3:
            continue
        draw.text((x, y), token, font=font, fill=0)
        x += int(draw.textlength(token, font=font)) + 1
    return image


def make_pair(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    tokens = random_formula(rng)
    size = int(rng.integers(14, 24))
    frac_at = int(rng.integers(0, len(tokens))) if rng.random() < 0.4 else None
    gold = draw_formula(tokens, size, (0, 0), frac_at)
    edited = list(tokens)
    for _ in range(int(rng.integers(0, 3))):
        edited[int(rng.integers(0, len(edited)))] = TOKENS[int(rng.integers(0, len(TOKENS)))]
    if rng.random() < 0.3 and len(edited) > 4:
        del edited[int(rng.integers(0, len(edited)))]
    offset = (int(rng.integers(-4, 5)), int(rng.integers(-3, 4)))
    pred = draw_formula(edited, size, offset, frac_at).filter(ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(pred, dtype=np.float64) + rng.normal(0, 8, size=(HEIGHT, WIDTH))
    pred = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))
    return pred, gold


def generate(root: Path, pairs: int, seed: int) -> tuple[Path, Path]:
    pred_dir, gold_dir = root / "pred", root / "gold"
    pred_dir.mkdir(parents=True, exist_ok=True)
    gold_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(pairs):
        pred, gold = make_pair(rng)
        pred.save(pred_dir / f"{i:06d}.png")
        gold.save(gold_dir / f"{i:06d}.png")
    return pred_dir, gold_dir


def time_command(
    pred_dir: Path, gold_dir: Path, out: Path, workers: int, env: dict[str, str]
) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and its worker processes) of one evaluate run."""
    markup2im = Path(sys.executable).with_name("markup2im")
    command = [str(markup2im)] if markup2im.exists() else [sys.executable, "-m", "markup2im"]
    command += ["evaluate", "--pred-dir", str(pred_dir), "--gold-dir", str(gold_dir)]
    command += ["--output", str(out / "metrics.csv"), "--summary", str(out / "summary.json")]
    command += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def time_baseline(
    pred_dir: Path, gold_dir: Path, count: int
) -> tuple[float, float, dict[str, tuple[float, float, float]]]:
    """Wall and CPU seconds per pair of tslearn DTW + sewar SSIM + sewar RMSE (start-up excluded),
    and the values (dtw, ssim, mse) per file name."""
    from sewar.full_ref import rmse, ssim
    from tslearn.metrics import dtw

    names = sorted(p.name for p in gold_dir.glob("*.png"))[:count]

    values = {}

    def one(name: str) -> None:
        pred = np.asarray(Image.open(pred_dir / name).convert("L"))
        gold = np.asarray(Image.open(gold_dir / name).convert("L"))
        d = dtw((pred < 150).T.astype(np.float64), (gold < 150).T.astype(np.float64))
        s = ssim(gold, pred, ws=11)[0]
        r = rmse(gold, pred)
        values[name] = (d, s, r * r)

    one(names[0])  # tslearn's JIT compile, not counted
    start, start_cpu = time.perf_counter(), time.process_time()
    for name in names:
        one(name)
    wall = (time.perf_counter() - start) / len(names)
    return wall, (time.process_time() - start_cpu) / len(names), values


def max_relative_difference(
    metrics_csv: Path, values: dict[str, tuple[float, float, float]]
) -> str:
    """Largest relative difference between markup2im's CSV and the baseline values."""
    with open(metrics_csv, newline="", encoding="utf-8") as handle:
        rows = {row["filename"]: row for row in csv.DictReader(handle)}
    worst = {"dtw": 0.0, "ssim": 0.0, "mse": 0.0}
    for name, reference in values.items():
        for metric, ref in zip(worst, reference, strict=True):
            ours = float(rows[name][metric])
            worst[metric] = max(worst[metric], abs(ours - ref) / max(abs(ref), 1e-300))
    return ", ".join(f"{m} {v:.1e}" for m, v in worst.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--baseline-pairs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="warm runs (the fastest is shown)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the images here")
    args = parser.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    try:
        start = time.perf_counter()
        pred_dir, gold_dir = generate(root, args.pairs, args.seed)
        print(
            f"generated {args.pairs} pairs of {WIDTH}x{HEIGHT} in {time.perf_counter() - start:.1f} s"
        )
        out = root / "out"
        env = dict(os.environ)
        env["NUMBA_CACHE_DIR"] = str(root / "numba_cache")  # fresh: the first run compiles
        load_before = os.getloadavg()[0]
        cold = time_command(pred_dir, gold_dir, out, args.workers, env)
        warm = min(
            (time_command(pred_dir, gold_dir, out, args.workers, env) for _ in range(args.repeat)),
            key=lambda t: t[0],
        )
        n_base = min(args.baseline_pairs, args.pairs)
        base_wall, base_cpu, values = time_baseline(pred_dir, gold_dir, n_base)
        n = args.pairs
        print(
            f"cores: {os.cpu_count()}, markup2im workers: {args.workers}, load average "
            f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
        )
        print(f"{'per pair, ms':57s}{'wall':>9s}{'CPU':>9s}{f'wall, {n} pairs':>18s}")
        rows = [
            ("markup2im evaluate, whole command (numba cache warm)", warm[0], warm[1], n),
            ("markup2im evaluate, whole command (first run, compiles)", cold[0], cold[1], n),
        ]
        for label, wall, cpu, count in rows:
            print(f"{label:57s}{wall / count * 1e3:9.3f}{cpu / count * 1e3:9.3f}{wall:16.2f} s")
        label = "tslearn dtw + sewar ssim + rmse, one process"
        print(
            f"{label:57s}{base_wall * 1e3:9.3f}{base_cpu * 1e3:9.3f}{base_wall * n:16.2f} s"
            f"  (measured on {n_base} pairs, start-up excluded, extrapolated)"
        )
        print(
            "max relative difference to the baseline's values: "
            + max_relative_difference(out / "metrics.csv", values)
        )
        print(
            f"speed-up per pair, wall: {base_wall * n / warm[0]:.1f}x (cache warm), "
            f"{base_wall * n / cold[0]:.1f}x (first run); CPU: {base_cpu * n / warm[1]:.1f}x "
            f"(cache warm), {base_cpu * n / cold[1]:.1f}x (first run)"
        )
        print("(markup2im also computes dtw_shift and reads/writes files; the baseline does not)")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
