"""The imbalance lesson's data: a training split with some classes made rare on purpose.

`dataset.class_counts` keeps a given number of training examples per class; `dataset.imbalance` a long tail,
class k keeping a fraction ratio^(k/(K-1)) of its examples (the first class all, the last `ratio` of them).
Only the training split shrinks: val and test keep every class as it was, so the test scores show what the
rare classes cost."""

import torch

from dlrun.core.errors import ConfigError
from dlrun.core.text import show_value


def training_subset(cfg, labels: torch.Tensor, classes: list[str], seed: int) -> torch.Tensor | None:
    """The sorted indices of the training examples to keep, or None when the dataset config asks for no imbalance."""
    counts, ratio = cfg.get("class_counts"), cfg.get("imbalance")
    if counts is None and ratio is None:
        return None
    if counts is not None and ratio is not None:
        raise ConfigError("dataset.imbalance", show_value(ratio), "and dataset.class_counts cannot both be set; pick one")
    have = torch.bincount(labels.cpu(), minlength=len(classes)).tolist()
    wanted = _wanted_counts(_plain(counts), classes, have) if counts is not None else _tail_counts(ratio, have)
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for k, n in enumerate(wanted):
        members = (labels.cpu() == k).nonzero().flatten()
        keep.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(keep).sort().values


def _plain(value):
    """An OmegaConf list or mapping as plain Python (ListConfig and DictConfig are neither list nor dict)."""
    if hasattr(value, "items"):
        return {str(k): v for k, v in value.items()}
    return list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else value


def _wanted_counts(counts, classes: list[str], have: list[int]) -> list[int]:
    """dataset.class_counts: one count per class, or class name -> count (the classes not named keep all)."""
    shown = show_value(counts)
    if isinstance(counts, dict):
        unknown = [name for name in counts if name not in classes]
        if unknown:
            raise ConfigError("dataset.class_counts", shown, f"names no class {unknown[0]}; the classes are {', '.join(classes)}")
        counts = [counts.get(name, n) for name, n in zip(classes, have)]
    elif not isinstance(counts, list) or len(counts) != len(classes):
        raise ConfigError(
            "dataset.class_counts", shown, f"must be a list of {len(classes)} counts, one per class, or a mapping class: count"
        )
    for name, n, available in zip(classes, counts, have):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError("dataset.class_counts", shown, f"class {name}: {show_value(n)} is not a count (an integer >= 1)")
        if n > available:
            raise ConfigError(
                "dataset.class_counts", shown, f"class {name} has {available} training examples, fewer than the {n} asked for"
            )
    return counts


def _tail_counts(ratio, have: list[int]) -> list[int]:
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio <= 1:
        raise ConfigError("dataset.imbalance", show_value(ratio), "must be a ratio in (0, 1]: the last class keeps this fraction")
    last = max(len(have) - 1, 1)
    return [max(1, round(n * ratio ** (k / last))) for k, n in enumerate(have)]
