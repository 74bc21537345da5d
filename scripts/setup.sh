#!/usr/bin/env bash
# Set up everything markup2im needs on a fresh Debian machine, once; later calls return at once.
#
#   scripts/setup.sh          renderers and their sandbox (apt) + .venv with the pinned Python packages
#   scripts/setup.sh --test   also what the tests need: Chromium (report and demo tests), Slurm + MariaDB
#                             (slurm test), LilyPond's documentation examples (music test), and the
#                             web demo's packages (requirements-demo-lock.txt, the `demo` extra)
#
# Debian packages are installed with apt-get when running as root; otherwise the missing ones are
# listed with the command to install them. Python packages go into .venv from requirements-lock.txt
# (and requirements-demo-lock.txt with --test). A stamp per set of packages records the fingerprint
# of the files it was installed from, so each is installed again only when those files change.
set -euo pipefail
cd "$(dirname "$0")/.."

RENDER_PKGS=(texlive-latex-base texlive-latex-recommended dvipng wkhtmltopdf lilypond fonts-dejavu-core bubblewrap make)
# lilypond-doc-html: LilyPond's documentation examples, real scores for the music renderer's test
TEST_PKGS=(chromium slurmctld slurmd slurm-client slurmdbd munge mariadb-server lilypond-doc-html)

testing=0
if [[ "${1:-}" == "--test" ]]; then testing=1; fi
want=("${RENDER_PKGS[@]}")
if ((testing)); then want+=("${TEST_PKGS[@]}"); fi

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

fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }
stamped() { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }
stamp=.venv/.markup2im-setup
base=$(fingerprint requirements-lock.txt pyproject.toml)
# the demo's packages go on top of the main pins (--no-deps: see requirements-demo-lock.txt), so
# the demo stamp changes whenever either lock file or pyproject.toml does
demo_stamp=.venv/.markup2im-setup-demo
demo=$(fingerprint requirements-lock.txt requirements-demo-lock.txt pyproject.toml)
need_base=1
if stamped "$stamp" "$base"; then need_base=0; fi
need_demo=0
if ((testing)) && ! stamped "$demo_stamp" "$demo"; then need_demo=1; fi
if ((!need_base && !need_demo)); then
    exit 0
fi
if ((need_base)); then
    python=$(command -v python3.11 || command -v python3)
    echo "setup: creating .venv with $($python --version) and the pinned packages (a few minutes, once)"
    [[ -x .venv/bin/python ]] || "$python" -m venv .venv
    rm -f "$stamp" "$demo_stamp"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements-lock.txt
    .venv/bin/python -m pip install -q --no-deps -e .
    echo "$base" >"$stamp"
fi
if ((need_demo)); then
    echo "setup: installing the web demo's pinned packages (requirements-demo-lock.txt)"
    rm -f "$demo_stamp"
    .venv/bin/python -m pip install -q --no-deps -r requirements-demo-lock.txt
    echo "$demo" >"$demo_stamp"
fi
echo "setup: done"
