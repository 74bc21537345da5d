"""markup2im.workflow.paths: the path templates the rules and the plan share."""

from __future__ import annotations

from markup2im.workflow import paths


def test_wildcard_constraints_match_exactly_the_names() -> None:
    assert paths.alternatives(["a.b", "c"]) == r"a\.b|c"
    assert paths.alternatives([]) == "(?!x)x"


def test_templates_are_filled_from_wildcards() -> None:
    assert paths.for_method(paths.METRICS, "baseline") == (
        "results/{dataset}/baseline/{sampler}/metrics.csv"
    )
    assert paths.fill(paths.SAMPLES, dataset="d", method="m", sampler="s") == (
        "results/d/m/s/samples"
    )
    assert paths.TRAINED_MODEL == paths.RUN_DIR + "/model"


def test_logs_and_benchmarks_are_named_by_stage_and_job() -> None:
    assert paths.log("train", "{dataset}/{method}") == "logs/train/{dataset}/{method}.log"
    assert paths.benchmark("figures", "metrics_table") == "benchmarks/figures/metrics_table.tsv"


def test_the_paper_comparison_keeps_its_path_other_methods_name_theirs() -> None:
    assert paths.paired("scheduled_sampling") == "results/{dataset}/figures/{sampler}/paired.csv"
    assert paths.paired("input_perturbation") == (
        "results/{dataset}/figures/{sampler}/paired_input_perturbation.csv"
    )
    assert paths.fill(paths.PAIRED_METHOD_PAGE, dataset="d", sampler="s", method="m") == (
        "results/d/figures/s/paired_m.html"
    )
