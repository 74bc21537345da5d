"""The frozen markup encoder: a transformers model plus its tokenizer.

Three sources, one loading path (``AutoModel`` + ``AutoTokenizer``):

* a hub name such as ``EleutherAI/gpt-neo-125M`` (the paper's encoder for math, tables and music)
  or ``DeepChem/ChemBERTa-77M-MLM`` (molecules); needs the hub or its cache;
* a local directory written by ``save_pretrained`` (of transformers or of this class);
* ``offline``: a 2-layer BERT over bytes (``ByT5Tokenizer``, which needs no vocabulary files),
  its weights drawn from a fixed seed so that it is the same model on every machine. It is random,
  not pretrained: the denoiser learns to read its features.

The encoding of a markup is its tokens (truncated to ``max_length``) followed by one appended end
token, all attended; shorter markups are right-padded and the padding is masked and zeroed. Two
rules (``end_rule``) say what the tokens and the end token are:

* ``original`` (the default for hub and local transformers encoders): the original code's rule,
  ``tokenizer(markup, truncation=True, max_length=max_length)`` with the tokenizer's own special
  tokens kept, then ``tokenizer.encode(tokenizer.eos_token)[0]`` appended. For GPT-Neo (math,
  tables, music) that is ``tokens <|endoftext|>``. For RoBERTa-style tokenizers (ChemBERTa,
  molecules) ``encode`` adds specials, so ``[0]`` is ``<s>``: the sequence is
  ``<s> tokens </s> <s>``. Released checkpoints (:mod:`markup2im.original`) were trained on exactly
  this, so it is what they must see.
* ``single``: the tokenizer's own end token (BERT/RoBERTa ``</s>``/``[SEP]``, ByT5 ``</s>``) is
  removed before truncation and exactly one end token (eos, else sep, else pad) appended, so every
  tokenizer gives the same shape of sequence: RoBERTa ``<s> tokens </s>``. The built-in offline
  encoder uses it (it has no original), and so do encoders saved before the rule was recorded.
  (For GPT-Neo both rules give the same ids.)

Saved layout (``save_pretrained``): the transformers model and tokenizer files plus
``markup2im_encoder.json`` (name, max_length, end token id, end rule).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from markup2im.atomic import atomic_dir, write_json
from markup2im.errors import ConfigError, HubUnavailableError, ModelError

logger = logging.getLogger(__name__)

OFFLINE = "offline"
OFFLINE_SEED = 20221011  # fixed: the offline encoder must be identical everywhere
ENCODER_RECORD = "markup2im_encoder.json"
ORIGINAL_END = "original"  # the original's tokens + tokenizer.encode(eos_token)[0]
SINGLE_END = "single"  # the tokenizer's own end token replaced by exactly one end token
END_RULES = (ORIGINAL_END, SINGLE_END)
# Models whose position ids start after the padding index (usable positions = table - pad - 1).
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"}


class MarkupEncoder(nn.Module):
    """Frozen transformer encoder mapping markup strings to masked hidden states."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        name: str,
        max_length: int,
        end_rule: str | None = None,
    ) -> None:
        """``end_rule`` None: ``original`` when the tokenizer has an eos token (the original code
        needs one), else ``single``."""
        super().__init__()
        if max_length < 1:
            raise ConfigError(f"max markup length must be at least 1, got {max_length}")
        if end_rule is None:
            end_rule = ORIGINAL_END if tokenizer.eos_token is not None else SINGLE_END
        if end_rule not in END_RULES:
            raise ConfigError(
                f"encoder {name!r}: unknown end rule {end_rule!r}; known: {', '.join(END_RULES)}"
            )
        if end_rule == ORIGINAL_END and tokenizer.eos_token is None:
            raise ConfigError(
                f"encoder {name!r}: the {ORIGINAL_END!r} end rule appends the tokenizer's eos "
                f"token, and this tokenizer has none; use end_rule={SINGLE_END!r}"
            )
        self.end_rule = end_rule
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.hidden_size = int(model.config.hidden_size)
        if tokenizer.pad_token is None:
            # GPT-style tokenizers have no pad token; padding is masked, so any id will do.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ConfigError(f"encoder {name!r}: tokenizer has no pad, eos, sep or unk token")
        self._strip_end, self.end_token_id = _end_token(tokenizer, name)
        if end_rule == ORIGINAL_END:
            self.end_token_id = int(tokenizer.encode(tokenizer.eos_token)[0])
        limit = _position_limit(model, tokenizer)
        self.requested_max_length = max_length
        if limit is not None and max_length + 1 > limit:
            logger.warning(
                "encoder %s holds %d positions: markups are truncated to %d tokens, not %d",
                name,
                limit,
                limit - 1,
                max_length,
            )
            max_length = limit - 1
        self.max_length = max_length
        self.num_encoded = 0
        self.num_truncated = 0
        self.last_num_truncated = 0
        self.last_truncated_tokens: list[int] = []  # tokens cut from each markup of the last call
        self.trainable = False
        self.model.requires_grad_(False)
        self.train(False)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        name_or_path: str,
        max_length: int,
        end_rule: str | None = None,
        *,
        revision: str | None = None,
    ) -> MarkupEncoder:
        """Load ``offline``, a local model directory, or a hub model name (at ``revision``:
        a branch, tag or commit of the hub repository; None: its default branch).

        ``end_rule`` None keeps each source's default (module docstring): ``single`` for
        ``offline`` and for a directory saved by this class with no rule recorded, the recorded
        rule for one that has it, ``original`` for transformers models.
        """
        if name_or_path == OFFLINE:
            return cls.build_offline(max_length, end_rule=end_rule)
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            if (path / ENCODER_RECORD).is_file():
                return cls.from_pretrained(path, max_length=max_length, end_rule=end_rule)
            if not (path / "config.json").is_file():
                raise ModelError(f"encoder directory {path} has no config.json")
            return cls._from_files(
                str(path), str(name_or_path), max_length, local_only=True, end_rule=end_rule
            )
        if _looks_like_path(name_or_path):
            raise ConfigError(
                f"encoder {name_or_path!r}: no such directory (give a local model directory, "
                f"a hub model name, or {OFFLINE!r})"
            )
        return cls._from_files(
            name_or_path,
            name_or_path,
            max_length,
            local_only=False,
            end_rule=end_rule,
            revision=revision,
        )

    @classmethod
    def build_offline(cls, max_length: int, end_rule: str | None = None) -> MarkupEncoder:
        """The built-in encoder: a byte-level 2-layer BERT with weights from a fixed seed
        (end rule ``single`` unless given: the original has no such encoder)."""
        from transformers import BertConfig, BertModel, ByT5Tokenizer

        tokenizer = ByT5Tokenizer()
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=2048,
            type_vocab_size=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tokenizer.pad_token_id,
        )
        # A private RNG state: the same weights whatever the caller seeded, and the caller's
        # random stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(OFFLINE_SEED)
            model = BertModel(config)
        return cls(model.float(), tokenizer, OFFLINE, max_length, end_rule or SINGLE_END)

    @classmethod
    def build_stand_in(cls, max_length: int, seed: int = OFFLINE_SEED) -> MarkupEncoder:
        """A random GPT-Neo with gpt-neo-125M's configuration (768 wide, 12 layers, 2048
        positions) over bytes: the paper encoder's shape and cost where the hub cannot be
        reached, for speed and memory checks of the paper preset. Not a trained encoder."""
        from transformers import ByT5Tokenizer, GPTNeoConfig, GPTNeoModel

        tokenizer = ByT5Tokenizer()
        config = GPTNeoConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=2048,
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            attention_types=[[["global", "local"], 6]],
            window_size=256,
            embed_dropout=0.0,
            attention_dropout=0.0,
            resid_dropout=0.0,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPTNeoModel(config)
        return cls(model.float(), tokenizer, "gpt-neo-125M-stand-in", max_length, SINGLE_END)

    @classmethod
    def _from_files(
        cls,
        source: str,
        name: str,
        max_length: int,
        *,
        local_only: bool,
        end_rule: str | None = None,
        revision: str | None = None,
    ) -> MarkupEncoder:
        from transformers import AutoModel, AutoTokenizer

        # Local loads are quick: keep their weight-loading bars out of the logs; downloads keep theirs.
        bars = _no_progress_bars() if local_only else contextlib.nullcontext()
        try:
            with bars:
                pinned = {"revision": revision} if revision else {}
                tokenizer = AutoTokenizer.from_pretrained(
                    source, local_files_only=local_only, **pinned
                )
                model = AutoModel.from_pretrained(
                    source, local_files_only=local_only, dtype=torch.float32, **pinned
                )
        except (OSError, ValueError) as exc:
            if local_only:
                raise ModelError(f"cannot load encoder from directory {source}: {exc}") from exc
            if _is_missing_repo(exc):
                raise ConfigError(f"encoder {name!r} is not a model on the hub: {exc}") from exc
            raise HubUnavailableError(
                f"cannot download encoder {name!r} from the Hugging Face hub (offline or "
                f"unreachable). Use a local model directory (save_pretrained) or the built-in "
                f"{OFFLINE!r} encoder instead."
            ) from exc
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        return cls(model, tokenizer, name, max_length, end_rule)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        max_length: int | None = None,
        end_rule: str | None = None,
    ) -> MarkupEncoder:
        """Reload an encoder written by :meth:`save_pretrained`, with its recorded end rule
        (``single`` when none is recorded: what encoders saved before the rule existed used)."""
        directory = Path(directory)
        record_path = directory / ENCODER_RECORD
        if not record_path.is_file():
            raise ModelError(f"encoder directory {directory} is missing {ENCODER_RECORD}")
        missing = missing_encoder_files(directory)
        if missing:
            raise ModelError(
                f"encoder directory {directory} is incomplete: missing {', '.join(missing)}"
            )
        record = json.loads(record_path.read_text(encoding="utf-8"))
        length = int(record["max_length"] if max_length is None else max_length)
        rule = end_rule or record.get("end_rule", SINGLE_END)
        return cls._from_files(
            str(directory), record["name"], length, local_only=True, end_rule=rule
        )

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write model, tokenizer and record to ``directory`` atomically."""
        with atomic_dir(directory) as tmp:
            self.write_files(tmp)

    def write_files(self, directory: Path) -> None:
        """Write model, tokenizer and record into an existing (temporary) directory.

        The record lists every file written: what loading needs differs by tokenizer (ByT5:
        tokenizer_config.json + added_tokens.json; fast tokenizers: tokenizer.json too; sharded
        weights: an index and shards), and a missing one would make ``AutoTokenizer`` fall back
        to another tokenizer without an error.
        """
        directory = Path(directory)
        with _no_progress_bars():
            self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        write_json(
            directory / ENCODER_RECORD,
            {
                "name": self.name,
                "max_length": self.requested_max_length,
                "end_token_id": self.end_token_id,
                "end_rule": self.end_rule,
                "hidden_size": self.hidden_size,
                "files": sorted(p.name for p in directory.iterdir() if p.is_file()),
            },
        )

    # -- behaviour ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> MarkupEncoder:
        """Stay in eval mode whatever is asked: no dropout, trained or not."""
        super().train(False)
        return self

    def set_trainable(self, trainable: bool = True) -> MarkupEncoder:
        """Let training update the encoder's weights (frozen by default, as in the paper).

        A trainable encoder still runs in eval mode (no dropout); its forward pass keeps the
        gradient whenever gradients are enabled.
        """
        self.trainable = bool(trainable)
        self.model.requires_grad_(self.trainable)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, markups: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and boolean attention mask (B, L), right-padded, on CPU."""
        if isinstance(markups, str):
            raise TypeError("markups must be a list of strings, not one string")
        rows, cut = self._rows(markups)
        self._count(cut)
        length = max((len(r) for r in rows), default=1)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = True
        return input_ids, mask

    def _rows(self, markups: list[str]) -> tuple[list[list[int]], list[int]]:
        """Each markup's ids as encoded (end rule applied, truncated, end token appended), and
        how many markup tokens truncation cut from each."""
        encoded = self.tokenizer(list(markups), add_special_tokens=True, verbose=False)
        rows, cut = [], []
        for ids in encoded["input_ids"]:
            ids = list(ids)
            own_end = ids[-1:] if self._strip_end else []
            content = ids[:-1] if self._strip_end else ids
            # original: HF truncation keeps the tokenizer's own end token within max_length
            keep = self.max_length - (len(own_end) if self.end_rule == ORIGINAL_END else 0)
            keep = max(keep, 1)
            kept = content[:keep] + (own_end if self.end_rule == ORIGINAL_END else [])
            rows.append(kept + [self.end_token_id])
            cut.append(max(0, len(content) - keep))
        return rows, cut

    def overflow(self, markups: list[str]) -> list[int]:
        """How many tokens of each markup lie beyond ``max_length`` (0: it fits), without
        encoding or counting anything."""
        if isinstance(markups, str):
            raise TypeError("markups must be a list of strings, not one string")
        return self._rows(markups)[1]

    def _count(self, cut: list[int]) -> None:
        truncated = sum(c > 0 for c in cut)
        self.num_encoded += len(cut)
        self.last_num_truncated = truncated
        self.last_truncated_tokens = cut
        if truncated:
            first = self.num_truncated == 0
            self.num_truncated += truncated
            logger.log(
                logging.WARNING if first else logging.INFO,
                "truncated %d of %d markups to %d tokens, %s (%d of %d so far)",
                truncated,
                len(cut),
                self.max_length,
                _cut_tokens(cut),
                self.num_truncated,
                self.num_encoded,
            )

    def forward(self, markups: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode markups: hidden states (B, L, D) zeroed at padding, and the (B, L) bool mask.

        No gradient flows unless the encoder is trainable (:meth:`set_trainable`).
        """
        input_ids, mask = self.tokenize(markups)
        device = self.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
            return hidden * mask[..., None].to(hidden.dtype), mask


def missing_encoder_files(directory: str | os.PathLike[str]) -> list[str]:
    """Files that loading the encoder saved in ``directory`` needs and that are not there.

    Always the record, config.json, tokenizer_config.json (without it ``AutoTokenizer`` guesses
    a tokenizer from the model type and encodes every markup as unknown tokens) and weights;
    plus every file the record lists as written at save time.
    """
    directory = Path(directory)
    wanted = [ENCODER_RECORD, "config.json", "tokenizer_config.json"]
    record_path = directory / ENCODER_RECORD
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"{record_path}: not valid JSON ({exc})") from exc
        wanted += [f for f in record.get("files", []) if f not in wanted]
    missing = [f for f in wanted if not (directory / f).is_file()]
    if directory.is_dir() and not any(
        p.suffix in (".safetensors", ".bin") for p in directory.iterdir()
    ):
        missing.append("model.safetensors")
    return missing


def _cut_tokens(cut: list[int]) -> str:
    """'by 12 tokens' for one truncated markup, 'by 3 to 40 tokens' for several."""
    counts = [c for c in cut if c > 0]
    low, high = min(counts), max(counts)
    if low == high:
        return f"by {high} token{'s' if high != 1 else ''}" + (" each" if len(counts) > 1 else "")
    return f"by {low} to {high} tokens"


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' per-call weight loading/writing bars, then restore them."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    if enabled:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _end_token(tokenizer, name: str) -> tuple[bool, int]:
    """(whether the tokenizer appends its own end token, the end token id to append)."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    ends = [i for i in (tokenizer.eos_token_id, tokenizer.sep_token_id) if i is not None]
    if probe and probe[-1] in ends:
        return True, int(probe[-1])
    for candidate in (tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        if candidate is not None:
            return False, int(candidate)
    raise ConfigError(f"encoder {name!r}: tokenizer has no end (eos/sep/pad) token")


def _position_limit(model: nn.Module, tokenizer) -> int | None:
    """How many tokens the encoder accepts (None when it has no absolute limit)."""
    config = model.config
    limits = []
    table = getattr(config, "max_position_embeddings", None)
    if table:
        if getattr(config, "model_type", "") in _OFFSET_POSITION_MODELS:
            table -= (config.pad_token_id or 0) + 1
        limits.append(int(table))
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and model_max < 1_000_000:
        limits.append(int(model_max))
    return min(limits) if limits else None


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    )


def _is_missing_repo(exc: BaseException) -> bool:
    """True when the hub answered that the repository does not exist (not a network failure)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RepositoryNotFoundError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
