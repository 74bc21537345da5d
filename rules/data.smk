"""Datasets and encoders: download from the hub or render here, save each hub encoder to a local
directory (so that no training job needs the network), and pick the examples that get GIFs.
"""


rule download_dataset:
    output:
        directory(paths.DATASET),
    log:
        log("data", "{dataset}"),
    benchmark:
        benchmark("data", "{dataset}")
    wildcard_constraints:
        dataset=alternatives(PLAN.hub_datasets),
    conda:
        "../envs/markup2im.yaml"
    threads: resource("data", "threads")
    resources:
        **memory_and_runtime("data"),
    params:
        flags=hub_flags,
        version=version("data"),
    shell:
        "markup2im download {params.flags} --output-dir {output} > {log} 2>&1"


rule build_dataset:
    input:
        markup_file,
    output:
        directory(paths.DATASET),
    log:
        log("data", "{dataset}"),
    benchmark:
        benchmark("data", "{dataset}")
    wildcard_constraints:
        dataset=alternatives(PLAN.render_datasets),
    conda:
        "../envs/markup2im.yaml"
    threads: resource("data", "threads")
    resources:
        **memory_and_runtime("data"),
    params:
        flags=render_flags,
        version=version("data"),
    shell:
        "markup2im build-dataset {params.flags} --workers {threads}"
        " --output-dir {output} > {log} 2>&1"


rule fetch_encoder:
    output:
        directory(paths.ENCODER),
    log:
        log("encoders", "{encoder}"),
    conda:
        "../envs/markup2im.yaml"
    params:
        name=encoder_name,
        revision=encoder_revision,
    shell:
        "markup2im fetch-encoder --encoder {params.name:q} --revision {params.revision:q}"
        " --output-dir {output} > {log} 2>&1"


checkpoint select_examples:
    input:
        paths.DATASET,
    output:
        examples=paths.EXAMPLES,
    log:
        log("data", "{dataset}_examples"),
    conda:
        "../envs/markup2im.yaml"
    params:
        split=generate_setting("split"),
        frames=generate_setting("frames"),
        names=generate_setting("frames_for"),
    script:
        "../workflow_scripts/select_examples.py"
