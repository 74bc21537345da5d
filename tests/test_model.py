"""Tests for markup2im.model: the whole model, its directory, and batch invariance."""

from __future__ import annotations

import json

import pytest
import torch

from markup2im.errors import ConfigError, ModelError
from markup2im.model import Markup2ImModel
from markup2im.models.attention import PositionalTransformerBlock

MARKUPS = [
    r"\alpha",
    r"\int_0^1 f(x)\,dx = \frac{1}{2}",
    "<table><tr><td>a</td><td>b</td></tr></table>",
    "x",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> Markup2ImModel:
    torch.manual_seed(0)
    return Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=64, width=64, channels=1
    ).eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("models") / "model"
    model.save_pretrained(directory)
    return directory


def _inputs(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 64, 64, generator=g), torch.randint(0, 1000, (n,), generator=g)


def test_from_config_shapes_and_defaults(model):
    assert (model.height, model.width, model.channels) == (64, 64, 1)
    assert model.max_markup_length == 256  # the tiny preset's default
    blocks = [m for m in model.denoiser.modules() if isinstance(m, PositionalTransformerBlock)]
    assert {b.text_position_embedding.num_embeddings for b in blocks} == {257}
    assert model.encoder.hidden_size == model.denoiser.config.cross_attention_dim == 64
    sched = model.noise_scheduler()
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.beta_schedule == "linear" and sched.config.prediction_type == "epsilon"
    assert float(sched.betas[0]) == pytest.approx(1e-4, rel=1e-6)
    assert float(sched.betas[-1]) == pytest.approx(0.02, rel=1e-6)


