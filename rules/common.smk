"""Shared by every .smk file: config validation, input functions and the translation of
config settings into `markup2im` command-line flags."""

import itertools
import math
import re
import shlex
from pathlib import Path

import jsonschema
import yaml

from markup2im.presets import get_domain

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _config_error(error: jsonschema.ValidationError) -> str:
    """One line naming the key of a schema violation (the most specific one for oneOf)."""
    if error.context:
        error = jsonschema.exceptions.best_match(error.context)
    where = ".".join(str(p) for p in error.absolute_path) or "the top level"
    message = error.message
    # oneOf without context: several alternatives matched; say which keys exclude each other
    if error.validator == "oneOf":
        keys = [k for alt in error.validator_value for k in alt.get("required", [])]
        message = f"give exactly one of {', '.join(keys)}"
    return f"invalid config at {where}: {message}"


def _subschema(schema: dict, path: tuple) -> dict:
    """The part of ``schema`` that describes the config value at ``path`` ({} if none)."""

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            target = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    node = resolve(schema)
    for key in path:
        if key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif isinstance(key, int) and isinstance(node.get("items"), dict):
            node = node["items"]
        else:
            return {}
        node = resolve(node)
    return node


def _takes_string(node: dict) -> bool:
    if "enum" in node:
        return any(isinstance(v, str) for v in node["enum"])
    types = node.get("type", [])
    return not types or "string" in ([types] if isinstance(types, str) else types)


def _typed_overrides(cfg: dict, overrides, schema: dict, path: tuple = ()) -> None:
    """Re-read ``--config`` values as YAML where the schema wants no string.

    Snakemake reads nested ``--config`` values with YAML's BaseLoader, so ``--config
    'datasets={math: {generate: {seed: 7}}}'`` would give the string '7'.
    """
    items = overrides.items() if isinstance(overrides, dict) else enumerate(overrides)
    for key, value in items:
        here = path + (key,)
        if isinstance(value, dict | list):
            target = cfg[key] if isinstance(cfg, list) or key in cfg else None
            if isinstance(target, dict | list):
                _typed_overrides(target, value, schema, here)
        elif isinstance(value, str) and not _takes_string(_subschema(schema, here)):
            cfg[key] = yaml.safe_load(value)


_typed_overrides(
    config,
    dict(workflow.config_settings.config),
    yaml.safe_load(
        (Path(workflow.current_basedir) / "../schemas/config.schema.yaml").read_text()
    ),
)

# Fails at parse time, before any job runs, naming the offending key; fills in the defaults.
try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as err:
    if not isinstance(err.__context__, jsonschema.ValidationError):
        raise
    raise WorkflowError(_config_error(err.__context__)) from None


def _check_config(cfg: dict) -> None:
    """Cross-field checks that a JSON schema cannot express, with messages naming the key."""
    for name, ds in cfg["datasets"].items():
        for sampler in ds.get("samplers", []):
            if sampler not in cfg["samplers"]:
                raise WorkflowError(
                    f"config: datasets.{name}.samplers names {sampler!r}, which is not a key of "
                    f"samplers (known: {', '.join(sorted(cfg['samplers']))})"
                )
        gen = ds["generate"]
        if (
            gen["limit"] is not None
            and "frames_for" not in gen
            and gen["frames"] > gen["limit"]
        ):
            raise WorkflowError(
                f"config: datasets.{name}.generate.frames ({gen['frames']}) is larger than "
                f"datasets.{name}.generate.limit ({gen['limit']})"
            )
    ss = cfg["scheduled_sampling"]
    for key in ("start", "end"):
        if len(ss[key]) != ss["max_m"]:
            raise WorkflowError(
                f"config: scheduled_sampling.{key} has {len(ss[key])} weights but "
                f"scheduled_sampling.max_m is {ss['max_m']} (one weight per rollout length)"
            )


_check_config(config)

