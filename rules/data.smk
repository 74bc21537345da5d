"""Datasets: download from the hub or render here, then pick the examples that get GIFs."""


rule download_dataset:
    output:
        directory("results/{dataset}/data/dataset"),
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/data/{dataset}.tsv"
    wildcard_constraints:
        dataset=_alternatives(HUB_DATASETS),
    conda:
        "../envs/markup2im.yaml"
    threads: resource("data", "threads")
    resources:
        mem_mb=resource("data", "mem_mb"),
        runtime=resource("data", "runtime"),
    params:
        flags=hub_flags,
    shell:
        "markup2im download {params.flags} --output-dir {output} > {log} 2>&1"


rule build_dataset:
    input:
        markup_file,
    output:
        directory("results/{dataset}/data/dataset"),
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/data/{dataset}.tsv"
    wildcard_constraints:
        dataset=_alternatives(RENDER_DATASETS),
    conda:
        "../envs/markup2im.yaml"
    threads: resource("data", "threads")
    resources:
        mem_mb=resource("data", "mem_mb"),
        runtime=resource("data", "runtime"),
    params:
        flags=render_flags,
    shell:
        "markup2im build-dataset {params.flags} --workers {threads}"
        " --output-dir {output} > {log} 2>&1"


checkpoint select_examples:
    input:
        "results/{dataset}/data/dataset",
    output:
        examples="results/{dataset}/data/frames_examples.txt",
    log:
        "logs/data/{dataset}_examples.log",
    benchmark:
        "benchmarks/data/{dataset}_examples.tsv"
    conda:
        "../envs/markup2im.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        split=generate_setting("split"),
        frames=generate_setting("frames"),
        names=generate_setting("frames_for"),
    script:
        "../workflow_scripts/select_examples.py"
