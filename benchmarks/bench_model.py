"""Speed of the denoiser: training step rate, FLOPs and model FLOP utilisation, sampling images/s.

Training rows: one optimizer step of the trainer's kind (encode the markups with the frozen encoder,
draw t and m, the scheduled-sampling rollout, the loss, backward, gradient clipping, AdamW; fused
AdamW on CUDA) for each method (``baseline``: m = 0; ``ss``: scheduled sampling with m = 1, one
extra no-grad forward pass per step) and each precision:

* ``fp32``: plain fp32, TF32 off (the trainer's path before issue 15);
* ``tf32``: fp32 weights, TF32 matmuls and convolutions (CUDA only; the same as fp32 on CPU);
* ``bf16``: bf16 autocast (TF32 for what stays fp32);
* a ``-cl`` suffix (``bf16-cl``): the same with channels-last (NHWC) weights and images.

FLOPs per step are counted once per row with ``torch.utils.flop_counter.FlopCounterMode``
(forward + backward + the rollout's forward; attention through the math kernel so that it is
counted on every device). MFU = FLOPs per step / seconds per step / the device's peak: the bf16
dense tensor-core peak of the GPU (H100/H200 989 TFLOP/s, A100 312 TFLOP/s) or ``--peak-tflops``,
for every precision (so fp32 rows show how far they are from what bf16 could do).

Sampling rows: images/s of each sampler run (default the paper's 1000-step DDPM and
DPM-Solver++ with 20 steps) and their ratio to DDPM-1000. With ``--max-sample-steps`` a run is
timed for that many steps and projected to its full count (the per-step cost is constant).

    python benchmarks/bench_model.py --preset small --batch-size 4 --height 64 --width 64
    python benchmarks/bench_model.py --preset paper --encoder stand-in --batch-size 16 \
        --height 64 --width 320 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from collections.abc import Callable

import torch

from markup2im.cuda import configure_cuda
from markup2im.diffusion import NoiseSchedule
from markup2im.model import DEFAULT_SCHEDULER_CONFIG, Markup2ImModel
from markup2im.models.denoiser import MarkupUNet
from markup2im.models.encoder import MarkupEncoder
from markup2im.presets import get_model_preset
from markup2im.sampling import example_generators, sample, use_channels_last
from markup2im.scheduled_sampling import ScheduledSamplingConfig, prepare_step, step_loss

PRECISIONS = ("fp32", "tf32", "bf16")
CHANNELS_LAST = "-cl"  # suffix of a precision: NHWC weights and activations
METHODS = {
    "baseline": ScheduledSamplingConfig.baseline(),
    "ss": ScheduledSamplingConfig(start=(1.0,), end=(1.0,)),  # m = 1 on every step
}
# bf16 dense tensor-core peaks (FLOP/s), matched against torch.cuda.get_device_name()
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
STAND_IN = "stand-in"  # a random encoder with gpt-neo-125M's shape (768 wide), no download


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (small, small-p2, tiny, paper)")
    p.add_argument("--attention-from", type=int, default=None, metavar="N",
                   help="cross-attention from 1/N of the image side (default: the preset's)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    p.add_argument(
        "--precisions",
        default=None,
        help="comma-separated, of fp32, tf32, bf16, each optionally with -cl (channels-last); "
        "default: fp32,tf32,bf16 on CUDA, fp32,bf16 on CPU",
    )
    p.add_argument(
        "--mixed-precision",
        choices=("no", "bf16"),
        default=None,
        help="older spelling: no = --precisions fp32, bf16 = --precisions bf16",
    )
    p.add_argument("--methods", default="baseline,ss", help="comma-separated: baseline, ss")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--encoder",
        default="offline",
        help=f"offline, {STAND_IN!r} (random, gpt-neo-125M-shaped: the paper's 768-wide states), "
        "or a local encoder directory",
    )
    p.add_argument("--markup-length", type=int, default=80, help="characters per markup")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and activations")
    p.add_argument(
        "--sample-runs",
        default="ddpm:1000,ddim:50,dpmsolver++:20",
        help="SAMPLER:STEPS,...; the first ddpm run is the reference of the ratio column",
    )
    p.add_argument(
        "--sample-precision", choices=("fp32", "tf32", "bf16"), default=None,
        help="precision of the sampling rows (default: bf16 on CUDA, fp32 on CPU)",
    )  # fmt: skip
    p.add_argument(
        "--max-sample-steps",
        type=int,
        default=None,
        help="time at most this many steps of a sampling run and project (default: all on "
        "CUDA, 20 on CPU)",
    )
    p.add_argument("--sample-batch-size", type=int, default=None, help="default: --batch-size")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU, TFLOP/s")
    p.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Apply the precision's TF32 setting and return its autocast context."""
    precision = precision.removesuffix(CHANNELS_LAST)
    if device.type == "cuda":
        configure_cuda(tf32=precision != "fp32")
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s for MFU, where it came from)."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_FLOPS.items():
            if key in name:
                return value, f"{key} bf16 dense"
        return None, f"unknown GPU {name!r}: give --peak-tflops"
    return None, "CPU: give --peak-tflops"