DATASETS: list[str] = list(config["datasets"])
METHODS: list[str] = list(config["methods"])
HUB_DATASETS: list[str] = [
    d for d in DATASETS if "hub" in config["datasets"][d]["source"]
]
RENDER_DATASETS: list[str] = [
    d for d in DATASETS if "render" in config["datasets"][d]["source"]
]
METHOD_LABELS: dict[str, str] = {
    "baseline": "baseline",
    "scheduled_sampling": "scheduled sampling",
}
# The paired comparison (scheduled sampling - baseline per image) needs both methods.
PAIRED: bool = {"baseline", "scheduled_sampling"} <= set(METHODS)
# {dataset: {method: checkpoint}}: models imported from the authors' released checkpoints
# (rule import_original) instead of trained.
RELEASED: dict[str, dict[str, str]] = {
    d: {
        m: entry["checkpoint"]
        for m, entry in config["datasets"][d].get("released", {}).items()
    }
    for d in DATASETS
}
RELEASED_DATASETS: list[str] = [d for d in DATASETS if RELEASED[d]]


def _alternatives(names: list[str]) -> str:
    """A regex matching exactly one of ``names`` (and nothing when the list is empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


# ---- config lookups ------------------------------------------------------------------------


def dataset_config(wildcards) -> dict:
    """The validated config entry of the {dataset} wildcard."""
    return config["datasets"][wildcards.dataset]


def samplers_of(dataset: str) -> list[str]:
    """Sampler names run for ``dataset`` (its own list, or every configured sampler)."""
    return list(config["datasets"][dataset].get("samplers", config["samplers"]))


def runs(dataset: str | None = None) -> list[tuple[str, str, str]]:
    """Every (dataset, method, sampler) combination, optionally for one dataset only."""
    names = DATASETS if dataset is None else [dataset]
    return [(d, m, s) for d in names for m in METHODS for s in samplers_of(d)]


def resource(kind: str, key: str):
    """A function giving the ``key`` resource of a ``kind`` job (data, train, generate, ...).

    Datasets may override data, train and generate values of the top-level `resources`.
    """

    def lookup(wildcards) -> int:
        value = config["resources"][kind][key]
        if "dataset" in wildcards.keys():
            override = dataset_config(wildcards).get("resources", {}).get(kind, {})
            value = override.get(key, value)
        return value

    return lookup


def is_released(dataset: str, method: str) -> bool:
    """Whether the model of ``method`` is imported from a released checkpoint."""
    return method in RELEASED[dataset]


def trained_methods(dataset: str) -> list[str]:
    """The methods that are trained here for ``dataset`` (not imported)."""
    return [m for m in METHODS if not is_released(dataset, m)]


def model_path(dataset: str, method: str) -> str:
    """The model directory of a run: trained here, or imported from a released checkpoint."""
    stage = "released" if is_released(dataset, method) else "train"
    return f"results/{dataset}/{method}/{stage}/model"


def model_dir(wildcards) -> str:
    """The model directory of the {dataset} and {method} wildcards."""
    return model_path(wildcards.dataset, wildcards.method)


def released_checkpoint(wildcards) -> str:
    """The released checkpoint of the {dataset} and {method} wildcards."""
    try:
        return RELEASED[wildcards.dataset][wildcards.method]
    except KeyError:
        raise WorkflowError(
            f"config: datasets.{wildcards.dataset}.released has no {wildcards.method!r} entry"
        ) from None


def method_label(dataset: str, method: str) -> str:
    """How figures name a method: ``released baseline`` for an imported model."""
    label = METHOD_LABELS[method]
    return f"released {label}" if is_released(dataset, method) else label


def run_name(dataset: str, method: str) -> str:
    """How tables name a method: the method, ``released`` first for an imported model."""
    return f"released {method}" if is_released(dataset, method) else method


def train_gpus(wildcards) -> int:
    """GPUs (accelerate processes) of a training job; 0 means CPU."""
    return dataset_config(wildcards)["gpu"]


def generate_gpus(wildcards) -> int:
    """Generation runs in one process: one GPU when the dataset has any."""
    return min(1, dataset_config(wildcards)["gpu"])


# ---- command-line flags from config ---------------------------------------------------------


def cli_flags(settings: dict) -> str:
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
        elif isinstance(value, list):
            parts.append(f"{flag} {shlex.quote(','.join(str(v) for v in value))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def hub_flags(wildcards) -> str:
    """Flags of `markup2im download` for a hub dataset."""
    hub = dataset_config(wildcards)["source"]["hub"]
    return cli_flags(
        {
            "dataset": hub["id"],
            "revision": hub["revision"],
            "local_path": hub["local_path"],
            "max_examples": hub["max_examples"],
        }
    )


def render_flags(wildcards) -> str:
    """Flags of `markup2im build-dataset` for a dataset rendered here."""
    ds = dataset_config(wildcards)
    render = ds["source"]["render"]
    return cli_flags(
        {
            "domain": ds["domain"],
            "synthetic": render.get("synthetic", False),
            "difficulty": render.get("difficulty"),
            "markup_file": render.get("markup_file"),
            **{k: render[k] for k in ("train", "validation", "test", "seed")},
            **{k: render[k] for k in ("timeout", "width", "height")},
        }
    )


def markup_file(wildcards) -> list[str]:
    """The user's markup file as an input (so editing it rebuilds the dataset), if any."""
    render = dataset_config(wildcards)["source"]["render"]
    return [render["markup_file"]] if "markup_file" in render else []


