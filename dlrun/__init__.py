"""dlrun: a command-line experiment runner for PyTorch, driven by Hydra configs."""

__version__ = "0.1.0"
