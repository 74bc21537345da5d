"""The Trainer: one training run of a Markup2ImModel on HF accelerate, and :func:`train`.

It runs as a plain process or under ``accelerate launch`` (one process per device, gradients
averaged by DDP); the markup encoder is frozen and runs outside the DDP wrapper, only the denoiser
trains (unless ``train_encoder``). Every method is the same loop: the method decides what a step
feeds the model (:mod:`markup2im.training.methods`).

Output directory::

    O/checkpoints/checkpoint-<step>/   Accelerator.save_state + markup2im_train.json (resume point)
    O/train_log.csv                    step, epoch, loss, lr, ss_prob, m, seconds (one row per step,
                                       written every ``log_every`` steps)
    O/model/                           the final Markup2ImModel.save_pretrained layout
    O/snapshots/step-<N>/              the model every --snapshot-every steps (when asked)
    O/.markup2im_train.lock            while a run trains here (:mod:`markup2im.training.lock`)

Unlike the original, the learning rate is a float, only the main process writes files and every
data-loader worker seeds numpy. The original stepped its (accelerate-prepared) lr scheduler once
per process per optimizer step, so on N GPUs its warm-up took 500 / N optimizer steps; ours takes
500 whatever N, and ``warmup_per_process`` reproduces the original's
(:func:`markup2im.training.step.lr_schedule`).

Reproducible and preemption-safe: the data order is a seeded permutation per epoch, and all
randomness of a step (t, m, noise, rollout noise) comes from a generator seeded by (seed, process,
step). A checkpoint therefore only needs the model, optimizer, lr scheduler, EMA and the position;
on CPU a run stopped by a signal or its deadline (:mod:`markup2im.training.stopping`) and resumed
ends with the same weights, bit for bit, as an uninterrupted one. With several processes the
decision to stop is all-reduced, so they all stop at the same step.

A non-finite loss raises TrainingDivergedError naming the last sane checkpoint
(:mod:`markup2im.training.checkpoints`).

On a GPU the step never waits for the device: t and m are drawn on the CPU, the noise on the
device from a generator seeded the same way, and the losses are read back, all processes' at once,
only every ``log_every`` steps and at checkpoints. TF32 matmuls and cuDNN autotuning are on
(:func:`markup2im.cuda.configure_cuda`), AdamW is fused, and ``mixed_precision bf16`` runs the
denoiser and the frozen encoder under the same autocast. Options: ``channels_last``, ``compile``
(markup states padded to a few lengths, :func:`markup2im.training.step.markup_buckets`) and
``cache_encoder``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from markup2im.cuda import configure_cuda
from markup2im.data.datasets import DatasetInfo, dataset_fingerprint, load_split, read_dataset_info
from markup2im.diffusion import NoiseSchedule
from markup2im.errors import ConfigError, DataError, TrainingDivergedError
from markup2im.guidance import UNCONDITIONAL_MARKUP
from markup2im.model import Markup2ImModel
from markup2im.presets import DOMAINS
from markup2im.scheduled_sampling import StepInputs, step_loss
from markup2im.training.checkpoints import (
    STALE_PREFIX,
    Checkpoints,
    EMAOnDevice,
    LoadUnwrapped,
    SaveUnwrapped,
    TrainerState,
    read_checkpoint_record,
)
from markup2im.training.config import TrainConfig, TrainResult
from markup2im.training.data import (
    Collate,
    EpochSampler,
    MarkupImageDataset,
    derive_seed,
    seed_worker,
)
from markup2im.training.lock import TrainingLock, is_main_process
from markup2im.training.log import SANE_LOSS_FACTOR, StepRecord, TrainingLog, rewrite_log
from markup2im.training.methods import build_method
from markup2im.training.step import (
    BoundDenoiser,
    EncoderCache,
    MarkupDropout,
    adamw_options,
    all_finite,
    bucket_length,
    encode_tokens,
    lr_schedule,
    noise_generator,
    pad_markup,
)
from markup2im.training.stopping import Deadline, StopFlag, TrainingInterrupted, check_process_group

# the last part of the seed of a step's markup-dropout draws (a stream apart from the step's own)
DROPOUT = 1

logger = logging.getLogger(__name__)


def train(config: TrainConfig) -> TrainResult:
    """Train a Markup2ImModel on ``config.dataset_dir`` and save it to ``output_dir/model``.

    Raises TrainingInterrupted after saving a checkpoint when SIGTERM/SIGUSR1/SIGINT arrives or
    the deadline passes, TrainingDivergedError (naming the last sane checkpoint, or saying
    that none is) when the loss becomes non-finite, and TrainingLockedError when another
    training holds ``output_dir`` (the main process holds its lock for the whole run).
    """
    config.validate()  # before the lock creates the output directory
    with TrainingLock(config.output_dir, active=is_main_process()):
        trainer = Trainer(config)
        if trainer.resumed.restart:
            # failed loads may have changed the model or optimizer: build everything again (the
            # checkpoints are set aside now, so the new trainer starts from scratch)
            trainer = Trainer(config)
        return trainer.train()


def default_encoder(info: DatasetInfo) -> str:
    """The paper's encoder of the dataset's domain."""
    spec = DOMAINS.get(info.domain)
    if spec is None:
        raise ConfigError(
            f"dataset domain {info.domain!r} has no default encoder; pass --encoder NAME_OR_DIR"
        )
    return spec.hub_encoder


class Trainer:
    """One training run: built from a TrainConfig (resuming where asked), then :meth:`train`."""

    def __init__(self, config: TrainConfig) -> None:
        config.validate()
        self.config = config
        self.method = build_method(config)
        # accelerate logs every file of a checkpoint at INFO; one line of ours says the same
        logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)
        self.output_dir, self.dataset_dir = Path(config.output_dir), Path(config.dataset_dir)
        # CPU processes (gloo) only when asked for with ACCELERATE_USE_CPU=1: a GPU job whose
        # CUDA is missing must fail at once, not train on the CPU or as N separate runs
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision, project_dir=str(self.output_dir)
        )
        check_process_group(self.accelerator.num_processes)
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        if self.device.type == "cuda":
            configure_cuda()
        set_seed(config.seed)
        self._load_data()
        self._build_model()
        self._build_optimizer()
        self._prepare()
        self.checkpoints = Checkpoints(
            self.output_dir, self.accelerator, config.checkpoints_total_limit
        )
        self.resumed = self.checkpoints.resume(config, self.dataset_record)
        self.log = TrainingLog(self.output_dir, write=self.main)
        self.deadline = Deadline(config.deadline, config.time_limit)

    # -- building -------------------------------------------------------------------------------
    def _load_data(self) -> None:
        """The train split, its fingerprint and the seeded epoch order of this process."""
        config, dataset_dir = self.config, self.dataset_dir
        self.info = read_dataset_info(dataset_dir)
        self.dataset = MarkupImageDataset(
            load_split(dataset_dir, "train"), self.info, f"{dataset_dir} train", config.limit_train
        )
        if len(self.dataset) == 0:
            raise DataError(f"{dataset_dir}: the train split is empty")
        self.dataset_record = {**dataset_fingerprint(dataset_dir), "path": str(dataset_dir)}
        self.sampler = EpochSampler(len(self.dataset), config.data_seed, self.rank, self.world_size)
        self.batches_per_epoch = math.ceil(self.sampler.per_process / config.batch_size)
        steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation_steps)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = config.max_steps or config.epochs * steps_per_epoch

    def _build_model(self) -> None:
        """The model of the config at the dataset's image size, on this process's device."""
        config, info = self.config, self.info
        model = Markup2ImModel.from_config(
            model_preset=config.model_preset,
            encoder=config.encoder or default_encoder(info),
            height=info.height,
            width=info.width,
            channels=info.channels,
            max_markup_length=config.max_markup_length,
            prediction_type=config.prediction_type,
            attention_from=config.attention_from,
        )
        model.domain = info.domain  # recorded with the model (the demo shows its examples)
        model.markup_dropout = config.markup_dropout or None  # recorded: it can be guided
        model.encoder.set_trainable(config.train_encoder)
        model.to(self.device)
        if config.channels_last:
            model.denoiser.to(memory_format=torch.channels_last)
        self.model = model
        self.schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
        self.params = list(model.trainable_parameters())

    def _build_optimizer(self) -> None:
        """AdamW and its warm-up + cosine schedule."""
        config = self.config
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=float(config.learning_rate),
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
            **adamw_options(self.params),
        )
        processes = self.world_size if config.warmup_per_process else 1
        self.lr_scheduler = lr_schedule(
            self.optimizer, config.warmup_steps, self.total_steps, processes
        )

    def _prepare(self) -> None:
        """Wrap the denoiser and optimizer for accelerate and register what a checkpoint holds."""
        config, accelerator = self.config, self.accelerator
        denoiser, self.optimizer = accelerator.prepare(self.model.denoiser, self.optimizer)
        accelerator.register_save_state_pre_hook(SaveUnwrapped(accelerator))
        accelerator.register_load_state_pre_hook(LoadUnwrapped(accelerator))
        self.state = TrainerState()
        accelerator.register_for_checkpointing(self.lr_scheduler, self.state)
        self.ema = None
        if config.ema:
            self.ema = EMAModel(self.params, decay=config.ema_decay)  # on the params' device
            # a resumed EMA must land there too (accelerate loads it as CPU tensors)
            accelerator.register_for_checkpointing(EMAOnDevice(self.ema, self.device))
        if config.train_encoder:  # outside the prepared denoiser: its weights need a slot
            accelerator.register_for_checkpointing(self.model.encoder.model)
        # the compiled denoiser trains; the checkpoint check runs the plain one (eval mode and
        # no gradient would each make torch.compile build another graph)
        self.plain_denoiser = denoiser
        self.denoiser = torch.compile(denoiser) if config.compile else denoiser
        self.markup_limit = self.model.max_markup_length + 1  # markup tokens + the end token
        self.cache = None
        if config.cache_encoder:
            self.cache = EncoderCache(self._encode_tokens)
        self.dropout = None
        if config.markup_dropout:
            # tokenised once; encoded at each use, since a trained encoder changes its states
            self.empty_tokens = self.model.encoder.tokenize([UNCONDITIONAL_MARKUP])
            self.dropout = MarkupDropout(config.markup_dropout, self._encode_empty)

    def _encode_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        return encode_tokens(self.model.encoder, input_ids, mask)

    def _encode_empty(self) -> Any:
        """The states of the empty markup (classifier-free guidance's unconditional input)."""
        return self._encode_tokens(*self.empty_tokens)

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Train to ``total_steps`` (from the resumed position), then save the model."""
        self._start_log()
        loader = self._loader()
        self.denoiser.train()
        progress = tqdm(total=self.total_steps, initial=self.state.global_step, desc="train",
                        disable=not self.main, unit="step")  # fmt: skip
        try:
            with StopFlag() as stop:
                while self.state.global_step < self.total_steps:
                    batches = self._epoch(loader)
                    while self._epoch_goes_on():
                        self._step(batches)
                        progress.update(1)
                        self._after_step(stop, progress)
                    self._maybe_next_epoch()
        finally:
            progress.close()
            self.log.close()
        return self._finish()

    def _epoch(self, loader: torch.utils.data.DataLoader) -> Iterator[Any]:
        """The batches of this epoch from the resumed position on."""
        # the sampler runs in this process: set before each pass, workers or not
        self.sampler.set_epoch(
            self.state.epoch, self.state.batches_in_epoch * self.config.batch_size
        )
        return iter(loader)

    def _epoch_goes_on(self) -> bool:
        state = self.state
        return (
            state.batches_in_epoch < self.batches_per_epoch and state.global_step < self.total_steps
        )

    def _maybe_next_epoch(self) -> None:
        if self.state.batches_in_epoch >= self.batches_per_epoch:
            self.state.epoch += 1
            self.state.batches_in_epoch = 0

    def _step(self, batches: Iterator[Any]) -> None:
        """One optimizer step over up to ``gradient_accumulation_steps`` batches."""
        config, state = self.config, self.state
        started = time.perf_counter()
        group = min(
            config.gradient_accumulation_steps, self.batches_per_epoch - state.batches_in_epoch
        )
        step_seed = derive_seed(config.seed, self.rank, state.global_step)
        generator = torch.Generator().manual_seed(step_seed)
        device_generator = noise_generator(step_seed, self.device)
        if self.dropout is not None:
            self.dropout.reseed(derive_seed(config.seed, self.rank, state.global_step, DROPOUT))
        fraction = state.global_step / self.total_steps
        lr = float(self.lr_scheduler.get_last_lr()[0])
        loss_sum = torch.zeros((), device=self.device)
        m_used = 0
        for micro in range(group):
            loss, inputs = self._micro_step(
                next(batches), generator, device_generator, fraction, group, micro == group - 1
            )
            loss_sum += loss.detach().float()
            m_used = max(m_used, inputs.m)
        self._optimizer_step()
        state.global_step += 1
        state.batches_in_epoch += group
        state.seconds += time.perf_counter() - started
        self.log.pending.append(StepRecord(state.global_step, state.epoch, loss_sum / group, lr,
                                           self.method.probability(fraction), m_used,
                                           state.seconds))  # fmt: skip

    def _micro_step(
        self,
        batch: Any,
        generator: torch.Generator,
        device_generator: torch.Generator | None,
        fraction: float,
        group: int,
        sync: bool,
    ) -> tuple[torch.Tensor, StepInputs]:
        """Forward and backward of one batch; gradients are synchronised on the last of a group."""
        images = batch.images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hidden, mask = self._encode(batch)
        eps_model = BoundDenoiser(self.denoiser, hidden, mask)
        no_sync = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.denoiser)
        with no_sync:
            inputs = self.method.inputs(
                eps_model, self.schedule, images, fraction, generator, device_generator
            )
            weights = self._loss_weights(inputs)
            loss = step_loss(eps_model, inputs, weights)
            self.accelerator.backward(loss / group)
        # what the checkpoint check evaluates again with the weights after the step
        self._last = (inputs, weights, hidden, mask)
        return loss, inputs

    def _encode(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's markup states, under the training's autocast (bf16: faster, as the
        denoiser sees them), padded to a bucket length when compiled."""
        with self.accelerator.autocast():
            if self.cache is not None:
                hidden, mask = self.cache(batch)
            else:
                hidden, mask = encode_tokens(self.model.encoder, batch.input_ids, batch.mask)
            if self.dropout is not None:
                hidden, mask = self.dropout(hidden, mask)
        if self.config.compile:
            hidden, mask = pad_markup(
                hidden, mask, bucket_length(hidden.shape[1], self.markup_limit)
            )
        return hidden, mask

    def _loss_weights(self, inputs: StepInputs) -> torch.Tensor | None:
        """Min-SNR weights per example when asked for (None: the paper's plain MSE)."""
        if self.config.snr_gamma is None:
            return None
        return self.schedule.min_snr_weight(inputs.timesteps, self.config.snr_gamma)

    def _optimizer_step(self) -> None:
        """Clip, step the optimizer, the lr schedule and the EMA."""
        if self.config.train_encoder and self.world_size > 1:
            # the encoder runs outside the DDP wrapper: average its gradients here
            for p in self.model.encoder.parameters():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)

    def _after_step(self, stop: StopFlag, progress: Any) -> None:
        """Read the losses back when due; checkpoint, snapshot and stop when due."""
        config, step = self.config, self.state.global_step
        checkpoint_due = step % config.checkpoint_every == 0
        snapshot_due = bool(config.snapshot_every) and step % config.snapshot_every == 0
        read_back = checkpoint_due or snapshot_due or step % config.log_every == 0
        read_back = read_back or step >= self.total_steps
        if self.world_size == 1:  # one process decides at every step
            signalled, late = stop.signal is not None, self.deadline.passed()
            read_back = read_back or signalled or late
        if not read_back:
            return
        if self.world_size > 1:  # several decide together, at the read-backs
            signalled, late = stop.signal is not None, self.deadline.passed()
        signalled, late = self._read_back(signalled, late, progress)
        if checkpoint_due or signalled or late:
            checkpoint = self._save_checkpoint()
        if snapshot_due:
            self._save_snapshot()
        if signalled:
            raise TrainingInterrupted(step, checkpoint, stop.signal or signal.SIGTERM)
        if late:
            reason = self.deadline.reason()
            logger.warning("%s: saved %s", reason, checkpoint)
            raise TrainingInterrupted(step, checkpoint, signal.SIGTERM, reason)

    def _read_back(self, signalled: bool, late: bool, progress: Any) -> tuple[bool, bool]:
        """Read back the pending losses with the stop flags, summed over the processes (the
        step's one wait for the device), and log them. Returns the stop flags as all processes
        agree on them."""
        started = time.perf_counter()
        pending = self.log.pending
        flags = torch.tensor([float(signalled), float(late)])
        stats = torch.cat([torch.stack([p.loss for p in pending]), flags.to(self.device)])
        values = self.accelerator.reduce(stats, reduction="sum").tolist()
        self.state.seconds += time.perf_counter() - started  # the wait belongs to the last step
        pending[-1].seconds = self.state.seconds
        m = pending[-1].m
        bad = self.log.record([value / self.world_size for value in values[:-2]])
        if bad is not None:
            record, loss = bad
            raise self._diverged(f"loss became {loss} at step {record.step} (lr {record.lr:.3g})")
        progress.set_postfix(loss=f"{self.log.last_loss:.4f}", m=m, refresh=False)
        return values[-2] > 0, values[-1] > 0

    # -- saving ---------------------------------------------------------------------------------
    def _check_loss(self) -> float:
        """The loss of the last batch with the weights as they are now, averaged over processes.

        Taken when a checkpoint is written, so that its weights are judged at once (the next
        step's loss would come one step too late for pruning). Eval mode and no gradient: it
        draws no random numbers and changes nothing.
        """
        inputs, weights, hidden, mask = self._last
        model = BoundDenoiser(self.plain_denoiser, hidden, mask)
        self.plain_denoiser.eval()
        try:
            with torch.no_grad():
                value = step_loss(model, inputs, weights).detach().float().reshape(1)
        finally:
            self.plain_denoiser.train()
        return float(self.accelerator.reduce(value, reduction="mean")[0])

    def _save_checkpoint(self) -> Path:
        """Write the resume point, judged sane or not by the loss with its weights."""
        check_loss = self._check_loss()
        step = self.state.global_step
        if not all_finite(self.params):
            raise self._diverged(f"weights became non-finite by step {step}; not checkpointing")
        history = self.log.history
        record = {
            "config": self.config.fingerprint(),
            "dataset": self.dataset_record,
            "world_size": self.world_size,
            "loss": self.log.last_loss,
            "check_loss": check_loss,
            "running_loss": history.running(step),
            "sane": history.is_sane(check_loss, step),
            **self.state.state_dict(),
        }
        return self.checkpoints.save(step, record)

    def _save_snapshot(self) -> None:
        """The model as it would be saved if training ended now (EMA weights when kept)."""
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        if self.main:
            self.model.save_pretrained(
                self.output_dir / "snapshots" / f"step-{self.state.global_step}"
            )
        if self.ema is not None:
            self.ema.restore(self.params)
        self.accelerator.wait_for_everyone()

    def _finish(self) -> TrainResult:
        """Save the final model (the EMA weights when kept) and end the run."""
        state, model_dir = self.state, self.output_dir / "model"
        if not all_finite(self.params):
            raise TrainingDivergedError(f"weights are non-finite after step {state.global_step}")
        self.accelerator.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(self.params)
        if self.main:
            self.model.save_pretrained(model_dir)
            logger.info("saved model to %s", model_dir)
        self.accelerator.wait_for_everyone()
        logger.info("process %d of %d: finished %d steps, final loss %.5f", self.rank,
                    self.world_size, state.global_step, self.log.last_loss)  # fmt: skip
        self.accelerator.end_training()
        return TrainResult(model_dir, state.global_step, self.log.last_loss, self.world_size)

    # -- the log and its start ------------------------------------------------------------------
    def _start_log(self) -> None:
        """Keep the log rows up to the resumed step, and say what this run will do."""
        resumed = self.resumed.checkpoint
        kept_rows = self.log.kept_rows(self.state.global_step if resumed else None)
        self.accelerator.wait_for_everyone()  # every process has read the log before it changes
        if self.main:
            rewrite_log(self.log.path, kept_rows)
        self.accelerator.wait_for_everyone()
        logger.info(
            "process %d of %d (%s, %d torch threads): %s training, %d examples, %d steps per "
            "epoch, %d steps in all%s",
            self.rank,
            self.world_size,
            self.device,
            torch.get_num_threads(),
            self.config.method,
            len(self.dataset),
            self.steps_per_epoch,
            self.total_steps,
            f", resuming at step {self.state.global_step} from {resumed}" if resumed else "",
        )
        self.deadline.announce()
        self.log.open()

    def _loader(self) -> torch.utils.data.DataLoader:
        """The data loader over this process's share; markup tokenised in its workers."""
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            collate_fn=Collate(self.model.encoder.tokenize),
            num_workers=workers,
            worker_init_fn=seed_worker,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,  # one set of workers for all epochs
        )

    # -- divergence -----------------------------------------------------------------------------
    def _diverged(self, what: str) -> TrainingDivergedError:
        """The error for a divergence; sets aside the checkpoints after the last sane one."""
        last, moved = self.checkpoints.set_aside_after_divergence()
        names = ", ".join(t.name for t in moved)
        if last is not None:
            record = read_checkpoint_record(last)
            found = (
                f"The last sane checkpoint is {last} (the loss with its weights "
                f"{record['check_loss']:.4g}, the running loss {record['running_loss']:.4g})"
            )
            if moved:
                found += f"; the {len(moved)} later one(s) were set aside as {names}"
        elif moved:
            found = (
                "No checkpoint of this run is sane: the loss with the weights of each was "
                f"non-finite or more than {SANE_LOSS_FACTOR:g} times the running loss; they "
                f"were set aside as {names}"
            )
        else:
            found = "No checkpoint of this run is sane: none was saved before the divergence"
        suggested = self.config.learning_rate / 10
        return TrainingDivergedError(
            f"{what}. {found}. To retry with a lower learning rate, run the same command with "
            f"--learning-rate {suggested:g} --resume auto: this run's checkpoints are then moved "
            f"to {self.output_dir / STALE_PREFIX}<date>-<time> and training starts from scratch "
            "(in the workflow: lower this dataset's train.learning_rate in the config file and "
            "run snakemake again, which does the same)",
            learning_rate=self.config.learning_rate,
            suggested_learning_rate=suggested,
        )
