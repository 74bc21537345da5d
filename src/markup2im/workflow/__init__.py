"""The logic of the Snakemake workflow, importable and tested without Snakemake.

``rules/common.smk`` loads the config through :mod:`~markup2im.workflow.config`, builds a
:class:`~markup2im.workflow.plan.Plan` and keeps only thin, named input functions:

- :mod:`~markup2im.workflow.config`: the schema (with the registered names of
  :mod:`markup2im.names`), ``--config`` values re-typed, validation, cross-field checks, the
  input files the config names
- :mod:`~markup2im.workflow.paths`: the path templates of every rule's outputs, logs, benchmarks
- :mod:`~markup2im.workflow.flags`: config settings as ``markup2im ...`` command-line flags
- :mod:`~markup2im.workflow.encoders`: the hub encoders saved locally before training
- :mod:`~markup2im.workflow.plan`: a plan per dataset and the targets of ``rule all``
- :mod:`~markup2im.workflow.cleanup`: the checkpoints of finished trainings, removed when a
  Snakemake run succeeds

Settings that do not change a job's outputs (generation batch size, checkpoint interval and
count, the margin before a Slurm time limit) are handed to the rules as *resources*, which
Snakemake does not compare between runs, so changing them never reruns a job; everything that
changes outputs goes through *params*, which Snakemake does compare (its ``params`` rerun
trigger). ``code_version`` gives users a key to bump after editing the library, whose code
Snakemake does not track.

Planning the DAG imports neither torch nor numba.
"""