def build_model(args: argparse.Namespace) -> Markup2ImModel:
    """The model to time; ``stand-in`` builds the paper-width encoder without a download."""
    if args.encoder != STAND_IN:
        return Markup2ImModel.from_config(
            model_preset=args.preset,
            encoder=args.encoder,
            height=args.height,
            width=args.width,
            channels=args.channels,
            attention_from=args.attention_from,
        )
    preset = get_model_preset(args.preset).with_attention_from(args.attention_from)
    encoder = MarkupEncoder.build_stand_in(preset.max_markup_length)
    denoiser = MarkupUNet.from_preset(
        preset,
        height=args.height,
        width=args.width,
        channels=args.channels,
        cross_attention_dim=encoder.hidden_size,
        max_text_positions=preset.max_markup_length + 1,
    )
    return Markup2ImModel(
        denoiser,
        encoder,
        height=args.height,
        width=args.width,
        channels=args.channels,
        model_preset=args.preset,
        max_markup_length=preset.max_markup_length,
        scheduler_config=dict(DEFAULT_SCHEDULER_CONFIG),
    )


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of one call of ``fn``, attention counted through the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return int(counter.get_total_flops())


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


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def train_rows(args, model, device, precisions, peak) -> list[dict]:
    shape = (args.batch_size, args.channels, args.height, args.width)
    markups = [(f"x^{{{i}}}+" * args.markup_length)[: args.markup_length] for i in range(shape[0])]
    plain_images = torch.rand(shape, device=device) * 2 - 1
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    rows = []
    for method in args.methods.split(","):
        config = METHODS[method]
        for precision in precisions:
            nhwc = args.channels_last or precision.endswith(CHANNELS_LAST)
            memory_format = torch.channels_last if nhwc else torch.contiguous_format
            model.denoiser.to(memory_format=memory_format)
            images = plain_images.contiguous(memory_format=memory_format)
            optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **fused)
            model.denoiser.train()
            generator = torch.Generator().manual_seed(0)
            used_m: list[int] = []

            def step(
                config=config,
                generator=generator,
                optimizer=optimizer,
                precision=precision,
                used_m=used_m,
                images=images,
            ) -> None:
                with set_precision(device, precision):
                    hidden, mask = model.encode(markups)

                    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                        return model(x, t, hidden, mask)

                    inputs = prepare_step(eps_model, schedule, config, images, 0.5, generator)
                    loss = step_loss(eps_model, inputs)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                used_m.append(inputs.m)

            flops = None if args.no_flops else count_flops(step)
            reset_memory(device)
            used_m.clear()
            seconds = timed(device, step, args.steps, args.warmup)
            row = {
                "method": method,
                "precision": precision,
                "s_per_step": seconds,
                "steps_per_s": 1 / seconds,
                "images_per_s": args.batch_size / seconds,
                "flops_per_step": flops,
                "tflops_per_s": flops / seconds / 1e12 if flops else None,
                "mfu": flops / seconds / peak if flops and peak else None,
                "peak_mem_gib": peak_memory_gib(device),
                "mean_m": sum(used_m) / len(used_m),
            }
            rows.append(row)
            del optimizer
    model.zero_grad(set_to_none=True)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.denoiser.to(memory_format=memory_format)
    return rows


