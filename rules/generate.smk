"""Generation: sample the test split (or its first `limit` examples) with each sampler,
saving denoising frames for the selected examples.

The command writes into a `.partial` directory that is renamed when it is complete, so an
interrupted job never leaves a samples directory that looks finished.
"""


rule generate:
    input:
        model=model_dir,
        data="results/{dataset}/data/dataset",
        examples=rules.select_examples.output.examples,
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
        mem_mb=resource("generate", "mem_mb"),
        runtime=resource("generate", "runtime"),
    params:
        partial=partial_path,
        flags=generate_flags,
    shell:
        "rm -rf {params.partial}"
        " && OMP_NUM_THREADS={threads} markup2im generate --model-dir {input.model}"
        " --dataset-dir {input.data} --output-dir {params.partial} {params.flags}"
        ' --frames-for "$(paste -sd, {input.examples})" --device auto > {log} 2>&1'
        " && mv {params.partial} {output.samples}"
