"""A small table dataset and an untrained tiny model, for the tests of sampling, the pipeline and
``markup2im generate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLITS = {"train": 2, "validation": 1, "test": 4}


def drawn_example(i: int) -> tuple[str, Image.Image]:
    """A 64x64 grayscale image of black rectangles and the markup that describes it."""
    rng = np.random.default_rng(100 + i)
    image = Image.new("L", (64, 64), 255)
    draw = ImageDraw.Draw(image)
    cells = []
    for _ in range(int(rng.integers(1, 4))):
        x, y = (int(v) for v in rng.integers(2, 40, size=2))
        w, h = (int(v) for v in rng.integers(4, 20, size=2))
        draw.rectangle([x, y, x + w, y + h], fill=0)
        cells.append(f"<td>{x},{y},{w},{h}</td>")
    return f"<table><tr>{''.join(cells) * (i + 1)}</tr></table>", image


def write_tables_dataset(root: Path) -> Path:
    """A 64x64 tables dataset at ``root``: split ``s`` holds ``SPLITS[s]`` drawn examples named
    ``<split>_<i>.png``."""
    import datasets

    from markup2im.data.datasets import DatasetInfo, write_dataset_info

    features = datasets.Features(
        {"html": datasets.Value("string"), "filename": datasets.Value("string"),
         "image": datasets.Image()}
    )  # fmt: skip
    splits = {}
    for split, n in SPLITS.items():
        examples = [drawn_example(i) for i in range(n)]
        splits[split] = datasets.Dataset.from_dict(
            {
                "html": [m for m, _ in examples],
                "filename": [f"{split}_{i}.png" for i in range(n)],
                "image": [im for _, im in examples],
            },
            features=features,
        )
    datasets.DatasetDict(splits).save_to_disk(str(root))
    write_dataset_info(root, DatasetInfo("tables", "html", 64, 64, 1))
    return root


def save_untrained_model(path: Path) -> Path:
    """An untrained tiny 64x64 grayscale model (seed 0, markup up to 64 tokens) saved at
    ``path``."""
    import torch

    from markup2im.model import Markup2ImModel

    torch.manual_seed(0)
    model = Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=64, width=64, channels=1,
        max_markup_length=64,
    )  # fmt: skip
    model.save_pretrained(path)
    return path


def pixels(path: Path | Image.Image) -> np.ndarray:
    """The pixels of an image or of an image file."""
    if isinstance(path, Image.Image):
        return np.asarray(path)
    with Image.open(path) as image:
        return np.asarray(image)


class ToyModel:
    """A model the sampling loops accept (markup2im.sampling.SamplingModel) whose output is a
    fixed elementwise function of (sample, t): cheap enough for every sampler at every step
    count and for every prediction type, and computable by hand in float64 (:meth:`output`)."""

    channels, height, width = 1, 8, 8

    def __init__(self, prediction_type: str = "epsilon", num_train_timesteps: int = 1000) -> None:
        import torch

        from markup2im.model import DEFAULT_SCHEDULER_CONFIG

        self.scheduler_config = {
            **DEFAULT_SCHEDULER_CONFIG,
            "prediction_type": prediction_type,
            "num_train_timesteps": num_train_timesteps,
        }
        self.denoiser = torch.nn.Conv2d(1, 1, 1)  # only where the loops look for the device
        self.calls: list[tuple] = []  # (sample, timesteps) of every call

    def encode(self, markups: list[str]) -> tuple:
        import torch

        return torch.zeros(len(markups), 1, 4), torch.ones(len(markups), 1, dtype=torch.long)

    @staticmethod
    def output(sample, timesteps):
        """The output for ``sample`` (B, C, H, W) at ``timesteps`` (B,), in sample's dtype."""
        t = timesteps.to(sample.dtype).reshape(-1, 1, 1, 1)
        return 0.8 * sample.tanh() + 0.1 * (t / 150).cos()

    def __call__(self, sample, timesteps, encoder_hidden_states, encoder_attention_mask):
        self.calls.append((sample.clone(), timesteps.clone()))
        return self.output(sample, timesteps)
