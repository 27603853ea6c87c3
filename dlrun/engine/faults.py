"""What stops a run early, and how each stop is reported: Ctrl-C or SIGTERM (the run keeps what it has
and can be resumed), a loss that is no longer finite (the run diverged), and CUDA running out of memory."""

import contextlib
import math
import signal
import threading

import torch

from dlrun.core.errors import DlrunError

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised at a step boundary once the request is seen. The CLI exits with `exit_code`."""

    def __init__(self, signum: int, step: int, epoch: int):
        self.signal = signal.Signals(signum).name
        self.step, self.epoch = step, epoch
        self.exit_code = SIGNAL_EXIT.get(signum, 130)
        self.message = f"interrupted by {self.signal} at step {step} (epoch {epoch})"
        super().__init__(self.message)

    def with_resume_hint(self, run_dir, kept_epoch: int) -> "Interrupted":
        self.message = f"{self.message}; last.pt holds epoch {kept_epoch}: continue with `dlrun train resume={run_dir}`"
        self.args = (self.message,)
        return self


class Diverged(DlrunError):
    """The training loss became NaN or infinite. metrics.json records where, and the last finite values."""

    exit_code = 1

    def __init__(self, step: int, epoch: int, value: float, last_finite: dict | None, what: str = "train loss"):
        self.details = {"step": step, "epoch": epoch, "what": what, "value": str(value), "last_finite": last_finite}
        where = f"; last finite train loss {last_finite['value']:.4g} at step {last_finite['step']}" if last_finite else ""
        super().__init__(
            f"diverged: {what} is {value} at step {step} (epoch {epoch}){where}. "
            "Curves and checkpoints up to there are kept; try a lower optimizer.lr, "
            "trainer.grad_clip.max_norm=1, or trainer.precision=32"
        )


class StopSignals:
    """While active, Ctrl-C and SIGTERM only ask the training loop to stop at its next step, so the run
    stops in a consistent state; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for signum in SIGNAL_EXIT:
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _request(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.signum = signum

    def check(self, step: int, epoch: int) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, step, epoch)


def check_finite(losses: list[float], first_step: int, epoch: int, last_finite: dict | None) -> dict | None:
    """Raise Diverged at the first loss in `losses` (steps first_step, ...) that is not finite; otherwise return
    the last finite (step, value), which the next check reports if that one fails."""
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise Diverged(first_step + i, epoch, loss, last_finite)
        last_finite = {"step": first_step + i, "value": loss}
    return last_finite


def out_of_memory(err: BaseException, batch_size: int, eval_batch_size: int, device) -> DlrunError:
    where = str(device)
    with contextlib.suppress(Exception):
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        where = f"{device} ({total:.1f} GiB)"
    half = max(1, batch_size // 2)
    return DlrunError(
        f"CUDA out of memory on {where} with trainer.batch_size={batch_size} (eval {eval_batch_size}): "
        f"try trainer.batch_size={half}, a smaller model or dataset.resize, or trainer.precision=bf16 "
        f"({str(err).splitlines()[0][:120]})"
    )
