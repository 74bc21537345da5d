"""Generation: sample the test split (or its first `limit` examples) with each sampler, and, in a
job of its own, the denoising frames of the selected examples.

Each example's noise comes from the seed and its index in the split, so the frames job (which
samples only the selected examples) ends on the same images as the generation job, and changing
which examples get frames, or how many frames, reruns only the frames job and its GIFs. The batch
size is a resource: it does not change the images, so changing it reruns nothing.

Both commands write into a `.partial` directory that is renamed when it is complete, so an
interrupted job never leaves a directory that looks finished.
"""


rule generate:
    input:
        model=model_dir,
        data="results/{dataset}/data/dataset",
    output:
        samples=directory("results/{dataset}/{method}/{sampler}/samples"),
    log:
        "logs/generate/{dataset}/{method}/{sampler}.log",
    benchmark:
        "benchmarks/generate/{dataset}/{method}/{sampler}.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("generate", "threads")
    resources:
        gpu=generate_gpus,
        gpu_model=gpu_model(generate_gpus),
        mem_mb=resource("generate", "mem_mb"),
        runtime=resource("generate", "runtime"),
        batch_size=generate_setting("batch_size"),
    params:
        partial=partial_path,
        flags=sample_flags,
        version=version("generate"),
    shell:
        "rm -rf {params.partial}"
        " && OMP_NUM_THREADS={threads} markup2im generate --model-dir {input.model}"
        " --dataset-dir {input.data} --output-dir {params.partial} {params.flags}"
        " --batch-size {resources.batch_size} --device auto > {log} 2>&1"
        " && mv {params.partial} {output.samples}"


rule frames:
    input:
        model=model_dir,
        data="results/{dataset}/data/dataset",
        examples=rules.select_examples.output.examples,
    output:
        frames=directory("results/{dataset}/{method}/{sampler}/frames"),
    log:
        "logs/frames/{dataset}/{method}/{sampler}.log",
    benchmark:
        "benchmarks/frames/{dataset}/{method}/{sampler}.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("generate", "threads")
    resources:
        gpu=generate_gpus,
        gpu_model=gpu_model(generate_gpus),
        mem_mb=resource("generate", "mem_mb"),
        runtime=resource("generate", "runtime"),
        batch_size=generate_setting("batch_size"),
    params:
        partial=partial_path,
        flags=sample_flags,
        every=frames_every,
        version=version("generate"),
    shell:
        "rm -rf {params.partial}"
        " && OMP_NUM_THREADS={threads} markup2im generate --model-dir {input.model}"
        " --dataset-dir {input.data} --output-dir {params.partial} {params.flags}"
        ' --only "$(paste -sd, {input.examples})" --frames-every {params.every}'
        " --batch-size {resources.batch_size} --device auto > {log} 2>&1"
        " && mv {params.partial}/frames {output.frames} && rm -rf {params.partial}"
