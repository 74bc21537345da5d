"""Classifier-free guidance: markup dropout in training, the guidance scale in the samplers, and
cross-attention levels chosen with ``attention_from`` (saved with the model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import save_untrained_model
from training_helpers import dataset_fixture, model_weights, tiny  # noqa: F401

from markup2im.errors import ConfigError
from markup2im.guidance import UNCONDITIONAL_MARKUP, check_guidance_scale, guide, guided
from markup2im.model import Markup2ImModel
from markup2im.pipeline import Markup2ImPipeline
from markup2im.presets import get_model_preset
from markup2im.sampling import example_generators, sample
from markup2im.training.config import TrainConfig
from markup2im.training.step import MarkupDropout, encode_tokens
from markup2im.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
MARKUPS = ["<table><tr><td>1</td></tr></table>", "<td>22</td><td>333</td>"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Markup2ImModel:
    directory = save_untrained_model(tmp_path_factory.mktemp("model") / "model")
    return Markup2ImModel.from_pretrained(directory, device="cpu").eval()


class RecordingModel:
    """A model that records the markups it is asked to encode."""

    def __init__(self, model: Markup2ImModel) -> None:
        self.model = model
        self.encoded: list[list[str]] = []

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def encode(self, markups: list[str]):
        self.encoded.append(list(markups))
        return self.model.encode(markups)

    def __call__(self, *args):
        return self.model(*args)


def draw(model, markups, **settings) -> torch.Tensor:
    return sample(model, markups, example_generators(5, range(len(markups))), sampler="ddim",
                  num_inference_steps=3, **settings)  # fmt: skip


@pytest.mark.parametrize("scale", [None, 1, 1.0])
def test_guidance_scale_1_is_the_plain_sampler_bit_for_bit(model, scale) -> None:
    recorder = RecordingModel(model)
    assert torch.equal(draw(recorder, MARKUPS, guidance_scale=scale), draw(model, MARKUPS))
    assert recorder.encoded == [MARKUPS]  # no unconditional pass


def test_the_unconditional_branch_gets_the_empty_markup(model) -> None:
    recorder = RecordingModel(model)
    draw(recorder, MARKUPS, guidance_scale=3)
    assert recorder.encoded == [MARKUPS, [UNCONDITIONAL_MARKUP] * len(MARKUPS)]


def test_guidance_scale_0_draws_the_empty_markup(model) -> None:
    """w = 0 leaves only the unconditional output: the images of the empty markup, exactly."""
    empty = [UNCONDITIONAL_MARKUP] * len(MARKUPS)
    assert torch.equal(draw(model, MARKUPS, guidance_scale=0), draw(model, empty))


def test_guidance_combines_the_two_outputs_linearly(model) -> None:
    """One step's guided output is uncond + w (cond - uncond), whatever the prediction type."""
    hidden, mask = model.encode(MARKUPS)
    null_hidden, null_mask = model.encode([""] * 2)
    x, t = (
        torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)),
        torch.tensor([500, 20]),
    )
    with torch.no_grad():
        cond, uncond = model(x, t, hidden, mask), model(x, t, null_hidden, null_mask)
    expected = uncond + 2.5 * (cond - uncond)
    assert torch.allclose(guide(cond, uncond, 2.5), expected)
    assert guide(3.0, 1.0, 2.0) == 5.0


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "2", True, None])
def test_bad_guidance_scales_are_config_errors_naming_the_key(value) -> None:
    with pytest.raises(ConfigError, match=r"samplers\.x\.guidance_scale must be"):
        check_guidance_scale(value, "samplers.x.guidance_scale")
    assert not guided(None) and not guided(1) and guided(0) and guided(3)


def test_markup_dropout_puts_the_empty_markups_states_in_the_dropped_rows(model) -> None:
    encoder = model.encoder
    ids, mask = encoder.tokenize(MARKUPS * 4)
    hidden, mask = encode_tokens(encoder, ids, mask)
    null_hidden, null_mask = encode_tokens(encoder, *encoder.tokenize([UNCONDITIONAL_MARKUP]))
    dropout = MarkupDropout(0.5, lambda: (null_hidden, null_mask))
    dropout.reseed(7)
    dropped_hidden, dropped_mask = dropout(hidden, mask)
    dropout.reseed(7)
    drawn = torch.rand(8, generator=dropout.generator) < 0.5
    assert 0 < int(drawn.sum()) < 8  # both kinds of rows are checked
    length = null_hidden.shape[1]
    for row in range(8):
        if drawn[row]:
            assert torch.equal(dropped_hidden[row, :length], null_hidden[0])
            assert not dropped_hidden[row, length:].any()
            assert dropped_mask[row].tolist() == null_mask[0].tolist() + [False] * (
                mask.shape[1] - length
            )
        else:
            assert torch.equal(dropped_hidden[row], hidden[row])
            assert torch.equal(dropped_mask[row], mask[row])


