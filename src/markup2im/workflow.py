"""The logic of the Snakemake workflow, importable and tested without Snakemake.

``rules/common.smk`` validates the config with Snakemake's ``validate`` (which also fills in the
schema's defaults), hands it to :class:`Plan` and keeps only thin input functions. Everything
else lives here: re-typing ``--config`` values, messages naming the bad key, cross-field checks,
which jobs exist, their targets and paths, and the translation of config settings into
``markup2im`` command-line flags.

Settings that do not change a job's outputs (generation batch size, checkpoint interval and
count, the margin before a Slurm time limit) are handed to the rules as *resources*, which
Snakemake does not compare between runs, so changing them never reruns a job; everything that
changes outputs goes through *params*, which Snakemake does compare (its ``params`` rerun
trigger). ``code_version`` gives users a key to bump after editing the library, whose code
Snakemake does not track.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from markup2im.errors import ConfigError
from markup2im.presets import get_domain

METHOD_LABELS: dict[str, str] = {
    "baseline": "baseline",
    "scheduled_sampling": "scheduled sampling",
}
ENCODER_DIR = "results/encoders"
OFFLINE_ENCODER = "offline"  # markup2im.models.encoder.OFFLINE (kept here: no torch import)


# ---- config files and --config values --------------------------------------------------------


def load_schema(path: str | Path) -> dict:
    """The workflow's JSON schema (schemas/config.schema.yaml)."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def validate_config(cfg: dict, schema: dict) -> dict:
    """Check ``cfg`` against the schema and fill in its defaults, in place; the config back.

    Raises ConfigError naming the first offending key.
    """
    import copy

    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, schema)

    filling = jsonschema.validators.extend(base, {"properties": properties_with_defaults})
    error = jsonschema.exceptions.best_match(filling(schema).iter_errors(cfg))
    if error is not None:
        raise ConfigError(config_error(error))
    return cfg


def config_error(error: Any) -> str:
    """One line naming the key of a jsonschema ValidationError (the most specific for oneOf)."""
    import jsonschema

    if error.context:
        error = jsonschema.exceptions.best_match(error.context)
    where = ".".join(str(p) for p in error.absolute_path) or "the top level"
    message = error.message
    # oneOf without context: several alternatives matched; say which keys exclude each other
    if error.validator == "oneOf":
        keys = [k for alt in error.validator_value for k in alt.get("required", [])]
        message = f"give exactly one of {', '.join(keys)}"
    return f"invalid config at {where}: {message}"


def subschema(schema: dict, path: tuple) -> dict:
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


def retype_overrides(cfg: dict, overrides: Mapping, schema: dict, path: tuple = ()) -> None:
    """Re-read ``--config`` values as YAML, in place, where the schema wants no string.

    Snakemake reads nested ``--config`` values with YAML's BaseLoader, so ``--config
    'datasets={math: {generate: {seed: 7}}}'`` would give the string '7'.
    """
    items = overrides.items() if isinstance(overrides, dict) else enumerate(overrides)
    for key, value in items:
        here = path + (key,)
        if isinstance(value, dict | list):
            target = cfg[key] if isinstance(cfg, list) or key in cfg else None
            if isinstance(target, dict | list):
                retype_overrides(target, value, schema, here)
        elif isinstance(value, str) and not _takes_string(subschema(schema, here)):
            cfg[key] = yaml.safe_load(value)


def check_config(cfg: dict) -> None:
    """Cross-field checks that a JSON schema cannot express; ConfigError names the key."""
    for name, ds in cfg["datasets"].items():
        for sampler in ds.get("samplers", []):
            if sampler not in cfg["samplers"]:
                raise ConfigError(
                    f"config: datasets.{name}.samplers names {sampler!r}, which is not a key of "
                    f"samplers (known: {', '.join(sorted(cfg['samplers']))})"
                )
        gen = ds["generate"]
        if gen["limit"] is not None and "frames_for" not in gen and gen["frames"] > gen["limit"]:
            raise ConfigError(
                f"config: datasets.{name}.generate.frames ({gen['frames']}) is larger than "
                f"datasets.{name}.generate.limit ({gen['limit']})"
            )
        if ds.get("gpu_model") and ds["gpu"] == 0:
            raise ConfigError(
                f"config: datasets.{name}.gpu_model is {ds['gpu_model']!r} but "
                f"datasets.{name}.gpu is 0 (no GPU to ask for)"
            )
    ss = cfg["scheduled_sampling"]
    for key in ("start", "end"):
        if len(ss[key]) != ss["max_m"]:
            raise ConfigError(
                f"config: scheduled_sampling.{key} has {len(ss[key])} weights but "
                f"scheduled_sampling.max_m is {ss['max_m']} (one weight per rollout length)"
            )


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


