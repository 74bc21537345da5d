"""``markup2im figures``: sample grids, the metrics table, the paired comparison of two methods,
plots and HTML pages for the report."""

from __future__ import annotations

import argparse

from markup2im.cli.paths import output_file
from markup2im.names import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, PAPER_LABELS


def labelled(value: str) -> tuple[str, str]:
    """Parse ``LABEL=PATH`` (the label is free text such as ``math/baseline``)."""
    label, sep, path = value.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {value!r}")
    return label, path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``figures grid|metrics-table|paired|paired-table|metric-plots|loss-curves|html``."""
    parser = subparsers.add_parser("figures", help="report figures and tables", description=__doc__)
    commands = parser.add_subparsers(dest="figures_command", required=True, metavar="KIND")
    for add in (add_grid, add_table, add_paired, add_paired_table, add_plots, add_curves, add_html):
        add(commands)


def add_grid(commands: argparse._SubParsersAction) -> None:
    """The sample grid."""
    grid = commands.add_parser("grid", help="sample grid: rows of examples, gold + each method")
    grid.add_argument("--gold-dir", required=True, help="directory of gold images")
    grid.add_argument(
        "--pred",
        required=True,
        action="append",
        type=labelled,
        metavar="LABEL=DIR",
        help="directory of one method's images (repeat)",
    )
    grid.add_argument("--output", type=output_file, required=True, help="PNG to write")
    grid.add_argument("--limit", type=int, default=8, help="number of examples (rows)")
    grid.add_argument("--scale", type=int, default=None, help="enlargement (default: auto)")
    grid.set_defaults(func=run_grid)


def add_table(commands: argparse._SubParsersAction) -> None:
    """The metrics table."""
    table = commands.add_parser("metrics-table", help="dataset x method table of mean ± std")
    table.add_argument(
        "--summary",
        required=True,
        action="append",
        type=labelled,
        metavar="LABEL=JSON",
        help="summary JSON of `markup2im evaluate` (repeat; LABEL like math/baseline)",
    )
    table.add_argument("--output", type=output_file, required=True, help="CSV to write")
    table.add_argument("--html", type=output_file, default=None, help="also write this HTML page")
    table.set_defaults(func=run_table)


def add_paired(commands: argparse._SubParsersAction) -> None:
    """The paired comparison of two runs."""
    paired = commands.add_parser(
        "paired",
        help="treatment - baseline per image: mean difference, bootstrap interval, win rate",
        description="Paired comparison of two runs over the same images: for each metric the "
        "mean per-image difference (treatment - baseline) with a percentile-bootstrap interval, "
        "and the fraction of images where the treatment is better (ties count half).",
    )
    paired.add_argument("--baseline", required=True, help="metrics CSV of the baseline run")
    paired.add_argument("--treatment", required=True, help="metrics CSV of the compared run")
    paired.add_argument(
        "--output", type=output_file, required=True, help="CSV to write (one row per metric)"
    )
    paired.add_argument("--html", type=output_file, default=None, help="also write this HTML page")
    paired.add_argument("--title", default=None, help="page title")
    add_labels_flag(paired)
    paired.add_argument(
        "--resamples",
        type=int,
        default=BOOTSTRAP_RESAMPLES,
        help="bootstrap resamples (default: %(default)s)",
    )
    paired.add_argument(
        "--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed (default: %(default)s)"
    )
    paired.add_argument(
        "--confidence",
        type=float,
        default=CONFIDENCE,
        help="interval coverage (default: %(default)s)",
    )
    paired.set_defaults(func=run_paired)


def two_labels(text: str) -> tuple[str, str]:
    """``BASELINE,TREATMENT``: what a page calls the two runs."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected BASELINE,TREATMENT, got {text!r}")
    return parts[0], parts[1]


def add_labels_flag(parser: argparse.ArgumentParser) -> None:
    """--labels, the names of the compared runs in the pages (default: the paper's)."""
    parser.add_argument(
        "--labels",
        type=two_labels,
        default=",".join(PAPER_LABELS),
        metavar="BASELINE,TREATMENT",
        help="what the page calls the two runs (default: %(default)s)",
    )


