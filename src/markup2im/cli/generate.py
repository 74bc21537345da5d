"""``markup2im generate``: sample images for a dataset split from a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from markup2im.cli.paths import output_dir, positive_int
from markup2im.eps_scaling import EpsScale
from markup2im.errors import ConfigError
from markup2im.guidance import check_guidance_scale
from markup2im.names import PRECISIONS, SAMPLERS

EPS_SCALE_FLAG = "--eps-scale"
EPS_SCALE_HELP = (
    "epsilon scaling (Ning et al., 2024): divide each step's predicted noise by lambda_t, a "
    "number (1.01) or k=K,b=B for lambda_t = K t + B (t the training timestep, 0..999); about "
    "1.004-1.017 in the paper; default 1, the plain sampler"
)


def name_list(text: str) -> list[str]:
    """Comma-separated file names."""
    return [part.strip() for part in text.split(",") if part.strip()]


def eps_scale_flag(text: str) -> EpsScale:
    """``--eps-scale``: ``1.01`` or ``k=...,b=...`` (torch-free, so that parsing stays light)."""
    try:
        return EpsScale.parse(text, EPS_SCALE_FLAG)
    except ConfigError as exc:  # argparse puts "argument --eps-scale: " before the message
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{EPS_SCALE_FLAG}: ")) from None


def guidance_scale_flag(text: str) -> float:
    """``--guidance-scale``: a number >= 0."""
    try:
        return check_guidance_scale(float(text), "guidance scale")
    except (ConfigError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from exc


def add_sampler_adjustment_flags(parser: argparse.ArgumentParser) -> None:
    """``--eps-scale`` and ``--guidance-scale``, shared by ``generate`` and ``draw``."""
    parser.add_argument(
        EPS_SCALE_FLAG, type=eps_scale_flag, default=None, metavar="TEXT", help=EPS_SCALE_HELP
    )
    parser.add_argument(
        "--guidance-scale",
        type=guidance_scale_flag,
        default=None,
        metavar="W",
        help="classifier-free guidance for models trained with --markup-dropout: each step's "
        "output is uncond + W (cond - uncond), the unconditional pass on the empty markup; "
        "default 1, the plain sampler",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``generate`` and its flags."""
    p = subparsers.add_parser(
        "generate",
        help="generate images for a dataset split with a trained model",
        description="Writes O/images/<filename>, O/gold/<filename> and, with --frames-every K, "
        "O/frames/<stem>/step_<NNNN>.png (every K-th step's clipped x0 prediction, step 0 = "
        "first denoising step, plus the last step).",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="a saved model (O/model of train)")
    p.add_argument("--dataset-dir", type=Path, required=True)
    p.add_argument(
        "--output-dir",
        type=output_dir,
        required=True,
        help="directory O; its images/, gold/ and frames/ are replaced",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N examples of the split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    p.add_argument(
        "--num-inference-steps",
        type=positive_int,
        default=None,
        help="denoising steps (default: all 1000 for ddpm, 50 for ddim, 20 for dpmsolver++)",
    )
    p.add_argument("--seed", type=int, default=1234, help="noise seed; each example's noise "
                   "comes from (seed, its index in the split)")  # fmt: skip
    p.add_argument("--frames-every", type=int, default=0, help="keep every K-th step's x0 (0: no)")
    p.add_argument(
        "--frames-for",
        type=name_list,
        default=None,
        help="comma-separated filenames that get frames (default: all generated examples)",
    )
    p.add_argument(
        "--only",
        type=name_list,
        default=None,
        help="comma-separated filenames: generate only these (each with the noise of its index "
        "in the split, so the same image as a full run)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16 runs the denoiser under autocast (GPUs: faster; images differ slightly)",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and images (GPUs)")
    add_sampler_adjustment_flags(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate with the flags' settings."""
    from markup2im.generate import generate

    generate(
        args.model_dir,
        args.dataset_dir,
        args.output_dir,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        sampler=args.sampler,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        frames_every=args.frames_every,
        frames_for=args.frames_for,
        only=args.only,
        precision=args.precision,
        channels_last=args.channels_last,
        device=args.device,
        eps_scale=args.eps_scale,
        guidance_scale=args.guidance_scale,
    )
    return 0
