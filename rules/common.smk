"""Shared by every .smk file: the validated config, its plan, and the rules' named input, params
and resource functions. The logic behind them (checks, paths, targets, command-line flags) is
the package markup2im.workflow; a rule reads a dataset's part as PLAN[wildcards.dataset].
"""

import shlex
from pathlib import Path

from markup2im.errors import ConfigError
from markup2im.names import BASELINE, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE
from markup2im.names import METHODS as REGISTERED_METHODS
from markup2im.workflow import paths
from markup2im.workflow.cleanup import remove_finished_checkpoints
from markup2im.workflow.config import load_config
from markup2im.workflow.flags import threads_per_process
from markup2im.workflow.paths import alternatives, benchmark, for_method, log
from markup2im.workflow.plan import Plan

from snakemake.exceptions import WorkflowError

# Fails at parse time, before any job runs, naming the offending key (or the input file that
# is not there); fills in the defaults.
try:
    PLAN = Plan(
        load_config(
            config,
            dict(workflow.config_settings.config),
            workflow.source_path("../schemas/config.schema.yaml"),
            root=Path.cwd(),  # Snakemake's working directory (--directory)
        )
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None

DATASETS, METHODS = PLAN.datasets, PLAN.methods
ENCODERS = PLAN.hub_encoders()
# methods whose paired comparison has their name in its path (paths.PAIRED_METHOD)
NAMED_TREATMENTS = [
    m for m in REGISTERED_METHODS if m not in (BASELINE, paths.PAPER_TREATMENT)
]


# ---- resources and params of every rule --------------------------------------------------------


def resource(kind: str, key: str):
    """A resource function: the ``key`` resource of a ``kind`` job (data, train, generate,
    evaluate, figures), the {dataset}'s own value first when the job has one."""

    def value(w):
        dataset = w.get("dataset")
        return (
            PLAN.resource(kind, key)
            if dataset is None
            else PLAN[dataset].resource(kind, key)
        )

    return value


def memory_and_runtime(kind: str) -> dict:
    """``resources: **memory_and_runtime(kind)``: mem_mb and runtime of a ``kind`` job."""
    return {"mem_mb": resource(kind, "mem_mb"), "runtime": resource(kind, "runtime")}


def version(stage: str):
    """A params function: `code_version.<stage>`, bumped to rerun the stage's jobs."""
    return lambda w: PLAN.version(stage)


def partial_path(w, output) -> str:
    """Where a job builds its (first) output before renaming it into place."""
    return f"{output[0]}.partial"


def page_title(template: str):
    """A params function giving a shell-quoted page title filled from the wildcards."""
    return lambda w: shlex.quote(template.format(**dict(w.items())))


# ---- data and encoders ------------------------------------------------------------------------


def hub_flags(w) -> str:
    return PLAN[w.dataset].hub_flags()


def render_flags(w) -> str:
    return PLAN[w.dataset].render_flags()


def markup_file(w) -> list[str]:
    """The user's markup file (so that editing it rebuilds the dataset), if any."""
    return PLAN[w.dataset].markup_file()


def encoder_name(w) -> str:
    return ENCODERS[w.encoder].name


def encoder_revision(w) -> str:
    return ENCODERS[w.encoder].revision or "main"


def encoder_input(w) -> list[str]:
    """The local encoder directory a training or import job reads ([] if none)."""
    return PLAN[w.dataset].encoder_input()


def generate_setting(key: str):
    """A params or resources function: a `generate:` setting of the {dataset}."""
    return lambda w: PLAN[w.dataset].generate_setting(key)


def example_files(dataset: str) -> list[str]:
    """Filenames of the examples with frames and GIFs (known once select_examples ran)."""
    listing = checkpoints.select_examples.get(dataset=dataset).output.examples
    return Path(listing).read_text(encoding="utf-8").split()


def example_filename(w) -> str:
    """The filename (with extension) of the {example} wildcard."""
    for name in example_files(w.dataset):
        if Path(name).stem == w.example:
            return name
    raise WorkflowError(f"{w.example!r} is not a selected example of {w.dataset}")


# ---- models ------------------------------------------------------------------------------------


def model_dir(w) -> str:
    """The model of the {method}: trained here or imported from a released checkpoint."""
    return PLAN[w.dataset].model_path(w.method)


def released_checkpoint(w) -> str:
    return PLAN[w.dataset].released_checkpoint(w.method)


def train_flags(w) -> str:
    return PLAN[w.dataset].train_flags(w.method)


def import_flags(w) -> str:
    return PLAN[w.dataset].import_flags()


def train_setting(key: str):
    """A resource function: a `train:` setting that does not change the model."""
    return lambda w: PLAN[w.dataset].train_runtime_settings()[key]


def train_gpus(w) -> int:
    return PLAN[w.dataset].train_gpus()


def generate_gpus(w) -> int:
    return PLAN[w.dataset].generate_gpus()


def gpu_model(gpus):
    """A resource function: the GPU model to ask for when ``gpus(w)`` is not 0."""
    return lambda w: PLAN[w.dataset].gpu_model(gpus(w))


def accelerate_flags(w, resources, threads) -> str:
    return PLAN[w.dataset].accelerate_flags(int(resources.gpu), int(threads))


def process_threads(w, resources, threads) -> int:
    return threads_per_process(int(resources.gpu), int(threads))


# ---- generation and evaluation -----------------------------------------------------------------


def sample_flags(w) -> str:
    return PLAN[w.dataset].sample_flags(w.sampler)


def frames_every(w) -> int:
    return PLAN[w.dataset].frames_every(w.sampler)


def generate_command(frames_flags: str, move: str) -> str:
    """The shell command of both jobs: `markup2im generate` into {params.partial} (with
    ``frames_flags`` for the frames job), then ``move`` puts the result into place."""
    return (
        "rm -rf {params.partial}"
        " && OMP_NUM_THREADS={threads} markup2im generate --model-dir {input.model}"
        " --dataset-dir {input.data} --output-dir {params.partial} {params.flags}"
        + frames_flags
        + " --batch-size {resources.batch_size} --device auto > {log} 2>&1 && "
        + move
    )


def evaluate_flags(w) -> str:
    return PLAN.evaluate_flags()


# ---- figures and tables -----------------------------------------------------------------------


def by_method(path: str):
    """An input function: ``path`` formatted for every method, in METHODS order."""
    return lambda w: [path.format(method=m, **dict(w.items())) for m in METHODS]


def labelled(flag: str, labels, subdir: str = ""):
    """A params function writing ``FLAG LABEL=PATH`` per input, labels in input order."""

    def args(w, input) -> str:
        files = [f"{p}/{subdir}" if subdir else p for p in input]
        pairs = zip(labels(w), files, strict=True)
        return " ".join(f"{flag} {shlex.quote(f'{n}={p}')}" for n, p in pairs)

    return args


def method_labels(w) -> list[str]:
    return PLAN[w.dataset].method_labels()


def trained_labels(w) -> list[str]:
    return PLAN[w.dataset].method_labels(trained_only=True)


def train_logs(w) -> list[str]:
    return PLAN[w.dataset].train_logs()


def summary_inputs(w) -> list[str]:
    return PLAN.summary_inputs()


def summary_labels(w) -> list[str]:
    return PLAN.summary_labels()


def paired_tables(w) -> list[str]:
    return PLAN.paired_tables()


def paired_labels(w) -> list[str]:
    return PLAN.paired_labels()


def treatment(w) -> str:
    """The method compared with the baseline: the {method}, or the paper's (rule paired)."""
    return w.get("method", paths.PAPER_TREATMENT)


def paired_title(w) -> str:
    return shlex.quote(PLAN[w.dataset].paired_title(w.sampler, treatment(w)))


def paired_run_labels(w) -> str:
    return shlex.quote(PLAN[w.dataset].paired_run_labels(treatment(w)))


def paired_table_run_labels(w) -> str:
    return shlex.quote(PLAN.paired_table_run_labels())


def gif_every(panels: int):
    """A params function: use every k-th frame so that a GIF of ``panels`` images stays small."""
    return lambda w: PLAN[w.dataset].gif_every(w.sampler, panels)


def compare_gold(w, input) -> str:
    """The gold image of the {example} (every method's samples hold the same gold)."""
    return shlex.quote(f"{input.gold[0]}/gold/{example_filename(w)}")


def compare_frames(w, input) -> str:
    """``--frames LABEL=DIR`` for each method's denoising frames of the {example}."""
    pairs = zip(method_labels(w), input.frames, strict=True)
    return " ".join(
        f"--frames {shlex.quote(f'{label}={path}/{w.example}')}"
        for label, path in pairs
    )


def grid_gold(w, input) -> str:
    return shlex.quote(f"{input[0]}/gold")


def gif_targets(w) -> list[str]:
    """GIFs and their pages for the selected examples (known once select_examples ran)."""
    return [
        target
        for d in DATASETS
        for target in PLAN[d].gif_targets(Path(name).stem for name in example_files(d))
    ]
