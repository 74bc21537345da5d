"""markup2im.workflow.config: the schema with the registered names, validation with defaults,
messages naming the bad key, ``--config`` values re-typed, cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from markup2im.errors import ConfigError
from markup2im.names import DOMAINS, METHODS, PAPER_METHODS, PRECISIONS, SAMPLERS
from markup2im.workflow.config import (
    check_config,
    check_input_files,
    fill_names,
    load_config,
    load_schema,
    retype_overrides,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "schemas" / "config.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)


def config_of(name: str, change=None) -> dict:
    """A shipped config, changed by ``change``, then validated and checked."""
    config = yaml.safe_load((REPO / name).read_text())
    if change is not None:
        change(config)
    return load_config(config, {}, SCHEMA_PATH)


def test_schema_lists_the_registered_names() -> None:
    props = SCHEMA["properties"]
    assert props["methods"]["items"]["enum"] == list(METHODS)
    assert props["methods"]["default"] == list(PAPER_METHODS)
    sampler = props["samplers"]["additionalProperties"]["properties"]["sampler"]
    assert sampler["enum"] == list(SAMPLERS)
    dataset = SCHEMA["$defs"]["dataset"]["properties"]
    assert dataset["domain"]["enum"] == list(DOMAINS)
    assert dataset["generate"]["properties"]["precision"]["enum"] == list(PRECISIONS)
    assert dataset["released"]["propertyNames"]["enum"] == list(METHODS)
    # no marker is left behind
    assert "from_names" not in yaml.safe_dump(SCHEMA)


def test_unknown_registered_name_in_the_schema_is_an_error() -> None:
    assert fill_names({"a": [{"enum": {"from_names": "SAMPLERS"}}]}) == {
        "a": [{"enum": list(SAMPLERS)}]
    }
    with pytest.raises(ConfigError, match="from_names: 'NOPE' is not one of METHODS"):
        fill_names({"enum": {"from_names": "NOPE"}})


def test_method_and_sampler_names_are_checked_against_the_registry() -> None:
    with pytest.raises(ConfigError, match="invalid config at methods.1: 'nope' is not one of") as e:
        config_of("config/micro.yaml", lambda c: c.update(methods=["baseline", "nope"]))
    assert all(m in str(e.value) for m in METHODS)  # the message lists the registered ones
    every = config_of("config/micro.yaml", lambda c: c.update(methods=list(reversed(METHODS))))
    assert every["methods"] == list(reversed(METHODS))

    def sampler_named_like_a_method(config):
        config["samplers"] = {"baseline": {"sampler": "ddim", "steps": 2}}

    with pytest.raises(ConfigError, match="invalid config at samplers"):
        config_of("config/micro.yaml", sampler_named_like_a_method)

    def released_unknown_method(config):
        config["datasets"]["micro"]["released"] = {"nope": {"checkpoint": "x.pt"}}

    with pytest.raises(ConfigError, match="invalid config at datasets.micro.released"):
        config_of("config/micro.yaml", released_unknown_method)


def test_defaults_are_filled_in_nested_objects() -> None:
    config = validate_config(
        {"datasets": {"m": {"domain": "math", "source": {"render": {"synthetic": True}}}}},
        SCHEMA,
    )
    ds = config["datasets"]["m"]
    assert ds["model"]["preset"] == "paper" and ds["model"]["encoder_revision"] is None
    assert ds["train"]["checkpoint_every"] == 500 and ds["generate"]["batch_size"] == 16
    assert config["resources"]["train"]["walltime_margin"] == 300
    assert config["resources"]["train"]["chunks"] == 1
    assert config["methods"] == list(PAPER_METHODS)
    assert config["input_perturbation"] == {"gamma": 0.1}
    assert config["scheduled_sampling"]["ip_gamma"] is None
    assert config["samplers"]["ddim50"]["eps_scale"] is None
    assert config["code_version"] == {s: 0 for s in ("data", "train", "generate", "evaluate",
                                                     "figures")}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["datasets"]["micro"]["train"].update(batch_size=0),
         "datasets.micro.train.batch_size"),
        (lambda c: c["datasets"]["micro"].update(gpu_model="a 100"), "datasets.micro.gpu_model"),
        (lambda c: c["resources"]["train"].update(chunks=0), "resources.train.chunks"),
        (lambda c: c.update(code_version={"sampling": 1}), "code_version"),
        (lambda c: c.update(input_perturbation={"gamma": -0.1}), "input_perturbation.gamma"),
        (lambda c: c.update(input_perturbation={"gama": 0.1}), "input_perturbation"),
        (lambda c: c["scheduled_sampling"].update(ip_gamma=-1), "scheduled_sampling.ip_gamma"),
        (lambda c: c["samplers"]["ddim4"].update(eps_scale="1.01"), "samplers.ddim4.eps_scale"),
        (lambda c: c["samplers"]["ddim4"].update(eps_scale={"k": 0, "c": 1}),
         "samplers.ddim4.eps_scale"),
        (lambda c: c["samplers"]["ddim4"].update(eps_scale={"k": "1e-5"}),
         "samplers.ddim4.eps_scale.k"),
        (lambda c: c["samplers"]["ddim4"].update(guidance_scale=-1),
         "samplers.ddim4.guidance_scale"),
        (lambda c: c["datasets"]["micro"]["train"].update(markup_dropout=1),
         "datasets.micro.train.markup_dropout"),
        (lambda c: c["datasets"]["micro"]["model"].update(attention_from="4"),
         "datasets.micro.model.attention_from"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_key(change, message: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid config at {message}"):
        config_of("config/micro.yaml", change)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["datasets"]["micro"].update(samplers=["nope"]),
         "datasets.micro.samplers names 'nope'"),
        (lambda c: c["datasets"]["micro"].update(gpu_model="a100"),
         r"datasets.micro.gpu_model is 'a100' but datasets.micro.gpu is 0"),
        (lambda c: c["scheduled_sampling"].update(max_m=2),
         "scheduled_sampling.start has 1 weights but scheduled_sampling.max_m is 2"),
        (lambda c: c["datasets"]["micro"]["generate"].update(limit=1, frames=3),
         r"generate.frames \(3\) is larger than datasets.micro.generate.limit \(1\)"),
        (lambda c: c.update(methods=["baseline", "input_perturbation"],
                            input_perturbation={"gamma": 0}),
         "input_perturbation.gamma is 0, which trains the baseline"),
        (lambda c: c["samplers"]["ddim4"].update(eps_scale=0),
         "config: samplers.ddim4.eps_scale: .*must be > 0"),
        (lambda c: c["datasets"]["micro"]["model"].update(attention_from=3),
         "config: datasets.micro.model: attention_from must be one of 1, 2, 4, 8"),
        (lambda c: c["samplers"]["ddim4"].update(eps_scale=-1.01),
         "config: samplers.ddim4.eps_scale: .*must be > 0"),
        (lambda c: c["samplers"]["ddim4"].update(eps_scale={"k": -0.01, "b": 1.0}),
         "samplers.ddim4.eps_scale: lambda_t = -0.01 t \\+ 1 must be > 0"),
    ],
)  # fmt: skip
def test_cross_field_errors_name_the_keys(change, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_of("config/micro.yaml", change)


def test_gamma_0_is_fine_while_input_perturbation_does_not_run() -> None:
    config = config_of("config/micro.yaml", lambda c: c.update(input_perturbation={"gamma": 0}))
    assert config["input_perturbation"]["gamma"] == 0


def test_method_and_sampler_settings_of_issue_22_validate() -> None:
    """What config/paper.yaml's commented block shows: input perturbation as a method, scheduled
    sampling with input perturbation on top, and scaled samplers beside the plain ones."""

    def beyond_the_paper(config: dict) -> None:
        config["methods"] = ["baseline", "scheduled_sampling", "input_perturbation"]
        config["input_perturbation"] = {"gamma": 0.1}
        config["scheduled_sampling"]["ip_gamma"] = 0.1
        plain = config["samplers"]["dpmsolver50"]
        config["samplers"]["dpmsolver50_es1.005"] = {**plain, "eps_scale": 1.005}
        config["samplers"]["ddpm1000_lin"] = {
            **config["samplers"]["ddpm1000"],
            "eps_scale": {"k": 1.0e-5, "b": 1.002},
        }

    config = config_of("config/paper.yaml", beyond_the_paper)
    assert config["samplers"]["dpmsolver50_es1.005"]["eps_scale"] == 1.005
    assert config["samplers"]["dpmsolver50"]["eps_scale"] is None


def test_cross_field_checks_pass_the_shipped_configs() -> None:
    for name in ("config.yaml", "config/micro.yaml", "config/paper.yaml", "config/released.yaml"):
        check_config(validate_config(yaml.safe_load((REPO / name).read_text()), SCHEMA))


def test_config_overrides_are_retyped_where_the_schema_wants_no_string() -> None:
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    overrides = {"datasets": {"micro": {"generate": {"seed": "7", "split": "test"}, "gpu": "2"}}}
    for key, value in overrides["datasets"]["micro"]["generate"].items():
        config["datasets"]["micro"]["generate"][key] = value
    config["datasets"]["micro"]["gpu"] = "2"
    retype_overrides(config, overrides, SCHEMA)
    assert config["datasets"]["micro"]["generate"]["seed"] == 7
    assert config["datasets"]["micro"]["generate"]["split"] == "test"
    assert config["datasets"]["micro"]["gpu"] == 2


def test_eps_scale_overrides_are_retyped() -> None:
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    config["samplers"]["ddim4"]["eps_scale"] = "1.01"
    config["samplers"]["lin"] = {"sampler": "ddim", "steps": "4", "eps_scale": {"k": "1.0e-5"}}
    overrides = {"samplers": {"ddim4": {"eps_scale": "1.01"}, "lin": config["samplers"]["lin"]}}
    load_config(config, overrides, SCHEMA_PATH)
    assert config["samplers"]["ddim4"]["eps_scale"] == 1.01
    assert config["samplers"]["lin"]["eps_scale"] == {"k": 1.0e-5}


def test_load_config_retypes_then_validates() -> None:
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    config["datasets"]["micro"]["generate"]["seed"] = "7"
    overrides = {"datasets": {"micro": {"generate": {"seed": "7"}}}}
    assert load_config(config, overrides, SCHEMA_PATH)["datasets"]["micro"]["generate"]["seed"] == 7


def test_training_defaults_are_the_training_configs() -> None:
    """A dataset that sets no training value gets TrainConfig's (the paper's) for every
    setting whose name is a TrainConfig field, except where the schema says otherwise (fewer
    checkpoints kept by the workflow)."""
    import dataclasses

    from markup2im.training.config import TrainConfig

    def bare_math(config: dict) -> None:
        config["datasets"]["math"].pop("train", None)
        config["datasets"]["math"]["model"] = {"encoder": "offline"}

    dataset = config_of("config.yaml", bare_math)["datasets"]["math"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    own = {"checkpoints_total_limit", "encoder"}  # fewer kept by the workflow; set in config.yaml
    for section in ("model", "train"):
        for key, value in dataset[section].items():
            if key in defaults and key not in own:
                assert value == defaults[key], (section, key)
    assert (
        dataset["train"]["learning_rate"] == 1e-4
        and dataset["model"]["prediction_type"] == "epsilon"
    )


def test_every_local_input_the_config_names_must_exist(tmp_path: Path) -> None:
    """markup_file, a hub copy, released checkpoints and a local encoder: each missing one
    (or one of the wrong kind) is a ConfigError naming its key and path; relative paths are
    read from the working directory given, absolute ones and ~ as they are."""
    config = config_of("config/micro.yaml")
    dataset = config["datasets"]["micro"]
    dataset["source"]["render"] = {"markup_file": "m.txt"}
    dataset["released"] = {"baseline": {"checkpoint": "ckpt/b.pt"}}
    dataset["model"]["encoder"] = "./encoder"
    with pytest.raises(
        ConfigError, match=r"datasets\.micro\.source\.render\.markup_file names 'm\.txt'"
    ):
        check_input_files(config, tmp_path)
    (tmp_path / "m.txt").mkdir()  # a directory is no markup file
    with pytest.raises(ConfigError, match="markup_file names 'm.txt'.*not a regular file"):
        check_input_files(config, tmp_path)
    (tmp_path / "m.txt").rmdir()
    (tmp_path / "m.txt").write_text("x\n")
    with pytest.raises(ConfigError, match="released.baseline.checkpoint names 'ckpt/b.pt'") as e:
        check_input_files(config, tmp_path)
    assert str(tmp_path.resolve()) in str(e.value)  # says where relative paths are read from
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "b.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="model.encoder names './encoder'.*does not exist"):
        check_input_files(config, tmp_path)
    (tmp_path / "encoder").write_text("")
    with pytest.raises(ConfigError, match="model.encoder names './encoder'.*not a directory"):
        check_input_files(config, tmp_path)
    (tmp_path / "encoder").unlink()
    (tmp_path / "encoder").mkdir()
    check_input_files(config, tmp_path)
    dataset["model"]["encoder"] = "EleutherAI/gpt-neo-125M"  # a hub name is no local input
    check_input_files(config, tmp_path)

    dataset["source"] = {"hub": {"id": "a/b", "local_path": str(tmp_path / "copy")}}
    with pytest.raises(ConfigError, match="source.hub.local_path names '/"):
        load_config(config, {}, SCHEMA_PATH, root=tmp_path)
    (tmp_path / "copy").mkdir()
    load_config(config, {}, SCHEMA_PATH, root=tmp_path)
    load_config(config, {}, SCHEMA_PATH)  # no working directory given: not checked
