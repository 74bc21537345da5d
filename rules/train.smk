"""Models: one accelerate training job per dataset and method (those that `methods` lists:
baseline, scheduled_sampling, input_perturbation), or, for the methods of a dataset's `released`
entry, the import of the authors' released checkpoint.

The run directory (results/{dataset}/{method}/train) also holds checkpoints/ and the command's own
train_log.csv. They are not outputs, so a failed, preempted or interrupted (Ctrl-C) job keeps them
and its rerun resumes from the last checkpoint; with --resume auto, checkpoints of other settings
or data are moved to checkpoints.stale-<date>-<time> and training starts afresh. The job itself
never removes them: one that ends while Snakemake is gone (killed) is marked incomplete and
rerun, and resumes from them. They are removed when a Snakemake run succeeds (onsuccess below,
markup2im.workflow.cleanup). The models are also targets of `rule all`, so a plain rerun rebuilds
one that an interrupted job removed. The trainer locks its run directory (.markup2im_train.lock):
a second trainer there, such as an orphan of a killed Snakemake, stops the job at once.
"""


rule train:
    input:
        data=paths.DATASET,
        encoder=encoder_input,
    output:
        model=directory(paths.TRAINED_MODEL),
        train_log=paths.TRAIN_LOG,
    log:
        log("train", "{dataset}/{method}"),
    benchmark:
        benchmark("train", "{dataset}/{method}")
    # A job that stops before its Slurm time limit (walltime_margin) fails after saving a
    # checkpoint and a retry resumes from it, so training may span `chunks` jobs (with one
    # chunk, --retries applies as to any rule). Only the main Snakemake retries: inside a
    # cluster job a retry would start again with no time left.
    retries: None if workflow.remote_exec else config["resources"]["train"]["chunks"] - 1 or None
    conda:
        "../envs/markup2im.yaml"
    threads: resource("train", "threads")
    resources:
        gpu=train_gpus,
        gpu_model=gpu_model(train_gpus),
        nodes=1,
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
        walltime_margin=resource("train", "walltime_margin"),
        checkpoint_every=train_setting("checkpoint_every"),
        checkpoints_total_limit=train_setting("checkpoints_total_limit"),
        log_every=train_setting("log_every"),
        data_workers=train_setting("num_workers"),
    params:
        rundir=subpath(output.model, parent=True),
        flags=train_flags,
        # the number of processes sets the global batch: a change retrains
        processes=train_gpus,
        version=version("train"),
        launch=accelerate_flags,
        # Snakemake sets OMP_NUM_THREADS to the job's threads; each process gets its share
        omp=process_threads,
    shell:
        "OMP_NUM_THREADS={params.omp} MKL_NUM_THREADS={params.omp}"
        " accelerate launch {params.launch} -m markup2im train --dataset-dir {input.data}"
        " --output-dir {params.rundir} {params.flags}"
        " --checkpoint-every {resources.checkpoint_every}"
        " --checkpoints-total-limit {resources.checkpoints_total_limit}"
        " --log-every {resources.log_every} --num-workers {resources.data_workers}"
        " --walltime-margin {resources.walltime_margin} > {log} 2>&1"
        " && cp {params.rundir}/train_log.csv {output.train_log}.tmp"
        " && mv {output.train_log}.tmp {output.train_log}"


onsuccess:
    remove_finished_checkpoints(PLAN.trainings())


rule import_original:
    input:
        checkpoint=released_checkpoint,
        encoder=encoder_input,
    output:
        model=directory(paths.RELEASED_MODEL),
    log:
        log("import_original", "{dataset}/{method}"),
    benchmark:
        benchmark("import_original", "{dataset}/{method}")
    wildcard_constraints:
        dataset=alternatives(PLAN.released_datasets),
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
