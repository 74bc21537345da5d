"""The project's shared names, in one torch-free module.

The command line, the workflow and the library all read these, so argument parsing and
planning the Snakemake DAG import no torch, and no name is ever written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from markup2im.presets import DOMAINS as DOMAIN_SPECS


@dataclass(frozen=True)
class MethodName:
    """A training method as the command line, the workflow and the report name it.

    ``module`` is the module under :mod:`markup2im.training.methods` that implements it
    (its ``METHOD``): a new method is that module plus one entry in :data:`METHODS`.
    """

    name: str
    label: str  # how tables, plots and the report title it
    module: str


METHODS: dict[str, MethodName] = {
    m.name: m
    for m in (
        MethodName("baseline", "baseline", "baseline"),
        MethodName("scheduled_sampling", "scheduled sampling", "scheduled_sampling"),
        MethodName("input_perturbation", "input perturbation", "input_perturbation"),
    )
}
BASELINE = "baseline"  # the method every other one is compared with
PAPER_METHODS: tuple[str, ...] = ("baseline", "scheduled_sampling")  # the workflow's default
# what the pages of a paired comparison call the two runs unless told otherwise (the paper's)
PAPER_LABELS: tuple[str, str] = tuple(METHODS[m].label for m in PAPER_METHODS)  # type: ignore[assignment]
INPUT_PERTURBATION_GAMMA = 0.1  # DDPM-IP's perturbation strength (Ning et al., ICML 2023)

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmsolver++")
# denoising steps of a sampler when none are given (None: every training timestep)
DEFAULT_STEPS: dict[str, int | None] = {"ddpm": None, "ddim": 50, "dpmsolver++": 20}
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# what a denoiser predicts: the noise (the paper's), v, or the clean image
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")

DOMAINS: tuple[str, ...] = tuple(DOMAIN_SPECS)

MAX_CANVAS_SIDE = 4096  # pixels: a larger canvas is a typo that would cost minutes and gigabytes

OFFLINE_ENCODER = "offline"  # the encoder built from a config, with no download

# the columns of a training run's train_log.csv, one row per optimizer step
LOG_COLUMNS: tuple[str, ...] = ("step", "epoch", "loss", "lr", "ss_prob", "m", "seconds")

# the paired comparison of two methods over the same images: percentile bootstrap of the mean
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

GIF_FRAMES = 50  # about this many frames in a denoising GIF, whatever the number of steps


def frames_every(num_steps: int) -> int:
    """Keep every k-th denoising step's frame so that ``num_steps`` give about GIF_FRAMES."""
    return max(1, num_steps // GIF_FRAMES)
