"""The one on-disk dataset form: a ``datasets.DatasetDict`` saved with ``save_to_disk``.

Splits ``train`` / ``validation`` / ``test``; columns: the domain's markup column (``formula``,
``html``, ``source`` or ``smiles``), ``filename`` and ``image``. Hub downloads
(:mod:`markup2im.data.hub`) and datasets built here from markup are both written in this form,
so training never cares where data came from.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets

from markup2im.atomic import atomic_dir, write_json
from markup2im.data import synth
from markup2im.data.markup_files import read_markup_file
from markup2im.data.render import DEFAULT_TIMEOUT, RenderedItem, assign_filenames, iter_render
from markup2im.data.render.process import Limits
from markup2im.errors import ConfigError, DataError, RenderError
from markup2im.presets import DOMAINS, MARKUP_COLUMNS, DomainSpec, get_domain

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def load_dataset_dir(path: str | os.PathLike[str]) -> datasets.DatasetDict:
    """Load a dataset directory written by ``download`` or ``build-dataset``."""
    root = Path(path)
    if not (root / "dataset_dict.json").is_file():
        raise DataError(
            f"{root}: not a markup2im dataset directory (no dataset_dict.json); "
            "create one with `markup2im build-dataset` or `markup2im download`"
        )
    try:
        return datasets.load_from_disk(str(root))
    except Exception as exc:  # datasets raises several unrelated types for broken directories
        raise DataError(f"{root}: cannot load dataset: {exc}") from exc


def markup_column(dataset: datasets.Dataset | datasets.DatasetDict) -> str:
    """Name of the markup column of a dataset (the one known markup column it has)."""
    columns = (
        next(iter(dataset.values())).column_names
        if isinstance(dataset, datasets.DatasetDict)
        else dataset.column_names
    )
    found = [c for c in columns if c in MARKUP_COLUMNS]
    if len(found) != 1:
        raise DataError(
            f"dataset has columns {columns}; expected exactly one markup column of {list(MARKUP_COLUMNS)}"
        )
    return found[0]


def load_split(path: str | os.PathLike[str], split: str) -> datasets.Dataset:
    """One split of a dataset directory, with a clear error for a missing split."""
    dataset = load_dataset_dir(path)
    if split not in dataset:
        raise DataError(f"{path}: no split {split!r}; available: {sorted(dataset)}")
    return dataset[split]


INFO_FILE = "markup2im.json"
BUILD_SUMMARY = "build_summary.json"  # next to the splits of a built dataset
DOWNLOAD_SUMMARY = "download_summary.json"  # next to the splits of a downloaded dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What training and generation need to know about a dataset directory."""

    domain: str
    markup_column: str
    width: int
    height: int
    channels: int


def write_dataset_info(path: str | os.PathLike[str], info: DatasetInfo) -> None:
    """Record ``info`` next to the splits of a dataset directory."""
    write_json(Path(path) / INFO_FILE, asdict(info))