def test_only_the_denoiser_trains(model):
    trainable = list(model.trainable_parameters())
    assert {id(p) for p in trainable} == {id(p) for p in model.denoiser.parameters()}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    try:
        assert model.denoiser.training and not model.encoder.training
        assert not model.encoder.model.training
        hidden, mask = model.encode(MARKUPS[:2])
        x, t = _inputs(2)
        loss = model(x, t, hidden, mask).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None for p in trainable)
        assert all(p.grad is None for p in model.encoder.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_saved_layout(saved, model):
    for name in (
        "markup2im_model.json",
        "denoiser/config.json",
        "denoiser/diffusion_pytorch_model.safetensors",
        "encoder/config.json",
        "encoder/model.safetensors",
        "encoder/tokenizer_config.json",
        "encoder/markup2im_encoder.json",
        "scheduler/scheduler_config.json",
    ):
        assert (saved / name).is_file(), name
    record = json.loads((saved / "markup2im_model.json").read_text())
    assert record == model.record()
    assert record["model_preset"] == "tiny" and record["encoder"] == "offline"
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_reload_gives_identical_outputs(saved, model):
    back = Markup2ImModel.from_pretrained(saved, device="cpu")
    assert not back.training
    assert back.record() == model.record()
    assert back.scheduler_config["num_train_timesteps"] == 1000
    h1, m1 = model.encode(MARKUPS)
    h2, m2 = back.encode(MARKUPS)
    assert torch.equal(m1, m2) and torch.equal(h1, h2)
    x, t = _inputs(len(MARKUPS))
    with torch.no_grad():
        assert torch.equal(model(x, t, h1, m1), back(x, t, h2, m2))


def test_save_overwrites_and_failed_save_leaves_nothing(model, tmp_path, monkeypatch):
    target = tmp_path / "m"
    model.save_pretrained(target)
    model.save_pretrained(target)  # replacing a complete model is fine
    Markup2ImModel.from_pretrained(target)

    def broken(directory):
        raise RuntimeError("disk full")

    monkeypatch.setattr(model.encoder, "write_files", broken)
    fresh = tmp_path / "never"
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_missing_or_incomplete_directory(saved, tmp_path):
    with pytest.raises(ModelError, match=f"{tmp_path / 'nope'}.*does not exist"):
        Markup2ImModel.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in saved.rglob("*"):
        rel = item.relative_to(saved)
        if item.is_dir():
            (broken / rel).mkdir(parents=True, exist_ok=True)
        elif item.name not in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
            (broken / rel).write_bytes(item.read_bytes())
    with pytest.raises(ModelError) as info:
        Markup2ImModel.from_pretrained(broken)
    message = str(info.value)
    assert str(broken) in message
    assert "denoiser/diffusion_pytorch_model.safetensors" in message
    assert "encoder/model.safetensors" in message


@pytest.mark.parametrize("name", ["tokenizer_config.json", "added_tokens.json"])
def test_a_missing_tokenizer_file_is_refused(saved, tmp_path, name):
    """Without encoder/tokenizer_config.json the model loaded with a BertTokenizer guessed from
    config.json, which encodes every markup as [UNK]: wrong images, exit 0."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    (copy / "encoder" / name).unlink()
    with pytest.raises(ModelError, match=f"{copy}.*incomplete: missing encoder/{name}"):
        Markup2ImModel.from_pretrained(copy)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not JSON"),
        (b'{"height": 64,', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"format_version": 1}', "lacks height, width, channels"),
        (b"KEEP-VERSION height=tall", "height must be a positive integer, got 'tall'"),
        (b"KEEP-VERSION width=null", "width must be a positive integer, got None"),
        (b"KEEP-VERSION model_preset=7", "model_preset must be a string, got 7"),
    ],
)
def test_a_corrupt_model_record_is_a_model_error_naming_it(saved, tmp_path, content, expected):
    """A damaged markup2im_model.json ended in a raw traceback (JSONDecodeError, KeyError)."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    record_path = copy / "markup2im_model.json"
    if content.startswith(b"KEEP-VERSION "):  # a valid record with one value changed
        key, value = content.decode().split(" ", 1)[1].split("=")
        record = json.loads(record_path.read_text(encoding="utf-8"))
        record[key] = json.loads(value) if value in ("null", "7") else value
        content = json.dumps(record).encode()
    record_path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        Markup2ImModel.from_pretrained(copy)
    message = str(info.value)
    assert message.startswith(f"{record_path}: ") and expected in message, message
    assert "save_pretrained" in message  # what to do about it


def test_a_corrupt_model_record_exits_2_without_a_traceback(saved, tmp_path, capsys):
    import shutil

    from markup2im.cli import main

    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    (copy / "markup2im_model.json").write_text("{oops", encoding="utf-8")
    code = main(["draw", "--model-dir", str(copy), "x", "--output", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2 and f"{copy / 'markup2im_model.json'}: not JSON" in err
    assert "Traceback" not in err


def test_model_dir_that_is_a_file_is_named(tmp_path):
    path = tmp_path / "model"
    path.write_text("not a model\n")
    with pytest.raises(ModelError, match=f"{path} is a file, not a directory"):
        Markup2ImModel.from_pretrained(path)


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model preset"):
        Markup2ImModel.from_config(
            model_preset="nope", encoder="offline", height=64, width=64, channels=1
        )
    with pytest.raises(ConfigError, match="multiples of 8"):
        Markup2ImModel.from_config(
            model_preset="tiny", encoder="offline", height=60, width=64, channels=1
        )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batch_invariance(model, mode):
    """An example's prediction alone equals its prediction among longer and shorter markups."""
    model.train(mode == "train")
    try:
        x, t = _inputs(len(MARKUPS))
        hidden, mask = model.encode(MARKUPS)
        lengths = mask.sum(1)
        assert len(set(lengths.tolist())) == len(MARKUPS)  # all different lengths
        with torch.no_grad():
            together = model(x, t, hidden, mask)
            reordered = model(x.flip(0), t.flip(0), *model.encode(MARKUPS[::-1]))
            for i, markup in enumerate(MARKUPS):
                h, m = model.encode([markup])
                alone = model(x[i : i + 1], t[i : i + 1], h, m)
                assert (alone[0] - together[i]).abs().max() <= 1e-5, markup
        assert (reordered.flip(0) - together).abs().max() <= 1e-5
        # the condition matters: another markup gives another prediction
        with torch.no_grad():
            other = model(x[:1], t[:1], *model.encode([MARKUPS[1]]))
        assert (other[0] - together[0]).abs().max() > 1e-4
    finally:
        model.eval()


def test_from_config_passes_the_end_rule_to_the_encoder():
    single = Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=64, width=64, channels=1
    )
    original = Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=64, width=64, channels=1,
        end_rule="original",
    )  # fmt: skip
    assert (single.encoder.end_rule, original.encoder.end_rule) == ("single", "original")
    ids, mask = original.encoder.tokenize(["ab"])
    # ByT5 appends its own </s> and the original's rule appends encode("</s>")[0] = </s> again
    assert ids[0, : int(mask[0].sum())].tolist()[-2:] == [1, 1]
