"""Write the filenames of the examples that get denoising frames and GIFs, one per line.

Called by the `select_examples` checkpoint: the first `count` examples of the split, or the
configured `names` after checking that the split has them.
"""

import logging

from markup2im.atomic import write_text
from markup2im.data.datasets import load_split
from markup2im.workflow.examples import select_examples

with open(snakemake.log[0], "w", encoding="utf-8") as log_stream:
    logging.basicConfig(stream=log_stream, level=logging.INFO, force=True)
    dataset_dir, split = snakemake.input[0], snakemake.params.split
    chosen = select_examples(
        load_split(dataset_dir, split)["filename"],
        snakemake.params.frames,
        snakemake.params.names,
        where=f"the {split} split of {dataset_dir}",
    )
    logging.getLogger("select_examples").info("selected %s", ", ".join(chosen))
    write_text(snakemake.output.examples, "".join(f"{name}\n" for name in chosen))
