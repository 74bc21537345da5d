"""Evaluation: per-image metrics (dtw, dtw_shift, ssim, mse; clip when `evaluate.clip_model` is
set) and a per-run summary."""


rule evaluate:
    input:
        samples=rules.generate.output.samples,
    output:
        table=paths.METRICS,
        summary=paths.METRICS_SUMMARY,
    log:
        log("evaluate", "{dataset}/{method}/{sampler}"),
    benchmark:
        benchmark("evaluate", "{dataset}/{method}/{sampler}")
    conda:
        "../envs/markup2im.yaml"
    threads: resource("evaluate", "threads")
    resources:
        **memory_and_runtime("evaluate"),
    params:
        flags=evaluate_flags,
        version=version("evaluate"),
    shell:
        "markup2im evaluate --pred-dir {input.samples}/images --gold-dir {input.samples}/gold"
        " --output {output.table} --summary {output.summary} --workers {threads}"
        " {params.flags} > {log} 2>&1"
