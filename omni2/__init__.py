"""omni2: a streaming reimplementation of LLaMA-Omni2 that loads the official checkpoints."""

__version__ = "0.1.0"