def alternatives(names: Iterable[str]) -> str:
    """A regex matching exactly one of ``names`` (and nothing when there are none)."""
    names = list(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def encoder_slug(name: str, revision: str | None) -> str:
    """The directory name of a fetched hub encoder: ``org--name`` (``@revision`` if pinned)."""
    slug = name.replace("/", "--")
    return f"{slug}@{revision}" if revision else slug


def _is_local_encoder(name: str) -> bool:
    """``offline`` or a path (what `markup2im train` loads without the hub)."""
    return (
        name == OFFLINE_ENCODER
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or Path(name).expanduser().is_dir()
    )


@dataclass(frozen=True)
class HubEncoder:
    """A hub encoder that the workflow saves to a local directory on the login node."""

    name: str
    revision: str | None

    @property
    def path(self) -> str:
        return f"{ENCODER_DIR}/{encoder_slug(self.name, self.revision)}"


# ---- the plan ---------------------------------------------------------------------------------


class Plan:
    """What the workflow runs for one validated config (defaults filled in)."""

    def __init__(self, config: dict) -> None:
        check_config(config)
        self.config = config
        self.datasets: list[str] = list(config["datasets"])
        self.methods: list[str] = list(config["methods"])
        self.hub_datasets = [d for d in self.datasets if "hub" in self.dataset(d)["source"]]
        self.render_datasets = [d for d in self.datasets if "render" in self.dataset(d)["source"]]
        # {dataset: {method: checkpoint}}: models imported from the authors' released
        # checkpoints (rule import_original) instead of trained.
        self.released: dict[str, dict[str, str]] = {
            d: {m: e["checkpoint"] for m, e in self.dataset(d).get("released", {}).items()}
            for d in self.datasets
        }
        self.released_datasets = [d for d in self.datasets if self.released[d]]
        # The paired comparison (scheduled sampling - baseline per image) needs both methods.
        self.paired: bool = {"baseline", "scheduled_sampling"} <= set(self.methods)

    # -- lookups --------------------------------------------------------------------------------
    def dataset(self, name: str) -> dict:
        return self.config["datasets"][name]

    def samplers_of(self, dataset: str) -> list[str]:
        """Sampler names run for ``dataset`` (its own list, or every configured sampler)."""
        return list(self.dataset(dataset).get("samplers", self.config["samplers"]))

    def runs(self, dataset: str | None = None) -> list[tuple[str, str, str]]:
        """Every (dataset, method, sampler), optionally of one dataset only."""
        names = self.datasets if dataset is None else [dataset]
        return [(d, m, s) for d in names for m in self.methods for s in self.samplers_of(d)]

    def resource(self, kind: str, key: str, dataset: str | None = None) -> Any:
        """The ``key`` resource of a ``kind`` job (data, train, generate, ...); a dataset's own
        `resources` override the top-level ones."""
        value = self.config["resources"][kind][key]
        if dataset is not None:
            value = self.dataset(dataset).get("resources", {}).get(kind, {}).get(key, value)
        return value

    def version(self, stage: str) -> int:
        """`code_version.<stage>`: bump it to rerun a stage after editing the library."""
        return self.config["code_version"][stage]

    # -- models ---------------------------------------------------------------------------------
    def is_released(self, dataset: str, method: str) -> bool:
        return method in self.released[dataset]

    def trained_methods(self, dataset: str) -> list[str]:
        return [m for m in self.methods if not self.is_released(dataset, m)]

    def model_path(self, dataset: str, method: str) -> str:
        stage = "released" if self.is_released(dataset, method) else "train"
        return f"results/{dataset}/{method}/{stage}/model"

    def released_checkpoint(self, dataset: str, method: str) -> str:
        try:
            return self.released[dataset][method]
        except KeyError:
            raise ConfigError(
                f"config: datasets.{dataset}.released has no {method!r} entry"
            ) from None

    def method_label(self, dataset: str, method: str) -> str:
        """How figures name a method: ``released baseline`` for an imported model."""
        label = METHOD_LABELS[method]
        return f"released {label}" if self.is_released(dataset, method) else label

    def run_name(self, dataset: str, method: str) -> str:
        """How tables name a method: the method, ``released`` first for an imported model."""
        return f"released {method}" if self.is_released(dataset, method) else method

    def method_labels(self, dataset: str, trained_only: bool = False) -> list[str]:
        """Figure labels of the dataset's methods (only those trained here, if asked)."""
        methods = self.trained_methods(dataset) if trained_only else self.methods
        return [self.method_label(dataset, m) for m in methods]

    def paired_title(self, dataset: str, sampler: str) -> str:
        treatment = self.method_label(dataset, "scheduled_sampling")
        return f"{dataset}, {sampler}: {treatment} - {self.method_label(dataset, 'baseline')}"

    def released_note(self, dataset: str) -> str:
        """`` (released models)`` when the compared models of ``dataset`` are imported ones."""
        imported = [m for m in ("baseline", "scheduled_sampling") if self.is_released(dataset, m)]
        if not imported:
            return ""
        return " (released models)" if len(imported) == 2 else f" (released {imported[0]})"

    # -- encoders -------------------------------------------------------------------------------
    def encoder_name(self, dataset: str) -> str:
        """The configured encoder, or the domain's encoder of the paper when it is null."""
        ds = self.dataset(dataset)
        return ds["model"]["encoder"] or get_domain(ds["domain"]).hub_encoder

    def hub_encoder(self, dataset: str) -> HubEncoder | None:
        """The hub encoder the dataset's jobs need saved locally (None: offline or local)."""
        name = self.encoder_name(dataset)
        if _is_local_encoder(name):
            return None
        return HubEncoder(name, self.dataset(dataset)["model"]["encoder_revision"])

    def hub_encoders(self) -> dict[str, HubEncoder]:
        """{slug: encoder} of every hub encoder of the config."""
        found = (self.hub_encoder(d) for d in self.datasets)
        return {Path(e.path).name: e for e in found if e is not None}

    def encoder_input(self, dataset: str) -> list[str]:
        """The local encoder directory a training or import job reads ([] if none needed)."""
        encoder = self.hub_encoder(dataset)
        return [encoder.path] if encoder else []

    def encoder_argument(self, dataset: str) -> str:
        """What `--encoder` gets: the fetched local directory for hub encoders."""
        encoder = self.hub_encoder(dataset)
        return encoder.path if encoder else self.encoder_name(dataset)

    # -- GPUs and threads -----------------------------------------------------------------------
    def train_gpus(self, dataset: str) -> int:
        """GPUs (accelerate processes) of a training job; 0 means CPU."""
        return self.dataset(dataset)["gpu"]

    def generate_gpus(self, dataset: str) -> int:
        """Generation runs in one process: one GPU when the dataset has any."""
        return min(1, self.train_gpus(dataset))

    def gpu_model(self, dataset: str, gpus: int) -> str:
        """``gpu_model`` resource: the configured model for GPU jobs, '' (none) for CPU jobs, so
        that Slurm is never asked for ``--gpus=a100:0``."""
        return (self.dataset(dataset).get("gpu_model") or "") if gpus > 0 else ""

    # -- flags ----------------------------------------------------------------------------------
    def hub_flags(self, dataset: str) -> str:
        hub = self.dataset(dataset)["source"]["hub"]
        return cli_flags(
            {
                "dataset": hub["id"],
                "revision": hub["revision"],
                "local_path": hub["local_path"],
                "max_examples": hub["max_examples"],
            }
        )

    def render_flags(self, dataset: str) -> str:
        ds = self.dataset(dataset)
        render = ds["source"]["render"]
        keys = ("train", "validation", "test", "seed", "timeout", "width", "height")
        return cli_flags(
            {
                "domain": ds["domain"],
                "synthetic": render.get("synthetic", False),
                "difficulty": render.get("difficulty"),
                "markup_file": render.get("markup_file"),
                **{k: render[k] for k in keys},
            }
        )

    def markup_file(self, dataset: str) -> list[str]:
        """The user's markup file as an input (so editing it rebuilds the dataset), if any."""
        render = self.dataset(dataset)["source"]["render"]
        return [render["markup_file"]] if "markup_file" in render else []

    def train_flags(self, dataset: str, method: str) -> str:
        """Flags of `markup2im train` that decide the model (so they are rerun triggers)."""
        ds = self.dataset(dataset)
        model = ds["model"]
        train = {k: v for k, v in ds["train"].items() if k not in TRAIN_RUNTIME_KEYS}
        flags = {
            "method": method,
            "model_preset": model["preset"],
            "encoder": self.encoder_argument(dataset),
            "max_markup_length": model["max_markup_length"],
            "prediction_type": model["prediction_type"],
            "train_encoder": model["train_encoder"],
            **train,
            # other settings or data: set the old checkpoints aside and train from scratch
            "resume": "auto",
        }
        if method == "scheduled_sampling":
            ss = self.config["scheduled_sampling"]
            flags.update(
                ss_max_m=ss["max_m"],
                ss_start=ss["start"],
                ss_end=ss["end"],
                # 0 means no guard (a guard at 0 would still skip every batch holding t = 0)
                ss_min_t=ss["min_t"] or None,
            )
        return cli_flags(flags)

    def train_runtime_flags(self, dataset: str) -> dict[str, Any]:
        """Settings of `markup2im train` that leave the model unchanged (resources)."""
        train = self.dataset(dataset)["train"]
        return {k: train[k] for k in TRAIN_RUNTIME_KEYS if k in train}

    def import_flags(self, dataset: str) -> str:
        ds = self.dataset(dataset)
        model = ds["model"]
        return cli_flags(
            {
                "domain": ds["domain"],
                "encoder": self.encoder_argument(dataset),
                "model_preset": model["preset"],
                "max_markup_length": model["max_markup_length"],
            }
        )

    def evaluate_flags(self) -> str:
        """Optional flags of `markup2im evaluate` (the CLIP score when a model is set)."""
        settings = self.config["evaluate"]
        if settings["clip_model"] is None:
            return ""
        return cli_flags(
            {
                "clip_model": settings["clip_model"],
                "clip_batch_size": settings["clip_batch_size"],
            }
        )

    def accelerate_flags(self, dataset: str, gpus: int, threads: int) -> str:
        """`accelerate launch` flags: one process per GPU of the job (or one CPU process), each
        with its share of the job's CPU threads.

        Port 0 lets accelerate pick a free port on the node, so concurrent multi-GPU jobs on
        one node never collide.
        """
        mixed = self.dataset(dataset)["train"]["mixed_precision"]
        per_process = threads_per_process(gpus, threads)
        flags = (
            f"--num_machines 1 --mixed_precision {mixed} --dynamo_backend no"
            f" --num_cpu_threads_per_process {per_process}"
        )
        if gpus == 0:
            return f"{flags} --cpu --num_processes 1"
        multi = " --multi_gpu" if gpus > 1 else ""
        return f"{flags} --num_processes {gpus}{multi} --main_process_port 0"

    def image_size(self, dataset: str) -> tuple[int, int]:
        """(width, height) of the dataset's images: the render size or the domain's."""
        ds = self.dataset(dataset)
        spec = get_domain(ds["domain"])
        render = ds["source"].get("render", {})
        return render.get("width") or spec.width, render.get("height") or spec.height

    def frames_every(self, sampler: str) -> int:
        """Keep every k-th denoising frame: the configured value or about 50 per example."""
        cfg = self.config["samplers"][sampler]
        return cfg["frames_every"] or max(1, cfg["steps"] // 50)

    def gif_every(self, dataset: str, sampler: str, panels: int) -> int:
        """Use every k-th saved frame so that a GIF of ``panels`` images keeps within
        `gif.max_pixels` (the report embeds GIF pages as data URLs, which Chromium shows up to
        2 MB)."""
        from markup2im.visualize import upscale_factor

        width, height = self.image_size(dataset)
        factor = upscale_factor((width, height))
        frame_pixels = panels * width * height * factor**2
        steps = self.config["samplers"][sampler]["steps"]
        saved = math.ceil(steps / self.frames_every(sampler)) + 1
        most = max(2, self.config["gif"]["max_pixels"] // frame_pixels)
        return math.ceil(saved / most)

    def sample_flags(self, dataset: str, sampler: str) -> str:
        """Flags of `markup2im generate` that decide the images (split, limit, sampler, seed)."""
        gen = self.dataset(dataset)["generate"]
        cfg = self.config["samplers"][sampler]
        return cli_flags(
            {
                "split": gen["split"],
                "limit": gen["limit"],
                "sampler": cfg["sampler"],
                "num_inference_steps": cfg["steps"],
                "seed": gen["seed"],
                "precision": gen["precision"] if gen["precision"] != "fp32" else None,
            }
        )

    # -- targets --------------------------------------------------------------------------------
    def summary_inputs(self) -> list[str]:
        return [f"results/{d}/{m}/{s}/metrics_summary.json" for d, m, s in self.runs()]

    def summary_labels(self) -> list[str]:
        """``dataset/method (sampler)``: the table's dataset and method columns."""
        return [f"{d}/{self.run_name(d, m)} ({s})" for d, m, s in self.runs()]

    def paired_runs(self) -> list[tuple[str, str]]:
        """Every (dataset, sampler) of the paired comparison; none unless both methods run."""
        if not self.paired:
            return []
        return [(d, s) for d in self.datasets for s in self.samplers_of(d)]

    def paired_tables(self) -> list[str]:
        return [f"results/{d}/figures/{s}/paired.csv" for d, s in self.paired_runs()]

    def paired_labels(self) -> list[str]:
        return [f"{d}/{s}{self.released_note(d)}" for d, s in self.paired_runs()]

    def final_targets(self) -> list[str]:
        """Tables and figures of every dataset; known before any job runs."""
        targets = ["results/summary/metrics_table.csv"]
        for d in self.datasets:
            if self.trained_methods(d):
                targets.append(f"results/{d}/figures/loss_curves.png")
            for s in self.samplers_of(d):
                targets.append(f"results/{d}/figures/{s}/metric_distributions.png")
                targets.append(f"results/{d}/figures/{s}/samples_grid.png")
        if self.paired:
            targets += self.paired_tables()
            targets.append("results/summary/paired_table.csv")
        return targets

    def model_targets(self) -> list[str]:
        """Every run's model: targets of their own, because a model removed by an interrupted
        job must be rebuilt even though everything made from it still exists."""
        return [self.model_path(d, m) for d in self.datasets for m in self.methods]

    def gif_targets(self, dataset: str, stems: Iterable[str]) -> list[str]:
        """GIFs and their pages of the selected examples of ``dataset``."""
        targets = []
        stems = list(stems)
        for s, ex, ext in itertools.product(self.samplers_of(dataset), stems, ("gif", "html")):
            targets.append(f"results/{dataset}/figures/{s}/compare/{ex}.{ext}")
            targets += [f"results/{dataset}/{m}/{s}/gifs/{ex}.{ext}" for m in self.methods]
        return targets


def threads_per_process(gpus: int, threads: int) -> int:
    """CPU threads of each of a training job's processes (one per GPU, or one on CPU)."""
    return max(1, threads // max(1, gpus))


# `train:` keys that only say how training runs, not what it makes: resources, not params.
TRAIN_RUNTIME_KEYS: tuple[str, ...] = (
    "checkpoint_every",
    "checkpoints_total_limit",
    "log_every",
    "num_workers",
)
