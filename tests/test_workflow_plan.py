"""markup2im.workflow without Snakemake: config checks, paths, targets and command-line flags of
the shipped configs (the real Snakemake runs are in test_workflow.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from markup2im.errors import ConfigError
from markup2im.workflow import (
    Plan,
    alternatives,
    cli_flags,
    encoder_slug,
    load_schema,
    retype_overrides,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "schemas" / "config.schema.yaml")


def plan_of(name: str, change=None) -> Plan:
    config = yaml.safe_load((REPO / name).read_text())
    if change is not None:
        change(config)
    return Plan(validate_config(config, SCHEMA))


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
    ],
)  # fmt: skip
def test_schema_errors_name_the_key(change, message: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid config at {message}"):
        plan_of("config/micro.yaml", change)


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
    ],
)  # fmt: skip
def test_cross_field_errors_name_the_keys(change, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_of("config/micro.yaml", change)


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


def test_cli_flags_and_alternatives() -> None:
    assert cli_flags({"batch_size": 8, "ema": True, "limit": None, "x": False}) == (
        "--batch-size 8 --ema"
    )
    assert cli_flags({"ss_end": [0.5, 0.8], "name": "a b"}) == "--ss-end 0.5,0.8 --name 'a b'"
    assert alternatives(["a.b", "c"]) == r"a\.b|c"
    assert alternatives([]) == "(?!x)x"


def test_paper_plan_fetches_each_hub_encoder_once_and_trains_from_the_copy() -> None:
    plan = plan_of("config/paper.yaml")
    assert sorted(plan.hub_encoders()) == [
        "DeepChem--ChemBERTa-77M-MLM",
        "EleutherAI--gpt-neo-125M",
    ]
    flags = plan.train_flags("molecules", "scheduled_sampling")
    assert "--encoder results/encoders/DeepChem--ChemBERTa-77M-MLM" in flags
    assert "--ss-end 0.8" in flags and "--resume auto" in flags
    # settings that leave the model unchanged are not in the flags Snakemake compares
    assert "--checkpoint" not in flags
    assert plan.train_runtime_flags("math") == {
        "checkpoint_every": 5000,
        "checkpoints_total_limit": 2,
        "log_every": 10,
        "num_workers": 0,
    }
    assert plan.encoder_input("math") == ["results/encoders/EleutherAI--gpt-neo-125M"]
    assert "--encoder results/encoders/EleutherAI--gpt-neo-125M" in plan.import_flags("math")
    # sampling flags leave out the batch size (a resource: the images do not depend on it)
    assert "--batch-size" not in plan.sample_flags("math", "ddpm1000")


def test_pinned_encoder_revision_gets_its_own_directory() -> None:
    def pin(config):
        config["datasets"]["math"]["model"]["encoder_revision"] = "abc123"

    plan = plan_of("config/paper.yaml", pin)
    assert plan.encoder_input("math") == ["results/encoders/EleutherAI--gpt-neo-125M@abc123"]
    assert plan.hub_encoders()["EleutherAI--gpt-neo-125M@abc123"].revision == "abc123"
    assert encoder_slug("org/name", None) == "org--name"


def test_offline_and_local_encoders_need_no_fetch(tmp_path: Path) -> None:
    assert plan_of("config/micro.yaml").hub_encoders() == {}
    local = tmp_path / "enc"
    local.mkdir()

    def use_local(config):
        config["datasets"]["micro"]["model"]["encoder"] = str(local)

    plan = plan_of("config/micro.yaml", use_local)
    assert plan.hub_encoders() == {} and plan.encoder_argument("micro") == str(local)


def test_accelerate_gets_one_process_per_gpu_with_its_share_of_threads() -> None:
    plan = plan_of("config/paper.yaml")
    music = plan.accelerate_flags("music", gpus=4, threads=16)
    assert "--num_cpu_threads_per_process 4" in music
    assert "--num_processes 4 --multi_gpu --main_process_port 0" in music
    cpu = plan.accelerate_flags("math", gpus=0, threads=3)
    assert cpu.endswith("--cpu --num_processes 1") and "per_process 3" in cpu
    assert "--num_cpu_threads_per_process 1" in plan.accelerate_flags("math", gpus=4, threads=2)


def test_gpu_model_is_asked_only_by_gpu_jobs() -> None:
    def a100(config):
        config["datasets"]["math"]["gpu_model"] = "a100"

    plan = plan_of("config/paper.yaml", a100)
    assert plan.gpu_model("math", 1) == "a100"
    assert plan.gpu_model("math", 0) == ""
    assert plan.gpu_model("tables", 1) == ""


def test_targets_of_the_micro_config() -> None:
    plan = plan_of("config/micro.yaml")
    assert plan.runs() == [("micro", "baseline", "ddim4"), ("micro", "scheduled_sampling", "ddim4")]
    assert plan.final_targets() == [
        "results/summary/metrics_table.csv",
        "results/micro/figures/loss_curves.png",
        "results/micro/figures/ddim4/metric_distributions.png",
        "results/micro/figures/ddim4/samples_grid.png",
        "results/micro/figures/ddim4/paired.csv",
        "results/summary/paired_table.csv",
    ]
    assert plan.gif_targets("micro", ["test_0"]) == [
        "results/micro/figures/ddim4/compare/test_0.gif",
        "results/micro/baseline/ddim4/gifs/test_0.gif",
        "results/micro/scheduled_sampling/ddim4/gifs/test_0.gif",
        "results/micro/figures/ddim4/compare/test_0.html",
        "results/micro/baseline/ddim4/gifs/test_0.html",
        "results/micro/scheduled_sampling/ddim4/gifs/test_0.html",
    ]
    assert plan.summary_labels() == ["micro/baseline (ddim4)", "micro/scheduled_sampling (ddim4)"]


def test_released_models_are_named_as_such() -> None:
    def one_released(config):
        del config["datasets"]["math"]["released"]["scheduled_sampling"]

    plan = plan_of("config/released.yaml", one_released)
    assert plan.model_path("math", "baseline") == "results/math/baseline/released/model"
    assert (
        plan.model_path("math", "scheduled_sampling")
        == "results/math/scheduled_sampling/train/model"
    )
    assert plan.method_label("math", "baseline") == "released baseline"
    assert plan.released_note("math") == " (released baseline)"
    assert plan.released_note("tables") == " (released models)"
    assert plan.trained_methods("math") == ["scheduled_sampling"]
    with pytest.raises(ConfigError, match="datasets.math.released has no 'scheduled_sampling'"):
        plan.released_checkpoint("math", "scheduled_sampling")


def test_plan_does_not_change_a_validated_config() -> None:
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), SCHEMA)
    before = copy.deepcopy(config)
    Plan(config).final_targets()
    assert config == before


def test_labels_and_titles_of_a_partly_released_dataset() -> None:
    def one_released(config):
        del config["datasets"]["math"]["released"]["scheduled_sampling"]

    plan = plan_of("config/released.yaml", one_released)
    assert plan.method_labels("math") == ["released baseline", "scheduled sampling"]
    assert plan.method_labels("math", trained_only=True) == ["scheduled sampling"]
    assert plan.paired_title("math", "ddpm1000") == (
        "math, ddpm1000: scheduled sampling - released baseline"
    )


def test_training_options_that_change_the_model_are_flags_the_others_resources() -> None:
    def options(config):
        config["datasets"]["music"]["train"].update(
            warmup_per_process=True, compile=True, log_every=50, num_workers=4
        )

    plan = plan_of("config/paper.yaml", options)
    flags = plan.train_flags("music", "baseline")
    assert "--warmup-per-process" in flags and "--compile" in flags
    assert "--log-every" not in flags and "--num-workers" not in flags
    assert plan.train_runtime_flags("music")["num_workers"] == 4
