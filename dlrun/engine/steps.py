"""One pass over the data: an epoch of training steps, or an evaluation; both accumulate their metrics on the device."""

import contextlib

import torch

from dlrun.engine.precision import Precision


def train_one_epoch(model, loader, loss_fn, optimizer, regime, metrics, on_step, amp=None):
    amp = amp or Precision("32", torch.device("cpu"))
    model.train()
    metrics.reset()
    for x, y in loader:
        with amp.autocast():
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        amp.scaler.scale(loss + regime.penalty()).backward()
        amp.scaler.unscale_(optimizer)  # clipping and the logged norm see the true gradients (fp16 only)
        grad_norm = regime.clip_gradients()
        lr = optimizer.param_groups[0]["lr"]  # the lr this step uses, before a per-step schedule moves it
        amp.scaler.step(optimizer)
        amp.scaler.update()
        regime.after_step()
        metrics.update(logits.detach(), y, loss.detach())
        on_step(loss.detach(), lr, grad_norm)
    return metrics.compute()


@torch.no_grad()
def evaluate(model, loader, loss_fn, metrics, amp=None):
    """The split's metrics; `metrics` then holds its confusion matrix and class probabilities too."""
    model.eval()
    metrics.reset()
    for x, y in loader:
        with amp.autocast() if amp else contextlib.nullcontext():
            logits = model(x).float()  # loss and metrics in fp32, whatever the autocast
        metrics.update(logits, y, loss_fn(logits, y))
    return metrics.compute()


def to_floats(stats: dict) -> dict:
    return {k: round(float(v), 6) for k, v in stats.items()}
