"""Evaluation: per-image metrics (dtw, dtw_shift, ssim, mse; clip when `evaluate.clip_model` is
set) and a per-run summary."""


rule evaluate:
    input:
        samples=rules.generate.output.samples,
    output:
        table="results/{dataset}/{method}/{sampler}/metrics.csv",
        summary="results/{dataset}/{method}/{sampler}/metrics_summary.json",
    log:
        "logs/evaluate/{dataset}/{method}/{sampler}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{method}/{sampler}.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("evaluate", "threads")
    resources:
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    params:
        flags=lambda w: PLAN.evaluate_flags(),
        version=version("evaluate"),
    shell:
        "markup2im evaluate --pred-dir {input.samples}/images --gold-dir {input.samples}/gold"
        " --output {output.table} --summary {output.summary} --workers {threads}"
        " {params.flags} > {log} 2>&1"
