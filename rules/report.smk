"""GIFs, tables and plots, each registered for `snakemake --report`.

GIFs and tables are wrapped in self-contained HTML pages so that the report shows them inline.
"""


rule gif_denoise:
    input:
        frames=rules.frames.output.frames,
    output:
        gif="results/{dataset}/{method}/{sampler}/gifs/{example}.gif",
        page=report(
            "results/{dataset}/{method}/{sampler}/gifs/{example}.html",
            caption="../report/gif_denoise.rst",
            category="Denoising",
            subcategory="{dataset}",
            labels={
                "run": "{method}",
                "sampler": "{sampler}",
                "example": "{example}",
            },
        ),
    log:
        "logs/gif/{dataset}/{method}/{sampler}/{example}.log",
    benchmark:
        "benchmarks/gif/{dataset}/{method}/{sampler}/{example}.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        every=gif_every(panels=1),
        hold=config["gif"]["final_hold_ms"],
        title=page_title("{dataset}: {method}, {sampler}, example {example}"),
    shell:
        "(markup2im gif denoise --frames-dir {input.frames}/{wildcards.example}"
        " --output {output.gif} --every {params.every} --final-hold-ms {params.hold}"
        " && markup2im figures html --input {output.gif} --output {output.page}"
        " --title {params.title}) > {log} 2>&1"


rule gif_compare:
    input:
        frames=by_method("results/{dataset}/{method}/{sampler}/frames"),
        gold=by_method("results/{dataset}/{method}/{sampler}/samples"),
        examples=rules.select_examples.output.examples,
    output:
        gif="results/{dataset}/figures/{sampler}/compare/{example}.gif",
        page=report(
            "results/{dataset}/figures/{sampler}/compare/{example}.html",
            caption="../report/gif_compare.rst",
            category="Denoising",
            subcategory="{dataset}",
            labels={
                "run": " | ".join(["gold", *METHODS]),
                "sampler": "{sampler}",
                "example": "{example}",
            },
        ),
    log:
        "logs/gif/{dataset}/compare/{sampler}/{example}.log",
    benchmark:
        "benchmarks/gif/{dataset}/compare/{sampler}/{example}.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        gold=lambda w, input: shlex.quote(f"{input.gold[0]}/gold/{example_filename(w)}"),
        frames=compare_frames,
        every=gif_every(panels=1 + len(METHODS)),
        title=page_title("{dataset}: gold | methods, {sampler}, example {example}"),
    shell:
        "(markup2im gif compare --gold {params.gold} {params.frames}"
        " --output {output.gif} --every {params.every}"
        " && markup2im figures html --input {output.gif} --output {output.page}"
        " --title {params.title}) > {log} 2>&1"


rule metrics_table:
    input:
        lambda w: PLAN.summary_inputs(),
    output:
        table="results/summary/metrics_table.csv",
        page=report(
            "results/summary/metrics_table.html",
            caption="../report/metrics_table.rst",
            category="Metrics",
            subcategory="Summary",
            labels={"figure": "metrics table"},
        ),
    log:
        "logs/figures/metrics_table.log",
    benchmark:
        "benchmarks/figures/metrics_table.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        summaries=labelled("--summary", lambda w: PLAN.summary_labels()),
    shell:
        "markup2im figures metrics-table {params.summaries} --output {output.table}"
        " --html {output.page} > {log} 2>&1"


rule paired:
    input:
        baseline="results/{dataset}/baseline/{sampler}/metrics.csv",
        treatment="results/{dataset}/scheduled_sampling/{sampler}/metrics.csv",
    output:
        table="results/{dataset}/figures/{sampler}/paired.csv",
        page=report(
            "results/{dataset}/figures/{sampler}/paired.html",
            caption="../report/paired.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"figure": "paired comparison", "sampler": "{sampler}"},
        ),
    log:
        "logs/figures/{dataset}/{sampler}/paired.log",
    benchmark:
        "benchmarks/figures/{dataset}/{sampler}/paired.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        title=paired_title,
        resamples=10000,
        seed=0,
        confidence=0.95,
    shell:
        "markup2im figures paired --baseline {input.baseline} --treatment {input.treatment}"
        " --output {output.table} --html {output.page} --title {params.title}"
        " --resamples {params.resamples} --seed {params.seed}"
        " --confidence {params.confidence} > {log} 2>&1"


rule paired_table:
    input:
        lambda w: PLAN.paired_tables(),
    output:
        table="results/summary/paired_table.csv",
        page=report(
            "results/summary/paired_table.html",
            caption="../report/paired_table.rst",
            category="Metrics",
            subcategory="Summary",
            labels={"figure": "paired comparison table"},
        ),
    log:
        "logs/figures/paired_table.log",
    benchmark:
        "benchmarks/figures/paired_table.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        paired=labelled("--paired", lambda w: PLAN.paired_labels()),
    shell:
        "markup2im figures paired-table {params.paired} --output {output.table}"
        " --html {output.page} > {log} 2>&1"


rule metric_plots:
    input:
        by_method("results/{dataset}/{method}/{sampler}/metrics.csv"),
    output:
        report(
            "results/{dataset}/figures/{sampler}/metric_distributions.png",
            caption="../report/metric_plots.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"figure": "metric distributions", "sampler": "{sampler}"},
        ),
    log:
        "logs/figures/{dataset}/{sampler}/metric_distributions.log",
    benchmark:
        "benchmarks/figures/{dataset}/{sampler}/metric_distributions.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        metrics=labelled("--metrics", method_labels),
    shell:
        "markup2im figures metric-plots {params.metrics} --output {output} > {log} 2>&1"


rule loss_curves:
    input:
        lambda w: [
            f"results/{w.dataset}/{m}/train_log.csv"
            for m in PLAN.trained_methods(w.dataset)
        ],
    output:
        report(
            "results/{dataset}/figures/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"figure": "training loss"},
        ),
    log:
        "logs/figures/{dataset}/loss_curves.log",
    benchmark:
        "benchmarks/figures/{dataset}/loss_curves.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        logs=labelled("--train-log", trained_labels),
    shell:
        "markup2im figures loss-curves {params.logs} --output {output} > {log} 2>&1"


rule sample_grid:
    input:
        by_method("results/{dataset}/{method}/{sampler}/samples"),
    output:
        report(
            "results/{dataset}/figures/{sampler}/samples_grid.png",
            caption="../report/samples_grid.rst",
            category="Samples",
            subcategory="{dataset}",
            labels={"figure": "samples", "sampler": "{sampler}"},
        ),
    log:
        "logs/figures/{dataset}/{sampler}/samples_grid.log",
    benchmark:
        "benchmarks/figures/{dataset}/{sampler}/samples_grid.tsv"
    conda:
        "../envs/markup2im.yaml"
    threads: resource("figures", "threads")
    resources:
        mem_mb=resource("figures", "mem_mb"),
        runtime=resource("figures", "runtime"),
    params:
        version=version("figures"),
        gold=lambda w, input: shlex.quote(f"{input[0]}/gold"),
        preds=labelled("--pred", method_labels, "images"),
        limit=config["figures"]["grid_limit"],
    shell:
        "markup2im figures grid --gold-dir {params.gold} {params.preds}"
        " --output {output} --limit {params.limit} > {log} 2>&1"
