"""The learning-rate range test (Leslie Smith's, as fastai's `lr_find` and Lightning's `Tuner.lr_find` run it):
the lr grows exponentially step by step over a short run on the training split, and the smoothed loss curve
suggests a value. The steps are the training loop's own (engine.steps.train_one_epoch with the run's loss,
precision, L1 and clipping); only the lr is driven here, on every param group, in place of the scheduler.

The model and optimizer are built fresh for the test and thrown away after it: nothing trained here reaches a run."""

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import open_dict

from dlrun.config.schema import LR_RULES
from dlrun.core.errors import DlrunError
from dlrun.core.io import write_csv, write_json
from dlrun.engine.build import check
from dlrun.engine.optim import Regime
from dlrun.engine.precision import resolve_device, seed_everything
from dlrun.engine.run import build_parts
from dlrun.engine.steps import train_one_epoch
from dlrun.observe import figures
from dlrun.observe.console import Console

# fastai's trim of the curve before a rule reads it: the first tenth (the loss has not moved yet) and the
# last few steps (the blow-up that stopped the test).
SKIP_END = 5
MIN_POINTS = 3


@dataclass
class RangeTest:
    """What the test measured, one entry per step taken: the lr it used, its loss and the smoothed loss."""

    planned: list[float]  # the lr of every step the test would take
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stop: str | None = None  # why it stopped before the last planned step

    @property
    def stopped_early(self) -> bool:
        return self.stop is not None


@dataclass
class Suggestion:
    lr: float
    index: int  # the step of the curve it comes from
    rule: str


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> list[float]:
    """Step i of n uses start * (end / start) ** (i / (n - 1)): start first, end last, evenly spaced on a log axis."""
    return [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]


class _Stop(Exception):
    """Ends the test from inside the training loop's per-step callback."""


class _RangeLr:
    """Stands in for the run's lr schedule: the Regime calls after_step after every optimizer step, and the
    next step's lr is set on every param group (for adadelta too, whose lr scales its update)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: list[float]):
        self.optimizer, self.lrs, self.step = optimizer, lrs, 0
        self._set(lrs[0])

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def after_step(self) -> None:
        self.step += 1
        if self.step < len(self.lrs):
            self._set(self.lrs[self.step])


class _Recorder:
    """The loop's on_step: records each step and stops the test once the smoothed loss blows up."""

    def __init__(self, test: RangeTest, beta: float, diverge: float | None):
        self.test, self.beta, self.diverge, self.avg = test, beta, diverge, 0.0

    def __call__(self, loss: torch.Tensor, lr: float, _grad_norm) -> None:
        test, value = self.test, float(loss)
        if not math.isfinite(value):
            test.stop = f"the loss is {value} at step {len(test.lrs) + 1} (lr {lr:.3g})"
            raise _Stop
        # fastai's and Lightning's debiased moving average: the first steps are not pulled towards 0
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        smoothed = self.avg / (1 - self.beta ** (len(test.losses) + 1))
        test.lrs.append(lr)
        test.losses.append(value)
        test.smoothed.append(smoothed)
        best = min(test.smoothed)
        if self.diverge is not None and len(test.lrs) < len(test.planned) and smoothed > self.diverge * best:
            test.stop = (
                f"the smoothed loss {smoothed:.4g} passed {self.diverge:g} x its minimum {best:.4g} "
                f"at step {len(test.lrs)} (lr {lr:.3g})"
            )
            raise _Stop


def _cycled(loader):
    """The loader's batches epoch after epoch (reshuffled as training reshuffles them), for a test longer than an epoch."""
    if len(loader) == 0:
        raise DlrunError("lr-find: the training split has no batches")
    while True:
        yield from loader


def lr_range_test(
    model, loader, loss_fn, optimizer, amp, trainer, metrics, lrs: list[float], diverge: float | None = 4.0, smoothing=0.98
) -> RangeTest:
    """One training step per lr in `lrs` (batches cycling through `loader`), each with the loss, precision,
    L1 penalty and clipping of `trainer`; stops early once the smoothed loss exceeds `diverge` x its minimum."""
    test = RangeTest(list(lrs))
    regime = Regime(trainer, model, _RangeLr(optimizer, test.planned), log_grad_norm=False)
    batches = itertools.islice(_cycled(loader), len(lrs))
    try:
        train_one_epoch(model, batches, loss_fn, optimizer, regime, metrics, _Recorder(test, smoothing, diverge), amp)
    except _Stop:
        pass
    return test


def _window(n: int) -> tuple[int, int]:
    """The part of an n-step curve the rules read: without its first tenth and last SKIP_END steps, where
    MIN_POINTS steps remain; the whole curve otherwise."""
    lo, hi = n // 10, n - SKIP_END
    return (lo, hi) if hi - lo >= MIN_POINTS else (0, n)


