"""The workflow's config: its schema, ``--config`` values re-typed, validation and cross-field checks.

The schema (schemas/config.schema.yaml) does not list the names that the project registers in
:mod:`markup2im.names`: where it says ``{from_names: METHODS}``, :func:`load_schema` puts the
registry's names, so a new method or sampler is added in one place. Every error is a
:class:`~markup2im.errors.ConfigError` whose message names the offending key.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from markup2im.eps_scaling import EpsScale
from markup2im.errors import ConfigError
from markup2im.names import (
    DOMAINS,
    INPUT_PERTURBATION_GAMMA,
    MAX_CANVAS_SIDE,
    METHODS,
    OFFLINE_ENCODER,
    PAPER_METHODS,
    PRECISIONS,
    SAMPLERS,
)
from markup2im.presets import MODEL_PRESETS, get_model_preset
from markup2im.training.config import TrainConfig
from markup2im.workflow.encoders import is_local_encoder

# What ``{from_names: NAME}`` in the schema stands for.
REGISTERED_NAMES: dict[str, tuple[str, ...] | int] = {
    "METHODS": tuple(METHODS),
    "PAPER_METHODS": PAPER_METHODS,
    "SAMPLERS": SAMPLERS,
    "DOMAINS": DOMAINS,
    "PRECISIONS": PRECISIONS,
    "MAX_CANVAS_SIDE": MAX_CANVAS_SIDE,
    "MODEL_PRESETS": tuple(MODEL_PRESETS),
}
NAMES_MARKER = "from_names"


def load_schema(path: str | Path) -> dict:
    """The workflow's JSON schema (schemas/config.schema.yaml), registered names and the
    training defaults filled in."""
    schema = fill_names(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    return fill_train_defaults(schema)


def fill_train_defaults(schema: dict) -> dict:
    """Give the dataset's ``model`` and ``train`` settings that name a TrainConfig field and
    state no default of their own TrainConfig's default (the paper's), and input perturbation's
    gamma DDPM-IP's, so that the paper's values live in one place."""
    gamma = schema["properties"]["input_perturbation"]["properties"]["gamma"]
    gamma.setdefault("default", INPUT_PERTURBATION_GAMMA)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    dataset = schema["$defs"]["dataset"]["properties"]
    for section in ("model", "train"):
        for key, sub in dataset[section]["properties"].items():
            if key in defaults and "default" not in sub:
                value = defaults[key]
                sub["default"] = list(value) if isinstance(value, tuple) else value
    return schema


def fill_names(node: Any) -> Any:
    """``node`` with every ``{from_names: NAME}`` replaced by the registered names (a list) or
    the registered number."""
    if isinstance(node, dict):
        if set(node) == {NAMES_MARKER}:
            try:
                value = REGISTERED_NAMES[node[NAMES_MARKER]]
                return list(value) if isinstance(value, tuple) else value
            except KeyError:
                known = ", ".join(REGISTERED_NAMES)
                raise ConfigError(
                    f"config schema: {NAMES_MARKER}: {node[NAMES_MARKER]!r} is not one of {known}"
                ) from None
        return {key: fill_names(value) for key, value in node.items()}
    if isinstance(node, list):
        return [fill_names(value) for value in node]
    return node


def _properties_with_defaults(
    validator: Any, properties: dict, instance: Any, schema: dict
) -> Iterator[Any]:
    """jsonschema's ``properties`` check that first fills in the defaults of missing keys."""
    if isinstance(instance, dict):
        for key, sub in properties.items():
            if "default" in sub and key not in instance:
                instance[key] = copy.deepcopy(sub["default"])
    check = jsonschema.Draft202012Validator.VALIDATORS["properties"]
    yield from check(validator, properties, instance, schema)


FillingValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"properties": _properties_with_defaults}
)


def validate_config(cfg: dict, schema: dict) -> dict:
    """Check ``cfg`` against the schema and fill in its defaults, in place; the config back.

    Raises ConfigError naming the first offending key.
    """
    error = jsonschema.exceptions.best_match(FillingValidator(schema).iter_errors(cfg))
    if error is not None:
        raise ConfigError(config_error(error))
    return cfg


def config_error(error: jsonschema.ValidationError) -> str:
    """One line naming the key of a jsonschema ValidationError (the most specific for oneOf)."""
    if error.context:
        error = jsonschema.exceptions.best_match(error.context)
    where = ".".join(str(p) for p in error.absolute_path) or "the top level"
    message = error.message
    # oneOf without context: several alternatives matched; say which keys exclude each other
    if error.validator == "oneOf":
        keys = [k for alt in error.validator_value for k in alt.get("required", [])]
        message = f"give exactly one of {', '.join(keys)}"
    return f"invalid config at {where}: {message}"


