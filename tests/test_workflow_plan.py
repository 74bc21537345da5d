"""markup2im.workflow.plan without Snakemake: the plan per dataset (paths, labels, flags) and the
targets of the shipped configs (the real Snakemake runs are in test_workflow.py)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from markup2im.errors import ConfigError
from markup2im.names import GIF_FRAMES
from markup2im.workflow.config import load_config
from markup2im.workflow.plan import Plan

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "schemas" / "config.schema.yaml"


def plan_of(name: str, change=None) -> Plan:
    config = yaml.safe_load((REPO / name).read_text())
    if change is not None:
        change(config)
    return Plan(load_config(config, {}, SCHEMA_PATH))


def test_planning_imports_neither_torch_nor_numba() -> None:
    """Building the DAG stays quick: the workflow package and what it imports are light."""
    code = (
        "import sys; from pathlib import Path; import yaml\n"
        "from markup2im.workflow.config import load_config\n"
        "from markup2im.workflow.plan import Plan\n"
        "from markup2im.workflow import encoders, examples, flags, paths\n"
        f"repo = Path({str(REPO)!r})\n"
        "config = yaml.safe_load((repo / 'config/paper.yaml').read_text())\n"
        "plan = Plan(load_config(config, {}, repo / 'schemas/config.schema.yaml'))\n"
        "plan.final_targets(); plan['math'].gif_every('ddpm1000', 3)\n"
        "print(sorted(m for m in ('torch', 'numba', 'snakemake') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_paper_plan_fetches_each_hub_encoder_once_and_trains_from_the_copy() -> None:
    plan = plan_of("config/paper.yaml")
    assert sorted(plan.hub_encoders()) == [
        "DeepChem--ChemBERTa-77M-MLM",
        "EleutherAI--gpt-neo-125M",
    ]
    flags = plan["molecules"].train_flags("scheduled_sampling")
    assert "--encoder results/encoders/DeepChem--ChemBERTa-77M-MLM" in flags
    assert "--ss-end 0.8" in flags and "--resume auto" in flags
    # settings that leave the model unchanged are not in the flags Snakemake compares
    assert "--checkpoint" not in flags
    assert plan["math"].train_runtime_settings() == {
        "checkpoint_every": 5000,
        "checkpoints_total_limit": 2,
        "log_every": 10,
        "num_workers": 0,
    }
    assert plan["math"].encoder_input() == ["results/encoders/EleutherAI--gpt-neo-125M"]
    assert "--encoder results/encoders/EleutherAI--gpt-neo-125M" in plan["math"].import_flags()
    # sampling flags leave out the batch size (a resource: the images do not depend on it)
    assert "--batch-size" not in plan["math"].sample_flags("ddpm1000")
    assert plan.hub_datasets == ["math", "molecules", "music", "tables"]  # by name
    assert plan.render_datasets == [] and plan.released_datasets == []


def test_pinned_encoder_revision_gets_its_own_directory() -> None:
    def pin(config):
        config["datasets"]["math"]["model"]["encoder_revision"] = "abc123"

    plan = plan_of("config/paper.yaml", pin)
    assert plan["math"].encoder_input() == ["results/encoders/EleutherAI--gpt-neo-125M@abc123"]
    assert plan.hub_encoders()["EleutherAI--gpt-neo-125M@abc123"].revision == "abc123"


def test_offline_and_local_encoders_need_no_fetch(tmp_path: Path) -> None:
    assert plan_of("config/micro.yaml").hub_encoders() == {}
    local = tmp_path / "enc"
    local.mkdir()

    def use_local(config):
        config["datasets"]["micro"]["model"]["encoder"] = str(local)

    plan = plan_of("config/micro.yaml", use_local)
    assert plan.hub_encoders() == {} and plan["micro"].encoder_argument() == str(local)


def test_accelerate_flags_use_the_datasets_mixed_precision() -> None:
    plan = plan_of("config/paper.yaml")
    music = plan["music"].accelerate_flags(gpus=4, threads=16)
    assert music.startswith("--num_machines 1 --mixed_precision ")
    assert "--num_processes 4 --multi_gpu --main_process_port 0" in music


def test_gpu_model_is_asked_only_by_gpu_jobs() -> None:
    def a100(config):
        config["datasets"]["math"]["gpu_model"] = "a100"

    plan = plan_of("config/paper.yaml", a100)
    assert plan["math"].gpu_model(1) == "a100"
    assert plan["math"].gpu_model(0) == ""
    assert plan["tables"].gpu_model(1) == ""
    assert plan["music"].train_gpus() == 4 and plan["music"].generate_gpus() == 1


def test_a_datasets_resources_override_the_top_level_ones() -> None:
    def more_memory(config):
        config["datasets"]["micro"]["resources"] = {"train": {"mem_mb": 12345}}

    plan = plan_of("config/micro.yaml", more_memory)
    assert plan["micro"].resource("train", "mem_mb") == 12345
    assert plan["micro"].resource("train", "runtime") == plan.resource("train", "runtime")


def test_targets_of_the_micro_config() -> None:
    plan = plan_of("config/micro.yaml")
    assert list(plan) == ["micro"] and len(plan) == 1
    assert plan.runs() == [("micro", "baseline", "ddim4"), ("micro", "scheduled_sampling", "ddim4")]
    assert plan.final_targets() == [
        "results/summary/metrics_table.csv",
        "results/micro/figures/loss_curves.png",
        "results/micro/figures/ddim4/metric_distributions.png",
        "results/micro/figures/ddim4/samples_grid.png",
        "results/micro/figures/ddim4/paired.csv",
        "results/summary/paired_table.csv",
    ]
    assert plan["micro"].gif_targets(["test_0"]) == [
        "results/micro/figures/ddim4/compare/test_0.gif",
        "results/micro/baseline/ddim4/gifs/test_0.gif",
        "results/micro/scheduled_sampling/ddim4/gifs/test_0.gif",
        "results/micro/figures/ddim4/compare/test_0.html",
        "results/micro/baseline/ddim4/gifs/test_0.html",
        "results/micro/scheduled_sampling/ddim4/gifs/test_0.html",
    ]
    assert plan.summary_labels() == ["micro/baseline (ddim4)", "micro/scheduled_sampling (ddim4)"]
    assert plan.summary_inputs()[0] == "results/micro/baseline/ddim4/metrics_summary.json"
    assert plan.model_targets() == [
        "results/micro/baseline/train/model",
        "results/micro/scheduled_sampling/train/model",
    ]
    assert plan.example_lists() == ["results/micro/data/frames_examples.txt"]
    assert plan["micro"].train_logs() == [
        "results/micro/baseline/train_log.csv",
        "results/micro/scheduled_sampling/train_log.csv",
    ]


def test_paired_comparison_needs_both_methods() -> None:
    plan = plan_of("config/micro.yaml", lambda c: c.update(methods=["baseline"]))
    assert not plan.paired and plan.paired_tables() == []
    assert not any("paired" in t for t in plan.final_targets())
    # no baseline, nothing to compare with
    plan = plan_of(
        "config/micro.yaml",
        lambda c: c.update(methods=["scheduled_sampling", "input_perturbation"]),
    )
    assert not plan.paired and plan.paired_runs() == []
    assert not any("paired" in t for t in plan.final_targets())


def three_methods_two_samplers(config: dict) -> None:
    config["methods"] = ["baseline", "scheduled_sampling", "input_perturbation"]
    config["samplers"]["ddim4_es1.01"] = {**config["samplers"]["ddim4"], "eps_scale": 1.01}


def test_every_method_is_compared_with_the_baseline_for_each_sampler() -> None:
    plan = plan_of("config/micro.yaml", three_methods_two_samplers)
    assert plan.treatments == ["scheduled_sampling", "input_perturbation"]
    assert plan.paired_runs() == [
        ("micro", s, m)
        for s in ("ddim4", "ddim4_es1.01")
        for m in ("scheduled_sampling", "input_perturbation")
    ]
    tables = [
        "results/micro/figures/ddim4/paired.csv",
        "results/micro/figures/ddim4/paired_input_perturbation.csv",
        "results/micro/figures/ddim4_es1.01/paired.csv",
        "results/micro/figures/ddim4_es1.01/paired_input_perturbation.csv",
    ]
    assert plan.paired_tables() == tables
    # with more than the paper's comparison, every row names its method
    assert plan.paired_labels() == [
        "micro/ddim4 (scheduled_sampling)",
        "micro/ddim4 (input_perturbation)",
        "micro/ddim4_es1.01 (scheduled_sampling)",
        "micro/ddim4_es1.01 (input_perturbation)",
    ]
    targets = plan.final_targets()
    assert all(t in targets for t in tables) and targets[-1] == "results/summary/paired_table.csv"
    assert len(plan.runs()) == len(plan.summary_labels()) == 6  # the metrics table's rows
    assert "micro/input_perturbation (ddim4_es1.01)" in plan.summary_labels()
    assert plan.model_targets()[-1] == "results/micro/input_perturbation/train/model"
    micro = plan["micro"]
    assert micro.paired_title("ddim4", "input_perturbation") == (
        "micro, ddim4: input perturbation - baseline"
    )
    assert micro.method_labels() == ["baseline", "scheduled sampling", "input perturbation"]
    # the compare GIF: gold and every method side by side
    assert micro.gif_targets(["test_0"])[:4] == [
        "results/micro/figures/ddim4/compare/test_0.gif",
        "results/micro/baseline/ddim4/gifs/test_0.gif",
        "results/micro/scheduled_sampling/ddim4/gifs/test_0.gif",
        "results/micro/input_perturbation/ddim4/gifs/test_0.gif",
    ]


def test_a_method_alone_with_the_baseline_names_itself_in_the_paired_table() -> None:
    plan = plan_of(
        "config/micro.yaml", lambda c: c.update(methods=["baseline", "input_perturbation"])
    )
    assert plan.paired_tables() == ["results/micro/figures/ddim4/paired_input_perturbation.csv"]
    assert plan.paired_labels() == ["micro/ddim4 (input_perturbation)"]


def test_method_settings_reach_their_training_and_eps_scale_its_generation() -> None:
    def settings(config: dict) -> None:
        three_methods_two_samplers(config)
        config["input_perturbation"] = {"gamma": 0.2}

    micro = plan_of("config/micro.yaml", settings)["micro"]
    assert micro.train_flags("input_perturbation").endswith("--resume auto --ip-gamma 0.2")
    assert "--ip-gamma" not in micro.train_flags("scheduled_sampling")
    assert "--ip-gamma" not in micro.train_flags("baseline")
    assert "--eps-scale" not in micro.sample_flags("ddim4")
    assert micro.sample_flags("ddim4_es1.01") == micro.sample_flags("ddim4") + " --eps-scale 1.01"


def test_released_models_are_named_as_such() -> None:
    def one_released(config):
        del config["datasets"]["math"]["released"]["scheduled_sampling"]

    plan = plan_of("config/released.yaml", one_released)
    math = plan["math"]
    assert math.model_path("baseline") == "results/math/baseline/released/model"
    assert math.model_path("scheduled_sampling") == "results/math/scheduled_sampling/train/model"
    assert math.method_label("baseline") == "released baseline"
    assert math.run_name("baseline") == "released baseline"
    assert math.released_note("scheduled_sampling") == " (released baseline)"
    assert plan["tables"].released_note("scheduled_sampling") == " (released models)"
    assert math.trained_methods() == ["scheduled_sampling"]
    with pytest.raises(ConfigError, match="datasets.math.released has no 'scheduled_sampling'"):
        math.released_checkpoint("scheduled_sampling")
    assert "tables" in plan.released_datasets


def test_plan_does_not_change_a_validated_config() -> None:
    config = load_config(yaml.safe_load((REPO / "config.yaml").read_text()), {}, SCHEMA_PATH)
    before = copy.deepcopy(config)
    Plan(config).final_targets()
    assert config == before


def test_labels_and_titles_of_a_partly_released_dataset() -> None:
    def one_released(config):
        del config["datasets"]["math"]["released"]["scheduled_sampling"]

    plan = plan_of("config/released.yaml", one_released)
    assert plan["math"].method_labels() == ["released baseline", "scheduled sampling"]
    assert plan["math"].method_labels(trained_only=True) == ["scheduled sampling"]
    assert plan["math"].paired_title("ddpm1000", "scheduled_sampling") == (
        "math, ddpm1000: scheduled sampling - released baseline"
    )
    assert plan.paired_labels() == [
        "math/ddpm1000 (released baseline)",
        "math/dpmsolver50 (released baseline)",
        *(f"{d}/{s} (released models)" for d in ("molecules", "music", "tables")
          for s in ("ddpm1000", "dpmsolver50")),
    ]  # fmt: skip


def test_training_options_that_change_the_model_are_flags_the_others_resources() -> None:
    def options(config):
        config["datasets"]["music"]["train"].update(
            warmup_per_process=True, compile=True, log_every=50, num_workers=4
        )

    plan = plan_of("config/paper.yaml", options)
    flags = plan["music"].train_flags("baseline")
    assert "--warmup-per-process" in flags and "--compile" in flags
    assert "--log-every" not in flags and "--num-workers" not in flags
    assert plan["music"].train_runtime_settings()["num_workers"] == 4


def test_frames_and_gif_thinning() -> None:
    def about_gif_frames(config):
        config["samplers"]["ddpm1000"]["frames_every"] = None

    plan = plan_of("config/paper.yaml", about_gif_frames)
    assert plan["math"].frames_every("ddpm1000") == 1000 // GIF_FRAMES
    micro = plan_of("config/micro.yaml")["micro"]
    assert micro.frames_every("ddim4") == 1  # the configured value
    assert micro.image_size() == (128, 32)  # the render size
    # 51 saved frames of 320x64 (not enlarged); at most 900,000 pixels of frames per GIF
    paper = plan_of("config/paper.yaml")["math"]
    assert paper.image_size() == (320, 64)
    assert paper.gif_every("ddpm1000", 1) == 2 and paper.gif_every("ddpm1000", 3) == 4
