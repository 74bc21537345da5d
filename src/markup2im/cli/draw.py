"""``markup2im draw``: images of markup typed on the command line or read from a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from markup2im.cli.generate import add_sampler_adjustment_flags
from markup2im.cli.paths import output_dir, output_file, positive_int
from markup2im.names import SAMPLERS


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``draw`` and its flags."""
    p = subparsers.add_parser(
        "draw",
        help="draw markup with a trained model (one markup, or a file of them)",
        description="Draws MARKUP into --output (and its denoising into --gif), or every markup "
        "of --markup-file into --output-dir, named like `markup2im render` names its images "
        "(so the two directories pair up for `markup2im evaluate`), with manifest.csv. Markup "
        "i of a file is drawn with seed --seed + i: the same seed gives the same image.",
    )
    p.add_argument(
        "markup",
        nargs="?",
        help="the markup to draw (quote it for the shell; after -- when it starts with -)",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="a saved model (O/model of train)")
    p.add_argument(
        "--markup-file",
        type=Path,
        default=None,
        help='.txt (one markup per line) or .jsonl ({"markup": ...} per line), instead of MARKUP',
    )
    p.add_argument("--output", type=output_file, default=None, help="PNG for MARKUP (draw.png)")
    p.add_argument("--gif", type=output_file, default=None, help="GIF of MARKUP's denoising")
    p.add_argument(
        "--output-dir",
        type=output_dir,
        default=None,
        help="directory for the images of --markup-file (required with it)",
    )
    p.add_argument(
        "--gifs", action="store_true", help="with --markup-file: also <name>.gif of each denoising"
    )
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="denoising steps (default: all 1000 for ddpm, 50 for ddim, 20 for dpmsolver++)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (default: 0)")
    add_sampler_adjustment_flags(p)
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="markups sampled together (default: 8)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Check the flags' combination, then draw."""
    from markup2im.drawing import draw_file, draw_one

    parser: argparse.ArgumentParser = args.parser
    if (args.markup is None) == (args.markup_file is None):
        parser.error("give either MARKUP or --markup-file (one of them)")
    if args.markup_file is not None:
        if args.output is not None or args.gif is not None:
            parser.error("--output and --gif are for MARKUP; with --markup-file give --output-dir")
        if args.output_dir is None:
            parser.error("--markup-file needs --output-dir")
        written = draw_file(
            args.model_dir,
            args.markup_file,
            args.output_dir,
            gifs=args.gifs,
            sampler=args.sampler,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            eps_scale=args.eps_scale,
            guidance_scale=args.guidance_scale,
        )
    else:
        if args.output_dir is not None or args.gifs:
            parser.error("--output-dir and --gifs are for --markup-file; with MARKUP give --output")
        written = draw_one(
            args.model_dir,
            args.markup,
            args.output or Path("draw.png"),
            gif=args.gif,
            sampler=args.sampler,
            steps=args.steps,
            seed=args.seed,
            device=args.device,
            eps_scale=args.eps_scale,
            guidance_scale=args.guidance_scale,
        )
    for item in written:
        print(f"wrote {item}")
    return 0
