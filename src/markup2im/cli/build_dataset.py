"""``markup2im build-dataset``: render a dataset (train/validation/test) from markup.

The markup comes from a file (.txt or .jsonl) or from the domain's seeded synthetic generator.
Failed renders are left out and counted in build_summary.json inside the output directory.
"""

from __future__ import annotations

import argparse

from markup2im.cli.paths import output_dir
from markup2im.cli.render import add_limit_options, add_render_options, limits
from markup2im.names import DOMAINS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``build-dataset`` subcommand."""
    parser = subparsers.add_parser(
        "build-dataset",
        help="render a train/validation/test dataset from a markup file or a generator",
        description=__doc__,
    )
    parser.add_argument("--domain", required=True, help=f"markup domain: {', '.join(DOMAINS)}")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--markup-file", help=".txt or .jsonl markup file")
    source.add_argument(
        "--synthetic",
        action="store_true",
        help="use the domain's seeded generator (molecules: SMILES shipped with RDKit)",
    )
    parser.add_argument(
        "--difficulty",
        default=None,
        help="level of the synthetic generator (math: standard or simple; default standard)",
    )
    parser.add_argument(
        "--output-dir", type=output_dir, required=True, help="dataset directory to write"
    )
    sizes = parser.add_argument_group(
        "split sizes",
        "examples per split; defaults: 1000/100/100 (train/validation/test) with --synthetic, "
        "every rendered line split 80/10/10 percent with --markup-file",
    )
    for split in ("train", "validation", "test"):
        sizes.add_argument(f"--{split}", type=int, default=None, help=f"{split} examples")
    parser.add_argument("--seed", type=int, default=0, help="generator / shuffle seed (default 0)")
    add_render_options(parser)
    add_limit_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the dataset and print its split sizes."""
    from markup2im.data.datasets import build_dataset

    summary = build_dataset(
        args.domain,
        args.output_dir,
        markup_file=args.markup_file,
        synthetic=args.synthetic,
        difficulty=args.difficulty,
        train=args.train,
        validation=args.validation,
        test=args.test,
        seed=args.seed,
        workers=args.workers,
        timeout=args.timeout,
        width=args.width,
        height=args.height,
        limits=limits(args),
    )
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    print(
        f"{args.output_dir}: {splits}; rendered {summary['rendered']} of {summary['attempted']} "
        f"(failed {summary['failed']['count']}, shrunk {summary['shrunk']['total']})"
    )
    return 0
