"""Training: configuration, data, the step, the methods, checkpoints, stopping, the log, the Trainer.

Modules, each importable alone (``config`` is torch-free, for argument parsing):

- :mod:`.config`: :class:`~.config.TrainConfig` (the ``markup2im train`` flags) and the result.
- :mod:`.data`: the (markup, image) dataset, collate and the seeded epoch sampler.
- :mod:`.methods`: the training methods by name (what a step feeds the model, what it must output).
- :mod:`.step`: the pieces of one optimizer step (encode, pad, optimizer, lr schedule).
- :mod:`.checkpoints`: one object that lists, reads, checks, prunes, sets aside and resumes.
- :mod:`.stopping`: signals, the Slurm deadline, the process-group check.
- :mod:`.log`: the loss history, ``train_log.csv`` and TensorBoard.
- :mod:`.trainer`: the :class:`~.trainer.Trainer` and :func:`~.trainer.train`.
"""
