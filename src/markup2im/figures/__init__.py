"""Pictures and tables for the report, one module per kind of output.

- :mod:`~markup2im.figures.images`: enlarging, labels, opening images (no torch, no numba: the
  workflow imports it while planning)
- :mod:`~markup2im.figures.gif`: denoising GIFs and side-by-side comparison GIFs
- :mod:`~markup2im.figures.grid`: sample grids (gold, then each method)
- :mod:`~markup2im.figures.tables`: the metrics table and the number formats of every table
- :mod:`~markup2im.figures.plots`: metric distributions and training-loss curves
- :mod:`~markup2im.figures.html`: self-contained HTML pages for ``snakemake --report``
- :mod:`~markup2im.figures.paired`: the paired comparison of two runs over the same images

Everything reads files written by other steps and writes its output atomically.
"""