def sample_rows(args, model, device, precision) -> list[dict]:
    batch = args.sample_batch_size or args.batch_size
    markups = [(f"x^{{{i}}}+" * args.markup_length)[: args.markup_length] for i in range(batch)]
    cap = args.max_sample_steps
    if cap is None and device.type != "cuda":
        cap = 20
    model.eval()
    rows = []
    for run in args.sample_runs.split(","):
        sampler, steps = run.rsplit(":", 1)
        steps = int(steps)
        timed_steps = max(min(steps, cap), 2) if cap else steps

        def go(sampler=sampler, n=timed_steps) -> None:
            with set_precision(device, precision if precision != "bf16" else "tf32"):
                sample(
                    model,
                    markups,
                    example_generators(0, range(batch)),
                    sampler=sampler,
                    num_inference_steps=n,
                    precision="bf16" if precision == "bf16" else "fp32",
                    channels_last=args.channels_last,
                )

        go(sampler, 2)  # warm-up: kernels chosen, memory allocated
        reset_memory(device)
        seconds = timed(device, go, 1, 0)
        if timed_steps < steps:
            # fixed cost (encoding, setup) from a 1-step run; the rest scales with the steps
            fixed_and_one = timed(device, lambda sampler=sampler: go(sampler, 1), 1, 0)
            per_step = max(seconds - fixed_and_one, 0.0) / (timed_steps - 1)
            seconds = fixed_and_one + per_step * (steps - 1)
        rows.append({
            "sampler": sampler, "steps": steps, "timed_steps": timed_steps, "precision": precision,
            "seconds_per_batch": seconds, "images_per_s": batch / seconds,
            "peak_mem_gib": peak_memory_gib(device),
        })  # fmt: skip
    reference = next((r for r in rows if r["sampler"] == "ddpm"), None)
    for r in rows:
        r["vs_ddpm"] = r["images_per_s"] / reference["images_per_s"] if reference else None
    return rows


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_tables(header: str, train: list[dict], samples: list[dict], peak_note: str) -> str:
    lines = [header, "", f"training (MFU against {peak_note})"]
    lines.append(
        f"{'method':<9} {'precision':<9} {'s/step':>8} {'steps/s':>8} {'img/s':>8} "
        f"{'GFLOP/step':>11} {'TFLOP/s':>8} {'MFU':>6} {'peak mem GiB':>12} {'m':>4}"
    )
    for r in train:
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        lines.append(
            f"{r['method']:<9} {r['precision']:<9} {r['s_per_step']:>8.4f} "
            f"{r['steps_per_s']:>8.2f} {r['images_per_s']:>8.2f} "
            f"{_f(r['flops_per_step'] and r['flops_per_step'] / 1e9, '.1f'):>11} "
            f"{_f(r['tflops_per_s'], '.3f'):>8} {_f(mfu, '.1f') + ('%' if mfu else ''):>6} "
            f"{r['peak_mem_gib']:>12.2f} {r['mean_m']:>4.2f}"
        )
    for method in dict.fromkeys(r["method"] for r in train):
        rate = {r["precision"]: r["steps_per_s"] for r in train if r["method"] == method}
        if "fp32" in rate:
            ratios = [f"{p}/fp32 {rate[p] / rate['fp32']:.2f}x" for p in rate if p != "fp32"]
            if ratios:
                lines.append(f"step rate {method}: " + ", ".join(ratios))
    if samples:
        lines += ["", "sampling"]
        lines.append(
            f"{'sampler':<12} {'steps':>5} {'timed':>5} {'precision':<9} {'s/batch':>9} "
            f"{'img/s':>9} {'vs ddpm':>8} {'peak mem GiB':>12}"
        )
        for r in samples:
            lines.append(
                f"{r['sampler']:<12} {r['steps']:>5} {r['timed_steps']:>5} {r['precision']:<9} "
                f"{r['seconds_per_batch']:>9.3f} {r['images_per_s']:>9.4f} "
                f"{_f(r['vs_ddpm'], '.1f') + 'x':>8} {r['peak_mem_gib']:>12.2f}"
            )
    return "\n".join(lines)


