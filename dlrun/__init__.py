"""dlrun: a command-line experiment runner for PyTorch, driven by Hydra configs.

From Python: `dlrun.train(["model=cnn", "trainer.epochs=1"])` and `dlrun.sweep([...])`. Importing
dlrun imports neither torch nor Hydra: they load when a run starts."""

from dlrun.core import __version__

__all__ = ["__version__", "lr_find", "sweep", "train"]


def train(overrides=(), config_dir=None):
    """Train one run in this process, as `dlrun train OVERRIDES` would; see dlrun.app.api.train."""
    from dlrun.app.api import train as train_

    return train_(overrides, config_dir)


def sweep(overrides=(), config_dir=None):
    """Run a multirun in this process, as `dlrun train -m OVERRIDES` would; see dlrun.app.api.sweep."""
    from dlrun.app.api import sweep as sweep_

    return sweep_(overrides, config_dir)


def lr_find(overrides=(), config_dir=None):
    """The learning-rate range test in this process, as `dlrun lr-find OVERRIDES`; see dlrun.app.api.lr_find."""
    from dlrun.app.api import lr_find as lr_find_

    return lr_find_(overrides, config_dir)
