"""One training run, top to bottom: build it from the config, resume it if asked, fit it epoch by
epoch keeping the best, test the best epoch's weights, and report.

The engine knows nothing of Hydra's runtime: the app hands it the composed config and a RunContext
(the run directory, the overrides, whether it is a job of a sweep), so a run can start from the
command line, from a notebook or from a test alike."""

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dlrun.core.errors import DlrunError
from dlrun.core.faultpoints import kill_point
from dlrun.core.ranks import is_main, world_size
from dlrun.core.text import first_line
from dlrun.data import Data, load_data, make_loaders
from dlrun.engine import checkpoint, ddp, faults, search
from dlrun.engine.build import Built, build, check
from dlrun.engine.optim import EarlyStopping, Regime, Schedule
from dlrun.engine.precision import Precision, resolve_device, seed_everything
from dlrun.engine.readings import regression_readings, test_readings
from dlrun.engine.state import LoopState, StepLog
from dlrun.engine.steps import evaluate, to_floats, train_one_epoch
from dlrun.model import count_parameters
from dlrun.model.initializers import describe as describe_init
from dlrun.observe.console import Console
from dlrun.observe.diagnosis import describe, diagnose
from dlrun.observe.metrics import task_metrics
from dlrun.observe.tracker import Tracker

log = logging.getLogger(__name__)

# The scores of the final summary table; metrics.json and history.csv hold every average.
SUMMARY_METRICS = ("loss", "accuracy", "precision", "recall", "f1", "f1_weighted", "auroc", "average_precision")
SUMMARY_METRICS += ("mae", "rmse", "r2")  # a regression's


@dataclass
class RunContext:
    """What the app knows of a run and the engine needs: where it writes, how it was asked for."""

    run_dir: Path
    overrides: list[str] = field(default_factory=list)  # the command line's overrides, kept in last.pt for resume
    is_sweep: bool = False  # a diverged job of a sweep returns; a single run raises


@dataclass
class Parts:
    """Everything one run trains and measures with, built once before the first epoch."""

    data: Data
    built: Built
    device: torch.device
    amp: Precision
    train_model: torch.nn.Module  # DDP or compiled around built.model, or the model itself
    loaders: tuple  # train, val, test
    schedule: Schedule
    regime: Regime
    stopper: EarlyStopping
    train_metrics: torch.nn.Module
    eval_metrics: torch.nn.Module
    config_yaml: str  # what every checkpoint stores of the config

    @property
    def generators(self) -> list[torch.Generator]:
        """The loader's random streams (data order, augmentation), which last.pt saves."""
        train = self.loaders[0]
        return [g for g in (getattr(train, "generator", None), getattr(train, "augment_generator", None)) if g is not None]


def run(cfg, ctx: RunContext) -> float:
    """Train one run in this process (one rank of several, or the only one); the monitored best value."""
    console = Console()
    values = check(cfg)
    device = ddp.setup(cfg, resolve_device(cfg.device))
    seed_everything(cfg.seed)
    parts = build_parts(cfg, device)
    resumed = checkpoint.load_for_resume(cfg, ctx.run_dir)  # None for a fresh run
    if resumed and checkpoint.already_completed(resumed, ctx.run_dir, cfg.trainer.epochs):
        console.print(
            f"{ctx.run_dir}: already completed {resumed['epoch']} epochs; nothing to do (pass trainer.epochs=N to train longer)"
        )
        return resumed["best"]["value"]
    state = resume(cfg, parts, resumed, console, ctx.run_dir)
    tracker = open_tracker(cfg, parts, ctx, resumed, values)
    announce(cfg, parts, console, ctx.run_dir)
    if not resumed:
        try:  # a first epoch stopped can resume
            save_last(cfg, parts, state, tracker, ctx, epoch=0, history=[], stop=False)
        except OSError as err:
            record_error(tracker, err)
            close_tracker(tracker, "failed")
            raise
    elif resumed.get("source") == checkpoint.BEST:  # the damaged last.pt is replaced at once, not after an epoch
        save_last(cfg, parts, state, tracker, ctx, epoch=resumed["epoch"], history=list(tracker.history), stop=False)
    outcome = fit_and_test(cfg, parts, state, tracker, console, ctx)
    return report(cfg, outcome, state, console, ctx)


