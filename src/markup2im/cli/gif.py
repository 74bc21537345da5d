"""``markup2im gif``: denoising GIFs from saved frames, alone or side by side with gold."""

from __future__ import annotations

import argparse

from markup2im.cli.figures import labelled
from markup2im.cli.paths import output_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gif denoise`` and ``gif compare``."""
    parser = subparsers.add_parser("gif", help="denoising GIFs", description=__doc__)
    commands = parser.add_subparsers(dest="gif_command", required=True, metavar="KIND")

    denoise = commands.add_parser(
        "denoise", help="GIF of one example's frames (frames/<stem>/step_NNNN.png)"
    )
    denoise.add_argument("--frames-dir", required=True, help="directory of step_NNNN.png frames")
    denoise.add_argument("--output", type=output_file, required=True, help="GIF to write")
    _timing(denoise)
    denoise.set_defaults(func=run_denoise)

    compare = commands.add_parser(
        "compare", help="side-by-side GIF: gold, then each run's frames, labelled"
    )
    compare.add_argument("--gold", required=True, help="gold image")
    compare.add_argument(
        "--frames",
        required=True,
        action="append",
        type=labelled,
        metavar="LABEL=DIR",
        help="frames directory of one run (repeat, e.g. baseline=... scheduled_sampling=...)",
    )
    compare.add_argument("--output", type=output_file, required=True, help="GIF to write")
    _timing(compare)
    compare.set_defaults(func=run_compare)


def _timing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--every", type=int, default=1, help="keep every K-th frame (default 1)")
    parser.add_argument("--frame-ms", type=int, default=80, help="duration of a frame (ms)")
    parser.add_argument(
        "--final-hold-ms", type=int, default=2000, help="duration of the final frame (ms)"
    )
    parser.add_argument("--scale", type=int, default=None, help="enlargement (default: auto)")


def run_denoise(args: argparse.Namespace) -> int:
    """Write the denoising GIF."""
    from markup2im.figures.gif import denoise_gif

    denoise_gif(
        args.frames_dir, args.output, args.every, args.frame_ms, args.final_hold_ms, args.scale
    )
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Write the side-by-side comparison GIF."""
    from markup2im.figures.gif import compare_gif

    compare_gif(
        args.gold,
        args.frames,
        args.output,
        args.every,
        args.frame_ms,
        args.final_hold_ms,
        args.scale,
    )
    return 0
