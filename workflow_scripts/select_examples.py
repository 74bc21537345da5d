"""Write the filenames of the examples that get denoising frames and GIFs, one per line.

Called by the `select_examples` checkpoint: the first `count` examples of the split, or the
configured `names` after checking that the split has them.
"""

import logging

from markup2im.atomic import write_text
from markup2im.data.datasets import load_split
from markup2im.errors import ConfigError


def select(dataset_dir: str, split: str, count: int, names: list[str] | None) -> list[str]:
    """Filenames of the selected examples of ``split`` in ``dataset_dir``."""
    available = load_split(dataset_dir, split)["filename"]
    if not names:
        return list(available[:count])
    missing = sorted(set(names) - set(available))
    if missing:
        raise ConfigError(
            f"generate.frames_for names {', '.join(missing)}, not in the {split} split of "
            f"{dataset_dir}"
        )
    return list(names)


with open(snakemake.log[0], "w", encoding="utf-8") as log_stream:
    logging.basicConfig(stream=log_stream, level=logging.INFO, force=True)
    chosen = select(
        snakemake.input[0],
        snakemake.params.split,
        snakemake.params.frames,
        snakemake.params.names,
    )
    logging.getLogger("select_examples").info("selected %s", ", ".join(chosen))
    write_text(snakemake.output.examples, "".join(f"{name}\n" for name in chosen))
