"""Checks on the composed config, run before any work: a bad value is one line naming the key."""

from dlrun.errors import ConfigError

MONITORS = [f"val/{m}" for m in ("loss", "accuracy", "precision", "recall", "f1")]


def check_config(cfg) -> None:
    t = cfg.trainer
    _check(t.epochs >= 1, "trainer.epochs", t.epochs, "must be an integer >= 1")
    _check(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "must be an integer >= 1")
    _check(t.eval_batch_size >= 1, "trainer.eval_batch_size", t.eval_batch_size, "must be an integer >= 1")
    _check(0 < t.val_fraction < 1, "trainer.val_fraction", t.val_fraction, "must be between 0 and 1, exclusive")
    _check(t.monitor in MONITORS, "trainer.monitor", t.monitor, f"must be one of {', '.join(MONITORS)}")
    _check(t.mode in ("max", "min"), "trainer.mode", t.mode, "must be max or min")
    _check(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "must be an integer >= 1")
    opt = cfg.optimizer
    if "lr" in opt:
        _check(opt.lr > 0, "optimizer.lr", opt.lr, "must be > 0")
    if "momentum" in opt:
        _check(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "must be in [0, 1)")
    model = cfg.model
    if "dropout" in model:
        _check(0 <= model.dropout < 1, "model.dropout", model.dropout, "must be in [0, 1)")
    if "hidden_sizes" in model:
        sizes = list(model.hidden_sizes)
        _check(all(int(h) >= 1 for h in sizes), "model.hidden_sizes", sizes, "every size must be an integer >= 1")
    if "channels" in model:
        channels = list(model.channels)
        _check(all(int(c) >= 1 for c in channels), "model.channels", channels, "every entry must be an integer >= 1")


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)