def add_paired_table(commands: argparse._SubParsersAction) -> None:
    """Every paired comparison in one table."""
    paired_all = commands.add_parser(
        "paired-table", help="every paired comparison (dataset x sampler) in one table"
    )
    paired_all.add_argument(
        "--paired",
        required=True,
        action="append",
        type=labelled,
        metavar="LABEL=CSV",
        help="CSV of `markup2im figures paired` (repeat; LABEL like math/ddim50)",
    )
    paired_all.add_argument("--output", type=output_file, required=True, help="CSV to write")
    paired_all.add_argument(
        "--html", type=output_file, default=None, help="also write this HTML page"
    )
    add_labels_flag(paired_all)
    paired_all.set_defaults(func=run_paired_table)


def add_plots(commands: argparse._SubParsersAction) -> None:
    """Per-image metric distributions."""
    plots = commands.add_parser("metric-plots", help="per-image metric distributions per method")
    plots.add_argument(
        "--metrics",
        required=True,
        action="append",
        type=labelled,
        metavar="LABEL=CSV",
        help="per-image metrics CSV of `markup2im evaluate` (repeat)",
    )
    plots.add_argument(
        "--output", type=output_file, required=True, help="image to write (PNG, SVG, PDF)"
    )
    plots.set_defaults(func=run_plots)


def add_curves(commands: argparse._SubParsersAction) -> None:
    """Training-loss curves."""
    curves = commands.add_parser("loss-curves", help="training loss (and ss_prob) against step")
    curves.add_argument(
        "--train-log",
        required=True,
        action="append",
        type=labelled,
        metavar="LABEL=CSV",
        help="train_log.csv of one run (repeat)",
    )
    curves.add_argument(
        "--output", type=output_file, required=True, help="image to write (PNG, SVG, PDF)"
    )
    curves.add_argument(
        "--window", type=int, default=None, help="moving-average window (default: 2%% of steps)"
    )
    curves.set_defaults(func=run_curves)


def add_html(commands: argparse._SubParsersAction) -> None:
    """A file wrapped in an HTML page."""
    page = commands.add_parser("html", help="wrap a GIF/PNG or CSV in a self-contained HTML page")
    page.add_argument("--input", required=True, help="GIF, PNG, JPEG, SVG or CSV file")
    page.add_argument("--output", type=output_file, required=True, help="HTML page to write")
    page.add_argument("--title", default=None, help="page title (default: the file name)")
    page.set_defaults(func=run_html)


def run_grid(args: argparse.Namespace) -> int:
    """Write the sample grid."""
    from markup2im.figures.grid import sample_grid

    sample_grid(args.gold_dir, args.pred, args.output, limit=args.limit, scale=args.scale)
    return 0


def run_table(args: argparse.Namespace) -> int:
    """Write the metrics table."""
    from markup2im.figures.tables import metrics_table

    metrics_table(args.summary, args.output, args.html)
    return 0


def run_paired(args: argparse.Namespace) -> int:
    """Write the paired comparison of two runs."""
    from markup2im.figures.paired import compare_runs

    compare_runs(
        args.baseline,
        args.treatment,
        args.output,
        args.html,
        title=args.title,
        resamples=args.resamples,
        seed=args.seed,
        confidence=args.confidence,
        labels=args.labels,
    )
    return 0


def run_paired_table(args: argparse.Namespace) -> int:
    """Write the table of every paired comparison."""
    from markup2im.figures.paired import paired_table

    paired_table(args.paired, args.output, args.html, labels=args.labels)
    return 0


def run_plots(args: argparse.Namespace) -> int:
    """Write the metric distribution plots."""
    from markup2im.figures.plots import metric_plots

    metric_plots(args.metrics, args.output)
    return 0


def run_curves(args: argparse.Namespace) -> int:
    """Write the training-loss curves."""
    from markup2im.figures.plots import loss_curves

    loss_curves(args.train_log, args.output, window=args.window)
    return 0


def run_html(args: argparse.Namespace) -> int:
    """Write the HTML page."""
    from markup2im.figures.html import html_page

    html_page(args.input, args.output, title=args.title)
    return 0
