"""Where the workflow's files live: the path templates of every rule, in one place.

The rules' ``output:`` entries are these constants, and the plan formats the same constants for
the targets of ``rule all``, so a path is written once. Placeholders are Snakemake wildcards
(``{dataset}``, ``{method}``, ``{sampler}``, ``{example}``, ``{encoder}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from markup2im.names import METHODS

# ---- data and encoders -------------------------------------------------------------------------
DATASET = "results/{dataset}/data/dataset"
# the filenames of the examples that get denoising frames and GIFs, one a line
EXAMPLES = "results/{dataset}/data/frames_examples.txt"
ENCODER_DIR = "results/encoders"  # hub encoders saved on the machine Snakemake runs on
ENCODER = ENCODER_DIR + "/{encoder}"

# ---- models: trained here, or imported from the authors' released checkpoints -----------------
RUN_DIR = "results/{dataset}/{method}/train"  # also holds checkpoints/ while training
TRAINED_MODEL = RUN_DIR + "/model"
TRAIN_LOG = "results/{dataset}/{method}/train_log.csv"
RELEASED_MODEL = "results/{dataset}/{method}/released/model"

# ---- one model and sampler --------------------------------------------------------------------
SAMPLES = "results/{dataset}/{method}/{sampler}/samples"  # images/ and gold/
FRAMES = "results/{dataset}/{method}/{sampler}/frames"  # one folder of frames per example
METRICS = "results/{dataset}/{method}/{sampler}/metrics.csv"
METRICS_SUMMARY = "results/{dataset}/{method}/{sampler}/metrics_summary.json"
GIF = "results/{dataset}/{method}/{sampler}/gifs/{example}.gif"
GIF_PAGE = "results/{dataset}/{method}/{sampler}/gifs/{example}.html"

# ---- figures of one dataset -------------------------------------------------------------------
COMPARE_GIF = "results/{dataset}/figures/{sampler}/compare/{example}.gif"
COMPARE_PAGE = "results/{dataset}/figures/{sampler}/compare/{example}.html"
# The paired comparison of a method with the baseline. Scheduled sampling's (the paper's) keeps
# the name it had when it was the only one; every other method's carries the method's name.
PAPER_TREATMENT = METHODS["scheduled_sampling"].name
PAIRED = "results/{dataset}/figures/{sampler}/paired.csv"
PAIRED_PAGE = "results/{dataset}/figures/{sampler}/paired.html"
PAIRED_METHOD = "results/{dataset}/figures/{sampler}/paired_{method}.csv"
PAIRED_METHOD_PAGE = "results/{dataset}/figures/{sampler}/paired_{method}.html"
METRIC_PLOTS = "results/{dataset}/figures/{sampler}/metric_distributions.png"
SAMPLES_GRID = "results/{dataset}/figures/{sampler}/samples_grid.png"
LOSS_CURVES = "results/{dataset}/figures/loss_curves.png"

# ---- tables of every dataset ------------------------------------------------------------------
METRICS_TABLE = "results/summary/metrics_table.csv"
METRICS_TABLE_PAGE = "results/summary/metrics_table.html"
PAIRED_TABLE = "results/summary/paired_table.csv"
PAIRED_TABLE_PAGE = "results/summary/paired_table.html"

# ---- logs and benchmarks: one a job, named by its stage and wildcards ---------------------------


def log(stage: str, job: str) -> str:
    """``logs/<stage>/<job>.log``: where a job's commands write their output."""
    return f"logs/{stage}/{job}.log"


def benchmark(stage: str, job: str) -> str:
    """``benchmarks/<stage>/<job>.tsv``: the time and memory Snakemake measured for a job."""
    return f"benchmarks/{stage}/{job}.tsv"


def fill(template: str, **wildcards: str) -> str:
    """``template`` with its wildcards filled in (a target of a job that exists)."""
    return template.format(**wildcards)


def for_method(template: str, method: str) -> str:
    """``template`` with only its {method} filled in: the files of one named method."""
    return template.replace("{method}", method)


def paired(method: str) -> str:
    """The template of ``method``'s paired comparison with the baseline ({dataset}, {sampler})."""
    return PAIRED if method == PAPER_TREATMENT else for_method(PAIRED_METHOD, method)


def alternatives(names: Iterable[str]) -> str:
    """A wildcard constraint matching exactly one of ``names`` (and nothing when there are none)."""
    names = list(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"
