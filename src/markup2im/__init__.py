"""markup2im: markup-to-image diffusion models with scheduled sampling."""

__version__ = "0.1.0"
