"""GIFs, tables and plots, each registered for `snakemake --report`.

GIFs and tables are wrapped in self-contained HTML pages so that the report shows them inline.
When the baseline runs, every other method gets a paired comparison with it per sampler (rules
paired and paired_method), and the paired table gathers them all.
"""

# Every rule here is a small figures job (seconds): one place for what each asks for.
FIGURES_THREADS = resource("figures", "threads")
FIGURES_RESOURCES = memory_and_runtime("figures")


rule gif_denoise:
    input:
        frames=rules.frames.output.frames,
    output:
        gif=paths.GIF,
        page=report(
            paths.GIF_PAGE,
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
        log("gif", "{dataset}/{method}/{sampler}/{example}"),
    benchmark:
        benchmark("gif", "{dataset}/{method}/{sampler}/{example}")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
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
        frames=by_method(paths.FRAMES),
        gold=by_method(paths.SAMPLES),
        examples=rules.select_examples.output.examples,
    output:
        gif=paths.COMPARE_GIF,
        page=report(
            paths.COMPARE_PAGE,
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
        log("gif", "{dataset}/compare/{sampler}/{example}"),
    benchmark:
        benchmark("gif", "{dataset}/compare/{sampler}/{example}")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
    params:
        version=version("figures"),
        gold=compare_gold,
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
        summary_inputs,
    output:
        table=paths.METRICS_TABLE,
        page=report(
            paths.METRICS_TABLE_PAGE,
            caption="../report/metrics_table.rst",
            category="Metrics",
            subcategory="Summary",
            labels={"figure": "metrics table"},
        ),
    log:
        log("figures", "metrics_table"),
    benchmark:
        benchmark("figures", "metrics_table")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
    params:
        version=version("figures"),
        summaries=labelled("--summary", summary_labels),
    shell:
        "markup2im figures metrics-table {params.summaries} --output {output.table}"
        " --html {output.page} > {log} 2>&1"


rule paired:
    input:
        baseline=for_method(paths.METRICS, BASELINE),
        treatment=for_method(paths.METRICS, paths.PAPER_TREATMENT),
    output:
        table=paths.PAIRED,
        page=report(
            paths.PAIRED_PAGE,
            caption="../report/paired.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"figure": "paired comparison", "sampler": "{sampler}"},
        ),
    log:
        log("figures", "{dataset}/{sampler}/paired"),
    benchmark:
        benchmark("figures", "{dataset}/{sampler}/paired")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
    params:
        version=version("figures"),
        title=paired_title,
        labels=paired_run_labels,
        resamples=BOOTSTRAP_RESAMPLES,
        seed=BOOTSTRAP_SEED,
        confidence=CONFIDENCE,
    shell:
        "markup2im figures paired --baseline {input.baseline} --treatment {input.treatment}"
        " --output {output.table} --html {output.page} --title {params.title}"
        " --labels {params.labels} --resamples {params.resamples} --seed {params.seed}"
        " --confidence {params.confidence} > {log} 2>&1"


# Every other method against the baseline: the same job, with the method in its paths.
use rule paired as paired_method with:
    input:
        baseline=for_method(paths.METRICS, BASELINE),
        treatment=paths.METRICS,
    output:
        table=paths.PAIRED_METHOD,
        page=report(
            paths.PAIRED_METHOD_PAGE,
            caption="../report/paired.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"figure": "paired comparison, {method}", "sampler": "{sampler}"},
        ),
    log:
        log("figures", "{dataset}/{sampler}/paired_{method}"),
    benchmark:
        benchmark("figures", "{dataset}/{sampler}/paired_{method}")
    wildcard_constraints:
        method=alternatives(NAMED_TREATMENTS),


rule paired_table:
    input:
        paired_tables,
    output:
        table=paths.PAIRED_TABLE,
        page=report(
            paths.PAIRED_TABLE_PAGE,
            caption="../report/paired_table.rst",
            category="Metrics",
            subcategory="Summary",
            labels={"figure": "paired comparison table"},
        ),
    log:
        log("figures", "paired_table"),
    benchmark:
        benchmark("figures", "paired_table")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
    params:
        version=version("figures"),
        paired=labelled("--paired", paired_labels),
        labels=paired_table_run_labels,
    shell:
        "markup2im figures paired-table {params.paired} --output {output.table}"
        " --html {output.page} --labels {params.labels} > {log} 2>&1"


rule metric_plots:
    input:
        by_method(paths.METRICS),
    output:
        report(
            paths.METRIC_PLOTS,
            caption="../report/metric_plots.rst",
            category="Metrics",
            subcategory="{dataset}",
            labels={"figure": "metric distributions", "sampler": "{sampler}"},
        ),
    log:
        log("figures", "{dataset}/{sampler}/metric_distributions"),
    benchmark:
        benchmark("figures", "{dataset}/{sampler}/metric_distributions")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
    params:
        version=version("figures"),
        metrics=labelled("--metrics", method_labels),
    shell:
        "markup2im figures metric-plots {params.metrics} --output {output} > {log} 2>&1"


rule loss_curves:
    input:
        train_logs,
    output:
        report(
            paths.LOSS_CURVES,
            caption="../report/loss_curves.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"figure": "training loss"},
        ),
    log:
        log("figures", "{dataset}/loss_curves"),
    benchmark:
        benchmark("figures", "{dataset}/loss_curves")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
    params:
        version=version("figures"),
        logs=labelled("--train-log", trained_labels),
    shell:
        "markup2im figures loss-curves {params.logs} --output {output} > {log} 2>&1"


rule sample_grid:
    input:
        by_method(paths.SAMPLES),
    output:
        report(
            paths.SAMPLES_GRID,
            caption="../report/samples_grid.rst",
            category="Samples",
            subcategory="{dataset}",
            labels={"figure": "samples", "sampler": "{sampler}"},
        ),
    log:
        log("figures", "{dataset}/{sampler}/samples_grid"),
    benchmark:
        benchmark("figures", "{dataset}/{sampler}/samples_grid")
    conda:
        "../envs/markup2im.yaml"
    threads: FIGURES_THREADS
    resources:
        **FIGURES_RESOURCES,
    params:
        version=version("figures"),
        gold=grid_gold,
        preds=labelled("--pred", method_labels, "images"),
        limit=config["figures"]["grid_limit"],
    shell:
        "markup2im figures grid --gold-dir {params.gold} {params.preds}"
        " --output {output} --limit {params.limit} > {log} 2>&1"
