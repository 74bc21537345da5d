"""Tests for markup2im.models.encoder: offline encoder, masks, truncation, local and hub loading."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from markup2im.errors import ConfigError, HubUnavailableError, ModelError
from markup2im.models.encoder import OFFLINE, MarkupEncoder

MARKUPS = ["x^2", r"\frac{a}{b} + \sqrt{c}", "", "<table><tr><td>1</td></tr></table>"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def offline() -> MarkupEncoder:
    return MarkupEncoder.load(OFFLINE, max_length=64)


def _gpt_neo_dir(root: Path, max_positions: int = 64) -> Path:
    """A tiny GPT-Neo with a BPE tokenizer (no EOS added, no pad token), saved like a hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoConfig, GPTNeoModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(MARKUPS * 20 + ["a b c d e f g h"] * 5, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    config = GPTNeoConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        window_size=16,
        max_position_embeddings=max_positions,
        intermediate_size=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPTNeoModel(config)
    out = root / "tiny-gpt-neo"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gpt_neo_dir(tmp_path_factory) -> Path:
    return _gpt_neo_dir(tmp_path_factory.mktemp("hub"))


def test_offline_encoder_is_frozen_and_stays_in_eval(offline):
    assert not any(p.requires_grad for p in offline.parameters())
    offline.train()
    assert not offline.training and not offline.model.training
    hidden, _ = offline(["a+b"])
    assert not hidden.requires_grad
    assert offline.hidden_size == hidden.shape[-1] == 64


def test_offline_encoder_is_deterministic_and_leaves_caller_rng_alone(offline):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = MarkupEncoder.load(OFFLINE, max_length=64)
    assert torch.equal(torch.rand(3), expected_next)  # building drew nothing from the caller
    for (name, a), (_, b) in zip(
        offline.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_offline_encoder_same_in_a_fresh_process(offline):
    """A different process with a different global seed builds the same encoder."""
    code = (
        "import torch; torch.manual_seed(999)\n"
        "from markup2im.models.encoder import MarkupEncoder\n"
        "e = MarkupEncoder.load('offline', 64)\n"
        f"h, m = e({MARKUPS!r})\n"
        "print(repr(h.double().sum().item()), repr(h.double().abs().sum().item()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    hidden, _ = offline(MARKUPS)
    expected = f"{hidden.double().sum().item()!r} {hidden.double().abs().sum().item()!r}"
    assert out.stdout.strip().splitlines()[-1] == expected


def test_mask_padding_and_exactly_one_end_token(offline):
    hidden, mask = offline(MARKUPS)
    ids, mask2 = offline.tokenize(MARKUPS)
    assert torch.equal(mask, mask2) and mask.dtype == torch.bool
    lengths = mask.sum(1).tolist()
    # ByT5: one token per UTF-8 byte, plus the end token.
    assert lengths == [len(m.encode()) + 1 for m in MARKUPS]
    end = offline.end_token_id
    for row, n in zip(ids, lengths, strict=True):
        assert row[n - 1].item() == end
        assert (row[: n - 1] == end).sum() == 0  # exactly one end token, attended
        assert (row[n:] == offline.tokenizer.pad_token_id).all()
    # mask is a prefix, and hidden states are zero at padding and non-zero where attended
    assert torch.equal(mask, torch.arange(mask.shape[1])[None] < torch.tensor(lengths)[:, None])
    assert (hidden[~mask] == 0).all()
    assert (hidden[mask].abs().sum(-1) > 0).all()


def test_encoding_does_not_depend_on_the_batch(offline):
    together, mask = offline(MARKUPS)
    for i, markup in enumerate(MARKUPS):
        alone, mask_alone = offline([markup])
        n = mask_alone.shape[1]
        assert torch.equal(mask[i, :n], mask_alone[0])
        assert (together[i, :n] - alone[0]).abs().max() <= 1e-5


def test_truncation_counts_and_logs(caplog):
    enc = MarkupEncoder.load(OFFLINE, max_length=4)
    with caplog.at_level(logging.INFO, logger="markup2im.models.encoder"):
        _, mask = enc(["abcdefgh", "ab", "abcde", "abcd"])
    assert mask.sum(1).tolist() == [5, 3, 5, 5]  # 4 tokens + end token at most
    assert enc.last_num_truncated == 2 and enc.num_truncated == 2 and enc.num_encoded == 4
    assert any("truncated 2 of 4" in r.getMessage() for r in caplog.records)
    ids, _ = enc.tokenize(["abcdefgh"])
    assert ids[0, -1].item() == enc.end_token_id
    assert enc.num_truncated == 3


def test_local_gpt_neo_directory_gets_pad_and_end_token(gpt_neo_dir):
    """The hub code path on a tiny GPT-Neo saved with save_pretrained."""
    from transformers import AutoModel, AutoTokenizer

    enc = MarkupEncoder.load(str(gpt_neo_dir), max_length=32)
    assert enc.hidden_size == 32 and enc.name == str(gpt_neo_dir)
    tok = AutoTokenizer.from_pretrained(gpt_neo_dir)
    assert tok.pad_token is None and tok("a b")["input_ids"][-1] != tok.eos_token_id
    hidden, mask = enc(["a b c", "x^2 + 1"])
    ids, _ = enc.tokenize(["a b c", "x^2 + 1"])
    for i, text in enumerate(["a b c", "x^2 + 1"]):
        expected = tok(text)["input_ids"] + [tok.eos_token_id]
        n = int(mask[i].sum())
        assert ids[i, :n].tolist() == expected
    # same numbers as running the saved model by hand on the tokens + EOS
    model = AutoModel.from_pretrained(gpt_neo_dir).eval()
    expected = tok("x^2 + 1")["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([expected])).last_hidden_state[0]
    assert (hidden[1, : len(expected)] - ref).abs().max() <= 1e-5
    assert (hidden[1, len(expected) :] == 0).all()


def test_max_length_capped_by_encoder_positions(tmp_path):
    directory = _gpt_neo_dir(tmp_path, max_positions=16)
    enc = MarkupEncoder.load(str(directory), max_length=100)
    assert enc.max_length == 15  # 15 markup tokens + the end token fill the 16 positions
    _, mask = enc(["a b c d e f g h i j k l m n o p q r s t u v"])
    assert mask.shape[1] == 16 and enc.last_num_truncated == 1


def test_save_and_reload_gives_identical_encoding(tmp_path, gpt_neo_dir, offline):
    for enc in (offline, MarkupEncoder.load(str(gpt_neo_dir), max_length=32)):
        target = tmp_path / enc.name.replace("/", "_")
        enc.save_pretrained(target)
        record = json.loads((target / "markup2im_encoder.json").read_text())
        assert record["name"] == enc.name and record["max_length"] == enc.max_length
        back = MarkupEncoder.from_pretrained(target)
        a, ma = enc(MARKUPS)
        b, mb = back(MARKUPS)
        assert torch.equal(ma, mb) and torch.equal(a, b)
        assert back.name == enc.name and back.end_token_id == enc.end_token_id


def _roberta_dir(root: Path) -> Path:
    """A tiny RoBERTa (ChemBERTa's architecture and tokenizer type), saved like a hub model."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: 4 + i for i, c in enumerate("CNOc1()=")})
    root.mkdir(parents=True)
    (root / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (root / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = RobertaTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model_dir = root / "model"
    RobertaModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.mark.parametrize("kind", ["offline", "gpt-neo", "roberta"])
def test_a_saved_encoder_needs_every_file_it_wrote(tmp_path, gpt_neo_dir, offline, kind):
    """The record lists what each tokenizer type saved (ByT5: added_tokens.json; GPT-Neo and
    RoBERTa: tokenizer.json); without one of them loading stops instead of guessing."""
    import shutil

    source = {"offline": lambda: offline, "gpt-neo": lambda: str(gpt_neo_dir),
              "roberta": lambda: str(_roberta_dir(tmp_path / "roberta"))}[kind]()  # fmt: skip
    enc = source if isinstance(source, MarkupEncoder) else MarkupEncoder.load(source, 16)
    target = tmp_path / "saved"
    enc.save_pretrained(target)
    files = json.loads((target / "markup2im_encoder.json").read_text())["files"]
    own = "added_tokens.json" if kind == "offline" else "tokenizer.json"
    assert {"config.json", "model.safetensors", "tokenizer_config.json", own} <= set(files)
    assert MarkupEncoder.from_pretrained(target).name == enc.name
    for name in ("tokenizer_config.json", own):
        broken = tmp_path / f"without-{name}"
        shutil.copytree(target, broken)
        (broken / name).unlink()
        with pytest.raises(ModelError, match=f"{broken} is incomplete: missing {name}"):
            MarkupEncoder.from_pretrained(broken)


def test_hub_name_loads_from_the_hub_cache_when_offline(gpt_neo_dir, tmp_path, monkeypatch):
    """A hub id goes through the hub code path; offline, it is served from the cache."""
    import shutil

    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--markup2im-test--tiny-gpt-neo"
    shutil.copytree(gpt_neo_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    enc = MarkupEncoder.load("markup2im-test/tiny-gpt-neo", max_length=32)
    local = MarkupEncoder.load(str(gpt_neo_dir), max_length=32)
    assert enc.name == "markup2im-test/tiny-gpt-neo"
    a, ma = enc(MARKUPS)
    b, mb = local(MARKUPS)
    assert torch.equal(ma, mb) and torch.equal(a, b)


def test_unreachable_hub_gives_hub_unavailable_quickly(monkeypatch):
    """Quick without a wall clock: offline, no request is made, so nothing waits to retry."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    waits: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # retries back off with time.sleep
        waits.append(seconds)
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.raises(HubUnavailableError, match="local model directory.*'offline'"):
        MarkupEncoder.load("EleutherAI/gpt-neo-125M-not-cached-here", max_length=16)
    assert not [w for w in waits if w >= 0.5], waits


def test_bad_local_paths(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        MarkupEncoder.load(str(tmp_path / "missing" / "encoder"), max_length=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="config.json"):
        MarkupEncoder.load(str(empty), max_length=16)
    with pytest.raises(ModelError, match="markup2im_encoder.json"):
        MarkupEncoder.from_pretrained(empty)


SMILES = ["CCO", "c1ccccc1O", "C(=O)N", "CCOCCOCCOCCOCCOCCOCCO"]


def _original_collate(tokenizer, markups: list[str], max_length: int) -> list[list[int]]:
    """The original code's attended ids (train.py / generate.py: preprocess_formula + collate_fn)."""
    eos_id = tokenizer.encode(tokenizer.eos_token)[0]
    rows = []
    for formula in markups:
        ids = tokenizer(formula, truncation=True, max_length=max_length)["input_ids"]
        rows.append(ids + [eos_id])
    return rows


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory) -> Path:
    return _roberta_dir(tmp_path_factory.mktemp("chemberta") / "roberta")


def test_roberta_end_token_is_the_originals(roberta_dir):
    """ChemBERTa-style tokenizers: the original appended encode(eos)[0], which is <s>, after the
    tokenizer's own <s> ... </s>; released molecule checkpoints were trained on that sequence."""
    from transformers import AutoModel, AutoTokenizer

    enc = MarkupEncoder.load(str(roberta_dir), max_length=16)
    tok = AutoTokenizer.from_pretrained(roberta_dir)
    assert enc.end_rule == "original"
    assert enc.end_token_id == tok.bos_token_id == tok.convert_tokens_to_ids("<s>")
    ids, mask = enc.tokenize(SMILES)
    expected = _original_collate(tok, SMILES, 16)
    for i, row in enumerate(expected):
        n = int(mask[i].sum())
        assert ids[i, :n].tolist() == row
        assert row[:1] == [tok.bos_token_id] and row[-2:] == [tok.eos_token_id, tok.bos_token_id]
    assert enc.overflow(SMILES) == [0, 0, 0, len("CCOCCOCCOCCOCCOCCOCCO") - 14]
    # the hidden states are the encoder's on exactly those ids
    hidden, _ = enc(SMILES[:1])
    model = AutoModel.from_pretrained(roberta_dir).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([expected[0]])).last_hidden_state[0]
    assert (hidden[0] - ref).abs().max() <= 1e-5


def test_roberta_single_end_rule_is_one_end_token(roberta_dir):
    from transformers import AutoTokenizer

    enc = MarkupEncoder.load(str(roberta_dir), max_length=16, end_rule="single")
    tok = AutoTokenizer.from_pretrained(roberta_dir)
    ids, mask = enc.tokenize(SMILES[:3])
    for i, smiles in enumerate(SMILES[:3]):
        n = int(mask[i].sum())
        assert ids[i, :n].tolist() == tok(smiles)["input_ids"]  # <s> ... </s>, nothing after
    assert enc.end_token_id == tok.eos_token_id


def test_end_rule_is_saved_and_old_records_load_as_single(tmp_path, roberta_dir):
    enc = MarkupEncoder.load(str(roberta_dir), max_length=16)
    target = tmp_path / "saved"
    enc.save_pretrained(target)
    record = json.loads((target / "markup2im_encoder.json").read_text())
    assert record["end_rule"] == "original"
    back = MarkupEncoder.from_pretrained(target)
    assert back.end_rule == "original" and torch.equal(
        back.tokenize(SMILES)[0], enc.tokenize(SMILES)[0]
    )
    # an encoder saved before the rule was recorded was built with the single end token
    del record["end_rule"]
    (target / "markup2im_encoder.json").write_text(json.dumps(record))
    assert MarkupEncoder.from_pretrained(target).end_rule == "single"


def test_offline_and_gpt_neo_end_rules(offline, gpt_neo_dir):
    assert offline.end_rule == "single"  # no original counterpart; one </s>
    original = MarkupEncoder.load(str(gpt_neo_dir), max_length=32)
    single = MarkupEncoder.load(str(gpt_neo_dir), max_length=32, end_rule="single")
    assert original.end_rule == "original"
    assert torch.equal(
        original.tokenize(MARKUPS)[0], single.tokenize(MARKUPS)[0]
    )  # same for GPT-Neo
    with pytest.raises(ConfigError, match="unknown end rule"):
        MarkupEncoder.load(OFFLINE, max_length=8, end_rule="eos")
