"""The pieces of one optimizer step: markup states (cached, padded), optimizer and lr schedule.

What a step feeds the model and what it must output is the training method's
(:mod:`markup2im.training.methods`); the loss is :func:`markup2im.scheduled_sampling.step_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup

from markup2im.training.data import Batch

SMALLEST_BUCKET = 32  # the shortest padded markup length under --compile


def all_finite(parameters: Iterator[torch.nn.Parameter] | Sequence[torch.nn.Parameter]) -> bool:
    """Whether every weight is finite, read back from the device once (not once per tensor)."""
    checks = [torch.isfinite(p).all() for p in parameters]
    return bool(torch.stack(checks).all()) if checks else True


def unwrap_sample(output: Any) -> torch.Tensor:
    """The noise prediction of a denoiser call (a tensor, or an output object with ``sample``)."""
    return output.sample if hasattr(output, "sample") else output


def encode_tokens(
    encoder: Any, input_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``MarkupEncoder.forward`` computes after tokenising: hidden states zeroed at padding
    and the mask, on the encoder's device (the tokens come from the data-loader workers)."""
    device = encoder.device
    input_ids = input_ids.to(device, non_blocking=True)
    mask = mask.to(device, non_blocking=True)
    with torch.set_grad_enabled(encoder.trainable and torch.is_grad_enabled()):
        hidden = encoder.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype), mask


class EncoderCache:
    """Each example's frozen-encoder output, computed the first time the example is seen.

    The frozen encoder gives an example the same states every epoch, so later epochs skip it.
    Each example is kept at its own length (L_i x D on the device: about 55k x 100 x 768 x 4
    bytes = 17 GB for im2latex in fp32, so this suits small datasets) and a batch is padded with
    zeros, as the encoder pads. Examples are encoded in other batch company than without the
    cache, so the states equal the uncached ones to float rounding, not bit for bit.
    """

    def __init__(self, encode: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]):
        self.encode = encode
        self.states: dict[int, torch.Tensor] = {}
        self.encoded = 0  # examples run through the encoder so far

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = batch.mask.sum(1).tolist()  # the mask from the loader is on the CPU: no sync
        missing = [row for row, index in enumerate(batch.indices) if index not in self.states]
        if missing:
            width = max(lengths[row] for row in missing)
            rows = torch.tensor(missing)
            with torch.no_grad():
                hidden, _ = self.encode(batch.input_ids[rows, :width], batch.mask[rows, :width])
            for k, row in enumerate(missing):
                self.states[batch.indices[row]] = hidden[k, : lengths[row]].clone()
            self.encoded += len(missing)
        states = [self.states[index] for index in batch.indices]
        hidden = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        mask = batch.mask[:, : hidden.shape[1]].to(hidden.device, non_blocking=True)
        return hidden, mask


def markup_buckets(limit: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """The lengths markup states are padded to under ``compile``: powers of two from
    ``smallest``, then ``limit`` (the longest encoding: max markup length + end token); a power
    of two within 25% of the limit gives way to it. A compiled denoiser then meets only these
    few shapes (paper, limit 1025: 32, 64, 128, 256, 512, 1025)."""
    sizes = []
    size = smallest
    while size < limit:
        if size * 1.25 < limit:
            sizes.append(size)
        size *= 2
    return (*sizes, limit)


def bucket_length(length: int, limit: int) -> int:
    """The padded length of ``length`` markup states (the smallest bucket that holds them)."""
    if length > limit:
        raise ValueError(f"markup of {length} states is longer than the limit {limit}")
    return next(size for size in markup_buckets(limit) if size >= length)


def pad_markup(
    hidden: torch.Tensor, mask: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, L, D) states with zeros and the (B, L) mask with False to ``length``.

    The padded positions are masked out of the cross-attention, so the denoiser's output
    changes only by float rounding.
    """
    extra = length - hidden.shape[1]
    if extra <= 0:
        return hidden, mask
    return (
        torch.nn.functional.pad(hidden, (0, 0, 0, extra)),
        torch.nn.functional.pad(mask, (0, extra), value=False),
    )


def adamw_options(params: Sequence[torch.nn.Parameter]) -> dict[str, Any]:
    """``fused=True`` (one kernel for all parameters) when every parameter is on a GPU; nothing
    otherwise, which keeps the CPU optimizer as it was."""
    return {"fused": True} if params and all(p.is_cuda for p in params) else {}


def noise_generator(seed: int, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` for the step noise on CUDA; None on the CPU (the noise then
    comes from the step's CPU generator, which keeps CPU runs as they always were)."""
    if device.type != "cuda":
        return None
    return torch.Generator(device=device).manual_seed(seed)


def lr_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, processes: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine to 0 at ``total_steps``.

    ``processes`` N > 1 reproduces the original on N processes: its scheduler, prepared by
    accelerate, advanced N times per optimizer step over a schedule of N x total steps, so
    warm-up ended after warmup_steps / N optimizer steps (music on 4 GPUs: 125, not 500) and
    the cosine still reached 0 at the end.
    """
    if processes == 1:
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    factor = PerProcessWarmup(warmup_steps, total_steps * processes, processes)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class PerProcessWarmup:
    """diffusers' cosine-with-warm-up factor at step x N (the original's schedule on N
    processes, see :func:`lr_schedule`)."""

    def __init__(self, warmup_steps: int, total: int, processes: int) -> None:
        self.warmup_steps, self.total, self.processes = warmup_steps, total, processes

    def __call__(self, step: int) -> float:
        count = step * self.processes
        if count < self.warmup_steps:
            return float(count) / float(max(1, self.warmup_steps))
        progress = float(count - self.warmup_steps) / float(max(1, self.total - self.warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


class MarkupDropout:
    """Classifier-free guidance's training half (:mod:`markup2im.guidance`): each example's
    markup states become the empty markup's with probability ``p``.

    The draws come from a generator of their own, reseeded every step (:meth:`reseed`), so the
    training method's randomness (t, m, the noise) is the same with and without dropout.
    ``encode_empty`` encodes the empty markup anew at each use: a trained encoder changes it.
    """

    def __init__(
        self, p: float, encode_empty: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        self.p, self.encode_empty = p, encode_empty
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(
        self, hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's states (B, L, D) and mask (B, L) with the dropped rows replaced (both
        padded to the longer of the batch and the empty markup)."""
        drop = torch.rand(hidden.shape[0], generator=self.generator) < self.p
        if not bool(drop.any()):
            return hidden, mask
        null_hidden, null_mask = self.encode_empty()
        length = max(hidden.shape[1], null_hidden.shape[1])
        hidden, mask = pad_markup(hidden, mask, length)
        null_hidden, null_mask = pad_markup(null_hidden, null_mask, length)
        rows = drop.to(hidden.device)
        hidden = torch.where(rows[:, None, None], null_hidden.to(hidden.dtype), hidden)
        return hidden, torch.where(rows[:, None], null_mask.to(mask.device), mask)


class BoundDenoiser:
    """The denoiser with one batch's markup states bound: ``(x_t, t) -> output``, the form a
    training method calls (:data:`markup2im.scheduled_sampling.EpsModel`)."""

    def __init__(self, denoiser: Any, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        self.denoiser, self.hidden, self.mask = denoiser, hidden, mask

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unwrap_sample(self.denoiser(x, t, self.hidden, self.mask))