def build_parts(cfg, device: torch.device) -> Parts:
    trainer = cfg.trainer
    with ddp.local_main_first():  # one process per machine downloads and unpacks
        data = load_data(cfg.dataset, cfg.seed, trainer.val_fraction, task=cfg.get("task"))
    built = build(cfg, data.in_shape, data.num_classes, device, data.train.y)
    amp = Precision(trainer.get("precision", "32"), device, built.model)
    ddp.scale_lr(built.optimizer, trainer.get("scale_lr", False))
    train_model = ddp.wrap(built.model, device, cfg.seed)  # DDP with several ranks; built.model evaluates and saves
    if trainer.get("compile", False):
        train_model = torch.compile(train_model)  # training steps only: built.model stays plain
    loaders = make_loaders(data, cfg, device, **ddp.shard())  # each rank its part; trainer.batch_size is per rank
    schedule = Schedule(cfg.scheduler, built.optimizer, trainer.epochs, len(loaders[0]))
    return Parts(
        data,
        built,
        device,
        amp,
        train_model,
        loaders,
        schedule,
        regime=Regime(trainer, built.model, schedule, cfg.logging.grad_norm),
        stopper=EarlyStopping(trainer.early_stopping),
        train_metrics=task_metrics(data.task, data.num_classes, data.target_scale).to(device),
        eval_metrics=task_metrics(data.task, data.num_classes, data.target_scale).to(device),
        config_yaml=OmegaConf.to_yaml(cfg),
    )


def resume(cfg, parts: Parts, resumed: dict | None, console: Console, run_dir: Path) -> LoopState:
    """The loop's starting state: fresh, or where last.pt left off with every stream restored."""
    if not resumed:
        return LoopState(cfg.trainer.mode)
    # Several ranks keep their own dropout and augmentation streams: restore only the data order there.
    checkpoint.restore(
        resumed,
        parts.built.model,
        parts.built.optimizer,
        parts.schedule,
        parts.stopper,
        parts.generators,
        streams=world_size() == 1,
    )
    console.print(f"resuming from epoch {resumed['epoch']} (step {resumed['step']}) of {run_dir}")
    return LoopState.resumed(cfg.trainer.mode, resumed, cfg.trainer.epochs)


def open_tracker(cfg, parts: Parts, ctx: RunContext, resumed: dict | None, values: dict) -> Tracker:
    """`values`: the config resolved (check's), for TensorBoard's HParams tab."""
    total, trainable = count_parameters(parts.built.model)
    info = {
        "run_dir": str(ctx.run_dir),
        "model": type(parts.built.model).__name__,
        "dataset": cfg.dataset.name,
        "device": str(parts.device),
        "precision": parts.amp.name,
        "world_size": world_size(),
        "seed": cfg.seed,
        "parameters": {"total": total, "trainable": trainable},
        "monitor": cfg.trainer.monitor,
        **({"resumed_from": {"epoch": resumed["epoch"], "step": resumed["step"]}} if resumed else {}),
        **({"skipped_files": parts.data.skipped} if getattr(parts.data, "skipped", None) else {}),
        # The rarest class's test recall, in a summary, needs to know which class that is (dataset.imbalance).
        **({"train_class_counts": train_class_counts(parts.data)} if parts.data.task == "classification" else {}),
    }
    if not resumed and is_main() and not (ctx.run_dir / "last.pt").exists():
        # An attempt killed before its first checkpoint left curves that nothing can continue: not a second run here.
        for stale in ctx.run_dir.glob("events.out.tfevents.*"):
            stale.unlink()
    val_counts = class_counts(parts.data.val, parts.data.num_classes) if parts.data.task == "classification" else None
    tracker = Tracker(ctx.run_dir, cfg, parts.data.classes, info, resumed, ctx.overrides, val_counts, values)
    if not resumed:
        tracker.log_graph(parts.built.model, torch.zeros(1, *parts.data.in_shape, device=parts.device))
    return tracker


def train_class_counts(data: Data) -> dict[str, int]:
    return dict(zip(map(str, data.classes), class_counts(data.train, data.num_classes).tolist()))


def class_counts(split, num_classes: int) -> np.ndarray:
    return torch.bincount(split.y.cpu().long(), minlength=num_classes).numpy()


