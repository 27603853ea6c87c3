"""One training run, top to bottom: build from the config, train, keep the best epoch, test it."""

import contextlib
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from dlrun import checkpoint, distributed, faults
from dlrun.config_checks import check_config
from dlrun.console import Console
from dlrun.data import load_data, make_loaders
from dlrun.errors import ConfigError, DeviceError
from dlrun.metrics import classification_metrics, confusion_matrix
from dlrun.initializers import describe as describe_init, initialize
from dlrun.models import count_parameters
from dlrun.optim import EarlyStopping, Regime, Schedule, build_loss, build_optimizer
from dlrun.tracking import Tracker

log = logging.getLogger(__name__)


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
def evaluate(model, loader, loss_fn, metrics, confusion=None, amp=None):
    model.eval()
    metrics.reset()
    if confusion is not None:
        confusion.reset()
    for x, y in loader:
        with amp.autocast() if amp else contextlib.nullcontext():
            logits = model(x).float()  # loss and metrics in fp32, whatever the autocast
        metrics.update(logits, y, loss_fn(logits, y))
        if confusion is not None:
            confusion.update(logits, y)
    cm = confusion.compute().cpu().numpy() if confusion is not None else None
    return metrics.compute(), cm


def run(cfg: DictConfig) -> float:
    # With trainer.devices > 1 this process launches the ranks, and each rank calls run_in_process.
    return distributed.run(cfg, run_in_process)