def test_markup_dropout_changes_training_only_when_set(tmp_path: Path, dataset_dir: Path) -> None:
    """No dropout (None or 0) trains the weights of a run without the setting, bit for bit; a
    dropout trains other weights."""
    runs = {}
    for name, p in (("plain", None), ("zero", 0.0), ("dropout", 0.5)):
        train(tiny(dataset_dir, tmp_path / name, method="baseline", ss_start=None, ss_end=None,
                   markup_dropout=p))  # fmt: skip
        runs[name] = model_weights(tmp_path / name / "model")
    for key in runs["plain"]:
        assert torch.equal(runs["plain"][key], runs["zero"][key]), key
    assert any(not torch.equal(runs["plain"][k], runs["dropout"][k]) for k in runs["plain"])


def test_a_model_trained_with_markup_dropout_is_steered_by_the_guidance_scale(
    tmp_path: Path, dataset_dir: Path
) -> None:
    config = tiny(dataset_dir, tmp_path / "run", method="baseline", ss_start=None, ss_end=None,
                  markup_dropout=0.3, max_steps=40, checkpoint_every=100, learning_rate=3e-3,
                  train_encoder=True, prediction_type="sample")  # fmt: skip
    train(config)
    pipe = Markup2ImPipeline.from_pretrained(tmp_path / "run" / "model", device="cpu")
    assert pipe.model.markup_dropout == 0.3  # recorded with the model

    def images(**guidance: float) -> np.ndarray:
        drawn = pipe(MARKUPS, sampler="ddim", steps=4, seed=2, **guidance).images
        return np.stack([np.asarray(image) for image in drawn]).astype(int)

    plain = images()
    assert np.array_equal(images(guidance_scale=1), plain)
    # the further w is from 1, the further the images move from the plain ones
    near, far = (np.abs(images(guidance_scale=w) - plain).mean() for w in (1.5, 3))
    assert 0 < near < far


def test_bad_markup_dropout_is_refused(tmp_path: Path) -> None:
    for value in (1.0, -0.1, float("nan")):
        config = TrainConfig(dataset_dir=tmp_path, output_dir=tmp_path / "o",
                             markup_dropout=value)  # fmt: skip
        with pytest.raises(ConfigError, match=r"markup_dropout must lie in \[0, 1\)"):
            config.validate()


def test_attention_from_chooses_the_levels_and_is_saved_with_the_model(tmp_path: Path) -> None:
    preset = get_model_preset("small")
    assert preset.attention_levels == (False, False, False, True, True)
    assert preset.with_attention_from(4).attention_levels == (False, False, True, True, True)
    assert preset.with_attention_from(None) is preset
    torch.manual_seed(0)
    model = Markup2ImModel.from_config(model_preset="small", encoder="offline", height=32,
                                       width=128, channels=1, attention_from=4)  # fmt: skip
    assert model.denoiser.config.attention_levels == (False, False, True, True, True)
    assert model.denoiser.down_levels[2].attentions is not None
    assert model.denoiser.down_levels[1].attentions is None
    model.save_pretrained(tmp_path / "model")
    loaded = Markup2ImModel.from_pretrained(tmp_path / "model")
    assert tuple(loaded.denoiser.config.attention_levels) == (False, False, True, True, True)
    x, t = torch.randn(1, 1, 32, 128), torch.tensor([10])
    hidden, mask = model.encode(["x^2=1"])
    with torch.no_grad():
        assert torch.allclose(
            model.eval()(x, t, hidden, mask), loaded(x, t, hidden, mask), atol=1e-5
        )


@pytest.mark.parametrize("factor", [3, 0, 32, 64])
def test_attention_from_outside_the_presets_levels_is_refused(factor) -> None:
    with pytest.raises(ConfigError, match="attention_from must be one of 1, 2, 4, 8, 16"):
        get_model_preset("small").with_attention_from(factor)


def test_guiding_a_model_trained_without_markup_dropout_warns(model, caplog) -> None:
    pipe = Markup2ImPipeline(model)
    assert model.markup_dropout is None
    with caplog.at_level("WARNING", logger="markup2im.pipeline"):
        pipe(MARKUPS[:1], steps=2, guidance_scale=1)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="markup2im.pipeline"):
        pipe(MARKUPS[:1], steps=2, guidance_scale=2)
    assert "trained without markup dropout" in caplog.text


def test_a_bad_markup_dropout_in_the_model_record_names_the_file(tmp_path: Path) -> None:
    import json

    from markup2im.errors import ModelError
    from markup2im.model import MODEL_RECORD

    directory = save_untrained_model(tmp_path / "model")
    record = json.loads((directory / MODEL_RECORD).read_text())
    assert "markup_dropout" not in record  # a model trained without it records nothing
    (directory / MODEL_RECORD).write_text(json.dumps({**record, "markup_dropout": 1.5}))
    with pytest.raises(ModelError, match=r"markup2im_model.json: markup_dropout must lie in"):
        Markup2ImModel.from_pretrained(directory)