def announce(cfg, parts: Parts, console: Console, run_dir: Path) -> None:
    data, model = parts.data, parts.built.model
    total, trainable = count_parameters(model)
    console.print(
        f"dlrun: {type(model).__name__} on {cfg.dataset.name} ({len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, input {tuple(data.in_shape)}, {_what(data)}) on {parts.device}, "
        f"{parts.amp.name}"
    )
    console.print(f"model: {total:,} parameters ({trainable:,} trainable); run dir: {run_dir}")
    log.info("model:\n%s", model)
    log.info(
        "initializer: %s; applied to: %s",
        describe_init(parts.built.init_fn, cfg.initializer.zero_bias),
        ", ".join(parts.built.initialized) or "nothing",
    )


def _what(data: Data) -> str:
    return "a regression" if data.task == "regression" else f"{data.num_classes} classes"


@dataclass
class Outcome:
    status: str  # completed, diverged or pruned (interruptions and errors are raised)
    best: dict | None = None  # the best epoch's val metrics
    test: dict | None = None
    diverged: faults.Diverged | None = None
    readings: dict = field(default_factory=dict)  # the worst confusions and the threshold, for the summary
    diagnosis: dict = field(default_factory=dict)  # the verdict on the learning curves


def fit_and_test(cfg, parts: Parts, state: LoopState, tracker: Tracker, console: Console, ctx: RunContext) -> Outcome:
    """The epochs, then the test of the best epoch; the run's files are closed with its status whatever happens."""
    # Several ranks would stop at different steps and wait on each other: there, signals stop at once.
    signals = faults.StopSignals() if world_size() == 1 else None
    steps = StepLog(state, tracker, console, cfg.trainer.log_every_n_steps, signals)
    status = "failed"
    try:
        with console.training(cfg.trainer.epochs), signals or contextlib.nullcontext():
            fit(cfg, parts, state, steps, tracker, console, ctx)
        outcome = test(parts, state, tracker, ctx.run_dir)
        diagnose_run(cfg, tracker, state, outcome)
        status = "completed"
    except faults.Diverged as err:
        status = "diverged"
        tracker.save_metrics(diverged={**err.details, "last_epoch": tracker.history[-1] if tracker.history else None})
        outcome = Outcome("diverged", diverged=err)
        outcome.diagnosis = diagnose(tracker.history, cfg.trainer.monitor, cfg.trainer.mode, diverged=err.details)
        diagnose_run(cfg, tracker, state, outcome)
    except search.Pruned as err:  # like an early stop: last.pt and best.pt as at any epoch's end; no test
        status = "pruned"
        tracker.save_metrics(pruned=err.details)
        outcome = Outcome("pruned")  # no verdict: the pruner judged it against the other trials, not its own curves
    except faults.Interrupted as err:
        status = "interrupted"
        with contextlib.suppress(Exception):
            steps.flush()  # the curves up to the interrupt (a resume replaces those past last.pt)
        tracker.save_metrics(
            interrupted={"signal": err.signal, "step": err.step, "epoch": err.epoch, "last_pt_epoch": state.saved_epoch}
        )
        raise err.with_resume_hint(ctx.run_dir, state.saved_epoch) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        status = "interrupted"
        raise
    except torch.cuda.OutOfMemoryError as err:
        error = faults.out_of_memory(err, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, parts.device)
        record_error(tracker, error)
        raise error from err
    except Exception as err:
        record_error(tracker, err)
        raise
    finally:
        close_tracker(tracker, status)
    return outcome


def record_error(tracker: Tracker, err: BaseException) -> None:
    """The failure in the run's own files, so that its directory says why it stopped (the command's line says it too)."""
    line = str(err) if isinstance(err, DlrunError) else f"{type(err).__name__}: {first_line(str(err))}"
    log.error("run failed: %s", line)
    with contextlib.suppress(OSError):  # a full disk may refuse this too; the command's line still says it
        tracker.save_metrics(error=line)


def diagnose_run(cfg, tracker: Tracker, state: LoopState, outcome: "Outcome") -> None:
    """The verdict on the curves, read from the run's own history as the metrics chapter reads them."""
    if not outcome.diagnosis:
        outcome.diagnosis = diagnose(tracker.history, cfg.trainer.monitor, cfg.trainer.mode)
    tracker.log_diagnosis(outcome.diagnosis, state.best_epoch or state.epoch)