def run_in_process(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    console = Console()
    check_config(cfg)
    device = distributed.setup(cfg, resolve_device(cfg.device))
    seed_everything(cfg.seed)
    trainer = cfg.trainer

    with distributed.local_main_first():  # one process per machine downloads and unpacks
        data = load_data(cfg.dataset, cfg.seed, trainer.val_fraction)
    model = instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
    init_fn = instantiate(cfg.initializer.fn) if cfg.initializer.fn else None
    initialized = initialize(model, init_fn, cfg.initializer.zero_bias)
    model.to(device)
    amp = Precision(trainer.get("precision", "32"), device, model)
    if trainer.get("channels_last", False) and len(data.in_shape) == 3:
        model.to(memory_format=torch.channels_last)  # make_loaders gives channels-last batches to match
    optimizer = build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    distributed.scale_lr(optimizer, trainer.get("scale_lr", False))
    train_model = distributed.wrap(model, device, cfg.seed)  # DDP with several ranks; `model` is for eval and saving
    if trainer.get("compile", False):
        train_model = torch.compile(train_model)  # training steps only: `model` stays plain for eval and saving
    train_loss_fn = build_loss(trainer, data.train.y, data.num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss()  # val and test: plain cross-entropy, comparable across runs

    shard = distributed.shard()  # each rank its part of every epoch; trainer.batch_size is per rank
    train_loader, val_loader, test_loader = make_loaders(data, cfg, device, **shard)
    train_metrics = classification_metrics(data.num_classes).to(device)
    eval_metrics = classification_metrics(data.num_classes).to(device)
    confusion = confusion_matrix(data.num_classes).to(device)
    schedule = Schedule(cfg.scheduler, optimizer, trainer.epochs, len(train_loader))
    regime = Regime(trainer, model, schedule, cfg.logging.grad_norm)
    stopper = EarlyStopping(trainer.early_stopping)
    generators = [g for g in (getattr(train_loader, "generator", None), getattr(train_loader, "augment_generator", None))
                  if g is not None]
    resumed = checkpoint.load_for_resume(cfg, run_dir)  # None for a fresh run
    if resumed:
        if checkpoint.already_completed(resumed, run_dir, trainer.epochs):
            console.print(f"{run_dir}: already completed {resumed['epoch']} epochs; nothing to do "
                          f"(pass trainer.epochs=N to train longer)")
            return resumed["best"]["value"]
        # Several ranks keep their own dropout and augmentation streams: restore only the data order there.
        checkpoint.restore(resumed, model, optimizer, schedule, stopper, generators, streams=distributed.world_size() == 1)

    total, trainable = count_parameters(model)
    model_name = type(model).__name__
    console.print(
        f"dlrun: {model_name} on {cfg.dataset.name} ({len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, input {tuple(data.in_shape)}, {data.num_classes} classes) on {device}, {amp.name}"
    )
    console.print(f"model: {total:,} parameters ({trainable:,} trainable); run dir: {run_dir}")
    log.info("model:\n%s", model)
    log.info("initializer: %s; applied to: %s", describe_init(init_fn, cfg.initializer.zero_bias),
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
            "precision": amp.name,
            "world_size": distributed.world_size(),
            "seed": cfg.seed,
            "parameters": {"total": total, "trainable": trainable},
            "monitor": trainer.monitor,
            **({"resumed_from": {"epoch": resumed["epoch"], "step": resumed["step"]}} if resumed else {}),
        },
        resume=resumed,
    )
    if not resumed:
        tracker.log_graph(model, torch.zeros(1, *data.in_shape, device=device))
    sign = 1 if trainer.mode == "max" else -1
    best_value, best_epoch = -float("inf") * sign, 0
    step, epoch, start_epoch = 0, 0, 1
    if resumed:
        best_value, best_epoch = resumed["best"]["value"], resumed["best"]["epoch"]
        # An early-stopped run has no epochs left: only its test, if a stop came before it.
        step, start_epoch = resumed["step"], trainer.epochs + 1 if resumed["stopped"] else resumed["epoch"] + 1
        console.print(f"resuming from epoch {resumed['epoch']} (step {step}) of {run_dir}")
    last_finite = None  # the last finite training loss and its step, for a divergence report

    def save_last(epoch: int, history: list[dict], stop: bool) -> None:
        """last.pt: everything a resumed run needs to go on exactly as this one would."""
        state = checkpoint.training_state(step, history, {"value": best_value, "epoch": best_epoch}, schedule,
                                          stopper, generators, time.time() - tracker.start)
        checkpoint.save(run_dir / "last.pt", model, optimizer, epoch, cfg, data, stopped=stop,
                        overrides=list(HydraConfig.get().overrides.task), **state)

    pending: list[tuple] = []  # (loss, lr, grad norm) per step, read from the device every log_every_n_steps

    def on_step(loss, lr, grad_norm):
        nonlocal step
        step += 1
        pending.append((loss, lr, grad_norm))
        info = None
        if len(pending) >= trainer.log_every_n_steps:
            info = flush_steps()
        console.step(info)
        if signals is not None:
            signals.check(step, epoch)  # Ctrl-C or SIGTERM: stop here, at a step boundary

    def flush_steps():
        if not pending:
            return None
        nonlocal last_finite
        losses = distributed.mean_over_ranks(torch.stack([p[0] for p in pending]).float()).cpu().tolist()
        norms = torch.stack([p[2] for p in pending]).float().cpu().tolist() if pending[0][2] is not None else None
        first = step - len(losses) + 1
        # Curves up to the first loss that is not finite, then the run stops there: the loop reads
        # losses every log_every_n_steps, not at every step, but the step it names is exact.
        n = next((i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
        tracker.log_steps(first, losses[:n], [p[1] for p in pending][:n], norms[:n] if norms else None)
        pending.clear()
        last_finite = faults.check_finite(losses, first, epoch, last_finite)
        return f"loss {losses[-1]:.4f}"

    if not resumed:
        save_last(0, [], False)  # the starting point, so that a run stopped in its first epoch can resume
    # Several ranks would stop at different steps and wait on each other: there, signals stop at once.
    signals = faults.StopSignals() if distributed.world_size() == 1 else None
    status, diverged, saved_epoch = "failed", None, start_epoch - 1
    try:
        with console.training(trainer.epochs), signals or contextlib.nullcontext():
            for epoch in range(start_epoch, trainer.epochs + 1):
                start = time.time()
                console.start_epoch(epoch, len(train_loader))
                train_stats = train_one_epoch(train_model, train_loader, train_loss_fn, optimizer, regime, train_metrics, on_step, amp)
                flush_steps()
                val_stats, val_cm = evaluate(model, val_loader, loss_fn, eval_metrics, confusion, amp)
                row = {"epoch": epoch}
                row.update({f"train/{k}": v for k, v in to_floats(train_stats).items()})
                row.update({f"val/{k}": v for k, v in to_floats(val_stats).items()})
                row["lr"] = optimizer.param_groups[0]["lr"]
                row["time_s"] = round(time.time() - start, 3)

                if not math.isfinite(row["val/loss"]):
                    raise faults.Diverged(step, epoch, row["val/loss"], last_finite, what="val loss")

                value = row[trainer.monitor]
                improved = sign * value > sign * best_value
                stop = stopper.update(row)
                schedule.after_epoch(row)
                if improved:
                    best_value, best_epoch = value, epoch
                    checkpoint.save(run_dir / "best.pt", model, optimizer, epoch, cfg, data)
                # last.pt is the commit point of the epoch: its steps' curves are on disk before it, and
                # a resume re-logs from it whatever of the epoch a crash kept from reaching the files below.
                tracker.writer.flush()
                save_last(epoch, [*tracker.history, row], stop)
                saved_epoch = epoch
                tracker.log_epoch(row, val_cm)
                tracker.log_model(model, epoch)
                tracker.save_metrics(epochs_completed=epoch, best={"epoch": best_epoch, trainer.monitor: best_value},
                                     early_stopping=stopper.summary())
                console.epoch_row(row, trainer.epochs, improved)
                if signals is not None:
                    signals.check(step, epoch)
                if stop:
                    console.print(f"early stopping: {stopper.monitor} has not improved by more than "
                                  f"{stopper.min_delta} for {stopper.patience} epochs (best epoch {stopper.best_epoch})")
                    break

        # Test the best epoch's weights, reloaded from disk as a user would.
        if distributed.is_main():  # rank 0 reads best.pt, the other ranks get its weights from it
            model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
        distributed.broadcast_from_main(model)
        test_stats, test_cm = evaluate(model, test_loader, loss_fn, eval_metrics, confusion, amp)
        test = to_floats(test_stats)
        tracker.log_test(test, test_cm, best_epoch)
        tracker.log_misclassified(model, test_loader, best_epoch)
        best_row = tracker.history[best_epoch - 1]
        best = {"epoch": best_epoch, **{k: v for k, v in best_row.items() if k.startswith("val/")}}
        tracker.save_metrics(best=best)
        status = "completed"
    except faults.Diverged as err:
        status, diverged = "diverged", err
        tracker.save_metrics(diverged={**err.details, "last_epoch": tracker.history[-1] if tracker.history else None})
    except faults.Interrupted as err:
        status = "interrupted"
        with contextlib.suppress(Exception):
            flush_steps()  # the curves up to the interrupt (a resume replaces those past last.pt)
        tracker.save_metrics(interrupted={"signal": err.signal, "step": err.step, "epoch": err.epoch,
                                          "last_pt_epoch": saved_epoch})
        raise err.with_resume_hint(run_dir, saved_epoch) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        status = "interrupted"
        raise
    except torch.cuda.OutOfMemoryError as err:
        raise faults.out_of_memory(err, trainer.batch_size, trainer.eval_batch_size, device) from err
    finally:
        try:
            tracker.close(status)
        except OSError:
            if status == "completed":
                raise
            log.warning("could not finish the run's files", exc_info=True)  # the run's own error matters more

    if diverged is not None:
        console.print(f"run saved in {run_dir} (diverged at step {diverged.details['step']})")
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return best_value if best_epoch else math.nan  # a sweep goes on; its summary shows the status
        raise diverged

    console.summary(
        f"best epoch {best_epoch} by {trainer.monitor}",
        {"val": {k[4:]: v for k, v in best.items() if k.startswith("val/")}, "test": test},
    )
    console.print(f"run saved in {run_dir}")
    console.print(f"open it with: tensorboard --logdir {run_dir}")
    return best_value


def to_floats(stats: dict) -> dict:
    return {k: round(float(v), 6) for k, v in stats.items()}


class Precision:
    """trainer.precision: 32, bf16, 16 (fp16, CUDA only), or auto: bf16 where the hardware runs it natively
    (on a CPU only for models with convolutions: small fully connected nets run faster in fp32 there).

    bf16 and fp16 autocast the forward pass; fp16 also scales the loss, so that small gradients survive."""

    def __init__(self, value, device: torch.device, model: nn.Module | None = None):
        choice = str(value)
        if choice not in ("32", "bf16", "16", "auto"):
            raise ConfigError("trainer.precision", value, "must be 32, bf16, 16 or auto")
        if choice == "auto":
            convolves = model is None or any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
            choice = "bf16" if native_bf16(device) and (device.type != "cpu" or convolves) else "32"
        if choice == "16" and device.type != "cuda":
            raise ConfigError("trainer.precision", value, f"fp16 needs device=cuda; on {device.type} use bf16 or 32")
        if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trainer.precision", value, "this GPU has no bf16; use 16 or 32")
        self.name = {"32": "fp32", "bf16": "bf16", "16": "fp16"}[choice]
        self.dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(choice)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=choice == "16")

    def autocast(self):
        return contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device_type, dtype=self.dtype)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower than fp32
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags
    return False


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
