"""How the weights move, beyond the optimizer itself: the lr schedule, gradient clipping, the L1 penalty,
the loss (the `loss` group, with its class weights), and early stopping. Each comes from the config."""

import inspect
import math

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.text import show_value
from dlrun.engine.eager import use_plain_optimizers
from dlrun.model.losses import OneOutput, task_of


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """The `optimizer` group's partial, given the trainable parameters; torch's own checks become one line."""
    use_plain_optimizers()
    try:
        return instantiate(cfg)(params=params)
    except (ValueError, TypeError) as err:  # "Invalid learning rate", "Nesterov momentum requires ...", a bad key
        raise DlrunError(f"optimizer={cfg.get('_target_')}: {str(err).splitlines()[0]}") from err


def warmup_cosine(optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0, min_lr: float = 0.0):
    """Linear warm-up, then cosine decay. With W warm-up steps and T steps in all, step t uses
    lr * (t + 1) / W while t < W, then min_lr + (lr - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2."""
    total = epochs * steps_per_epoch
    warmup = min(round(warmup_epochs * steps_per_epoch), total - 1)

    def factor_for(base_lr: float):
        floor = min_lr / base_lr

        def factor(t: int) -> float:
            if t < warmup:
                return (t + 1) / warmup
            progress = min(1.0, (t - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    return LambdaLR(optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups])


class Schedule:
    """The `scheduler` group: stepped after every optimizer step or after every epoch (`interval`).

    A scheduler that takes `epochs` and `steps_per_epoch` (onecycle, cosine) gets them from the run;
    plateau gets the monitored val metric at the end of each epoch."""

    def __init__(self, cfg, optimizer, epochs: int, steps_per_epoch: int):
        self.interval = cfg.interval
        self.monitor = cfg.get("monitor")
        self.scheduler = None
        if cfg.fn is None:
            return
        factory = instantiate(cfg.fn)
        wanted = inspect.signature(factory.func).parameters
        known = {"epochs": epochs, "steps_per_epoch": steps_per_epoch if self.interval == "step" else 1}
        try:
            self.scheduler = factory(optimizer, **{k: v for k, v in known.items() if k in wanted})
        except (ValueError, TypeError) as err:
            raise DlrunError(f"scheduler={cfg.fn._target_}: {str(err).splitlines()[0]}") from err
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.interval != "epoch":
            raise ConfigError("scheduler.interval", self.interval, "must be epoch for plateau, which reads val metrics")

    def after_step(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, row: dict) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(row[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


class Regime:
    """What the `trainer` config adds around each optimizer step: an L1 penalty on the loss, gradient
    clipping by norm or by value, the gradient's norm for TensorBoard, and the per-step schedule."""

    def __init__(self, trainer, model: nn.Module, schedule: Schedule, log_grad_norm: bool):
        self.params = [p for p in model.parameters() if p.requires_grad]
        # L1 on weights only (matrices and kernels): biases and batch-norm scales are left free, as for weight decay.
        self.l1_params = [p for p in self.params if p.dim() > 1]
        self.l1 = float(trainer.l1)
        self.max_norm, self.max_value = trainer.grad_clip.max_norm, trainer.grad_clip.max_value
        self.log_grad_norm = log_grad_norm
        self.schedule = schedule
        # One device and dtype (any model but a hand-mixed one): the norm in two kernels, without get_total_norm's
        # grouping of the gradients by device and dtype at every step (half of its 80 us on a small MLP)
        self.one_group = len({(p.device, p.dtype) for p in self.params}) <= 1

    def penalty(self) -> torch.Tensor | float:
        if not self.l1:
            return 0.0
        return self.l1 * sum(p.abs().sum() for p in self.l1_params)

    def clip_gradients(self) -> torch.Tensor | None:
        """Clip as configured; return the gradient's total L2 norm before clipping (None when not wanted)."""
        norm = None
        if self.max_norm is not None:
            norm = nn.utils.clip_grad_norm_(self.params, self.max_norm)
        elif self.log_grad_norm:
            grads = [p.grad for p in self.params if p.grad is not None]
            if self.one_group and grads:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            else:
                norm = nn.utils.get_total_norm(grads)
        if self.max_value is not None:
            nn.utils.clip_grad_value_(self.params, self.max_value)
        return norm if self.log_grad_norm else None

    def after_step(self) -> None:
        self.schedule.after_step()


def build_loss(loss_cfg, train_labels: torch.Tensor, num_classes: int, task: str = "classification") -> nn.Module:
    """The `loss` group's module; `class_weights: balanced` becomes n / (k * count) per class, from the training labels."""
    node = OmegaConf.to_container(loss_cfg, resolve=True) if OmegaConf.is_config(loss_cfg) else dict(loss_cfg)
    weights = node.get("class_weights")
    for key in ("class_weights", "label_smoothing"):  # a classification's settings, kept by loss=by_task
        if task == "regression" and node.get(key):
            raise ConfigError(f"loss.{key}", show_value(node[key]), "applies to a classification; this run is a regression")
    if weights == "balanced":
        # n / (k * count_c), as scikit-learn's "balanced": rare classes weigh more.
        counts = torch.bincount(train_labels.cpu(), minlength=num_classes).float()
        node["class_weights"] = (len(train_labels) / (num_classes * counts.clamp_min(1))).tolist()
    check_class_lists(node, num_classes)
    try:
        loss = instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise DlrunError(f"loss={node.get('_target_')}: {str(cause).strip().splitlines()[0]}") from err
    return OneOutput(loss) if task == "regression" and task_of(type(loss)) is None else loss


def check_class_lists(loss: dict, num_classes: int) -> None:
    """The loss's per-class lists have one entry per class (the config check knows the shipped datasets'
    class counts; an image folder's or a table's shows only when the data is read)."""
    for key in ("class_weights", "alpha"):
        value = loss.get(key)
        if isinstance(value, (list, tuple)) and len(value) != num_classes:
            raise ConfigError(f"loss.{key}", list(value), f"must have {num_classes} weights, one per class")
    if isinstance(loss.get("alpha"), (int, float)) and num_classes != 2:
        raise ConfigError(
            "loss.alpha", loss["alpha"], f"one number is for two classes; give a list of {num_classes}, one per class"
        )


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs (null: never)."""

    def __init__(self, cfg):
        self.monitor, self.mode, self.patience = cfg.monitor, cfg.mode, cfg.patience
        self.min_delta = float(cfg.min_delta)
        self.best, self.best_epoch, self.bad_epochs, self.stopped_epoch = None, 0, 0, None

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    def update(self, row: dict) -> bool:
        """Record this epoch's row; True when training should stop now."""
        value = row[self.monitor]
        sign = 1 if self.mode == "max" else -1
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, row["epoch"], 0
        else:
            self.bad_epochs += 1
        if self.enabled and self.bad_epochs >= self.patience:
            self.stopped_epoch = row["epoch"]
        return self.stopped_epoch is not None

    def summary(self) -> dict:
        """What metrics.json records."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "stopped": self.stopped_epoch is not None,
            "stopped_epoch": self.stopped_epoch,
            "best_epoch": self.best_epoch,
            "best": self.best,
        }

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
