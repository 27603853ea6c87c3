"""What the training loop changes as it goes, kept in one place: the counters and the best epoch
(LoopState), and the step losses waiting on the device to be read (StepLog)."""

import math
from dataclasses import dataclass, field

import torch

from dlrun.core.faultpoints import kill_point
from dlrun.engine import ddp, faults


@dataclass
class LoopState:
    """The loop's counters. last.pt saves them with the weights; a resume starts from them."""

    mode: str  # max or min: which way trainer.monitor improves
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch under way, or the last one finished
    start_epoch: int = 1  # the first epoch this process trains
    best_value: float = math.nan
    best_epoch: int = 0  # 0 until an epoch has been evaluated
    saved_epoch: int = 0  # the last epoch whose last.pt is on disk
    last_finite: dict | None = None  # the last finite training loss and its step, for a divergence report

    def __post_init__(self):
        if math.isnan(self.best_value):
            self.best_value = -math.inf if self.mode == "max" else math.inf

    @classmethod
    def resumed(cls, mode: str, saved: dict, epochs: int) -> "LoopState":
        """Where last.pt left off; an early-stopped run has no epochs left, only its test."""
        start = epochs + 1 if saved["stopped"] else saved["epoch"] + 1
        return cls(
            mode,
            step=saved["step"],
            epoch=saved["epoch"],
            start_epoch=start,
            best_value=saved["best"]["value"],
            best_epoch=saved["best"]["epoch"],
            saved_epoch=saved["epoch"],
        )

    def improves(self, value: float) -> bool:
        return value > self.best_value if self.mode == "max" else value < self.best_value

    @property
    def best(self) -> dict:
        return {"value": self.best_value, "epoch": self.best_epoch}


@dataclass
class StepLog:
    """The training loss, lr and gradient norm of each step, kept on the device and read back every
    `every` steps: reading a value from a GPU waits for it, so the loop reads in batches."""

    state: LoopState
    tracker: object
    console: object
    every: int
    signals: faults.StopSignals | None = None
    pending: list[tuple] = field(default_factory=list)

    def record(self, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor | None) -> None:
        """After each optimizer step: count it, read the losses when due, and stop at a signal."""
        self.state.step += 1
        kill_point("step")
        self.pending.append((loss, lr, grad_norm))
        info = self.flush() if len(self.pending) >= self.every else None
        self.console.step(info)
        if self.signals is not None:
            self.signals.check(self.state.step, self.state.epoch)  # Ctrl-C or SIGTERM: stop here, at a step boundary

    def flush(self) -> str | None:
        """Log the pending steps; raise Diverged at the first loss that is not finite."""
        if not self.pending:
            return None
        losses = ddp.mean_over_ranks(torch.stack([p[0] for p in self.pending]).float()).cpu().tolist()
        norms = None
        if self.pending[0][2] is not None:
            norms = torch.stack([p[2] for p in self.pending]).float().cpu().tolist()
        lrs = [p[1] for p in self.pending]
        first = self.state.step - len(losses) + 1
        # Curves up to the first loss that is not finite, then the run stops there: the step it names is exact.
        n = next((i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
        self.tracker.log_steps(first, losses[:n], lrs[:n], norms[:n] if norms else None)
        self.pending.clear()
        self.state.last_finite = faults.check_finite(losses, first, self.state.epoch, self.state.last_finite)
        return f"loss {losses[-1]:.4f}"