def _resolve(schema: dict, node: dict) -> dict:
    """``node`` with its ``$ref`` (a ``#/...`` pointer into ``schema``) merged in."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def subschema(schema: dict, path: tuple) -> dict:
    """The part of ``schema`` that describes the config value at ``path`` ({} if none)."""
    node = _resolve(schema, schema)
    for key in path:
        if key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif isinstance(key, int) and isinstance(node.get("items"), dict):
            node = node["items"]
        else:
            return {}
        node = _resolve(schema, node)
    return node


def _takes_string(node: dict) -> bool:
    """Whether the schema ``node`` accepts a string (or says nothing about the type)."""
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
    check_method_settings(cfg)
    check_eps_scales(cfg["samplers"])
    check_attention(cfg["datasets"])


def check_method_settings(cfg: dict) -> None:
    """The settings of the training methods agree with each other and with ``methods``."""
    ss = cfg["scheduled_sampling"]
    for key in ("start", "end"):
        if len(ss[key]) != ss["max_m"]:
            raise ConfigError(
                f"config: scheduled_sampling.{key} has {len(ss[key])} weights but "
                f"scheduled_sampling.max_m is {ss['max_m']} (one weight per rollout length)"
            )
    ip = METHODS["input_perturbation"].name
    if ip in cfg["methods"] and cfg["input_perturbation"]["gamma"] == 0:
        raise ConfigError(
            "config: input_perturbation.gamma is 0, which trains the baseline; give a gamma > 0 "
            "(0.1 in the paper) or leave input_perturbation out of methods"
        )


def check_eps_scales(samplers: Mapping[str, dict]) -> None:
    """Each sampler's ``eps_scale`` is a valid lambda_t (positive for every timestep)."""
    for name, sampler in samplers.items():
        if sampler["eps_scale"] is not None:
            try:
                EpsScale.parse(sampler["eps_scale"], key=f"samplers.{name}.eps_scale")
            except ConfigError as exc:
                raise ConfigError(f"config: {exc}") from None


def check_attention(datasets: Mapping[str, dict]) -> None:
    """Each dataset's ``model.attention_from`` fits its preset's levels."""
    for name, ds in datasets.items():
        model = ds["model"]
        try:
            get_model_preset(model["preset"]).with_attention_from(model["attention_from"])
        except ConfigError as exc:
            raise ConfigError(f"config: datasets.{name}.model: {exc}") from None


def input_paths(cfg: dict) -> Iterator[tuple[str, str, str]]:
    """(key, path, kind) of every local input that the validated config names; kind is
    ``file``, ``dir`` or ``any`` (a hub copy may be a snapshot directory or a file)."""
    for name, ds in cfg["datasets"].items():
        where = f"datasets.{name}"
        render, hub = ds["source"].get("render", {}), ds["source"].get("hub", {})
        if "markup_file" in render:
            yield f"{where}.source.render.markup_file", render["markup_file"], "file"
        if hub.get("local_path"):
            yield f"{where}.source.hub.local_path", hub["local_path"], "any"
        for method, entry in ds.get("released", {}).items():
            yield f"{where}.released.{method}.checkpoint", entry["checkpoint"], "file"
        encoder = ds.get("model", {}).get("encoder")
        if encoder and encoder != OFFLINE_ENCODER and is_local_encoder(encoder):
            yield f"{where}.model.encoder", encoder, "dir"


def check_input_files(cfg: dict, root: str | Path) -> None:
    """Every local input that the config names exists (relative paths from ``root``, the
    working directory); ConfigError naming the key and the path otherwise.

    Checked before any job because a missing input of a job whose output exists from an
    earlier run is not an error to Snakemake: it would reuse the old output silently.
    """
    for key, value, kind in input_paths(cfg):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else Path(root) / path
        problem = None
        if not path.exists():
            problem = "which does not exist"
        elif kind == "file" and not path.is_file():
            problem = "which is not a regular file"
        elif kind == "dir" and not path.is_dir():
            problem = "which is not a directory"
        if problem is not None:
            raise ConfigError(
                f"config: {key} names {value!r} ({path}), {problem} (relative paths are read "
                f"from the working directory, {Path(root).resolve()})"
            )


def load_config(
    cfg: dict, overrides: Mapping, schema_path: str | Path, root: str | Path | None = None
) -> dict:
    """The workflow's config, checked and completed in place: ``--config`` values re-typed,
    validated against the schema with its defaults filled in, cross-field checks passed and,
    given the working directory ``root``, its input files found."""
    schema = load_schema(schema_path)
    retype_overrides(cfg, overrides, schema)
    validate_config(cfg, schema)
    check_config(cfg)
    if root is not None:
        check_input_files(cfg, root)
    return cfg
