"""Hub datasets: download one (or load a local copy of its repository) into the on-disk form.

The hub's datasets have their own split and column names; :func:`download_dataset` renames them
to markup2im's (:mod:`markup2im.data.datasets`), checks every image, and saves the result. Offline,
it fails within seconds with a HubUnavailableError that says how to use a local copy.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import datasets
from huggingface_hub import constants

from markup2im.data.datasets import (
    DOWNLOAD_SUMMARY,
    SPLITS,
    DatasetInfo,
    features_for,
    save_dataset_dir,
    validate_dataset,
)
from markup2im.data.render import assign_filenames
from markup2im.errors import ConfigError, DataError, HubUnavailableError
from markup2im.presets import DOMAINS, DomainSpec, domain_for_hub_dataset

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
HUB_PROBE_SECONDS = 3.0


def _known_hub_datasets() -> str:
    return ", ".join(f"{d.hub_dataset} ({d.name})" for d in DOMAINS.values())


def hub_domain(hub_id: str) -> DomainSpec:
    """The domain of a hub dataset, or ConfigError listing the known datasets."""
    spec = domain_for_hub_dataset(hub_id)
    if spec is None:
        raise ConfigError(f"unknown dataset {hub_id!r}; known datasets: {_known_hub_datasets()}")
    return spec


def _probe(host: str, port: int, result: list[str | None]) -> None:
    """Append None to ``result`` when a TCP connection to ``host:port`` opens, else why not."""
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
        result.append(None)
    except OSError as exc:
        result.append(f"cannot connect to {host}:{port} ({exc})")


def hub_offline_reason() -> str | None:
    """Why the hub cannot be reached right now (None when it seems reachable).

    ``HF_HUB_OFFLINE`` is honoured at once; otherwise one TCP connection to the hub endpoint is
    tried with a short deadline, because ``datasets`` itself retries for ~25 s before failing.
    """
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the real request decide
    url = urlparse(constants.ENDPOINT)
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    result: list[str | None] = []
    # in a thread, because DNS lookups ignore socket timeouts
    thread = threading.Thread(target=_probe, args=(host, port, result), daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 1)
    return result[0] if result else f"no answer from {host}:{port} within {HUB_PROBE_SECONDS:g} s"


def _hub_unavailable(hub_id: str, reason: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"cannot download {hub_id} from the Hugging Face hub: {reason}. To use a local copy, "
        "fetch the dataset repository on a machine with internet access (for example "
        f"`hf download {hub_id} --repo-type dataset --local-dir DIR`, or its data/*.parquet "
        f"files), copy DIR here and run `markup2im download --dataset {hub_id} --local-path DIR "
        "--output-dir OUT`; a dataset already in the local cache loads with HF_HUB_OFFLINE=1"
    )


def _normalise(loaded: Any, spec: DomainSpec, origin: str) -> datasets.DatasetDict:
    """Splits renamed to train/validation/test, columns to markup/filename/image."""
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{origin}: expected splits {list(SPLITS)}, got a single split")
    renamed = {SPLIT_ALIASES.get(name, name): split for name, split in loaded.items()}
    missing = [s for s in SPLITS if s not in renamed]
    if missing:
        raise DataError(f"{origin}: missing split(s) {missing}; found {sorted(loaded)}")
    out = {}
    for split_name in SPLITS:
        split = renamed[split_name]
        if spec.markup_column not in split.column_names or "image" not in split.column_names:
            raise DataError(
                f"{origin} [{split_name}]: columns {split.column_names}; a {spec.name} dataset "
                f"needs {spec.markup_column!r} and 'image'"
            )
        if "filename" not in split.column_names:
            # rows without names get the renderer's naming rule
            split = split.add_column("filename", assign_filenames(list(split[spec.markup_column])))
        split = split.select_columns([spec.markup_column, "filename", "image"])
        features = features_for(spec.markup_column)
        out[split_name] = split if split.features == features else split.cast(features)
    return datasets.DatasetDict(out)


def _load_local_copy(
    local_path: str | os.PathLike[str], revision: str | None, cache: str | None
) -> tuple[Any, str]:
    """A local copy of a dataset repository, loaded as the hub's would be; and its name."""
    root = Path(local_path)
    if not root.exists():
        raise DataError(f"{root}: local dataset copy not found")
    if revision:
        logger.warning("--revision %s is ignored for a local copy (%s)", revision, root)
    try:
        loaded = datasets.load_dataset(str(root), cache_dir=cache)
    except Exception as exc:  # datasets raises many types for unreadable directories
        raise DataError(f"{root}: cannot load as a dataset repository copy: {exc}") from exc
    return loaded, str(root)


def _load_from_hub(hub_id: str, revision: str | None, cache: str | None) -> tuple[Any, str]:
    """A hub dataset (or its copy in the local cache when offline); and its name."""
    origin = f"{hub_id}@{revision or 'main'}"
    reason = hub_offline_reason()
    if reason and not reason.endswith("OFFLINE is set"):
        raise _hub_unavailable(hub_id, reason)
    # offline mode still loads a dataset that is already in the local cache
    try:
        loaded = datasets.load_dataset(hub_id, revision=revision, cache_dir=cache)
    except Exception as exc:
        if reason or isinstance(exc, ConnectionError | TimeoutError):
            raise _hub_unavailable(hub_id, reason or str(exc)) from exc
        raise DataError(f"{origin}: cannot load from the hub: {exc}") from exc
    return loaded, origin


def download_dataset(
    hub_id: str,
    output_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    local_path: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    validate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch a hub dataset (or load a local copy of its repository) and save it in our form.

    ``local_path`` is a directory laid out like the hub repository (``data/train-00000-of-00001
    .parquet``, ...) or a directory of parquet files; it loads through the same
    ``datasets.load_dataset`` call as the hub. Offline, this fails within seconds with a
    HubUnavailableError that says how to use a local copy. Images are checked (decodable, the
    domain's size) before anything is written.
    """
    spec = hub_domain(hub_id)
    if max_examples is not None and max_examples <= 0:
        raise ConfigError(f"--max-examples must be > 0, got {max_examples}")
    cache = str(cache_dir) if cache_dir is not None else None
    if local_path is not None:
        loaded, origin = _load_local_copy(local_path, revision, cache)
    else:
        loaded, origin = _load_from_hub(hub_id, revision, cache)
    dataset = _normalise(loaded, spec, origin)
    if max_examples is not None:
        dataset = datasets.DatasetDict(
            {k: v.select(range(min(max_examples, len(v)))) for k, v in dataset.items()}
        )
    info = DatasetInfo(spec.name, spec.markup_column, spec.width, spec.height, spec.channels)
    if validate:
        try:
            validate_dataset(dataset, info, name=origin, progress=progress)
        except DataError as exc:
            raise DataError(
                f"{exc}\n(nothing was written; --skip-validation saves it anyway)"
            ) from exc
    summary = {
        "dataset": hub_id,
        "revision": revision,
        "local_path": str(local_path) if local_path is not None else None,
        "max_examples": max_examples,
        "splits": {k: len(v) for k, v in dataset.items()},
    }
    save_dataset_dir(dataset, output_dir, info, {DOWNLOAD_SUMMARY: summary})
    return summary
