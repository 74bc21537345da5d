"""markup2im: markup-to-image diffusion with scheduled sampling, from data to report.

Run `snakemake --cores all` for the embedded default (config.yaml: one small dataset rendered
here, CPU, minutes) or `snakemake --configfile config/paper.yaml ...` for the paper's setup. A
--configfile replaces the embedded default instead of being merged into it, so a config file
describes a whole run.
"""

import shlex
import shutil
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

if not workflow.config_settings.configfiles:

    configfile: Path(workflow.basedir) / "config.yaml"


# Shell jobs call `markup2im` and `accelerate`; when Snakemake runs from a virtual environment
# that is not activated, find them next to its interpreter.
VENV_BIN = Path(sys.executable).parent
if shutil.which("markup2im") is None and (VENV_BIN / "markup2im").exists():

    shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(str(VENV_BIN))}:$PATH; ")


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    method="baseline|scheduled_sampling",
    sampler=_alternatives(list(config["samplers"])),
    example="[^/]+",


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets,
        model_targets,
        gif_targets,