def train_flags(wildcards) -> str:
    """Flags of `markup2im train`: model, training settings and the method's settings."""
    ds = dataset_config(wildcards)
    model = ds["model"]
    flags = {
        "method": wildcards.method,
        "model_preset": model["preset"],
        "encoder": model["encoder"],
        "max_markup_length": model["max_markup_length"],
        "prediction_type": model["prediction_type"],
        "train_encoder": model["train_encoder"],
        **ds["train"],
        # other settings or data: set the old checkpoints aside and train from scratch
        "resume": "auto",
    }
    if wildcards.method == "scheduled_sampling":
        ss = config["scheduled_sampling"]
        flags.update(
            ss_max_m=ss["max_m"],
            ss_start=ss["start"],
            ss_end=ss["end"],
            # 0 means no guard (a guard at 0 would still skip every batch holding t = 0)
            ss_min_t=ss["min_t"] or None,
        )
    return cli_flags(flags)


def import_flags(wildcards) -> str:
    """Flags of `markup2im import-original`: the domain and the dataset's model settings."""
    ds = dataset_config(wildcards)
    model = ds["model"]
    return cli_flags(
        {
            "domain": ds["domain"],
            "encoder": model["encoder"],
            "model_preset": model["preset"],
            "max_markup_length": model["max_markup_length"],
        }
    )


def evaluate_flags(wildcards) -> str:
    """Optional flags of `markup2im evaluate` (the CLIP score when a model is configured)."""
    settings = config["evaluate"]
    if settings["clip_model"] is None:
        return ""
    return cli_flags(
        {
            "clip_model": settings["clip_model"],
            "clip_batch_size": settings["clip_batch_size"],
        }
    )


def accelerate_flags(wildcards, resources) -> str:
    """`accelerate launch` flags: one process per GPU of the job, or one CPU process.

    Port 0 lets accelerate pick a free port on the machine the job runs on, so concurrent
    multi-GPU jobs on one node never collide.
    """
    gpus = int(resources.gpu)
    mixed = dataset_config(wildcards)["train"]["mixed_precision"]
    flags = f"--num_machines 1 --mixed_precision {mixed} --dynamo_backend no"
    if gpus == 0:
        return f"{flags} --cpu --num_processes 1"
    multi = " --multi_gpu" if gpus > 1 else ""
    return f"{flags} --num_processes {gpus}{multi} --main_process_port 0"


def image_size(dataset: str) -> tuple[int, int]:
    """(width, height) of the dataset's images: the render size or the domain's."""
    ds = config["datasets"][dataset]
    spec = get_domain(ds["domain"])
    render = ds["source"].get("render", {})
    return render.get("width") or spec.width, render.get("height") or spec.height


