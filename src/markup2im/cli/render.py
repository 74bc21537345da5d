"""``markup2im render``: render a markup file to PNGs and a manifest, with the real renderers."""

from __future__ import annotations

import argparse

from markup2im.cli.paths import output_dir, positive_float, positive_int
from markup2im.names import DOMAINS

__all__ = ["add_parser", "add_render_options", "positive_float", "positive_int", "run"]


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``render`` and ``build-dataset``: canvas size, workers, timeout."""
    parser.add_argument(
        "--width", type=positive_int, default=None, help="canvas width (default: the domain's)"
    )
    parser.add_argument(
        "--height", type=positive_int, default=None, help="canvas height (default: the domain's)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="parallel renderer processes (default: all cores)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        help="seconds allowed per item before its renderer is killed (default: 30)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``render`` subcommand."""
    parser = subparsers.add_parser(
        "render",
        help="render markup (one per line) to PNG images and manifest.csv",
        description=__doc__,
    )
    parser.add_argument("--domain", required=True, help=f"markup domain: {', '.join(DOMAINS)}")
    parser.add_argument(
        "--markup-file",
        required=True,
        help='.txt (one markup per line) or .jsonl ({"markup": ...} per line)',
    )
    parser.add_argument(
        "--output-dir",
        type=output_dir,
        required=True,
        help="directory for the PNGs and manifest.csv",
    )
    add_render_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render the file; prints the counts; exit 0 when at least one item rendered."""
    from markup2im.data.render import render_markup_file

    summary = render_markup_file(
        args.domain,
        args.markup_file,
        args.output_dir,
        width=args.width,
        height=args.height,
        workers=args.workers,
        timeout=args.timeout,
    )
    print(summary.describe())
    return 0
