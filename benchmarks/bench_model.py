"""Speed of the denoiser: seconds per training step and images/s, and sampling images/s.

Prints one line per measurement. Training steps are the trainer's (frozen encoder, scheduled-
sampling step with m = 0 (baseline) or m = 1 (one extra no-grad rollout forward), backward,
gradient clipping, AdamW). Sampling runs each sampler for --sample-steps denoising steps and also
projects the images/s at the sampler's default number of steps (1000 for ddpm).

    python benchmarks/bench_model.py --preset small --batch-size 4 --height 64 --width 64
    python benchmarks/bench_model.py --preset paper --batch-size 16 --height 64 --width 320 \
        --steps 50 --mixed-precision bf16 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator

import torch

from markup2im.diffusion import NoiseSchedule
from markup2im.pipeline import Markup2ImModel
from markup2im.sampling import DEFAULT_STEPS, SAMPLERS, example_generators, sample
from markup2im.scheduled_sampling import ScheduledSamplingConfig, prepare_step, step_loss

DTYPES = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--mixed-precision", choices=tuple(DTYPES), default="no")
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", default="offline")
    p.add_argument("--markup-length", type=int, default=80, help="characters per markup")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--sample-steps", type=int, default=10, help="denoising steps timed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    dtype = DTYPES[mixed_precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def timed(device: torch.device, fn: Callable[[], None], repeats: int, warmup: int) -> float:
    """Mean seconds of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(0)
    model = Markup2ImModel.from_config(
        model_preset=args.preset,
        encoder=args.encoder,
        height=args.height,
        width=args.width,
        channels=args.channels,
    ).to(device)
    n_params = sum(p.numel() for p in model.trainable_parameters())
    shape = (args.batch_size, args.channels, args.height, args.width)
    markups = [(f"x^{{{i}}}+" * args.markup_length)[: args.markup_length] for i in range(shape[0])]
    images = torch.rand(shape, device=device) * 2 - 1
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    params = list(model.trainable_parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=args.mixed_precision == "fp16")
    header = (
        f"preset={args.preset} params={n_params / 1e6:.2f}M image={args.width}x{args.height}"
        f"x{args.channels} batch={args.batch_size} mixed_precision={args.mixed_precision} "
        f"device={device} threads={torch.get_num_threads()}"
    )
    print(header, flush=True)
    results: dict = {"config": vars(args), "params": n_params, "device": str(device)}

    for label, config in (
        ("baseline", ScheduledSamplingConfig.baseline()),
        ("scheduled_sampling_m1", ScheduledSamplingConfig(start=(1.0,), end=(1.0,))),
    ):
        model.denoiser.train()
        generator = torch.Generator().manual_seed(0)

        def step(config: ScheduledSamplingConfig = config, generator=generator) -> None:
            hidden, mask = model.encode(markups)

            def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return model(x, t, hidden, mask)

            with autocast(device, args.mixed_precision):
                inputs = prepare_step(eps_model, schedule, config, images, 0.5, generator)
                loss = step_loss(eps_model, inputs)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        memory: dict = {}
        with peak_memory(device, memory):
            seconds = timed(device, step, args.steps, args.warmup)
        entry = {"s_per_step": seconds, "images_per_s": args.batch_size / seconds, **memory}
        results[f"train_{label}"] = entry
        extra = f" peak_gpu_mem={memory['peak_gib']:.2f}GiB" if memory else ""
        print(
            f"train {label}: {seconds:.4f} s/step, {args.batch_size / seconds:.2f} images/s{extra}",
            flush=True,
        )

    optimizer.zero_grad(set_to_none=True)
    model.eval()
    for sampler in args.samplers.split(","):
        memory = {}

        def run(sampler: str = sampler) -> None:
            with autocast(device, args.mixed_precision):
                sample(
                    model,
                    markups,
                    example_generators(0, range(args.batch_size)),
                    sampler=sampler,
                    num_inference_steps=args.sample_steps,
                )

        with peak_memory(device, memory):
            seconds = timed(device, run, 1, 1)
        per_step = seconds / args.sample_steps
        default_steps = DEFAULT_STEPS[sampler] or schedule.num_train_timesteps
        projected = args.batch_size / (per_step * default_steps)
        results[f"sample_{sampler}"] = {
            "steps": args.sample_steps,
            "seconds": seconds,
            "images_per_s": args.batch_size / seconds,
            "default_steps": default_steps,
            "images_per_s_at_default_steps": projected,
            **memory,
        }
        extra = f" peak_gpu_mem={memory['peak_gib']:.2f}GiB" if memory else ""
        print(
            f"sample {sampler}: {args.sample_steps} steps in {seconds:.3f} s = "
            f"{args.batch_size / seconds:.3f} images/s; at {default_steps} steps "
            f"{projected:.4f} images/s{extra}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
