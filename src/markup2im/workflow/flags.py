"""Config settings as ``markup2im ...`` and ``accelerate launch`` command-line flags.

Each function takes the validated config sections it needs (defaults filled in) and returns
shell-quoted flags. Settings that decide a job's outputs become flags that the rules pass as
*params* (rerun triggers); settings that do not (:data:`TRAIN_RUNTIME_KEYS`) are left out. The
flags are in an order of their own (fixed, or sorted), never in that of the config's keys, so
that reordering a config reruns nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from markup2im.eps_scaling import EpsScale
from markup2im.guidance import guided
from markup2im.names import METHODS

# `train:` keys that only say how training runs, not what it makes: resources, not params.
TRAIN_RUNTIME_KEYS: tuple[str, ...] = (
    "checkpoint_every",
    "checkpoints_total_limit",
    "log_every",
    "num_workers",
)
# the methods whose settings are the top-level sections of the same name
SCHEDULED_SAMPLING = METHODS["scheduled_sampling"].name  # the ss_* flags
INPUT_PERTURBATION = METHODS["input_perturbation"].name  # --ip-gamma


def cli_flags(settings: Mapping[str, Any]) -> str:
    """``{"batch_size": 8, "ema": True, "limit": None}`` -> ``--batch-size 8 --ema``.

    None and False leave a flag out so that the command's own default applies; lists are
    comma-joined; every value is shell-quoted.
    """
    parts = []
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple):
            parts.append(f"{flag} {shlex.quote(','.join(str(v) for v in value))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def hub_flags(hub: Mapping[str, Any]) -> str:
    """Flags of `markup2im download` for a dataset's ``source.hub``."""
    return cli_flags(
        {
            "dataset": hub["id"],
            "revision": hub["revision"],
            "local_path": hub["local_path"],
            "max_examples": hub["max_examples"],
        }
    )


def render_flags(domain: str, render: Mapping[str, Any]) -> str:
    """Flags of `markup2im build-dataset` for a dataset's ``source.render``."""
    keys = ("train", "validation", "test", "seed", "timeout", "width", "height", "memory_limit",
            "disk_limit")  # fmt: skip
    return cli_flags(
        {
            "domain": domain,
            "synthetic": render.get("synthetic", False),
            "difficulty": render.get("difficulty"),
            "markup_file": render.get("markup_file"),
            **{k: render[k] for k in keys},
        }
    )


def train_flags(
    method: str,
    model: Mapping[str, Any],
    train: Mapping[str, Any],
    encoder: str,
    scheduled_sampling: Mapping[str, Any],
    input_perturbation: Mapping[str, Any],
) -> str:
    """Flags of `markup2im train` that decide the model (so they are rerun triggers).

    ``encoder`` is what ``--encoder`` gets; ``scheduled_sampling`` and ``input_perturbation``
    (the top-level sections) only matter to the method of that name.
    """
    flags = {
        "method": method,
        "model_preset": model["preset"],
        "encoder": encoder,
        "max_markup_length": model["max_markup_length"],
        "prediction_type": model["prediction_type"],
        "train_encoder": model["train_encoder"],
        "attention_from": model["attention_from"],
        # sorted: the order of the config's keys must not change the flags (a rerun trigger)
        **{k: v for k, v in sorted(train.items()) if k not in TRAIN_RUNTIME_KEYS},
        # other settings or data: set the old checkpoints aside and train from scratch
        "resume": "auto",
    }
    if method == SCHEDULED_SAMPLING:
        ss = scheduled_sampling
        flags.update(
            ss_max_m=ss["max_m"],
            ss_start=ss["start"],
            ss_end=ss["end"],
            # 0 means no guard (a guard at 0 would still skip every batch holding t = 0)
            ss_min_t=ss["min_t"] or None,
            # input perturbation on top, only when asked for (0 trains the same as none)
            ip_gamma=ss["ip_gamma"] or None,
        )
    elif method == INPUT_PERTURBATION:
        # always given, so that a change of the config's gamma retrains
        flags.update(ip_gamma=input_perturbation["gamma"])
    return cli_flags(flags)


def train_runtime_settings(train: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of `markup2im train` that leave the model unchanged (resources)."""
    return {k: train[k] for k in TRAIN_RUNTIME_KEYS if k in train}


def import_flags(domain: str, model: Mapping[str, Any], encoder: str) -> str:
    """Flags of `markup2im import-original` besides the checkpoint and output."""
    return cli_flags(
        {
            "domain": domain,
            "encoder": encoder,
            "model_preset": model["preset"],
            "max_markup_length": model["max_markup_length"],
        }
    )


def sample_flags(generate: Mapping[str, Any], sampler: Mapping[str, Any]) -> str:
    """Flags of `markup2im generate` that decide the images (split, limit, sampler, seed,
    guidance and epsilon scaling).

    The batch size is left out: a resource, since the images do not depend on it.
    """
    guidance = sampler["guidance_scale"]
    return cli_flags(
        {
            "split": generate["split"],
            "limit": generate["limit"],
            "sampler": sampler["sampler"],
            "num_inference_steps": sampler["steps"],
            "seed": generate["seed"],
            "precision": generate["precision"] if generate["precision"] != "fp32" else None,
            "eps_scale": eps_scale_flag(sampler["eps_scale"]),
            # the plain sampler's 1 gives no flag, so that it reruns nothing
            "guidance_scale": guidance if guided(guidance) else None,
        }
    )


def eps_scale_flag(value: Any) -> str | None:
    """What ``--eps-scale`` gets for a sampler's ``eps_scale`` (a number or {k, b}): None for
    the plain sampler (unset, or 1), so that it reruns nothing."""
    if value is None:
        return None
    scale = EpsScale.parse(value)
    return None if scale.identity else str(scale)


def evaluate_flags(evaluate: Mapping[str, Any]) -> str:
    """Optional flags of `markup2im evaluate` (the CLIP score when a model is set)."""
    if evaluate["clip_model"] is None:
        return ""
    return cli_flags(
        {
            "clip_model": evaluate["clip_model"],
            "clip_batch_size": evaluate["clip_batch_size"],
        }
    )


def threads_per_process(gpus: int, threads: int) -> int:
    """CPU threads of each of a training job's processes (one per GPU, or one on CPU)."""
    return max(1, threads // max(1, gpus))


def accelerate_flags(mixed_precision: str, gpus: int, threads: int) -> str:
    """`accelerate launch` flags: one process per GPU of the job (or one CPU process), each
    with its share of the job's CPU threads.

    Port 0 lets accelerate pick a free port on the node, so concurrent multi-GPU jobs on
    one node never collide.
    """
    per_process = threads_per_process(gpus, threads)
    flags = (
        f"--num_machines 1 --mixed_precision {mixed_precision} --dynamo_backend no"
        f" --num_cpu_threads_per_process {per_process}"
    )
    if gpus == 0:
        return f"{flags} --cpu --num_processes 1"
    multi = " --multi_gpu" if gpus > 1 else ""
    return f"{flags} --num_processes {gpus}{multi} --main_process_port 0"