def gif_every(panels: int):
    """A params function: use every k-th saved frame so that a GIF of ``panels`` images keeps
    within `gif.max_pixels`.

    The report embeds each GIF page as a data URL, and Chromium shows none above 2 MB.
    """

    def every(wildcards) -> int:
        from markup2im.visualize import upscale_factor

        width, height = image_size(wildcards.dataset)
        factor = upscale_factor((width, height))
        frame_pixels = panels * width * height * factor**2
        steps = config["samplers"][wildcards.sampler]["steps"]
        saved = math.ceil(steps / frames_every(wildcards.sampler)) + 1
        most = max(2, config["gif"]["max_pixels"] // frame_pixels)
        return math.ceil(saved / most)

    return every


def frames_every(sampler: str) -> int:
    """Keep every k-th denoising frame: the configured value or about 50 frames per example."""
    cfg = config["samplers"][sampler]
    return cfg["frames_every"] or max(1, cfg["steps"] // 50)


def partial_path(wildcards, output) -> str:
    """Where a job builds its (first) output before renaming it into place."""
    return f"{output[0]}.partial"


def generate_setting(key: str):
    """A params function giving one `generate` setting of the {dataset} wildcard (None if unset)."""

    def lookup(wildcards):
        return dataset_config(wildcards)["generate"].get(key)

    return lookup


def generate_flags(wildcards) -> str:
    """Flags of `markup2im generate` (sampler, steps, split, limit, batch size, seed, frames)."""
    gen = dataset_config(wildcards)["generate"]
    sampler = config["samplers"][wildcards.sampler]
    return cli_flags(
        {
            "split": gen["split"],
            "limit": gen["limit"],
            "batch_size": gen["batch_size"],
            "sampler": sampler["sampler"],
            "num_inference_steps": sampler["steps"],
            "seed": gen["seed"],
            "frames_every": frames_every(wildcards.sampler),
        }
    )


# ---- examples with denoising frames (known once the dataset exists) -------------------------


def example_files(dataset: str) -> list[str]:
    """Filenames of the examples that get frames and GIFs (read after the checkpoint ran)."""
    listing = checkpoints.select_examples.get(dataset=dataset).output.examples
    return Path(listing).read_text(encoding="utf-8").split()


def example_stems(dataset: str) -> list[str]:
    """The {example} wildcard values of ``dataset``: filenames without their extension."""
    return [Path(name).stem for name in example_files(dataset)]


def example_filename(wildcards) -> str:
    """The filename (with extension) of the {example} wildcard."""
    for name in example_files(wildcards.dataset):
        if Path(name).stem == wildcards.example:
            return name
    raise WorkflowError(
        f"{wildcards.example!r} is not a selected example of {wildcards.dataset}"
    )


# ---- inputs of the summary rules -------------------------------------------------------------


def samples_dir(dataset: str, method: str, sampler: str) -> str:
    return f"results/{dataset}/{method}/{sampler}/samples"


def compare_inputs(wildcards) -> dict[str, str]:
    """Sample directories of every method for one dataset and sampler."""
    return {m: samples_dir(wildcards.dataset, m, wildcards.sampler) for m in METHODS}


def labelled(flag: str, labels, subdir: str = ""):
    """A params function writing ``FLAG LABEL=PATH`` for each input, labels in input order.

    ``subdir`` is appended to every input path (``images`` inside a samples directory).
    """

    def args(wildcards, input) -> str:
        names = labels(wildcards)
        pairs = [
            (n, f"{p}/{subdir}" if subdir else p)
            for n, p in zip(names, input, strict=True)
        ]
        return " ".join(f"{flag} {shlex.quote(f'{n}={p}')}" for n, p in pairs)

    return args


def compare_gold(wildcards, input) -> str:
    """Gold image of the {example} (every method's samples hold the same gold copy)."""
    return shlex.quote(f"{input[METHODS[0]]}/gold/{example_filename(wildcards)}")


def compare_frames(wildcards, input) -> str:
    """``--frames LABEL=DIR`` for each method's denoising frames of the {example}."""
    pairs = [
        f"{method_label(wildcards.dataset, m)}={input[m]}/frames/{wildcards.example}"
        for m in METHODS
    ]
    return " ".join(f"--frames {shlex.quote(pair)}" for pair in pairs)


def grid_gold(wildcards, input) -> str:
    return shlex.quote(f"{input[0]}/gold")


def page_title(template: str):
    """A params function giving a shell-quoted page title filled from the wildcards."""

    def title(wildcards) -> str:
        return shlex.quote(template.format(**dict(wildcards.items())))

    return title


def summary_inputs(wildcards) -> list[str]:
    return [f"results/{d}/{m}/{s}/metrics_summary.json" for d, m, s in runs()]


def summary_labels(wildcards) -> list[str]:
    """``dataset/method (sampler)``: the table's dataset and method columns."""
    return [f"{d}/{run_name(d, m)} ({s})" for d, m, s in runs()]


def sampler_metrics(wildcards) -> list[str]:
    """Per-image metrics of every method for one dataset and sampler."""
    return [
        f"results/{wildcards.dataset}/{m}/{wildcards.sampler}/metrics.csv"
        for m in METHODS
    ]


def paired_runs() -> list[tuple[str, str]]:
    """Every (dataset, sampler) of the paired comparison; none unless both methods run."""
    return [(d, s) for d in DATASETS for s in samplers_of(d)] if PAIRED else []


def paired_tables(wildcards) -> list[str]:
    return [f"results/{d}/figures/{s}/paired.csv" for d, s in paired_runs()]


def paired_labels(wildcards) -> list[str]:
    """``dataset/sampler``: the paired table's dataset and sampler columns (``released`` noted
    for imported models)."""
    return [f"{d}/{s}{released_note(d)}" for d, s in paired_runs()]


def released_note(dataset: str) -> str:
    """`` (released models)`` when the compared models of ``dataset`` are imported ones."""
    imported = [
        m for m in ("baseline", "scheduled_sampling") if is_released(dataset, m)
    ]
    if not imported:
        return ""
    return " (released models)" if len(imported) == 2 else f" (released {imported[0]})"


def paired_title(wildcards) -> str:
    """Shell-quoted title of a paired comparison page."""
    d, s = wildcards.dataset, wildcards.sampler
    treatment = method_label(d, "scheduled_sampling")
    return shlex.quote(f"{d}, {s}: {treatment} - {method_label(d, 'baseline')}")


def train_logs(wildcards) -> list[str]:
    """Training logs of the methods trained here (imported models have none)."""
    return [
        f"results/{wildcards.dataset}/{m}/train_log.csv"
        for m in trained_methods(wildcards.dataset)
    ]


def method_names(wildcards) -> list[str]:
    return [method_label(wildcards.dataset, m) for m in METHODS]


def trained_method_names(wildcards) -> list[str]:
    return [
        method_label(wildcards.dataset, m) for m in trained_methods(wildcards.dataset)
    ]


def method_dirs(wildcards) -> list[str]:
    return [samples_dir(wildcards.dataset, m, wildcards.sampler) for m in METHODS]


# ---- final targets ---------------------------------------------------------------------------


def final_targets(wildcards) -> list[str]:
    """Tables and figures of every dataset; known before any job runs."""
    targets = ["results/summary/metrics_table.csv"]
    for d in DATASETS:
        if trained_methods(d):
            targets.append(f"results/{d}/figures/loss_curves.png")
        for s in samplers_of(d):
            targets.append(f"results/{d}/figures/{s}/metric_distributions.png")
            targets.append(f"results/{d}/figures/{s}/samples_grid.png")
    if PAIRED:
        targets += paired_tables(wildcards)
        targets.append("results/summary/paired_table.csv")
    return targets


def model_targets(wildcards) -> list[str]:
    """Every run's model. Targets of their own: a model removed by an interrupted job (Ctrl-C
    during `--forcerun train`) must be rebuilt even though everything made from it still
    exists, and Snakemake builds a missing intermediate only when a target needs it."""
    return [model_path(d, m) for d in DATASETS for m in METHODS]


def gif_targets(wildcards) -> list[str]:
    """GIFs and their pages for the selected examples (known once `select_examples` ran)."""
    targets = []
    for d in DATASETS:
        stems = example_stems(d)
        for s, ex, ext in itertools.product(samplers_of(d), stems, ("gif", "html")):
            targets.append(f"results/{d}/figures/{s}/compare/{ex}.{ext}")
            targets += [f"results/{d}/{m}/{s}/gifs/{ex}.{ext}" for m in METHODS]
    return targets
