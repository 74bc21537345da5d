"""What the workflow runs for a validated config: a :class:`DatasetPlan` per dataset and the
workflow-wide :class:`Plan` (which jobs exist, the targets of ``rule all``).

The rules read a dataset's part through the plan as a mapping, e.g.
``PLAN[wildcards.dataset].train_flags(wildcards.method)``. Paths come from
:mod:`markup2im.workflow.paths` and flags from :mod:`markup2im.workflow.flags`; the plan adds
what the config of one dataset decides (its encoder, released models, GPUs, labels).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from markup2im.errors import ConfigError
from markup2im.figures.images import upscale_factor
from markup2im.names import BASELINE, METHODS, frames_every
from markup2im.presets import get_domain
from markup2im.workflow import flags, paths
from markup2im.workflow.cleanup import Training
from markup2im.workflow.encoders import HubEncoder, is_local_encoder
from markup2im.workflow.paths import PAPER_TREATMENT


def kept_frames_every(sampler: Mapping[str, Any]) -> int:
    """Keep every k-th denoising frame: the sampler's `frames_every`, or about GIF_FRAMES."""
    return sampler["frames_every"] or frames_every(sampler["steps"])


class DatasetPlan:
    """What the workflow runs for one dataset: its methods' models, flags and labels."""

    def __init__(self, name: str, config: dict) -> None:
        """``config`` is the whole validated config (defaults filled in)."""
        self.name = name
        self.config = config
        self.settings: dict = config["datasets"][name]
        self.methods: list[str] = list(config["methods"])
        # {method: checkpoint}: models imported from the authors' released checkpoints (rule
        # import_original) instead of trained.
        self.released: dict[str, str] = {
            m: entry["checkpoint"] for m, entry in self.settings.get("released", {}).items()
        }

    # -- what runs -----------------------------------------------------------------------------
    @property
    def samplers(self) -> list[str]:
        """Sampler names run for the dataset: its own list in its order, or every configured
        sampler by name (the order of a mapping's keys means nothing)."""
        if "samplers" in self.settings:
            return list(self.settings["samplers"])
        return sorted(self.config["samplers"])

    def runs(self) -> list[tuple[str, str, str]]:
        """Every (dataset, method, sampler) of the dataset."""
        return [(self.name, m, s) for m in self.methods for s in self.samplers]

    @property
    def from_hub(self) -> bool:
        return "hub" in self.settings["source"]

    @property
    def rendered(self) -> bool:
        return "render" in self.settings["source"]

    def resource(self, kind: str, key: str) -> Any:
        """The ``key`` resource of a ``kind`` job (data, train, generate, ...): the dataset's
        own `resources` first, then the top-level ones."""
        value = self.config["resources"][kind][key]
        return self.settings.get("resources", {}).get(kind, {}).get(key, value)

    def generate_setting(self, key: str) -> Any:
        """A `generate:` setting of the dataset (None when unset)."""
        return self.settings["generate"].get(key)

    # -- models --------------------------------------------------------------------------------
    def is_released(self, method: str) -> bool:
        return method in self.released

    def trained_methods(self) -> list[str]:
        return [m for m in self.methods if not self.is_released(m)]

    def model_path(self, method: str) -> str:
        template = paths.RELEASED_MODEL if self.is_released(method) else paths.TRAINED_MODEL
        return paths.fill(template, dataset=self.name, method=method)

    def released_checkpoint(self, method: str) -> str:
        try:
            return self.released[method]
        except KeyError:
            raise ConfigError(
                f"config: datasets.{self.name}.released has no {method!r} entry"
            ) from None

    def trainings(self) -> list[Training]:
        """The training jobs of the dataset: run directory and outputs of each."""
        return [
            Training(
                paths.fill(paths.RUN_DIR, dataset=self.name, method=m),
                (self.model_path(m), paths.fill(paths.TRAIN_LOG, dataset=self.name, method=m)),
            )
            for m in self.trained_methods()
        ]

    def train_logs(self) -> list[str]:
        """The training logs of the methods trained here."""
        return [
            paths.fill(paths.TRAIN_LOG, dataset=self.name, method=m) for m in self.trained_methods()
        ]

    # -- names in figures and tables -----------------------------------------------------------
    def method_label(self, method: str) -> str:
        """How figures name a method: ``released baseline`` for an imported model."""
        label = METHODS[method].label
        return f"released {label}" if self.is_released(method) else label

    def run_name(self, method: str) -> str:
        """How tables name a method: the method, ``released`` first for an imported model."""
        return f"released {method}" if self.is_released(method) else method

    def method_labels(self, trained_only: bool = False) -> list[str]:
        """Figure labels of the dataset's methods (only those trained here, if asked)."""
        methods = self.trained_methods() if trained_only else self.methods
        return [self.method_label(m) for m in methods]

    def paired_title(self, sampler: str, method: str) -> str:
        """The title of ``method``'s paired comparison with the baseline."""
        treatment, baseline = self.method_label(method), self.method_label(BASELINE)
        return f"{self.name}, {sampler}: {treatment} - {baseline}"

    def paired_run_labels(self, method: str) -> str:
        """What the pages of ``method``'s paired comparison call the two runs (--labels)."""
        return f"{self.method_label(BASELINE)},{self.method_label(method)}"

    def released_note(self, method: str) -> str:
        """`` (released models)`` when the models that ``method``'s paired comparison compares
        are imported ones."""
        imported = [m for m in (BASELINE, method) if self.is_released(m)]
        if not imported:
            return ""
        return " (released models)" if len(imported) == 2 else f" (released {imported[0]})"

    # -- encoders ------------------------------------------------------------------------------
    def encoder_name(self) -> str:
        """The configured encoder, or the domain's encoder of the paper when it is null."""
        return self.settings["model"]["encoder"] or get_domain(self.settings["domain"]).hub_encoder

    def hub_encoder(self) -> HubEncoder | None:
        """The hub encoder the dataset's jobs need saved locally (None: offline or local)."""
        name = self.encoder_name()
        if is_local_encoder(name):
            return None
        return HubEncoder(name, self.settings["model"]["encoder_revision"])

    def encoder_input(self) -> list[str]:
        """The local encoder directory a training or import job reads ([] if none needed)."""
        encoder = self.hub_encoder()
        return [encoder.path] if encoder else []

    def encoder_argument(self) -> str:
        """What `--encoder` gets: the fetched local directory for hub encoders."""
        encoder = self.hub_encoder()
        return encoder.path if encoder else self.encoder_name()

    # -- GPUs ----------------------------------------------------------------------------------
    def train_gpus(self) -> int:
        """GPUs (accelerate processes) of a training job; 0 means CPU."""
        return self.settings["gpu"]

    def generate_gpus(self) -> int:
        """Generation runs in one process: one GPU when the dataset has any."""
        return min(1, self.train_gpus())

    def gpu_model(self, gpus: int) -> str:
        """``gpu_model`` resource: the configured model for GPU jobs, '' (none) for CPU jobs, so
        that Slurm is never asked for ``--gpus=a100:0``."""
        return (self.settings.get("gpu_model") or "") if gpus > 0 else ""

    # -- command-line flags --------------------------------------------------------------------
    def hub_flags(self) -> str:
        return flags.hub_flags(self.settings["source"]["hub"])

    def render_flags(self) -> str:
        return flags.render_flags(self.settings["domain"], self.settings["source"]["render"])

    def markup_file(self) -> list[str]:
        """The user's markup file as an input (so editing it rebuilds the dataset), if any."""
        render = self.settings["source"]["render"]
        return [render["markup_file"]] if "markup_file" in render else []

    def train_flags(self, method: str) -> str:
        """Flags of `markup2im train` that decide the model (so they are rerun triggers)."""
        return flags.train_flags(
            method,
            self.settings["model"],
            self.settings["train"],
            self.encoder_argument(),
            self.config["scheduled_sampling"],
            self.config["input_perturbation"],
        )

    def train_runtime_settings(self) -> dict[str, Any]:
        """Settings of `markup2im train` that leave the model unchanged (resources)."""
        return flags.train_runtime_settings(self.settings["train"])

    def import_flags(self) -> str:
        return flags.import_flags(
            self.settings["domain"], self.settings["model"], self.encoder_argument()
        )

    def accelerate_flags(self, gpus: int, threads: int) -> str:
        """`accelerate launch` flags of a training job with ``gpus`` GPUs and ``threads``."""
        mixed = self.settings["train"]["mixed_precision"]
        return flags.accelerate_flags(mixed, gpus, threads)

    def sample_flags(self, sampler: str) -> str:
        """Flags of `markup2im generate` that decide the images (split, limit, sampler, seed)."""
        return flags.sample_flags(self.settings["generate"], self.config["samplers"][sampler])

    # -- frames and GIFs -----------------------------------------------------------------------
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the dataset's images: the render size or the domain's."""
        spec = get_domain(self.settings["domain"])
        render = self.settings["source"].get("render", {})
        return render.get("width") or spec.width, render.get("height") or spec.height

    def frames_every(self, sampler: str) -> int:
        """Keep every k-th denoising frame: the configured value or about 50 per example."""
        return kept_frames_every(self.config["samplers"][sampler])

    def gif_every(self, sampler: str, panels: int) -> int:
        """Use every k-th saved frame so that a GIF of ``panels`` images keeps within
        `gif.max_pixels` (the report embeds GIF pages as data URLs, which Chromium shows up to
        2 MB)."""
        width, height = self.image_size()
        factor = upscale_factor((width, height))
        frame_pixels = panels * width * height * factor**2
        steps = self.config["samplers"][sampler]["steps"]
        saved = math.ceil(steps / self.frames_every(sampler)) + 1
        most = max(2, self.config["gif"]["max_pixels"] // frame_pixels)
        return math.ceil(saved / most)

    def gif_targets(self, stems: Iterable[str]) -> list[str]:
        """GIFs and their pages of the selected examples (``stems``: filenames sans suffix)."""
        targets = []
        stems = list(stems)
        for s, ex, kind in itertools.product(self.samplers, stems, ("gif", "page")):
            compare = paths.COMPARE_GIF if kind == "gif" else paths.COMPARE_PAGE
            one = paths.GIF if kind == "gif" else paths.GIF_PAGE
            targets.append(paths.fill(compare, dataset=self.name, sampler=s, example=ex))
            targets += [
                paths.fill(one, dataset=self.name, method=m, sampler=s, example=ex)
                for m in self.methods
            ]
        return targets

    # -- targets -------------------------------------------------------------------------------
    def figure_targets(self) -> list[str]:
        """The dataset's figures: loss curves (if it trains), distributions and grids."""
        targets = []
        if self.trained_methods():
            targets.append(paths.fill(paths.LOSS_CURVES, dataset=self.name))
        for s in self.samplers:
            targets.append(paths.fill(paths.METRIC_PLOTS, dataset=self.name, sampler=s))
            targets.append(paths.fill(paths.SAMPLES_GRID, dataset=self.name, sampler=s))
        return targets


