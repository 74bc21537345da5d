"""``markup2im render``: render a markup file to PNGs and a manifest, with the real renderers."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from markup2im.cli.paths import output_dir, positive_float, positive_int
from markup2im.names import DOMAINS, MAX_CANVAS_SIDE

if TYPE_CHECKING:
    from markup2im.data.render.process import Limits

__all__ = [
    "add_limit_options",
    "add_parser",
    "add_render_options",
    "canvas_side",
    "limits",
    "positive_float",
    "positive_int",
    "run",
]


def canvas_side(text: str) -> int:
    """A canvas width or height: 1..4096 pixels."""
    value = positive_int(text)
    if value > MAX_CANVAS_SIDE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CANVAS_SIDE} pixels, got {text}")
    return value


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``render`` and ``build-dataset``: canvas size, workers, timeout."""
    parser.add_argument(
        "--width",
        type=canvas_side,
        default=None,
        help=f"canvas width, at most {MAX_CANVAS_SIDE} (default: the domain's)",
    )
    parser.add_argument(
        "--height",
        type=canvas_side,
        default=None,
        help=f"canvas height, at most {MAX_CANVAS_SIDE} (default: the domain's)",
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


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """The memory and disk bounds of each renderer process (``Limits``; defaults measured)."""
    parser.add_argument(
        "--memory-limit",
        type=positive_int,
        default=None,
        metavar="MIB",
        help="address space each renderer process may use, in MiB (default: 3072)",
    )
    parser.add_argument(
        "--disk-limit",
        type=positive_int,
        default=None,
        metavar="MIB",
        help="bytes each renderer run may write in its work directory, in MiB (default: 256)",
    )


def limits(args: argparse.Namespace) -> Limits:
    """The ``Limits`` of ``--memory-limit`` / ``--disk-limit`` (defaults for those not given)."""
    from markup2im.data.render.process import Limits  # the renderers load only to run

    given = {"memory_mb": args.memory_limit, "disk_mb": args.disk_limit}
    return Limits(**{k: v for k, v in given.items() if v is not None})


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
    add_limit_options(parser)
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
        limits=limits(args),
    )
    print(summary.describe())
    return 0
