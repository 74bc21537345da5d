#!/usr/bin/env bash
# Install the Slurm profile as the named profile `slurm`, so that from the repository
#
#   snakemake --profile slurm --configfile config/paper.yaml
#
# works (Snakemake looks up a named profile in ~/.config/snakemake/NAME, or $XDG_CONFIG_HOME/
# snakemake/NAME, then /etc/xdg/snakemake/NAME). Idempotent: an installed copy that is identical
# is left as it is, and a different one (your own edits, or another project's `slurm` profile)
# is never overwritten; the script then says so and exits 1.
#
#   scripts/install_profile.sh [NAME]   # NAME defaults to slurm
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE="$REPO_ROOT/profiles/slurm/config.yaml"
NAME="${1:-slurm}"
if [[ ! $NAME =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "install_profile: invalid profile name '$NAME'" >&2
    exit 2
fi
TARGET_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/$NAME"
TARGET="$TARGET_DIR/config.yaml"

if [[ -e $TARGET ]]; then
    if cmp -s "$SOURCE" "$TARGET"; then
        echo "install_profile: $TARGET is already installed and up to date"
        exit 0
    fi
    echo "install_profile: $TARGET exists and differs from $SOURCE; left as it is." >&2
    echo "  Compare them with: diff $SOURCE $TARGET" >&2
    echo "  Install under another name with: $0 OTHER_NAME (then snakemake --profile OTHER_NAME)" >&2
    exit 1
fi
mkdir -p "$TARGET_DIR"
tmp="$(mktemp "$TARGET_DIR/.config.yaml.XXXXXX")"
cp "$SOURCE" "$tmp"
mv "$tmp" "$TARGET"
echo "install_profile: installed $TARGET; edit it for your cluster (partition, account)"
echo "  then run: snakemake --profile $NAME --configfile config/paper.yaml"
