"""Generation: sample the test split (or its first `limit` examples) with each sampler, and, in a
job of its own, the denoising frames of the selected examples.

Each example's noise comes from the seed and its index in the split, so the frames job (which
samples only the selected examples) ends on the same images as the generation job, and changing
which examples get frames, or how many frames, reruns only the frames job and its GIFs. The batch
size is a resource: it does not change the images, so changing it reruns nothing.

Both commands write into a `.partial` directory that is renamed when it is complete, so an
interrupted job never leaves a directory that looks finished.
"""

# Both jobs run on one GPU when the dataset has any, with the same resources.
GENERATE_RESOURCES = {
    "gpu": generate_gpus,
    "gpu_model": gpu_model(generate_gpus),
    **memory_and_runtime("generate"),
    "batch_size": generate_setting("batch_size"),
}


rule generate:
    input:
        model=model_dir,
        data=paths.DATASET,
    output:
        samples=directory(paths.SAMPLES),
    log:
        log("generate", "{dataset}/{method}/{sampler}"),
    benchmark:
        benchmark("generate", "{dataset}/{method}/{sampler}")
    conda:
        "../envs/markup2im.yaml"
    threads: resource("generate", "threads")
    resources:
        **GENERATE_RESOURCES,
    params:
        partial=partial_path,
        flags=sample_flags,
        version=version("generate"),
    shell:
        generate_command("", move="mv {params.partial} {output.samples}")


rule frames:
    input:
        model=model_dir,
        data=paths.DATASET,
        examples=rules.select_examples.output.examples,
    output:
        frames=directory(paths.FRAMES),
    log:
        log("frames", "{dataset}/{method}/{sampler}"),
    benchmark:
        benchmark("frames", "{dataset}/{method}/{sampler}")
    conda:
        "../envs/markup2im.yaml"
    threads: resource("generate", "threads")
    resources:
        **GENERATE_RESOURCES,
    params:
        partial=partial_path,
        flags=sample_flags,
        every=frames_every,
        version=version("generate"),
    shell:
        generate_command(
            ' --only "$(paste -sd, {input.examples})" --frames-every {params.every}',
            move="mv {params.partial}/frames {output.frames} && rm -rf {params.partial}",
        )