def close_tracker(tracker: Tracker, status: str) -> None:
    try:
        tracker.close(status)
    except OSError:
        if status == "completed":
            raise
        log.warning("could not finish the run's files", exc_info=True)  # the run's own error matters more


def fit(cfg, parts: Parts, state: LoopState, steps: StepLog, tracker: Tracker, console: Console, ctx: RunContext) -> None:
    """Train and evaluate epoch by epoch from state.start_epoch, saving best.pt and last.pt as it goes."""
    (train_loader, val_loader, _), epochs = parts.loaders, cfg.trainer.epochs
    monitor = cfg.trainer.monitor  # read once: each read resolves its interpolation again (about 1 ms)
    trial = search.TrialReport(cfg.get("search"), epochs, parts.device)  # a no-op outside an Optuna search
    for epoch in range(state.start_epoch, epochs + 1):
        state.epoch, start = epoch, time.time()
        console.start_epoch(epoch, len(train_loader))
        train_stats = train_one_epoch(
            parts.train_model,
            train_loader,
            parts.built.train_loss,
            parts.built.optimizer,
            parts.regime,
            parts.train_metrics,
            steps.record,
            parts.amp,
        )
        steps.flush()
        val_stats = evaluate(parts.built.model, val_loader, parts.built.eval_loss, parts.eval_metrics, parts.amp)
        row = epoch_row(epoch, train_stats, val_stats, parts.built.optimizer, start)
        tracker.ask_for_val_card(epoch, parts.eval_metrics.confusion)
        if not math.isfinite(row["val/loss"]):
            raise faults.Diverged(state.step, epoch, row["val/loss"], state.last_finite, what="val loss")
        improved = state.improves(row[monitor])
        stop = parts.stopper.update(row)
        parts.schedule.after_epoch(row)
        if improved:
            state.best_value, state.best_epoch = row[monitor], epoch
            checkpoint.save(
                ctx.run_dir / "best.pt", parts.built.model, parts.built.optimizer, epoch, parts.config_yaml, parts.data
            )
            kill_point("best_saved")
        # last.pt is the commit point of the epoch: everything the epoch shows (its curves, images and
        # history.csv row) is on disk before it. A kill before it reruns the epoch from the last commit, and
        # the resumed tracker writes only what the killed attempt did not: each entry appears once.
        log_epoch(tracker, parts, state, row, improved, monitor)
        save_last(cfg, parts, state, tracker, ctx, epoch=epoch, history=list(tracker.history), stop=stop)
        kill_point("last_saved")
        console.epoch_row(row, epochs, improved)
        trial.after_epoch(epoch, row[monitor])  # raises search.Pruned once the study's pruner says stop
        if steps.signals is not None:
            steps.signals.check(state.step, epoch)
        if stop:
            console.print(
                f"early stopping: {parts.stopper.monitor} has not improved by more than "
                f"{parts.stopper.min_delta} for {parts.stopper.patience} epochs "
                f"(best epoch {parts.stopper.best_epoch})"
            )
            break


def epoch_row(epoch: int, train_stats: dict, val_stats: dict, optimizer, start: float) -> dict:
    """One line of history.csv: the epoch's train and val metrics, its last lr and its time."""
    row = {"epoch": epoch}
    row.update({f"train/{k}": v for k, v in to_floats(train_stats).items()})
    row.update({f"val/{k}": v for k, v in to_floats(val_stats).items()})
    row["lr"] = optimizer.param_groups[0]["lr"]
    row["time_s"] = round(time.time() - start, 3)
    return row


def log_epoch(tracker: Tracker, parts: Parts, state: LoopState, row: dict, improved: bool, monitor: str) -> None:
    # The boundary and the histograms before log_epoch's flush, which commits them: last.pt, written next, says the
    # epoch is done, and a resume cannot draw them again (the last step's gradients are gone).
    tracker.log_boundary(parts.built.model, parts.data, row["epoch"])
    tracker.log_model(parts.built.model, row["epoch"])
    tracker.log_epoch(row, parts.eval_metrics.confusion, improved, parts.eval_metrics.scores)
    tracker.save_metrics(
        epochs_completed=row["epoch"],
        best={"epoch": state.best_epoch, monitor: state.best_value},
        early_stopping=parts.stopper.summary(),
    )


