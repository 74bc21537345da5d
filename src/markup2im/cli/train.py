"""``markup2im train``: baseline or scheduled-sampling training (also under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from markup2im.cli.paths import output_dir
from markup2im.errors import TrainingDivergedError
from markup2im.training.config import TrainConfig

logger = logging.getLogger("markup2im.train")

DESCRIPTION = (
    "Train a DDPM with one of the registered training methods on a dataset directory. Run "
    "directly or as `accelerate launch [--num_processes N] -m markup2im train ...`. Writes "
    "O/model, O/checkpoints/checkpoint-<step> and O/train_log.csv. On SIGTERM/SIGUSR1 it saves a "
    "checkpoint and exits with status 143 (130 for Ctrl-C); rerun with --resume latest, or "
    "--resume auto, which also moves the checkpoints of other settings or data aside "
    "(O/checkpoints.stale-<date>-<time>) and starts from scratch. With --walltime-margin it does "
    "the same that many seconds before its Slurm job's time limit."
)


def weight_list(text: str) -> tuple[float, ...]:
    """Comma-separated floats, e.g. ``0.8`` or ``0.5,0.2``."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


# the argparse type of a TrainConfig annotation (without ``| None``)
ARG_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "Path": Path,
    "tuple[float, ...]": weight_list,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``: one flag per TrainConfig field, and --walltime-margin."""
    p = subparsers.add_parser(
        "train", help="train a markup-to-image diffusion model", description=DESCRIPTION
    )
    for field in dataclasses.fields(TrainConfig):
        if field.metadata.get("flag", True):
            add_flag(p, field)
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


def add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    """The flag of one TrainConfig field: its name with dashes, its default, type and help."""
    flag = "--" + field.name.replace("_", "-")
    meta = dict(field.metadata)
    help_text = meta.pop("help", "")
    if field.type == "bool":
        parser.add_argument(flag, action="store_true", help=help_text)
        return
    kind = str(field.type).removesuffix(" | None")
    options: dict[str, Any] = {"help": help_text, **meta}
    if field.default is dataclasses.MISSING:
        options["required"] = True
    else:
        options["default"] = field.default
    if "choices" not in options:
        options["type"] = output_dir if field.name == "output_dir" else ARG_TYPES[kind]
    parser.add_argument(flag, **options)


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags and train."""
    from markup2im.training.stopping import TrainingInterrupted, walltime_deadline
    from markup2im.training.trainer import train

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
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.metadata.get("flag", True)
    }
    values["checkpoints_total_limit"] = values["checkpoints_total_limit"] or None  # 0: all
    config = TrainConfig(**values, deadline=deadline, time_limit=time_limit)
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
