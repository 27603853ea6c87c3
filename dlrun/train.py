"""One training run, top to bottom: build from the config, train, keep the best epoch, test it."""

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlrun import checkpoint
from dlrun.config_checks import check_config
from dlrun.console import Console
from dlrun.data import DeviceLoader, load_data
from dlrun.errors import DeviceError
from dlrun.metrics import classification_metrics, confusion_matrix
from dlrun.models import count_parameters, initialize
from dlrun.tracking import Tracker

log = logging.getLogger(__name__)


def train_one_epoch(model, loader, loss_fn, optimizer, metrics, on_step):
    model.train()
    metrics.reset()
    for x, y in loader:
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        metrics.update(logits.detach(), y, loss.detach())
        on_step(loss.detach())
    return metrics.compute()


@torch.no_grad()
def evaluate(model, loader, loss_fn, metrics, confusion=None):
    model.eval()
    metrics.reset()
    if confusion is not None:
        confusion.reset()
    for x, y in loader:
        logits = model(x)
        metrics.update(logits, y, loss_fn(logits, y))
        if confusion is not None:
            confusion.update(logits, y)
    cm = confusion.compute().cpu().numpy() if confusion is not None else None
    return metrics.compute(), cm


def run(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    console = Console()
    check_config(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    trainer = cfg.trainer

    data = load_data(cfg.dataset, cfg.seed, trainer.val_fraction)
    model = instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
    init_fn = instantiate(cfg.initializer.fn) if cfg.initializer.fn else None
    initialized = initialize(model, init_fn, cfg.initializer.zero_bias)
    model.to(device)
    optimizer = instantiate(cfg.optimizer)(params=[p for p in model.parameters() if p.requires_grad])
    loss_fn = nn.CrossEntropyLoss()

    train_loader = DeviceLoader(data.train, trainer.batch_size, device, data.mean, data.std, shuffle=True, seed=cfg.seed)
    val_loader = DeviceLoader(data.val, trainer.eval_batch_size, device, data.mean, data.std, shuffle=False)
    test_loader = DeviceLoader(data.test, trainer.eval_batch_size, device, data.mean, data.std, shuffle=False)
    train_metrics = classification_metrics(data.num_classes).to(device)
    eval_metrics = classification_metrics(data.num_classes).to(device)
    confusion = confusion_matrix(data.num_classes).to(device)

    total, trainable = count_parameters(model)
    model_name = type(model).__name__
    console.print(
        f"dlrun: {model_name} on {cfg.dataset.name} ({len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, input {tuple(data.in_shape)}, {data.num_classes} classes) on {device}"
    )
    console.print(f"model: {total:,} parameters ({trainable:,} trainable); run dir: {run_dir}")
    log.info("model:\n%s", model)
    log.info("initializer %s applied to: %s", cfg.initializer.fn._target_ if init_fn else "default (PyTorch's own)",
             ", ".join(initialized) or "nothing")

    tracker = Tracker(
        run_dir,
        cfg,
        data.classes,
        info={
            "run_dir": str(run_dir),
            "model": model_name,
            "dataset": cfg.dataset.name,
            "device": str(device),
            "seed": cfg.seed,
            "parameters": {"total": total, "trainable": trainable},
            "monitor": trainer.monitor,
        },
    )
    sign = 1 if trainer.mode == "max" else -1
    best_value, best_epoch = -float("inf") * sign, 0
    step = 0
    pending: list[torch.Tensor] = []  # step losses, read from the device every log_every_n_steps

    def on_step(loss):
        nonlocal step
        step += 1
        pending.append(loss)
        info = None
        if len(pending) >= trainer.log_every_n_steps:
            info = flush_steps()
        console.step(info)

    def flush_steps():
        if not pending:
            return None
        losses = torch.stack(pending).float().cpu().tolist()
        lr = optimizer.param_groups[0]["lr"]
        tracker.log_steps(step - len(losses) + 1, losses, [lr] * len(losses))
        pending.clear()
        return f"loss {losses[-1]:.4f}"

    status = "failed"
    try:
        with console.training(trainer.epochs):
            for epoch in range(1, trainer.epochs + 1):
                start = time.time()
                console.start_epoch(epoch, len(train_loader))
                train_stats = train_one_epoch(model, train_loader, loss_fn, optimizer, train_metrics, on_step)
                flush_steps()
                val_stats, val_cm = evaluate(model, val_loader, loss_fn, eval_metrics, confusion)
                row = {"epoch": epoch}
                row.update({f"train/{k}": v for k, v in to_floats(train_stats).items()})
                row.update({f"val/{k}": v for k, v in to_floats(val_stats).items()})
                row["lr"] = optimizer.param_groups[0]["lr"]
                row["time_s"] = round(time.time() - start, 3)

                value = row[trainer.monitor]
                improved = sign * value > sign * best_value
                if improved:
                    best_value, best_epoch = value, epoch
                    checkpoint.save(run_dir / "best.pt", model, optimizer, epoch, cfg, data)
                checkpoint.save(run_dir / "last.pt", model, optimizer, epoch, cfg, data)
                tracker.log_epoch(row, val_cm)
                tracker.save_metrics(epochs_completed=epoch, best={"epoch": best_epoch, trainer.monitor: best_value})
                console.epoch_row(row, trainer.epochs, improved)

        # Test the best epoch's weights, reloaded from disk as a user would.
        model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
        test_stats, test_cm = evaluate(model, test_loader, loss_fn, eval_metrics, confusion)
        test = to_floats(test_stats)
        tracker.log_test(test, test_cm, best_epoch)
        best_row = tracker.history[best_epoch - 1]
        best = {"epoch": best_epoch, **{k: v for k, v in best_row.items() if k.startswith("val/")}}
        tracker.save_metrics(best=best)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        tracker.close(status)

    console.summary(
        f"best epoch {best_epoch} by {trainer.monitor}",
        {"val": {k[4:]: v for k, v in best.items() if k.startswith("val/")}, "test": test},
    )
    console.print(f"run saved in {run_dir}")
    console.print(f"open it with: tensorboard --logdir {run_dir}")
    return best_value


def to_floats(stats: dict) -> dict:
    return {k: round(float(v), 6) for k, v in stats.items()}


def resolve_device(cfg) -> torch.device:
    kind, index = cfg.type, cfg.index
    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        available.append("mps")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    elif kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device.type={kind}: must be auto, cpu, cuda or mps")
    name = kind if index is None or kind != "cuda" else f"cuda:{index}"
    if kind != "cpu" and not any(d == name or d.startswith(f"{name}:") for d in available):
        raise DeviceError(
            f"device={name}: not available on this machine; available devices: {', '.join(available)} "
            "(use device=auto or device=cpu)"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
