#!/usr/bin/env bash
# Set up everything markup2im needs on a fresh Debian machine, once; later calls return at once.
#
#   scripts/setup.sh          renderers and their sandbox (apt) + .venv with the pinned Python packages
#   scripts/setup.sh --test   also what the tests need: Chromium (report test), Slurm + MariaDB (slurm test),
#                             LilyPond's documentation examples (music test)
#
# Debian packages are installed with apt-get when running as root; otherwise the missing ones are
# listed with the command to install them. Python packages go into .venv from requirements-lock.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

RENDER_PKGS=(texlive-latex-base texlive-latex-recommended dvipng wkhtmltopdf lilypond fonts-dejavu-core bubblewrap make)
# lilypond-doc-html: LilyPond's documentation examples, real scores for the music renderer's test
TEST_PKGS=(chromium slurmctld slurmd slurm-client slurmdbd munge mariadb-server lilypond-doc-html)

want=("${RENDER_PKGS[@]}")
if [[ "${1:-}" == "--test" ]]; then want+=("${TEST_PKGS[@]}"); fi

missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: install them with: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi

stamp=.venv/.markup2im-setup
fingerprint=$(cat requirements-lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && "$(cat "$stamp")" == "$fingerprint" ]]; then
    exit 0
fi
python=$(command -v python3.11 || command -v python3)
echo "setup: creating .venv with $($python --version) and the pinned packages (a few minutes, once)"
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-lock.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "$fingerprint" >"$stamp"
echo "setup: done"
