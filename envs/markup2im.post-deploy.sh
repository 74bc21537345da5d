#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment of envs/markup2im.yaml, once, right after it
# is created (--sdm conda): installs the markup2im package itself, whose dependencies the
# environment file pins. The Snakefile exports MARKUP2IM_SOURCE, the checkout it was read from.
set -euo pipefail
: "${MARKUP2IM_SOURCE:?set by the Snakefile: the markup2im checkout to install}"
python -m pip install --no-deps --no-cache-dir "$MARKUP2IM_SOURCE"
markup2im --version
