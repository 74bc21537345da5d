"""``markup2im evaluate``: DTW, DTW with shift, SSIM and MSE of predictions against gold images,
and optionally their CLIP similarity."""

from __future__ import annotations

import argparse

from markup2im.cli.paths import output_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted images against gold images (dtw, dtw_shift, ssim, mse)",
        description=__doc__,
    )
    parser.add_argument("--pred-dir", required=True, help="directory of predicted images")
    parser.add_argument("--gold-dir", required=True, help="directory of gold images (same names)")
    parser.add_argument(
        "--output", type=output_file, required=True, help="per-image metrics CSV to write"
    )
    parser.add_argument(
        "--summary",
        type=output_file,
        default=None,
        help="summary JSON to write (mean/std/median, and the same for a blank page)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    parser.add_argument(
        "--clip-model",
        default=None,
        help="also score CLIP cosine similarity (a `clip` column and summary entry) with this "
        "CLIP model: a hub name such as openai/clip-vit-base-patch32 (the original's ViT-B/32) "
        "or a local directory; without it no CLIP model is loaded",
    )
    parser.add_argument(
        "--clip-batch-size", type=int, default=32, help="images per CLIP forward pass"
    )
    parser.add_argument("--device", default="auto", help="CLIP device: auto, cpu or cuda[:N]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the two directories (imports the metrics only when the command runs)."""
    from markup2im.metrics import evaluate_dirs

    evaluate_dirs(
        args.pred_dir,
        args.gold_dir,
        args.output,
        args.summary,
        workers=args.workers,
        clip_model=args.clip_model,
        clip_batch_size=args.clip_batch_size,
        device=args.device,
    )
    return 0