def save_last(
    cfg, parts: Parts, state: LoopState, tracker: Tracker, ctx: RunContext, epoch: int, history: list[dict], stop: bool
) -> None:
    """last.pt: everything a resumed run needs to go on exactly as this one would."""
    training = checkpoint.training_state(
        state.step, history, state.best, parts.schedule, parts.stopper, parts.generators, time.time() - tracker.start
    )
    checkpoint.save(
        ctx.run_dir / "last.pt",
        parts.built.model,
        parts.built.optimizer,
        epoch,
        parts.config_yaml,
        parts.data,
        stopped=stop,
        overrides=list(ctx.overrides),
        **training,
    )
    state.saved_epoch = epoch


def test(parts: Parts, state: LoopState, tracker: Tracker, run_dir: Path) -> Outcome:
    """The best epoch's weights, reloaded from disk as a user would, on the test split."""
    model = parts.built.model
    tracker.ask_for_curves()  # the epochs are over: curves.png is drawn beside the test
    if is_main():  # rank 0 reads best.pt, the other ranks get its weights from it
        model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    ddp.broadcast_from_main(model)
    loss_fn, amp = parts.built.eval_loss, parts.amp
    with beside_the_helpers(parts.device):
        test_metrics = to_floats(evaluate(model, parts.loaders[2], loss_fn, parts.eval_metrics, amp))
        if parts.data.task == "regression":
            readings = regression_readings(parts.eval_metrics, model, parts.data)
        else:
            readings = test_readings(parts.eval_metrics, parts.data.classes, model, parts.loaders[1], loss_fn, amp, parts.device)
        # The figures are asked for first: the helpers draw them while this process finds the misclassified images.
        cm = parts.eval_metrics.confusion
        drawn = tracker.ask_for_test_figures(readings, cm)
        grid = tracker.ask_for_misclassified(model, parts.loaders[2], state.best_epoch)
    tracker.log_test(test_metrics, cm, state.best_epoch, readings, drawn)
    tracker.log_regression(readings, state.best_epoch)
    kill_point("test_logged")
    tracker.log_misclassified(grid, state.best_epoch)
    tracker.log_boundary(model, parts.data, state.best_epoch, final=True)
    best_row = tracker.history[state.best_epoch - 1]
    best = {"epoch": state.best_epoch, **{k: v for k, v in best_row.items() if k.startswith("val/")}}
    tracker.save_metrics(best=best)
    return Outcome("completed", best=best, test=test_metrics, readings=readings)


@contextlib.contextmanager
def beside_the_helpers(device: torch.device):
    """One CPU thread for torch while the figures' helpers draw the test's figures on the other cores: with torch's
    threads on every core as well, each of its ops waits for a thread the helpers hold (the MNIST test pass took
    0.12 s so, against 0.03 s alone)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def report(cfg, outcome: Outcome, state: LoopState, console: Console, ctx: RunContext) -> float:
    """The run's last lines; a diverged single run raises, a diverged sweep job returns so the sweep goes on."""
    if outcome.status == "pruned":
        console.print(f"run saved in {ctx.run_dir} (pruned after epoch {state.epoch}; the test split is not evaluated)")
        return state.best_value
    if outcome.diverged is not None:
        if outcome.diagnosis.get("suggestion"):
            console.print(f"try: {outcome.diagnosis['suggestion']}")
        console.print(f"run saved in {ctx.run_dir} (diverged at step {outcome.diverged.details['step']})")
        if ctx.is_sweep:
            return state.best_value if state.best_epoch else math.nan  # the sweep's summary shows the status
        raise outcome.diverged
    shown = [m for m in SUMMARY_METRICS if m in outcome.test]
    console.summary(
        f"best epoch {state.best_epoch} by {cfg.trainer.monitor}",
        {"val": {m: outcome.best[f"val/{m}"] for m in shown}, "test": {m: outcome.test[m] for m in shown}},
    )
    console.readings(outcome.readings.get("most_confused", [])[:5], outcome.readings.get("threshold"))
    if outcome.diagnosis.get("verdict"):
        console.print(describe(outcome.diagnosis))
    console.print(f"run saved in {ctx.run_dir}")
    console.print(f"open it with: tensorboard --logdir {ctx.run_dir}")
    return state.best_value
