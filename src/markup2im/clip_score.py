"""CLIP similarity of generated and gold images, the ``clip`` score of the original evaluation.

The original scored each pair with OpenAI's CLIP ViT-B/32: both images converted to RGB and
preprocessed for the model, their image embeddings normalised, and their dot product (cosine
similarity, 1 for identical images) reported. Here the model is any transformers ``CLIPModel``
(``openai/clip-vit-base-patch32`` is that ViT-B/32) loaded by ``from_pretrained`` from a hub name
or a local directory, with its saved image processor; images go through it in batches, on the
GPU when there is one. Only ``markup2im evaluate --clip-model`` imports this module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from markup2im.errors import ConfigError, DataError, HubUnavailableError, ModelError

logger = logging.getLogger(__name__)

Pair = tuple[str | os.PathLike[str], str | os.PathLike[str]]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the first GPU when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ClipImageScorer:
    """Normalised CLIP image embeddings, computed in batches."""

    def __init__(self, name_or_path: str, device: str | torch.device | None = "auto") -> None:
        from transformers import AutoImageProcessor, CLIPModel

        local = Path(name_or_path).expanduser().is_dir()
        source = str(Path(name_or_path).expanduser()) if local else name_or_path
        try:
            self.processor = AutoImageProcessor.from_pretrained(source, local_files_only=local)
            model = CLIPModel.from_pretrained(source, local_files_only=local, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            if local:
                raise ModelError(
                    f"cannot load a CLIP model from directory {source}: {exc}"
                ) from exc
            raise HubUnavailableError(
                f"cannot load CLIP model {name_or_path!r} from the Hugging Face hub (offline, "
                f"unreachable or no such model); give a local directory written by "
                f"save_pretrained (model and image processor) instead: {exc}"
            ) from exc
        self.name = name_or_path
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) unit-length image embeddings of ``images`` (any PIL mode; converted to RGB)."""
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        vision = self.model.vision_model(pixel_values=pixels["pixel_values"].to(self.device))
        features = self.model.visual_projection(vision.pooler_output).float()
        return torch.nn.functional.normalize(features, dim=-1)


def _open(path: str | os.PathLike[str]) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def clip_similarities(
    pairs: Sequence[Pair],
    model: str | ClipImageScorer,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """CLIP cosine similarity of each (prediction, gold) pair, and of a blank (white) page of the
    gold's size against the same gold image (the reference a model has to beat)."""
    if batch_size < 1:
        raise ConfigError(f"CLIP batch size must be at least 1, got {batch_size}")
    scorer = model if isinstance(model, ClipImageScorer) else ClipImageScorer(model, device)
    logger.info("CLIP similarity of %d pairs with %s on %s", len(pairs), scorer.name, scorer.device)
    blank_embeddings: dict[tuple[int, int], torch.Tensor] = {}
    scores, blanks = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        preds = [_open(p) for p, _ in chunk]
        golds = [_open(g) for _, g in chunk]
        gold_embeddings = scorer.embed(golds)
        scores.append((scorer.embed(preds) * gold_embeddings).sum(-1).cpu())
        for gold in golds:
            if gold.size not in blank_embeddings:
                white = Image.new("RGB", gold.size, (255, 255, 255))
                blank_embeddings[gold.size] = scorer.embed([white])[0]
        blank = torch.stack([blank_embeddings[g.size] for g in golds])
        blanks.append((blank * gold_embeddings).sum(-1).cpu())
    if not scores:
        return np.zeros(0), np.zeros(0)
    return (
        torch.cat(scores).double().numpy(),
        torch.cat(blanks).double().numpy(),
    )
