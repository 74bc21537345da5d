"""``markup2im import-original``: turn a checkpoint released by the paper's authors into a model
directory that ``generate`` and ``evaluate`` use like a trained one."""

from __future__ import annotations

import argparse
from pathlib import Path

from markup2im.cli.paths import output_dir
from markup2im.names import DOMAINS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``import-original`` and its flags."""
    p = subparsers.add_parser(
        "import-original",
        help="convert a released checkpoint of the original code into a model directory",
        description="Reads a state dict of the authors' diffusers fork (for example "
        "models/math/scheduled_sampling/model_e100_lr0.0001.pt.100 of the original repository) "
        "with torch.load(weights_only=True) and writes O in the save_pretrained layout. Every "
        "entry of the file must fill a parameter of the model and every parameter must be "
        "filled; otherwise it stops naming the entries.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="the released .pt file")
    p.add_argument("--domain", choices=DOMAINS, required=True, help="image size and colour")
    p.add_argument(
        "--encoder",
        default=None,
        help="markup encoder: hub name or local directory (default: the domain's encoder of the "
        "paper, EleutherAI/gpt-neo-125M or DeepChem/ChemBERTa-77M-MLM)",
    )
    p.add_argument(
        "--output-dir", type=output_dir, required=True, help="model directory O to write"
    )
    p.add_argument(
        "--model-preset", default="paper", help="denoiser preset of the checkpoint (paper)"
    )
    p.add_argument(
        "--max-markup-length",
        type=int,
        default=None,
        help="tokens kept per markup (default: the preset's, 1024 for paper)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Import the checkpoint (imports torch only when the command runs)."""
    from markup2im.original import import_original

    import_original(
        args.checkpoint,
        args.output_dir,
        domain=args.domain,
        encoder=args.encoder,
        model_preset=args.model_preset,
        max_markup_length=args.max_markup_length,
    )
    return 0