def read_dataset_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """Domain, markup column and image size of a dataset directory.

    Uses the ``markup2im.json`` record when present; otherwise derives them from the markup column
    (a hub dataset saved by other tools), using the domain's image size.
    """
    root = Path(path)
    record = root / INFO_FILE
    if record.is_file():
        try:
            return DatasetInfo(**json.loads(record.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{record}: invalid dataset record: {exc}") from exc
    column = markup_column(load_dataset_dir(root))
    spec = next(d for d in DOMAINS.values() if d.markup_column == column)
    return DatasetInfo(spec.name, column, spec.width, spec.height, spec.channels)


def dataset_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies the content of a dataset directory, cheaply: a hash of its record
    (``markup2im.json``) and of each split's ``datasets`` fingerprint and data size.

    ``datasets`` derives a split's fingerprint from its content and history, so rebuilding the
    same rows gives the same fingerprint and other rows another. A checkpoint keeps this so that
    a run is never resumed on other data. Returns ``{"hash": ..., "splits": {name: rows}}``.
    """
    root = Path(path)
    digest = hashlib.sha256()
    record = root / INFO_FILE
    digest.update(record.read_bytes() if record.is_file() else b"(no record)")
    rows: dict[str, int] = {}
    for split_name, split in load_dataset_dir(root).items():
        state_file = root / split_name / "state.json"
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        data_bytes = sum(f.stat().st_size for f in sorted((root / split_name).glob("*.arrow")))
        rows[split_name] = len(split)
        digest.update(
            json.dumps(
                [split_name, state.get("_fingerprint"), len(split), data_bytes], sort_keys=True
            ).encode()
        )
    return {"hash": digest.hexdigest()[:16], "splits": rows}


# ---- validating a dataset directory ----------------------------------------------------------


def validate_dataset(
    dataset: datasets.DatasetDict,
    info: DatasetInfo,
    *,
    name: str = "dataset",
    progress: bool = True,
) -> dict[str, int]:
    """Decode every image and check its size; one DataError naming ALL bad rows.

    A bad row is one whose image is missing, cannot be decoded, or is not ``info``'s size, or
    whose markup is not a string. Returns the number of rows per split when all are good.
    """
    from tqdm.auto import tqdm

    from markup2im.images import load_image

    problems: list[str] = []
    counts: dict[str, int] = {}
    total = sum(len(split) for split in dataset.values())
    with tqdm(total=total, desc=f"validate {name}", unit="image", disable=not progress) as bar:
        for split_name, split in dataset.items():
            counts[split_name] = len(split)
            missing = [c for c in (info.markup_column, "image") if c not in split.column_names]
            if missing:
                problems.append(f"{split_name}: missing column(s) {missing}")
                bar.update(len(split))
                continue
            raw = split.cast_column("image", datasets.Image(decode=False))
            names = list(raw["filename"]) if "filename" in raw.column_names else [""] * len(raw)
            for index, row in enumerate(raw.select_columns([info.markup_column, "image"])):
                label = f"{split_name}[{index}] {names[index] or '(no filename)'}"
                markup = row[info.markup_column]
                if not isinstance(markup, str) or not markup.strip():
                    problems.append(f"{label}: empty or missing markup")
                if row["image"] is None:
                    problems.append(f"{label}: no image")
                else:
                    try:
                        load_image(
                            row["image"],
                            channels=info.channels,
                            size=(info.width, info.height),
                            name=label,
                        )
                    except DataError as exc:
                        problems.append(str(exc))
                bar.update(1)
    if problems:
        raise DataError(
            f"{name}: {len(problems)} bad row(s) (expected {info.width}x{info.height} images, "
            f"{info.channels} channel(s)):\n  " + "\n  ".join(problems)
        )
    return counts


def validate_dataset_dir(path: str | os.PathLike[str], *, progress: bool = True) -> dict[str, int]:
    """Check every row of a dataset directory against its ``markup2im.json`` record.

    Raises one DataError listing every bad row (split, index, filename, problem).
    """
    return validate_dataset(
        load_dataset_dir(path), read_dataset_info(path), name=str(path), progress=progress
    )


# ---- writing a dataset directory -------------------------------------------------------------


def features_for(markup_col: str) -> datasets.Features:
    """The columns of every markup2im dataset, named as on the hub."""
    return datasets.Features(
        {
            markup_col: datasets.Value("string"),
            "filename": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )


def save_dataset_dir(
    dataset: datasets.DatasetDict,
    output_dir: str | os.PathLike[str],
    info: DatasetInfo,
    extra_files: dict[str, object] | None = None,
) -> Path:
    """Write ``dataset`` + ``markup2im.json`` (+ JSON ``extra_files``) atomically as one dir."""
    target = Path(output_dir)
    with atomic_dir(target) as tmp:
        dataset.save_to_disk(str(tmp))
        write_dataset_info(tmp, info)
        for file_name, content in (extra_files or {}).items():
            write_json(tmp / file_name, content)
    logger.info(
        "wrote %s (%s)",
        target,
        ", ".join(f"{name} {len(split)}" for name, split in dataset.items()),
    )
    return target


# ---- building a dataset from markup ------------------------------------------------------------

DEFAULT_SYNTHETIC_SIZES = {"train": 1000, "validation": 100, "test": 100}
DEFAULT_FILE_FRACTIONS = {"validation": 0.1, "test": 0.1}  # of the rendered rows; train the rest
MAX_LISTED_FAILURES = 1000  # failures listed one by one in build_summary.json


def _split_sizes(
    train: int | None, validation: int | None, test: int | None, synthetic: bool
) -> dict[str, int] | None:
    """Rows asked for per split (None: a markup file's default split); ConfigError for a
    negative size or one that leaves a split empty."""
    given = {"train": train, "validation": validation, "test": test}
    for split_name, size in given.items():
        if size is not None and size < 0:
            raise ConfigError(f"--{split_name} must be >= 0, got {size}")
    if all(size is None for size in given.values()):
        return dict(DEFAULT_SYNTHETIC_SIZES) if synthetic else None
    defaults = DEFAULT_SYNTHETIC_SIZES if synthetic else {"train": 0, "validation": 0, "test": 0}
    sizes = {k: (v if v is not None else defaults[k]) for k, v in given.items()}
    empty = [k for k in SPLITS if sizes[k] == 0]
    if empty:
        # a DatasetDict with an empty split is written without error but cannot be loaded again
        raise ConfigError(
            f"split sizes {_counts(sizes)} leave the {' and '.join(empty)} split empty; every "
            "split needs at least one example (give --train, --validation and --test)"
        )
    return sizes


def _counts(sizes: dict[str, int]) -> str:
    """``train 8, validation 1, test 1``."""
    return ", ".join(f"{k} {sizes[k]}" for k in SPLITS)


def _file_split_sizes(rendered: int, source: str) -> dict[str, int]:
    """The default split of the rendered rows of a markup file: 10% test, 10% validation (at
    least one each), the rest train; DataError when there are too few rows for three splits."""
    if rendered < len(SPLITS):
        raise DataError(
            f"{source}: only {rendered} markup(s) rendered; the train, validation and test "
            "splits need at least one each"
        )
    n_test = max(1, int(rendered * DEFAULT_FILE_FRACTIONS["test"] + 0.5))
    n_val = max(1, int(rendered * DEFAULT_FILE_FRACTIONS["validation"] + 0.5))
    return {"train": rendered - n_test - n_val, "validation": n_val, "test": n_test}


def _deduplicate(markups: list[str]) -> tuple[list[int], list[dict[str, Any]]]:
    """Indices of the first occurrence of every markup, and the repeats left out (each as
    ``{"index": i, "first": j}``): a repeated line would otherwise land in train and test."""
    first: dict[str, int] = {}
    keep: list[int] = []
    repeats: list[dict[str, Any]] = []
    for index, markup in enumerate(markups):
        if markup in first:
            repeats.append({"index": index, "first": first[markup]})
        else:
            first[markup] = index
            keep.append(index)
    return keep, repeats


@dataclass
class _Source:
    """The markups to render, in seeded order, and what reading them found."""

    name: str  # how the summary and the messages name the source
    stream: Iterator[tuple[str, int | None]]  # (markup, its line in the file or None)
    known_errors: dict[int, str] = field(default_factory=dict)  # stream position -> why unreadable
    blank_lines: int = 0
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # {"line", "same_as_line"}


def _synthetic_source(spec: DomainSpec, seed: int, difficulty: str | None) -> _Source:
    """The domain's seeded generator, endless and free of repeats."""
    return _Source(
        name=f"synthetic:{spec.name}" + (f":{difficulty}" if difficulty else ""),
        stream=(
            (m, None)
            for m in synth.iter_unique(spec.name, seed, difficulty or synth.DEFAULT_DIFFICULTY)
        ),
    )


def _file_source(markup_file: str | os.PathLike[str], seed: int) -> _Source:
    """The lines of a markup file, repeats left out, shuffled with ``seed``."""
    marked = read_markup_file(markup_file)
    source_name = str(markup_file)
    # duplicates go before the split, so no markup is both trained on and tested
    order, repeats = _deduplicate(marked.markups)
    duplicates = [
        {"line": marked.lines[r["index"]], "same_as_line": marked.lines[r["first"]]}
        for r in repeats
    ]
    if duplicates:
        logger.warning(
            "%s: %d duplicate markup line(s) left out (first: line %d repeats line %d)",
            source_name,
            len(duplicates),
            duplicates[0]["line"],
            duplicates[0]["same_as_line"],
        )
    random.Random(seed).shuffle(order)
    return _Source(
        name=source_name,
        stream=((marked.markups[i], marked.lines[i]) for i in order),
        known_errors={n: marked.errors[i] for n, i in enumerate(order) if i in marked.errors},
        blank_lines=len(marked.blank_lines),
        duplicates=duplicates,
    )


@dataclass
class _Renders:
    """Every markup tried, in the order taken from the source, and how each one rendered."""

    candidates: list[tuple[str, int | None]] = field(default_factory=list)  # (markup, line)
    outcomes: dict[int, RenderedItem] = field(default_factory=dict)  # candidate index -> render

    def good(self) -> list[int]:
        """Indices of the candidates that rendered, in order."""
        return [n for n in range(len(self.candidates)) if self.outcomes[n].ok]

    def failed(self) -> list[int]:
        """Indices of the candidates that did not render, in order."""
        return [n for n in range(len(self.candidates)) if not self.outcomes[n].ok]


def _render_until(
    spec: DomainSpec,
    source: _Source,
    sizes: dict[str, int] | None,
    *,
    width: int,
    height: int,
    workers: int | None,
    timeout: float | None,
    progress: bool,
    limits: Limits | None = None,
) -> _Renders:
    """Render markups from ``source`` until ``sizes`` rows rendered (all of them when None)."""
    renders = _Renders()
    candidates, outcomes = renders.candidates, renders.outcomes
    needed = sum(sizes.values()) if sizes else None
    # an endless generator whose items all fail (a broken TeX installation) must not loop forever
    max_attempts = None if needed is None else 3 * needed + 64
    while True:
        have = sum(item.ok for item in outcomes.values())
        if needed is not None and have >= needed:
            break
        if max_attempts is not None and len(candidates) >= max_attempts:
            logger.warning("giving up after %d attempts (%d rendered)", len(candidates), have)
            break
        # ask for what is missing plus a margin for failures, in seeded order
        want = None if needed is None else (needed - have) + max(8, (needed - have) // 20)
        if want is not None and max_attempts is not None:
            want = min(want, max_attempts - len(candidates))
        fresh = list(itertools.islice(source.stream, want))
        if not fresh:
            break
        first = len(candidates)
        candidates.extend(fresh)
        skip = {
            n - first: e for n, e in source.known_errors.items() if first <= n < len(candidates)
        }
        for item in iter_render(
            spec,
            [m for m, _ in fresh],
            width=width,
            height=height,
            workers=workers,
            timeout=timeout or DEFAULT_TIMEOUT,
            skip=skip,
            progress=progress,
            limits=limits,
        ):
            outcomes[first + item.index] = item
        if needed is None:
            break
    return renders


def _assign_splits(
    renders: _Renders, sizes: dict[str, int] | None, source_name: str
) -> tuple[dict[str, int], list[int], dict[str, list[int]]]:
    """The sizes asked for (or the file default), the rendered rows used, and each split's
    rows: test first, then validation, then train, so that a shortfall only shrinks train."""
    good = renders.good()
    if not good:
        failures = [renders.outcomes[n].error for n in range(len(renders.candidates))][:5]
        raise RenderError(f"{source_name}: nothing rendered; first errors: {failures}")
    if sizes is None:
        sizes = _file_split_sizes(len(good), source_name)
    used = good[: sum(sizes.values())]
    assignment = {
        "test": used[: sizes["test"]],
        "validation": used[sizes["test"] : sizes["test"] + sizes["validation"]],
        "train": used[sizes["test"] + sizes["validation"] :],
    }
    got = {k: len(assignment[k]) for k in SPLITS}
    empty = [k for k in SPLITS if not got[k]]
    if empty:
        raise DataError(
            f"{source_name}: the {' and '.join(empty)} split would be empty: {len(good)} of "
            f"{len(renders.candidates)} markup(s) rendered, giving {_counts(got)} (asked for "
            f"{_counts(sizes)}); nothing was written"
        )
    return sizes, used, assignment


def _to_dataset(
    spec: DomainSpec, renders: _Renders, assignment: dict[str, list[int]]
) -> datasets.DatasetDict:
    """The rows of each split with their images and file names (named across all splits)."""
    candidates, outcomes = renders.candidates, renders.outcomes
    order = [n for split_name in SPLITS for n in assignment[split_name]]
    names = dict(zip(order, assign_filenames([candidates[n][0] for n in order]), strict=True))
    features = features_for(spec.markup_column)
    splits = {}
    for split_name in SPLITS:
        rows = assignment[split_name]
        splits[split_name] = datasets.Dataset.from_dict(
            {
                spec.markup_column: [candidates[n][0] for n in rows],
                "filename": [names[n] for n in rows],
                "image": [{"bytes": outcomes[n].png, "path": None} for n in rows],
            },
            features=features,
            split=datasets.NamedSplit(split_name),
        )
    return datasets.DatasetDict(splits)


def _build_summary(
    spec: DomainSpec,
    source: _Source,
    renders: _Renders,
    sizes: dict[str, int],
    used: list[int],
    assignment: dict[str, list[int]],
    *,
    seed: int,
    width: int,
    height: int,
    started: float,
) -> dict[str, Any]:
    """The content of ``build_summary.json``: what was asked, tried, used, left out and why."""
    candidates, outcomes = renders.candidates, renders.outcomes
    failed = renders.failed()
    reasons = collections.Counter(outcomes[n].error for n in failed)
    return {
        "domain": spec.name,
        "source": source.name,
        "seed": seed,
        "width": width,
        "height": height,
        "requested": {k: sizes[k] for k in SPLITS},
        "attempted": len(candidates),
        "rendered": len(renders.good()),
        "used": len(used),
        "blank_lines_skipped": source.blank_lines,
        "duplicates_removed": {
            "count": len(source.duplicates),
            "items": source.duplicates[:MAX_LISTED_FAILURES],
        },
        "splits": {k: len(assignment[k]) for k in SPLITS},
        "shortfall": {
            k: sizes[k] - len(assignment[k]) for k in SPLITS if sizes[k] > len(assignment[k])
        },
        "failed": {
            "count": len(failed),
            "reasons": dict(reasons.most_common()),
            "items": [
                {
                    "line": candidates[n][1],
                    "markup": candidates[n][0][:500],
                    "error": outcomes[n].error,
                }
                for n in failed[:MAX_LISTED_FAILURES]
            ],
        },
        "shrunk": {
            "total": sum(outcomes[n].shrunk for n in used),
            **{k: sum(outcomes[n].shrunk for n in assignment[k]) for k in SPLITS},
        },
        "seconds": round(time.monotonic() - started, 3),
    }


def _warn_about_losses(summary: dict[str, Any], renders: _Renders) -> None:
    """Log the rows missing from the requested sizes and the renders that failed."""
    if summary["shortfall"]:
        logger.warning("%s: fewer rows than requested: %s", summary["source"], summary["shortfall"])
    failed = renders.failed()
    if failed:
        reasons = collections.Counter(renders.outcomes[n].error for n in failed)
        logger.warning(
            "%d item(s) failed to render and were left out: %s",
            len(failed),
            dict(reasons.most_common(5)),
        )


def build_dataset(
    domain: str,
    output_dir: str | os.PathLike[str],
    *,
    markup_file: str | os.PathLike[str] | None = None,
    synthetic: bool = False,
    difficulty: str | None = None,
    train: int | None = None,
    validation: int | None = None,
    test: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    timeout: float | None = None,
    width: int | None = None,
    height: int | None = None,
    progress: bool = True,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Render a dataset from a markup file or the domain's seeded generator, and save it.

    Rows are taken in a seeded order (the generator's stream, or the file's lines shuffled with
    ``seed``) and rendered until the requested sizes are met; failed renders are left out and
    counted. Test rows come first, then validation, then train, so a shortfall only shrinks train.
    With a markup file and no sizes, every rendered row is used: 10% test, 10% validation (at
    least one each), the rest train. Repeated lines of a markup file are left out (the first
    one is kept) before the split, so that no markup is in two splits. A split left empty
    (sizes, or too few rendered rows) is a ConfigError or DataError: a dataset directory with
    an empty split cannot be loaded. Writes the dataset, ``markup2im.json`` and
    ``build_summary.json`` (requested, rendered, failed with reasons, duplicates removed, shrunk
    counts, per split); returns the summary. ``limits`` bound each renderer process's memory and
    disk (default: :class:`markup2im.data.render.process.Limits`' defaults).
    """
    spec = get_domain(domain)
    if (markup_file is None) == (not synthetic):
        raise ConfigError("give exactly one source: --markup-file FILE or --synthetic")
    if difficulty is not None and not synthetic:
        raise ConfigError("--difficulty sets the synthetic generator's level; it needs --synthetic")
    requested = _split_sizes(train, validation, test, synthetic)
    width, height = width or spec.width, height or spec.height
    started = time.monotonic()

    if markup_file is None:
        source = _synthetic_source(spec, seed, difficulty)
    else:
        source = _file_source(markup_file, seed)
    renders = _render_until(
        spec,
        source,
        requested,
        width=width,
        height=height,
        workers=workers,
        timeout=timeout,
        progress=progress,
        limits=limits,
    )
    sizes, used, assignment = _assign_splits(renders, requested, source.name)
    dataset = _to_dataset(spec, renders, assignment)
    summary = _build_summary(
        spec,
        source,
        renders,
        sizes,
        used,
        assignment,
        seed=seed,
        width=width,
        height=height,
        started=started,
    )
    _warn_about_losses(summary, renders)
    info = DatasetInfo(spec.name, spec.markup_column, width, height, spec.channels)
    save_dataset_dir(dataset, output_dir, info, {BUILD_SUMMARY: summary})
    return summary
