"""``markup2im download``: a hub dataset (or a local copy of its repository) in markup2im's form.

Uses ``datasets.load_dataset``. Offline (HF_HUB_OFFLINE=1 or no network) it stops within seconds
and says how to use a local copy with --local-path: a directory laid out like the hub repository
(data/train-00000-of-00001.parquet, ...) or a directory of parquet files.
"""

from __future__ import annotations

import argparse

from markup2im.cli.paths import output_dir
from markup2im.presets import DOMAINS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``download`` subcommand."""
    parser = subparsers.add_parser(
        "download",
        help="download a hub dataset (or load a local copy) and save it for training",
        description=__doc__,
    )
    known = ", ".join(d.hub_dataset for d in DOMAINS.values())
    parser.add_argument("--dataset", required=True, help=f"hub dataset id: {known}")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument(
        "--local-path", default=None, help="local copy of the dataset repository (no network)"
    )
    parser.add_argument(
        "--output-dir", type=output_dir, required=True, help="dataset directory to write"
    )
    parser.add_argument(
        "--max-examples", type=int, default=None, help="keep only the first N rows of each split"
    )
    parser.add_argument(
        "--cache-dir", type=output_dir, default=None, help="datasets cache (default: HF_HOME's)"
    )
    parser.add_argument(
        "--skip-validation",
        action="store_true",
        help="do not decode and size-check every image before saving",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Download (or load) the dataset and print its split sizes."""
    from markup2im.data.hub import download_dataset

    summary = download_dataset(
        args.dataset,
        args.output_dir,
        revision=args.revision,
        local_path=args.local_path,
        max_examples=args.max_examples,
        cache_dir=args.cache_dir,
        validate=not args.skip_validation,
    )
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    print(f"{args.output_dir}: {splits}")
    return 0