class Plan(Mapping[str, DatasetPlan]):
    """What the workflow runs for one validated config: a :class:`DatasetPlan` per dataset
    (``plan[name]``) and the workflow-wide targets."""

    def __init__(self, config: dict) -> None:
        """``config`` validated and checked (:func:`markup2im.workflow.config.load_config`)."""
        self.config = config
        self.methods: list[str] = list(config["methods"])
        # by name: the tables list the datasets in an order that the config's key order
        # does not change (it would change their jobs' params)
        self._datasets = {name: DatasetPlan(name, config) for name in sorted(config["datasets"])}
        # The paired comparison (method - baseline per image) of every other method, when the
        # baseline runs.
        self.treatments: list[str] = (
            [m for m in self.methods if m != BASELINE] if BASELINE in self.methods else []
        )
        self.paired: bool = bool(self.treatments)

    def __getitem__(self, dataset: str) -> DatasetPlan:
        return self._datasets[dataset]

    def __iter__(self) -> Iterator[str]:
        return iter(self._datasets)

    def __len__(self) -> int:
        return len(self._datasets)

    # -- which jobs exist ----------------------------------------------------------------------
    @property
    def datasets(self) -> list[str]:
        return list(self._datasets)

    @property
    def hub_datasets(self) -> list[str]:
        """Datasets downloaded from the hub (rule download_dataset)."""
        return [d for d, plan in self.items() if plan.from_hub]

    @property
    def render_datasets(self) -> list[str]:
        """Datasets rendered here (rule build_dataset)."""
        return [d for d, plan in self.items() if plan.rendered]

    @property
    def released_datasets(self) -> list[str]:
        """Datasets with an imported model (rule import_original)."""
        return [d for d, plan in self.items() if plan.released]

    def trainings(self) -> list[Training]:
        """Every training job of the config (run directory and outputs)."""
        return [t for plan in self.values() for t in plan.trainings()]

    def hub_encoders(self) -> dict[str, HubEncoder]:
        """{slug: encoder} of every hub encoder of the config (rule fetch_encoder)."""
        found = (plan.hub_encoder() for plan in self.values())
        return {Path(e.path).name: e for e in found if e is not None}

    def runs(self) -> list[tuple[str, str, str]]:
        """Every (dataset, method, sampler)."""
        return [run for plan in self.values() for run in plan.runs()]

    def paired_runs(self) -> list[tuple[str, str, str]]:
        """Every (dataset, sampler, method) of the paired comparisons with the baseline."""
        return [
            (d, s, m) for d, plan in self.items() for s in plan.samplers for m in self.treatments
        ]

    # -- workflow-wide settings ----------------------------------------------------------------
    def resource(self, kind: str, key: str) -> Any:
        """The top-level ``key`` resource of a ``kind`` job."""
        return self.config["resources"][kind][key]

    def version(self, stage: str) -> int:
        """`code_version.<stage>`: bump it to rerun a stage after editing the library."""
        return self.config["code_version"][stage]

    def evaluate_flags(self) -> str:
        """Optional flags of `markup2im evaluate` (the CLIP score when a model is set)."""
        return flags.evaluate_flags(self.config["evaluate"])

    # -- the tables of every dataset -----------------------------------------------------------
    def summary_inputs(self) -> list[str]:
        return [
            paths.fill(paths.METRICS_SUMMARY, dataset=d, method=m, sampler=s)
            for d, m, s in self.runs()
        ]

    def summary_labels(self) -> list[str]:
        """``dataset/method (sampler)``: the table's dataset and method columns."""
        return [f"{d}/{self[d].run_name(m)} ({s})" for d, m, s in self.runs()]

    def paired_tables(self) -> list[str]:
        return [paths.fill(paths.paired(m), dataset=d, sampler=s) for d, s, m in self.paired_runs()]

    def paired_table_run_labels(self) -> str:
        """What the paired table calls the compared runs (--labels): the method's label when
        one method is compared with the baseline, else a word for any of them."""
        if len(self.treatments) == 1:
            return f"{METHODS[BASELINE].label},{METHODS[self.treatments[0]].label}"
        return f"{METHODS[BASELINE].label},method"

    def paired_labels(self) -> list[str]:
        """``dataset/sampler``, the paired table's dataset and sampler columns, with the method
        after the sampler unless scheduled sampling (the paper's) is the only one compared."""
        named = self.treatments != [PAPER_TREATMENT]
        labels = []
        for d, s, m in self.paired_runs():
            method = f" ({m})" if named else ""
            labels.append(f"{d}/{s}{method}{self[d].released_note(m)}")
        return labels

    # -- targets of rule all -------------------------------------------------------------------
    def final_targets(self) -> list[str]:
        """Tables and figures of every dataset; known before any job runs."""
        targets = [paths.METRICS_TABLE]
        for plan in self.values():
            targets += plan.figure_targets()
        if self.paired:
            targets += self.paired_tables()
            targets.append(paths.PAIRED_TABLE)
        return targets

    def model_targets(self) -> list[str]:
        """Every run's model: targets of their own, because a model removed by an interrupted
        job must be rebuilt even though everything made from it still exists."""
        return [plan.model_path(m) for plan in self.values() for m in self.methods]

    def example_lists(self) -> list[str]:
        """Every dataset's list of examples with GIFs (made side by side, up front)."""
        return [paths.fill(paths.EXAMPLES, dataset=d) for d in self]
