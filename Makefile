# The two entry points of the README. Both set up what they need on first use (scripts/setup.sh).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
CORES ?= all

.PHONY: run test test-quick setup lint report

run:  ## the whole workflow on the embedded default config (config.yaml)
	@scripts/setup.sh
	snakemake --cores $(CORES)

test:  ## every test, including the slow end-to-end and the Slurm ones
	@scripts/setup.sh --test
	python -m pytest -m "slow or slurm or not slow" -p no:cacheprovider --durations=15

test-quick:  ## the fast tests only
	@scripts/setup.sh
	python -m pytest -m "not slow and not slurm"

lint:
	ruff check . && ruff format --check . && snakefmt --check . && snakemake --lint

report:  ## the HTML report of the last run
	snakemake --report report.html