def summary_table(results: dict, tests: str) -> str:
    """One markdown table of a run (``results`` as written by ``--json``) and the test summary,
    against issue 15's goals: bf16 >= 2.5x the fp32 step rate and >= 35% MFU with scheduled
    sampling, DPM-Solver++-20 >= 40x the images/s of DDPM-1000."""
    config = results["config"]
    lines = [
        f"{results['device_name']}: preset {config['preset']} "
        f"{config['width']}x{config['height']}x{config['channels']}, batch {config['batch_size']}, "
        f"encoder width {results.get('encoder_width', '?')}",
        "",
        "| what | figure | goal |",
        "|---|---|---|",
        f"| `pytest -m gpu` | {tests} | all pass |",
    ]
    train = results["train"]
    for method in dict.fromkeys(r["method"] for r in train):
        rows = {r["precision"]: r for r in train if r["method"] == method}
        rates = " / ".join(f"{p} {r['steps_per_s']:.2f}" for p, r in rows.items())
        lines.append(f"| training steps/s, {method} | {rates} | |")
        goal = ">= 2.5x" if method == "ss" else ""
        if "fp32" in rows:
            for p, r in rows.items():
                if p.startswith("bf16"):
                    ratio = r["steps_per_s"] / rows["fp32"]["steps_per_s"]
                    lines.append(f"| {p} / fp32 step rate, {method} | {ratio:.2f}x | {goal} |")
        for p, r in rows.items():
            if r["mfu"] is not None and p.startswith("bf16"):
                goal = ">= 35%" if method == "ss" else ""
                lines.append(
                    f"| MFU {p}, {method} | {100 * r['mfu']:.1f}% "
                    f"({r['tflops_per_s']:.1f} TFLOP/s, {r['flops_per_step'] / 1e12:.2f} "
                    f"TFLOP/step) | {goal} |"
                )
        memory = " / ".join(f"{p} {r['peak_mem_gib']:.1f}" for p, r in rows.items())
        lines.append(f"| peak memory GiB, {method} | {memory} | |")
    samples = {(r["sampler"], r["steps"]): r for r in results["sample"]}
    ddpm, dpm = samples.get(("ddpm", 1000)), samples.get(("dpmsolver++", 20))
    if ddpm and dpm:
        ratio = dpm["images_per_s"] / ddpm["images_per_s"]
        projected = " (projected)" if ddpm["timed_steps"] < ddpm["steps"] else ""
        lines.append(
            f"| images/s DDPM-1000{projected} / DPM-Solver++-20, {dpm['precision']} | "
            f"{ddpm['images_per_s']:.3f} / {dpm['images_per_s']:.2f} = {ratio:.1f}x | >= 40x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.precisions:
        precisions = args.precisions.split(",")
    elif args.mixed_precision:
        precisions = ["fp32" if args.mixed_precision == "no" else "bf16"]
    else:
        precisions = list(PRECISIONS) if device.type == "cuda" else ["fp32", "bf16"]
    unknown = [p for p in precisions if p.removesuffix(CHANNELS_LAST) not in PRECISIONS]
    if unknown:
        raise SystemExit(f"unknown precisions {unknown}; known: {', '.join(PRECISIONS)}")
    sample_precision = args.sample_precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    model = build_model(args).to(device)
    if args.channels_last:
        use_channels_last(model)
    n_params = sum(p.numel() for p in model.denoiser.parameters())
    peak, peak_note = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (
        f"preset={args.preset} denoiser={n_params:,} params encoder={model.encoder.name} "
        f"(width {model.encoder.hidden_size}) image={args.width}x{args.height}x{args.channels} "
        f"batch={args.batch_size} device={device} ({name}) threads={torch.get_num_threads()} "
        f"channels_last={args.channels_last} torch={torch.__version__}"
    )
    print(header, flush=True)
    train = train_rows(args, model, device, precisions, peak)
    samples = sample_rows(args, model, device, sample_precision) if args.sample_runs else []
    print(format_tables("", train, samples, peak_note).lstrip("\n"), flush=True)
    results = {
        "config": vars(args),
        "header": header,
        "params": n_params,
        "device": str(device),
        "device_name": name,
        "encoder_width": model.encoder.hidden_size,
        "peak_flops": peak,
        "train": train,
        "sample": samples,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
