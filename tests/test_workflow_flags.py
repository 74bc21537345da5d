"""markup2im.workflow.flags: config settings as command-line flags."""

from __future__ import annotations

import pytest

from markup2im.errors import ConfigError
from markup2im.workflow.flags import (
    accelerate_flags,
    cli_flags,
    eps_scale_flag,
    evaluate_flags,
    sample_flags,
    threads_per_process,
    train_flags,
    train_runtime_settings,
)

MODEL = {"preset": "tiny", "max_markup_length": None, "prediction_type": "epsilon",
         "train_encoder": False, "attention_from": None}  # fmt: skip
SS = {"max_m": 1, "start": [0.0], "end": [0.8], "min_t": 0, "ip_gamma": None}
IP = {"gamma": 0.1}
GENERATE = {"split": "test", "limit": None, "seed": 0, "precision": "fp32", "batch_size": 8}
PLAIN_SAMPLER = {"sampler": "ddim", "steps": 10, "frames_every": None, "eps_scale": None,
                 "guidance_scale": 1}  # fmt: skip


def test_cli_flags() -> None:
    assert cli_flags({"batch_size": 8, "ema": True, "limit": None, "x": False}) == (
        "--batch-size 8 --ema"
    )
    assert cli_flags({"ss_end": [0.5, 0.8], "name": "a b"}) == "--ss-end 0.5,0.8 --name 'a b'"


def test_train_flags_leave_out_what_does_not_change_the_model() -> None:
    train = {"epochs": 3, "checkpoint_every": 5, "num_workers": 2, "compile": True}
    flags = train_flags("baseline", MODEL, train, "offline", SS, IP)
    assert flags == (
        "--method baseline --model-preset tiny --encoder offline --prediction-type epsilon"
        " --compile --epochs 3 --resume auto"  # train keys sorted: their order means nothing
    )
    reordered = dict(reversed(list(train.items())))
    assert train_flags("baseline", MODEL, reordered, "offline", SS, IP) == flags
    assert train_runtime_settings(train) == {"checkpoint_every": 5, "num_workers": 2}


def test_scheduled_sampling_gets_its_weights_and_no_guard_at_zero() -> None:
    flags = train_flags("scheduled_sampling", MODEL, {}, "offline", SS, IP)
    assert flags.endswith("--resume auto --ss-max-m 1 --ss-start 0.0 --ss-end 0.8")
    guarded = train_flags("scheduled_sampling", MODEL, {}, "offline", {**SS, "min_t": 50}, IP)
    assert guarded.endswith("--ss-min-t 50")


def test_input_perturbation_gets_its_gamma_and_scheduled_sampling_only_when_asked() -> None:
    flags = train_flags("input_perturbation", MODEL, {}, "offline", SS, {"gamma": 0.05})
    assert flags.endswith("--resume auto --ip-gamma 0.05")
    assert "--ss-" not in flags
    # the top-level gamma belongs to input_perturbation alone
    assert "--ip-gamma" not in train_flags("baseline", MODEL, {}, "offline", SS, IP)
    assert "--ip-gamma" not in train_flags("scheduled_sampling", MODEL, {}, "offline", SS, IP)
    combined = {**SS, "ip_gamma": 0.1}
    flags = train_flags("scheduled_sampling", MODEL, {}, "offline", combined, IP)
    assert flags.endswith("--ss-end 0.8 --ip-gamma 0.1")
    # 0 trains as none does, so it adds no flag (and reruns nothing)
    none = train_flags("scheduled_sampling", MODEL, {}, "offline", {**SS, "ip_gamma": 0}, IP)
    assert none == train_flags("scheduled_sampling", MODEL, {}, "offline", SS, IP)


def test_sample_and_evaluate_flags() -> None:
    generate = GENERATE
    sampler = PLAIN_SAMPLER
    assert sample_flags(generate, sampler) == (
        "--split test --sampler ddim --num-inference-steps 10 --seed 0"
    )
    assert "--precision bf16" in sample_flags({**generate, "precision": "bf16"}, sampler)
    assert evaluate_flags({"clip_model": None, "clip_batch_size": 32}) == ""
    assert evaluate_flags({"clip_model": "c", "clip_batch_size": 32}) == (
        "--clip-model c --clip-batch-size 32"
    )


def test_accelerate_gets_one_process_per_gpu_with_its_share_of_threads() -> None:
    music = accelerate_flags("no", gpus=4, threads=16)
    assert "--num_cpu_threads_per_process 4" in music
    assert "--num_processes 4 --multi_gpu --main_process_port 0" in music
    cpu = accelerate_flags("no", gpus=0, threads=3)
    assert cpu.endswith("--cpu --num_processes 1") and "per_process 3" in cpu
    assert "--num_cpu_threads_per_process 1" in accelerate_flags("bf16", gpus=4, threads=2)
    assert threads_per_process(0, 3) == 3 and threads_per_process(4, 2) == 1


def test_eps_scale_is_a_generate_flag_unless_it_is_the_plain_sampler() -> None:
    generate = GENERATE
    sampler = PLAIN_SAMPLER
    plain = sample_flags(generate, sampler)
    assert "--eps-scale" not in plain
    # 1 and {b: 1} are the plain sampler: the same flags, so nothing reruns
    for identity in (1, 1.0, {"b": 1}, {"k": 0, "b": 1.0}):
        assert sample_flags(generate, {**sampler, "eps_scale": identity}) == plain
    assert sample_flags(generate, {**sampler, "eps_scale": 1.01}) == plain + " --eps-scale 1.01"
    assert eps_scale_flag({"k": 1.0e-5, "b": 1.002}) == "k=1e-05,b=1.002"
    assert eps_scale_flag({"k": 1.0e-5}) == "k=1e-05,b=1.0"
    with pytest.raises(ConfigError, match="eps_scale"):
        eps_scale_flag(0)


def test_guidance_scale_is_a_generate_flag_unless_it_is_the_plain_sampler() -> None:
    generate = GENERATE
    sampler = PLAIN_SAMPLER
    plain = sample_flags(generate, sampler)
    assert sample_flags(generate, {**sampler, "guidance_scale": 1.0}) == plain
    assert sample_flags(generate, {**sampler, "guidance_scale": 3}) == plain + " --guidance-scale 3"
    both = sample_flags(generate, {**sampler, "guidance_scale": 0, "eps_scale": 1.01})
    assert both == plain + " --eps-scale 1.01 --guidance-scale 0"


def test_attention_levels_and_markup_dropout_are_train_flags_only_when_set() -> None:
    plain = train_flags("baseline", MODEL, {}, "offline", SS, IP)
    assert "--attention-from" not in plain and "--markup-dropout" not in plain
    flags = train_flags("baseline", {**MODEL, "attention_from": 4}, {"markup_dropout": 0.1},
                        "offline", SS, IP)  # fmt: skip
    assert "--attention-from 4" in flags and "--markup-dropout 0.1" in flags
    assert "--markup-dropout" not in train_flags(
        "baseline", MODEL, {"markup_dropout": None}, "offline", SS, IP
    )
