"""Datasets and encoders: download from the hub or render here, save each hub encoder to a local
directory (so that no training job needs the network), and pick the examples that get GIFs.
"""


rule download_dataset:
    output:
        directory("results/{dataset}/data/dataset"),
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/data/{dataset}.tsv"
    wildcard_constraints:
        dataset=alternatives(PLAN.hub_datasets),
    conda:
        "../envs/markup2im.yaml"
    threads: resource("data", "threads")
    resources:
        mem_mb=resource("data", "mem_mb"),
        runtime=resource("data", "runtime"),
    params:
        flags=per_dataset("hub_flags"),
        version=version("data"),
    shell:
        "markup2im download {params.flags} --output-dir {output} > {log} 2>&1"


rule build_dataset:
    input:
        per_dataset("markup_file"),
    output:
        directory("results/{dataset}/data/dataset"),
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/data/{dataset}.tsv"
    wildcard_constraints:
        dataset=alternatives(PLAN.render_datasets),
    conda:
        "../envs/markup2im.yaml"
    threads: resource("data", "threads")
    resources:
        mem_mb=resource("data", "mem_mb"),
        runtime=resource("data", "runtime"),
    params:
        flags=per_dataset("render_flags"),
        version=version("data"),
    shell:
        "markup2im build-dataset {params.flags} --workers {threads}"
        " --output-dir {output} > {log} 2>&1"


rule fetch_encoder:
    output:
        directory(f"{ENCODER_DIR}/{{encoder}}"),
    log:
        "logs/encoders/{encoder}.log",
    conda:
        "../envs/markup2im.yaml"
    params:
        name=lambda w: ENCODERS[w.encoder].name,
        revision=lambda w: ENCODERS[w.encoder].revision or "main",
    shell:
        "markup2im fetch-encoder --encoder {params.name:q} --revision {params.revision:q}"
        " --output-dir {output} > {log} 2>&1"


checkpoint select_examples:
    input:
        "results/{dataset}/data/dataset",
    output:
        examples="results/{dataset}/data/frames_examples.txt",
    log:
        "logs/data/{dataset}_examples.log",
    conda:
        "../envs/markup2im.yaml"
    params:
        split=generate_setting("split"),
        frames=generate_setting("frames"),
        names=generate_setting("frames_for"),
    script:
        "../workflow_scripts/select_examples.py"