def suggest(lrs: list[float], losses: list[float], rule: str) -> Suggestion:
    """The lr a rule reads from a (smoothed) loss curve, over the window fastai reads.

    steepest: where the loss falls fastest against log(lr) (np.gradient, as Lightning).
    valley: fastai's: the longest run of ever lower losses (a longest decreasing subsequence), and the
    point about half-way along it (its start plus a third plus a sixth of its length)."""
    if rule not in LR_RULES:
        raise ValueError(f"rule must be one of {', '.join(LR_RULES)}, not {rule!r}")
    finite = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    if finite == 0:
        raise ValueError("no finite loss to suggest from")
    lo, hi = _window(finite)
    x, y = np.log(np.asarray(lrs[lo:hi], dtype=float)), np.asarray(losses[lo:hi], dtype=float)
    if rule == "steepest":
        offset = int(np.argmin(np.gradient(y, x))) if len(y) > 1 else 0
    else:
        offset = _valley(y)
    return Suggestion(float(lrs[lo + offset]), lo + offset, rule)


def _valley(y: np.ndarray) -> int:
    # lds[i]: the length of the longest strictly decreasing subsequence ending at i
    lds = np.ones(len(y), dtype=int)
    for i in range(1, len(y)):
        higher = y[:i] > y[i]
        if higher.any():
            lds[i] = lds[:i][higher].max() + 1
    end = int(np.argmax(lds))  # the first index of the longest
    start = end - int(lds[end])
    sections = (end - start) / 3
    return min(max(start + int(sections) + int(sections / 2), 0), len(y) - 1)


# ---- `dlrun lr-find`: the test on the config `dlrun train` would run ----


@dataclass
class Found:
    test: RangeTest
    suggestions: dict[str, Suggestion]  # by rule
    rule: str  # the one the config chose


def find(cfg, console: Console) -> Found:
    """Check the config as a run does, build fresh parts (with no scheduler), run the test and read its curve."""
    check(cfg)
    if cfg.get("resume") is not None:
        raise DlrunError(f"resume={cfg.resume}: lr-find starts from fresh weights and leaves runs alone; drop resume=")
    settings = cfg.lr_find
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    with open_dict(cfg):  # the range test drives the lr itself; the run's own schedule is not built
        cfg.scheduler = {"interval": "epoch", "fn": None}
    parts = build_parts(cfg, device)
    lrs = lr_schedule(float(settings.start_lr), float(settings.end_lr), int(settings.num_steps))
    loader = parts.loaders[0]
    console.print(
        f"dlrun lr-find: {type(parts.built.model).__name__} on {cfg.dataset.name} ({len(parts.data.train)} train, "
        f"{len(loader)} batches of {cfg.trainer.batch_size} per epoch) on {device}, {parts.amp.name}; "
        f"lr from {lrs[0]:.3g} to {lrs[-1]:.3g} over {len(lrs)} steps"
    )
    diverge = None if settings.diverge is None else float(settings.diverge)
    test = lr_range_test(
        parts.train_model,
        loader,
        parts.built.train_loss,
        parts.built.optimizer,
        parts.amp,
        cfg.trainer,
        parts.train_metrics,
        lrs,
        diverge=diverge,
        smoothing=float(settings.smoothing),
    )
    if not test.lrs:
        raise DlrunError(f"lr-find: {test.stop}, before any step could be measured; try a lower lr_find.start_lr")
    if test.stopped_early:
        console.print(f"stopped early after {len(test.lrs)} of {len(lrs)} steps: {test.stop}")
    else:
        console.print(f"ran all {len(lrs)} steps without stopping early")
    suggestions = {rule: suggest(test.lrs, test.smoothed, rule) for rule in LR_RULES}
    return Found(test, suggestions, str(settings.rule))


def save(found: Found, run_dir: Path, settings, command: str) -> dict:
    """lr_find.csv (every step), lr_find.png (the curve with both rules' points) and lr_find.json (the
    suggestion, its rule, the range and the command that trains with it); returns what the json holds."""
    test, chosen = found.test, found.suggestions[found.rule]
    rows = [[i + 1, lr, loss, smoothed] for i, (lr, loss, smoothed) in enumerate(zip(test.lrs, test.losses, test.smoothed))]
    write_csv(run_dir / "lr_find.csv", ["step", "lr", "loss", "smoothed_loss"], rows)
    points = {rule: (s.lr, test.smoothed[s.index]) for rule, s in found.suggestions.items()}
    fig = figures.lr_find_figure(test.lrs, test.losses, test.smoothed, points, found.rule)
    figures.save_figure(fig, run_dir / "lr_find.png")
    summary = {
        "suggestion": chosen.lr,
        "rule": found.rule,
        "suggestions": {rule: {"lr": s.lr, "step": s.index + 1} for rule, s in found.suggestions.items()},
        "range": {"start_lr": float(settings.start_lr), "end_lr": float(settings.end_lr), "num_steps": len(test.planned)},
        "steps_run": len(test.lrs),
        "stopped_early": test.stopped_early,
        "stop_reason": test.stop,
        "diverge": settings.diverge,
        "smoothing": float(settings.smoothing),
        "command": command,
    }
    write_json(run_dir / "lr_find.json", summary)
    return summary
