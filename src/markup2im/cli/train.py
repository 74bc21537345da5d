"""``markup2im train``: baseline or scheduled-sampling training (also under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from markup2im.cli.paths import output_dir

# markup2im.scheduled_sampling.METHODS (kept here so that parsing imports no torch; a test
# checks that they agree)
METHODS: tuple[str, ...] = ("baseline", "scheduled_sampling")

logger = logging.getLogger("markup2im.train")


def weight_list(text: str) -> tuple[float, ...]:
    """Comma-separated floats, e.g. ``0.8`` or ``0.5,0.2``."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and its flags."""
    p = subparsers.add_parser(
        "train",
        help="train a markup-to-image diffusion model",
        description="Train a baseline or scheduled-sampling DDPM on a dataset directory. "
        "Run directly or as `accelerate launch [--num_processes N] -m markup2im train ...`. "
        "Writes O/model, O/checkpoints/checkpoint-<step> and O/train_log.csv. On SIGTERM/SIGUSR1 "
        "it saves a checkpoint and exits with status 143 (130 for Ctrl-C); rerun with --resume "
        "latest, or --resume auto, which also moves the checkpoints of other settings or data "
        "aside (O/checkpoints.stale-<date>-<time>) and starts from scratch. With --walltime-margin "
        "it does the same that many seconds before its Slurm job's time limit.",
    )
    p.add_argument(
        "--dataset-dir", type=Path, required=True, help="dataset directory (train split)"
    )
    p.add_argument("--output-dir", type=output_dir, required=True, help="run directory O")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--model-preset", default="paper", help="model size preset (default: paper)")
    p.add_argument(
        "--encoder",
        default=None,
        help="markup encoder: hub name, local directory or 'offline' (default: the domain's)",
    )
    p.add_argument(
        "--max-markup-length",
        type=int,
        default=None,
        help="tokens kept (default: the model preset's, 1024 for paper)",
    )
    p.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction", "sample"),
        default="epsilon",
        help="what the denoiser predicts: the noise (the paper's), v, or the clean image",
    )
    p.add_argument(
        "--train-encoder",
        action="store_true",
        help="train the markup encoder with the denoiser (the paper keeps it frozen)",
    )
    p.add_argument(
        "--snr-gamma",
        type=float,
        default=None,
        help="min-SNR-gamma loss weighting (e.g. 5); default: plain MSE as in the paper",
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides epochs)")
    p.add_argument("--batch-size", type=int, default=16, help="per process (default 16)")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument(
        "--warmup-per-process",
        action="store_true",
        help="the original's warm-up on N processes: its scheduler advanced once per process "
        "per step, so warm-up ended after warmup-steps / N optimizer steps (default: "
        "warmup-steps optimizer steps whatever N)",
    )
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--ema", action="store_true", help="keep an EMA of the weights and save it")
    p.add_argument("--ema-decay", type=float, default=0.9999)
    p.add_argument("--seed", type=int, default=1234, help="torch/numpy/random seed (default 1234)")
    p.add_argument("--data-seed", type=int, default=42, help="data shuffle seed (default 42)")
    p.add_argument("--ss-max-m", type=int, default=1, help="longest rollout M (default 1)")
    p.add_argument("--ss-start", type=weight_list, default=None, help="weights of m=1..M at start")
    p.add_argument("--ss-end", type=weight_list, default=None, help="weights at the end (0.8)")
    p.add_argument(
        "--ss-min-t",
        type=int,
        default=None,
        help="skip scheduled sampling when min(t) <= this (the original's earlier guard: 50)",
    )
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument(
        "--checkpoints-total-limit", type=int, default=3, help="checkpoints kept (0: all)"
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=None,
        help="also save the model to O/snapshots/step-N every N steps (for learning curves)",
    )
    p.add_argument(
        "--resume",
        choices=("latest", "auto", "none"),
        default="none",
        help="latest: continue from the newest checkpoint (refused for other settings or data); "
        "auto: the same, but checkpoints of other settings or data are moved aside to "
        "O/checkpoints.stale-<date>-<time> and training starts from scratch (the workflow's); "
        "none (default): refuse to start where checkpoints exist",
    )
    p.add_argument("--limit-train", type=int, default=None, help="use the first N train examples")
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="data-loader worker processes (decode images, tokenise markup; kept across epochs)",
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=10,
        metavar="N",
        help="read the losses back from the device every N steps (each read waits for the "
        "GPU); train_log.csv still gets one row per step (default 10)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format (GPUs)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoiser (markup padded to a few lengths; minutes to compile)",
    )
    p.add_argument(
        "--cache-encoder",
        action="store_true",
        help="compute each example's frozen-encoder output once and keep it on the device "
        "(small datasets)",
    )
    p.add_argument(
        "--walltime-margin",
        type=float,
        default=None,
        metavar="SECONDS",
        help="inside a Slurm job: checkpoint and stop (status 143) at the first step boundary "
        "SECONDS before the job's time limit (SLURM_JOB_END_TIME, else squeue); continue with "
        "--resume latest or auto",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags and train."""
    from markup2im.errors import TrainingDivergedError
    from markup2im.training import TrainConfig, TrainingInterrupted, train, walltime_deadline

    deadline = time_limit = None
    if args.walltime_margin is not None:
        found = walltime_deadline(args.walltime_margin)
        if found is None:
            logger.info("no Slurm job time limit found: --walltime-margin has no effect")
        else:
            deadline, time_limit = found
            logger.info(
                "the Slurm job ends at %s: training stops %g s before, at %s",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_limit)),
                args.walltime_margin,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deadline)),
            )
    config = TrainConfig(
        dataset_dir=args.dataset_dir,
        output_dir=args.output_dir,
        method=args.method,
        model_preset=args.model_preset,
        encoder=args.encoder,
        max_markup_length=args.max_markup_length,
        prediction_type=args.prediction_type,
        train_encoder=args.train_encoder,
        snr_gamma=args.snr_gamma,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        ema=args.ema,
        ema_decay=args.ema_decay,
        seed=args.seed,
        data_seed=args.data_seed,
        ss_max_m=args.ss_max_m,
        ss_start=args.ss_start,
        ss_end=args.ss_end,
        ss_min_t=args.ss_min_t,
        checkpoint_every=args.checkpoint_every,
        checkpoints_total_limit=args.checkpoints_total_limit or None,
        snapshot_every=args.snapshot_every,
        resume=args.resume,
        limit_train=args.limit_train,
        num_workers=args.num_workers,
        warmup_per_process=args.warmup_per_process,
        log_every=args.log_every,
        channels_last=args.channels_last,
        compile=args.compile,
        cache_encoder=args.cache_encoder,
        deadline=deadline,
        time_limit=time_limit,
    )
    try:
        train(config)
    except TrainingInterrupted as exc:
        print(f"markup2im train: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingDivergedError as exc:
        if exc.suggested_learning_rate is None:
            raise
        argv = getattr(args, "argv", None) or sys.argv[1:]
        command = retry_command(argv, exc.suggested_learning_rate)
        raise TrainingDivergedError(
            f"{exc}\nTo retry with a lower learning rate, run:\n  {command}",
            learning_rate=exc.learning_rate,
            suggested_learning_rate=exc.suggested_learning_rate,
        ) from exc
    return 0


def retry_command(argv: list[str], learning_rate: float) -> str:
    """This command line with ``--learning-rate`` replaced and ``--resume auto``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--learning-rate", "--resume"):
            skip = True
            continue
        if arg.startswith(("--learning-rate=", "--resume=")):
            continue
        kept.append(arg)
    command = shlex.join(["markup2im", *kept, "--learning-rate", f"{learning_rate:g}"])
    command += " --resume auto"
    if "LOCAL_RANK" in os.environ or "ACCELERATE_USE_CPU" in os.environ:  # accelerate launch
        command = "accelerate launch <the same launch flags> -m " + command
    return command
