"""``markup2im fetch-encoder``: save a hub encoder (model and tokenizer) to a local directory.

The workflow runs it where Snakemake runs (on a cluster: the login node, which has the internet)
so that training and generation jobs, on compute nodes that often have none, load the encoder
from that directory. The directory keeps the hub name, so trained models still record it.
"""

from __future__ import annotations

import argparse

from markup2im.cli.paths import output_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``fetch-encoder`` subcommand."""
    parser = subparsers.add_parser(
        "fetch-encoder",
        help="save a hub encoder to a local directory (for machines without internet)",
        description=__doc__,
    )
    parser.add_argument(
        "--encoder", required=True, help="hub model name, e.g. EleutherAI/gpt-neo-125M"
    )
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument(
        "--output-dir", type=output_dir, required=True, help="directory to write (replaced)"
    )
    parser.add_argument(
        "--max-markup-length",
        type=int,
        default=1024,
        help="tokens kept per markup, recorded as the default (training sets its own)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the encoder from the hub (or the local hub cache) and save it."""
    from markup2im.models.encoder import MarkupEncoder

    encoder = MarkupEncoder.load(args.encoder, args.max_markup_length, revision=args.revision)
    encoder.save_pretrained(args.output_dir)
    print(f"{args.encoder} ({args.revision or 'default revision'}) saved to {args.output_dir}")
    return 0
