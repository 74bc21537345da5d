"""markup2im: markup-to-image diffusion with scheduled sampling, from data to report.

Run `snakemake --cores all` for the embedded default (config.yaml: one small dataset rendered
here, CPU, minutes) or `snakemake --configfile config/paper.yaml ...` for the paper's setup. A
--configfile replaces the embedded default instead of being merged into it, so a config file
describes a whole run.
"""

import os
import shlex
import shutil
import sys
from pathlib import Path

from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

min_version("9.0")

if not workflow.config_settings.configfiles:

    configfile: Path(workflow.basedir) / "config.yaml"


# Shell jobs call `markup2im` and `accelerate`; when Snakemake runs from a virtual environment
# that is not activated, find them next to its interpreter. Not with --sdm conda: there the
# rules' environment (envs/markup2im.yaml, which installs markup2im) must provide them.
VENV_BIN = Path(sys.executable).parent
# envs/markup2im.post-deploy.sh installs the package from here into a new conda environment
os.environ.update(MARKUP2IM_SOURCE=workflow.basedir)
USES_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
if (
    not USES_CONDA
    and shutil.which("markup2im") is None
    and (VENV_BIN / "markup2im").exists()
):

    shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(str(VENV_BIN))}:$PATH; ")


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    dataset=alternatives(DATASETS),
    method=alternatives(REGISTERED_METHODS),
    sampler=alternatives(config["samplers"]),
    example="[^/]+",
    encoder=alternatives(ENCODERS),


# On a cluster these run where Snakemake runs (the login node): the steps that need the
# internet, which compute nodes often lack, and the small ones (example lists, GIFs, tables,
# plots: seconds each), which would otherwise wait in the queue one by one.
localrules:
    download_dataset,
    fetch_encoder,
    select_examples,
    gif_denoise,
    gif_compare,
    metrics_table,
    paired,
    paired_method,
    paired_table,
    metric_plots,
    loss_curves,
    sample_grid,


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.final_targets(),
        PLAN.model_targets(),
        # every dataset's example list up front, so that they are made side by side
        PLAN.example_lists(),
        gif_targets,
