"""Models: one accelerate training job per dataset and method (baseline, scheduled_sampling),
or, for the methods of a dataset's `released` entry, the import of the authors' released checkpoint.

The run directory (results/{dataset}/{method}/train) also holds checkpoints/ and the command's own
train_log.csv. They are not outputs, so a failed, preempted or interrupted (Ctrl-C) job keeps them
and its rerun resumes from the last checkpoint; with --resume auto, checkpoints of other settings
or data are moved to checkpoints.stale-<date>-<time> and training starts afresh. After a
successful run the checkpoints are removed. The models are also targets of `rule all`, so a plain
rerun rebuilds one that an interrupted job removed.
"""


rule train:
    input:
        data="results/{dataset}/data/dataset",
    output:
        model=directory("results/{dataset}/{method}/train/model"),
        train_log="results/{dataset}/{method}/train_log.csv",
    log:
        "logs/train/{dataset}/{method}.log",
    benchmark:
        "benchmarks/train/{dataset}/{method}.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("train", "threads")
    resources:
        gpu=train_gpus,
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
    params:
        rundir=subpath(output.model, parent=True),
        launch=accelerate_flags,
        flags=train_flags,
    shell:
        "accelerate launch {params.launch} --num_cpu_threads_per_process {threads}"
        " -m markup2im train --dataset-dir {input.data} --output-dir {params.rundir}"
        " {params.flags} > {log} 2>&1"
        " && cp {params.rundir}/train_log.csv {output.train_log}.tmp"
        " && mv {output.train_log}.tmp {output.train_log}"
        " && rm -rf {params.rundir}/checkpoints"


rule import_original:
    input:
        checkpoint=released_checkpoint,
    output:
        model=directory("results/{dataset}/{method}/released/model"),
    log:
        "logs/import_original/{dataset}/{method}.log",
    benchmark:
        "benchmarks/import_original/{dataset}/{method}.tsv"
    wildcard_constraints:
        dataset=_alternatives(RELEASED_DATASETS),
    conda:
        "../envs/markup2im.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        flags=import_flags,
    shell:
        "markup2im import-original --checkpoint {input.checkpoint} {params.flags}"
        " --output-dir {output.model} > {log} 2>&1"
