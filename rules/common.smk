"""Shared by every .smk file: the validated config and the input functions of the rules. The
logic behind them (checks, paths, targets, command-line flags) is markup2im.workflow."""

import shlex
from pathlib import Path

from markup2im.errors import ConfigError
from markup2im.workflow import (
    ENCODER_DIR,
    Plan,
    alternatives,
    load_schema,
    retype_overrides,
    threads_per_process,
    validate_config,
)

from snakemake.exceptions import WorkflowError

SCHEMA = load_schema(workflow.source_path("../schemas/config.schema.yaml"))
# Fails at parse time, before any job runs, naming the offending key; fills in the defaults.
try:
    retype_overrides(config, dict(workflow.config_settings.config), SCHEMA)
    PLAN = Plan(validate_config(config, SCHEMA))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

DATASETS, METHODS = PLAN.datasets, PLAN.methods
ENCODERS = PLAN.hub_encoders()


def per_dataset(method_name: str):
    """An input/params function calling ``PLAN.<method_name>(dataset)``."""
    return lambda w: getattr(PLAN, method_name)(w.dataset)


def resource(kind: str, key: str):
    """A resource function: the ``key`` resource of a ``kind`` job of the {dataset}, if any."""
    return lambda w: PLAN.resource(kind, key, w.get("dataset"))


def version(stage: str):
    return lambda w: PLAN.version(stage)  # bump code_version.<stage>: rerun its jobs


def train_setting(key: str):
    """A resource function: a `train:` setting that does not change the model."""
    return lambda w: PLAN.train_runtime_flags(w.dataset)[key]


def generate_setting(key: str):
    return lambda w: PLAN.dataset(w.dataset)["generate"].get(key)


def gpu_model(gpus):
    return lambda w: PLAN.gpu_model(w.dataset, gpus(w))


def per_run(method_name: str):
    """An input/params function calling ``PLAN.<method_name>(dataset, method)``."""
    return lambda w: getattr(PLAN, method_name)(w.dataset, w.method)


train_gpus, generate_gpus = per_dataset("train_gpus"), per_dataset("generate_gpus")
model_dir, train_flags = per_run("model_path"), per_run("train_flags")
released_checkpoint = per_run("released_checkpoint")


def accelerate_flags(w, resources, threads) -> str:
    return PLAN.accelerate_flags(w.dataset, int(resources.gpu), int(threads))


def process_threads(w, resources, threads) -> int:
    return threads_per_process(int(resources.gpu), int(threads))


sample_flags = lambda w: PLAN.sample_flags(w.dataset, w.sampler)
frames_every = lambda w: PLAN.frames_every(w.sampler)


def gif_every(panels: int):
    return lambda w: PLAN.gif_every(w.dataset, w.sampler, panels)


def partial_path(w, output) -> str:
    """Where a job builds its (first) output before renaming it into place."""
    return f"{output[0]}.partial"


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


def by_method(path: str):
    """An input function: ``path`` formatted for every method, in METHODS order."""
    return lambda w: [path.format(method=m, **dict(w.items())) for m in METHODS]


def labelled(flag: str, labels, subdir: str = ""):
    """A params function writing ``FLAG LABEL=PATH`` per input, labels in input order."""

    def args(w, input) -> str:
        paths = [f"{p}/{subdir}" if subdir else p for p in input]
        pairs = zip(labels(w), paths, strict=True)
        return " ".join(f"{flag} {shlex.quote(f'{n}={p}')}" for n, p in pairs)

    return args


method_labels = lambda w: PLAN.method_labels(w.dataset)
trained_labels = lambda w: PLAN.method_labels(w.dataset, trained_only=True)


def compare_frames(w, input) -> str:
    """``--frames LABEL=DIR`` for each method's denoising frames of the {example}."""
    pairs = zip(method_labels(w), input.frames, strict=True)
    return " ".join(
        f"--frames {shlex.quote(f'{label}={path}/{w.example}')}"
        for label, path in pairs
    )


def page_title(template: str):
    """A params function giving a shell-quoted page title filled from the wildcards."""
    return lambda w: shlex.quote(template.format(**dict(w.items())))


paired_title = lambda w: shlex.quote(PLAN.paired_title(w.dataset, w.sampler))


def gif_targets(w) -> list[str]:
    """GIFs and their pages for the selected examples (known once select_examples ran)."""
    stems = lambda d: [Path(name).stem for name in example_files(d)]
    return [t for d in DATASETS for t in PLAN.gif_targets(d, stems(d))]
