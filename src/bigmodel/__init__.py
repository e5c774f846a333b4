"""bigmodel: a small, fast, Hydra-configured PyTorch training framework."""

__version__ = "0.1.0"
