"""Where a run's numbers go: TensorBoard event files, history.csv and metrics.json in the run directory."""

import contextlib
import csv
import inspect
import logging
import os
import socket
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import metadata
from torch.utils.tensorboard import SummaryWriter

from dlrun.config.schema import metric_names
from dlrun.core import ranks
from dlrun.core.faultpoints import kill_point
from dlrun.core.io import read_json, write_csv, write_json
from dlrun.observe import dashboards, drawing
from dlrun.observe.png import write_png
from dlrun.observe.tables import classification_report, markdown_table, write_confusion_csv

log = logging.getLogger(__name__)


def graph_def(model, example: torch.Tensor):
    """The model's graph for TensorBoard's Graphs tab, as SummaryWriter.add_graph makes it, from one trace.
    add_graph's trace also checks itself by running the model again and comparing with torch.testing, whose
    first use imports torch.distributed.tensor and sympy (about 0.8 s); the graph is the same without it."""
    from torch.utils.tensorboard import _pytorch_graph as tb_graph

    trace = torch.jit.trace(model, example, check_trace=False)
    torch._C._jit_pass_inline(trace.graph)
    nodes = tb_graph.parse(trace.graph, trace, example)
    stats = tb_graph.RunMetadata(step_stats=tb_graph.StepStats(dev_stats=[tb_graph.DeviceStepStats(device="/device:CPU:0")]))
    return tb_graph.GraphDef(node=nodes, versions=tb_graph.VersionDef(producer=22)), stats


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        cfg,
        classes: list[str],
        info: dict,
        resume: dict | None = None,
        overrides: list[str] = (),
        val_counts: np.ndarray | None = None,
        resolved: dict | None = None,
    ):
        """`resume`: last.pt's state when continuing a run (its history, step and wall time so far);
        `overrides`: the command line's, so that HParams shows a swept key even at its default value;
        `val_counts`: each class's count in the val split, which sizes the val confusion cards; `resolved`: the
        config with its interpolations resolved, when the caller has it (else HParams resolves it again)."""
        self.run_dir = Path(run_dir)
        self.classes = classes
        self.history: list[dict] = list(resume["history"]) if resume else []
        self.start = time.time() - (resume["wall_time_s"] if resume else 0)
        # Who runs it, so that `dlrun runs` can tell a live run from one whose process died (on this host, by its lock).
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        if resume:  # a resumed run keeps the date it first started
            started = read_json(self.run_dir / "metrics.json").get("started", started)
        attempt = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
        self.metrics = {"status": "running", **info, **attempt, "epochs_planned": cfg.trainer.epochs}
        # In a multi-process run only rank 0 writes; the others keep the same history in memory.
        self.writes = ranks.is_main()
        # Resuming, TensorBoard drops what the old event files hold after last.pt's step (the
        # interrupted epoch's steps), so that the curves continue with no step twice.
        purge = {"purge_step": resume["step"] + 1} if resume else {}
        writer = SummaryWriter(log_dir=str(self.run_dir), **purge) if self.writes else _NullWriter()
        # Epoch-level entries use the epoch as their step, far below the purge step: what the old files hold of
        # them stays, so a resume writes only the (tag, step) pairs they lack, and each epoch shows once.
        self.present = logged_below(self.run_dir, resume["step"] + 1) if resume and self.writes else set()
        self.writer = _Writer(writer, self.present, self.run_dir) if self.writes else writer
        _quiet_writer_thread()
        self.cfg = cfg
        # The figures are drawn beside the run (drawing.py); the run writes them where they go.
        self.painter = drawing.painter() if self.writes else None
        self._curves = None  # curves.png's picture, asked for once the epochs are over
        self._card = None  # (epoch, its val confusion card), asked for once the epoch's val matrix is known
        self._prepare_cards(val_counts)
        if resume:
            self._relog_missing_epochs()
        # Written once: a resumed run adds them only if the killed one never got them to its file.
        present = self.present
        if ("custom_scalars__config__", 0) not in present:
            self.writer.add_summary(dashboards.custom_scalars_summary(metric_names(cfg.get("task"))))
        if cfg.logging.hparams:
            # Written into this run's own event file (not add_hparams, which makes a new
            # timestamped run) so that each run is one run in TensorBoard and in the HParams tab.
            # No experiment summary per run: TensorBoard then works out which values differ over all the
            # runs it reads; a sweep writes one experiment for its jobs when it ends (dashboards.py says why).
            ssi, sei = dashboards.session_summaries(cfg if resolved is None else resolved, overrides)
            self._session_end = sei
            if (metadata.SESSION_START_INFO_TAG, 0) not in present:
                self.writer.add_summary(ssi)
        self.save_metrics()

    def _prepare_cards(self, val_counts: np.ndarray | None) -> None:
        """The val card's frame (axes and class names, the slow part) drawn while the first epoch trains. A frame's
        cells are as wide as the widest count: a matrix of each class's count on its diagonal, as a perfect model
        would give, has the digits the real ones will have. (The test's frames are drawn when they are needed:
        drawn beside an epoch, they slow it by as much as they take.)"""
        if not self.writes or self.cfg.get("task") == "regression" or not self.classes:
            return
        shown = np.diag(val_counts) if val_counts is not None else np.zeros((len(self.classes),) * 2, dtype=np.int64)
        if self.cfg.logging.confusion_matrix_every:
            self.painter.submit("confusion_pixels", shown, self.classes, "val epoch 1", normalized_too=False)

    def _add_picture(self, tag: str, picture: drawing.Picture, step: int) -> None:
        """A drawn picture as TensorBoard's image `tag` at `step`, as add_image writes it (but encoded once)."""
        if (tag, step) in self.present:  # a resumed run: the killed attempt's file holds it
            return
        image = Summary.Image(height=picture.height, width=picture.width, colorspace=3, encoded_image_string=picture.png)
        self.writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def _save_picture(self, picture: drawing.Picture, name: str) -> None:
        write_png(picture.png, self.run_dir / name)

    def log_steps(self, first_step: int, losses: list[float], lrs: list[float], grad_norms: list[float] | None = None):
        """Each step's scalars as one event, as add_scalar writes each of them (simple_value) but a third of the
        records: three add_scalar calls a step were about a sixth of a small MLP's epoch."""
        if not self.writes:
            return
        tags = dashboards.STEP_TAGS if grad_norms else dashboards.STEP_TAGS[:2]
        columns = (losses, lrs, grad_norms) if grad_norms else (losses, lrs)
        for i, values in enumerate(zip(*columns)):
            step = first_step + i
            kept = [(tag, v) for tag, v in zip(tags, values) if (tag, step) not in self.present]
            if kept:
                self.writer.add_summary(Summary(value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in kept]), step)

    def log_graph(self, model, example: torch.Tensor) -> None:
        if not (self.writes and self.cfg.logging.graph):
            return
        was_training = model.training
        model.eval()  # tracing runs the model: batch norm must not learn from the example
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notices, on every run
                self.writer._get_file_writer().add_graph(graph_def(model, example))
        except Exception as err:  # some models cannot be traced; the run goes on without the graph
            log.warning("model graph not written to TensorBoard: %s", str(err).splitlines()[0] if str(err) else err)
        finally:
            model.train(was_training)

    def log_model(self, model, epoch: int) -> None:
        """Weight and gradient histograms every `histograms_every` epochs; a logistic model's class templates."""
        if not self.writes:
            return
        every = self.cfg.logging.histograms_every
        if every and epoch % every == 0:
            for name, param in model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", param.detach(), epoch)
                if param.grad is not None:  # the last step's gradient
                    self.writer.add_histogram(f"gradients/{name}", param.grad, epoch)
        images = model.weight_images() if self.cfg.logging.weight_images and hasattr(model, "weight_images") else None
        if images is not None and len(images) == len(self.classes):  # a binary head's one template has no class
            picture = self.painter.submit("class_templates_figure", _unit_range(images).cpu().numpy(), self.classes)
            self._add_picture("weights/class_templates", picture.result(), epoch)

    @torch.no_grad()
    def ask_for_misclassified(self, model, loader, epoch: int):
        """A grid of test images the model gets wrong, titled with their true and predicted classes: asked for
        here, drawn while the test's other figures are, written by log_misclassified. None when there is none."""
        wanted = self.cfg.logging.misclassified
        # A run killed while testing may have its grid in TensorBoard already: not a second pass for it.
        if not (self.writes and wanted) or ("test/misclassified", epoch) in self.present:
            return None
        model.eval()
        images, titles = [], []
        for x, y in loader:
            if x.dim() != 4:  # not images
                return None
            logits = model(x)
            pred = logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()  # one logit: a binary head
            wrong = (pred != y).nonzero().flatten()[: wanted - len(images)]
            images += list(_unit_range(x[wrong].float()).cpu().numpy())
            pairs = zip(y[wrong].tolist(), pred[wrong].tolist())
            titles += [f"true {self.classes[t]}\npred {self.classes[p]}" for t, p in pairs]
            if len(images) >= wanted:
                break
        return self.painter.submit("image_grid_pixels", np.stack(images), titles) if images else None

    def log_misclassified(self, grid, epoch: int) -> None:
        if grid is not None:
            self._add_picture("test/misclassified", grid.result(), epoch)

    def log_boundary(self, model, data, epoch: int, final: bool = False) -> None:
        """2-D inputs: the class the model predicts over the training points' range, with the points on it, every
        logging.boundary_every epochs (boundary/epoch) and, `final`, for the best weights (boundary/best and
        decision_boundary.png). `data`: the run's Data (train split, mean, std, feature names)."""
        every, tag = self.cfg.logging.get("boundary_every", 0), "boundary/best" if final else "boundary/epoch"
        if not (self.writes and drawable(data)) or not (final or (every and epoch % every == 0)):
            return
        if (tag, epoch) in self.present and not final:  # a resumed run: the killed attempt drew this epoch's
            return
        points, labels = _shown_points(data.train)
        regions, extent = boundary_regions(model, points, data.mean, data.std)
        names = tuple(data.features or ()) or ("x1", "x2")
        title = f"decision boundary, {'best epoch' if final else 'epoch'} {epoch}"
        drawn = self.painter.submit("decision_boundary_figure", regions, extent, points, labels, self.classes, names, title)
        picture = drawn.result()
        if final:
            self._save_picture(picture, "decision_boundary.png")
        self._add_picture(tag, picture, epoch)

    def log_epoch(self, row: dict, val_cm: np.ndarray | None, improved: bool = False, val_scores: tuple | None = None) -> None:
        """`improved`: this epoch is the best so far, so that `best/val/*` (HParams' metrics) take its values."""
        epoch = row["epoch"]
        card = self.ask_for_val_card(epoch, val_cm)
        for key, value in row.items():
            if "/" in key:
                self.writer.add_scalar(key, value, epoch)
        if improved:
            for key, value in row.items():
                if key.startswith("val/"):
                    self.writer.add_scalar(f"best/{key}", value, epoch)
        every_pr = self.cfg.logging.get("pr_curves", 0)
        if val_scores is not None and every_pr and epoch % every_pr == 0:
            self._pr_curves("val", val_scores, epoch)
        if card is not None:
            self._add_picture("val/confusion_matrix", card.result(), epoch)
        self.writer.flush()
        kill_point("epoch_flushed")  # the epoch is in the event file, not yet in history.csv
        self.history.append(row)
        header = list(row)
        if self.writes:
            write_csv(self.run_dir / "history.csv", header, [[r.get(h, "") for h in header] for r in self.history])

    def ask_for_val_card(self, epoch: int, val_cm: np.ndarray | None):
        """The epoch's val confusion card, asked for as soon as its matrix is known (log_epoch writes it): it is
        drawn while best.pt is saved and the scalars are written. None when the epoch has none."""
        every = self.cfg.logging.confusion_matrix_every
        if val_cm is None or not (every and epoch % every == 0 and self.writes):
            return None
        if self._card is None or self._card[0] != epoch:
            self._card = (
                epoch,
                self.painter.submit("confusion_pixels", val_cm, self.classes, f"val epoch {epoch}", normalized_too=False),
            )
        return self._card[1]

    def _pr_curves(self, split: str, scores: tuple, epoch: int, writer=None) -> None:
        """TensorBoard's PR Curves tab: one curve per class (the positive class alone for two classes)."""
        probs, targets = (t.detach().float().cpu() for t in scores)
        picked = [1] if len(self.classes) == 2 else range(len(self.classes))
        for k in picked:
            name = str(self.classes[k]).replace("/", "_").replace(" ", "_")
            (writer or self.writer).add_pr_curve(f"{split}/pr_curve/{name}", targets == k, probs[:, k], epoch)

    def log_test(self, test: dict, cm: np.ndarray | None, epoch: int, readings: dict, drawn: dict) -> None:
        """The test scores and confusion matrix, and what was read from them: curves, threshold, worst confusions;
        `drawn`: the pictures ask_for_test_figures asked for."""
        self.metrics["test"] = test
        if cm is not None:  # each class's test recall, which the macro average can hide (a summary's test/recall_rarest)
            self.metrics["test_per_class"] = per_class_recall(np.asarray(cm), self.classes)
        self.metrics.update({k: readings[k] for k in ("most_confused", "threshold") if k in readings})
        if not self.writes:
            return
        writer = self.writer  # the figures are drawn while the numbers below are written
        for key, value in test.items():
            writer.add_scalar(f"test/{key}", value, epoch)
        if "scores" in readings:
            self._pr_curves("test", readings["scores"], epoch, writer)
        self._log_curves(readings, drawn, writer, epoch)
        if cm is None:  # a regression: its figures instead (log_regression)
            return
        if readings.get("most_confused"):
            writer.add_text("test/most_confused", confusions_markdown(readings["most_confused"][:5]), epoch)
        # TensorBoard's card is ~350 px wide: the counts alone there; the PNG has the row-normalised view beside them.
        self._add_picture("test/confusion_matrix", drawn["card"].result(), epoch)
        self._save_picture(drawn["confusion_matrix.png"].result(), "confusion_matrix.png")
        write_confusion_csv(self.run_dir / "confusion_matrix.csv", cm, self.classes)
        header, rows = classification_report(cm, self.classes)
        write_csv(self.run_dir / "classification_report.csv", header, rows)
        writer.add_text("test/classification_report", markdown_table(header, rows), epoch)

    def ask_for_test_figures(self, readings: dict, cm: np.ndarray | None) -> dict:
        """The test's figures (and curves.png), asked for at once: {file name or "card": the picture to come}."""
        if not self.writes:
            return {}
        self.ask_for_curves()
        ask, drawn = self.painter.submit, {}
        curves = readings.get("curves")
        if curves:
            pr = {c: (v["recall"], v["precision"], v["average_precision"]) for c, v in curves.items()}
            roc = {c: (v["fpr"], v["tpr"], v["auroc"]) for c, v in curves.items()}
            drawn["pr_curve.png"] = ask("pr_curve_pixels", pr, "test")
            drawn["roc_curve.png"] = ask("roc_curve_pixels", roc, "test")
        threshold, sweep = readings.get("threshold"), readings.get("threshold_sweep")
        if threshold and sweep:
            columns = [sweep[k] for k in ("threshold", "precision", "recall", "f1")]
            title = f"val, positive class {self.classes[1]}"
            drawn["threshold.png"] = ask("threshold_figure", *columns, threshold["best_f1"], 0.5, title)
        if cm is not None:
            drawn["card"] = ask("confusion_pixels", cm, self.classes, "test", normalized_too=False)
            drawn["confusion_matrix.png"] = ask("confusion_pixels", cm, self.classes, "test")
        return drawn

    def log_regression(self, readings: dict, epoch: int) -> None:
        """A regression's test figures in place of the confusion matrix: predictions.png (predicted against true),
        residuals.png, and for one input feature function.png (the learned function over the data); TensorBoard too."""
        if not self.writes or "predictions" not in readings:
            return
        pred, target = readings["predictions"]
        shown = [
            ("test/predictions", "predictions.png", self.painter.submit("predictions_figure", pred, target, "test")),
            ("test/residuals", "residuals.png", self.painter.submit("residuals_figure", pred, target, "test")),
        ]
        if "function" in readings:
            learned = self.painter.submit("function_figure", *readings["function"], "learned function, best epoch")
            shown.append(("test/function", "function.png", learned))
        for tag, name, drawn in shown:
            picture = drawn.result()
            self._save_picture(picture, name)
            self._add_picture(tag, picture, epoch)

    def _log_curves(self, readings: dict, drawn: dict, writer, epoch: int) -> None:
        """pr_curve.png and roc_curve.png; for two classes threshold.png and the threshold's scores."""
        for name in ("pr_curve.png", "roc_curve.png"):
            if name in drawn:
                self._save_picture(drawn[name].result(), name)
        threshold = readings.get("threshold")
        if "threshold.png" in drawn:
            picture = drawn["threshold.png"].result()
            self._save_picture(picture, "threshold.png")
            self._add_picture("val/threshold", picture, epoch)
            writer.add_scalar("test/threshold/best_f1", threshold["best_f1"], epoch)
            for at in ("at_best", "at_0.5"):
                for m in ("precision", "recall", "f1"):
                    writer.add_scalar(f"test/threshold/{m}_{at}", threshold[at][m], epoch)

    def ask_for_curves(self) -> None:
        """curves.png once no epoch is left to train: drawn while the test runs and is logged, written at close."""
        if self.history and self.writes and self._curves is None:
            shown = ("loss", "rmse", "r2") if self.cfg.get("task") == "regression" else ("loss", "accuracy", "f1")
            self._curves = self.painter.submit("curves_pixels", list(self.history), shown)

    def log_diagnosis(self, diagnosis: dict, epoch: int) -> None:
        """The verdict on the learning curves: metrics.json and TensorBoard's Text tab."""
        self.metrics["diagnosis"] = diagnosis
        if self.writes and diagnosis.get("verdict"):
            text = f"**{diagnosis['verdict']}**" + (f" from epoch {diagnosis['epoch']}" if diagnosis.get("epoch") else "")
            self.writer.add_text("diagnosis", f"{text}: {diagnosis['reason']}  \nTry: {diagnosis['suggestion']}", epoch)

    def save_metrics(self, **fields) -> None:
        self.metrics.update(fields, wall_time_s=round(time.time() - self.start, 3))
        if self.writes:
            write_json(self.run_dir / "metrics.json", self.metrics)

    def _relog_missing_epochs(self) -> None:
        """A run killed between writing last.pt and logging that epoch: log the epoch now, from last.pt."""
        logged = set()
        try:
            with open(self.run_dir / "history.csv", newline="") as f:
                logged = {int(float(row["epoch"])) for row in csv.DictReader(f)}
        except (OSError, ValueError, KeyError):
            pass
        missing = [row for row in self.history if row["epoch"] not in logged]
        best = _best_epochs(self.history, self.cfg.trainer.monitor, self.cfg.trainer.mode)
        for row in missing:
            for key, value in row.items():
                if "/" in key:
                    self.writer.add_scalar(key, value, row["epoch"])
                if key.startswith("val/") and row["epoch"] in best:
                    self.writer.add_scalar(f"best/{key}", value, row["epoch"])
        if self.history and self.writes:  # history.csv from last.pt: no row past it, none missing
            header = list(self.history[-1])
            write_csv(self.run_dir / "history.csv", header, [[r.get(h, "") for h in header] for r in self.history])

    def close(self, status: str) -> None:
        unwritten = None
        if self.history and self.writes:
            self.ask_for_curves()
            try:
                self._save_picture(self._curves.result(), "curves.png")
            except OSError as err:  # a full disk: the old figure stays; a completed run still says so, below
                log.warning("curves.png not written: %s", err)
                unwritten = err
        try:
            if status == "completed" and self.cfg.logging.hparams:
                self.writer.add_summary(self._session_end)
            self.writer.close()
        finally:  # the status reaches metrics.json even when the event file cannot take another byte
            self.save_metrics(status=status)
        if unwritten is not None and status == "completed":
            raise unwritten


def per_class_recall(cm: np.ndarray, classes: list[str]) -> dict:
    """{"recall": {class: share of its test samples classified right}, "support": {class: its test samples}}."""
    support = cm.sum(1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(len(cm)), where=support > 0)
    names = [str(c) for c in classes]
    return {"recall": dict(zip(names, np.round(recall, 6).tolist())), "support": dict(zip(names, support.astype(int).tolist()))}


def confusions_markdown(cells: list[dict]) -> str:
    rows = [[c["true"], c["predicted"], str(c["count"]), f"{c['share']:.1%}"] for c in cells]
    return markdown_table(["true", "predicted as", "count", "share of the true class"], rows)


# The plugins whose entries TensorBoard keeps beyond the purge step when a run restarts (they are tensor
# summaries: its purge covers scalars, images, histograms and audio).
UNPURGED = ("pr_curves", "text")


def logged_below(run_dir: Path, below: int) -> set[tuple[str, int]]:
    """Every (tag, step) the run directory's event files hold that a resumed run must not write again: all
    of them below `below` (the purge step), and beyond it the tensor entries (PR curves, texts), which
    TensorBoard's purge at a restart leaves in place, unlike scalars, images and histograms."""
    # Only a resumed run reads event files: its reader (and the modules it pulls in) is not loaded for a fresh one.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    present = set()
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                present.update(
                    (value.tag, event.step)
                    for value in event.summary.value
                    if event.step < below or value.metadata.plugin_data.plugin_name in UNPURGED
                )
        except Exception as err:  # noqa: BLE001 - a damaged file: what it holds cannot be skipped
            log.warning("%s: could not read all of it (%s)", path, err)
    return present


def _best_epochs(history: list[dict], monitor: str, mode: str) -> set[int]:
    """The epochs at which the monitored value improved: those whose val scores went to best/val/*."""
    best, epochs = None, set()
    for row in history:
        value = row.get(monitor)
        if value is not None and (best is None or (value > best if mode == "max" else value < best)):
            best = value
            epochs.add(row["epoch"])
    return epochs


class _Writer:
    """The run's SummaryWriter, with two duties. It leaves out what the run's earlier event files already
    hold (a resumed run's epoch-level entries), so that TensorBoard, reading the directory whole, shows each
    point once. And a write that fails (a full disk) names the event file, which TensorBoard's writer
    thread does not."""

    def __init__(self, writer, present: set[tuple[str, int]], run_dir: Path):
        self.writer, self.present, self.run_dir = writer, present, run_dir

    def __getattr__(self, name):
        method = getattr(self.writer, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            if name.startswith("add_") and args and self._present(name, method, args, kwargs):
                return None
            with self._naming_failures():
                return method(*args, **kwargs)

        return call

    def add_summary(self, summary: Summary, step: int | None = None) -> None:
        """A Summary built by the caller, at `step`; the caller leaves out what `present` holds."""
        with self._naming_failures():
            self.writer.file_writer.add_summary(summary, step)

    @contextlib.contextmanager
    def _naming_failures(self):
        try:
            yield
        except OSError as err:
            if err.filename:
                raise
            raise OSError(err.errno, err.strerror, str(self._event_file())) from err

    def _present(self, name: str, method, args, kwargs) -> bool:
        if not self.present or name in ("add_custom_scalars", "add_graph", "add_hparams"):
            return False
        step = inspect.signature(method).bind_partial(*args, **kwargs).arguments.get("global_step")
        return step is not None and (_suffixed(name, args[0]), step) in self.present

    def _event_file(self) -> Path:
        files = sorted(self.run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
        return files[-1] if files else self.run_dir / "events.out.tfevents.*"


def _quiet_writer_thread() -> None:
    """TensorBoard's writer thread prints a traceback when a write fails, then the run's next write raises
    the same error, which dlrun reports in one line: the thread's own report goes to the log only."""
    if getattr(threading.excepthook, "dlrun", False):
        return
    default = threading.excepthook

    def hook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            log.warning("TensorBoard's event writer stopped: %s", args.exc_value)
            return
        default(args)

    hook.dlrun = True
    threading.excepthook = hook


def _suffixed(method: str, tag: str) -> str:
    """The tag the event file stores: text gets `/text_summary`, the other plugins keep it."""
    return f"{tag}/text_summary" if method == "add_text" else tag


# The decision boundary's grid, per axis, and the most training points drawn on it.
BOUNDARY_GRID = 200
BOUNDARY_POINTS = 2000


def drawable(data) -> bool:
    """A classification of two input features (the course's 2-D sets, a CSV file of two columns)."""
    return getattr(data, "task", "classification") == "classification" and tuple(data.in_shape) == (2,)


def _shown_points(split) -> tuple[np.ndarray, np.ndarray]:
    """The training points in their own units, evenly thinned to BOUNDARY_POINTS at most."""
    pick = torch.linspace(0, len(split) - 1, min(len(split), BOUNDARY_POINTS)).round().long()
    return split.x[pick].float().cpu().numpy(), split.y[pick].cpu().numpy()


@torch.no_grad()
def boundary_regions(model, points: np.ndarray, mean, std, size: int = BOUNDARY_GRID) -> tuple[np.ndarray, tuple]:
    """The class the model predicts at each point of a size x size grid over the points' range and a tenth more
    each side ((size, size) indices, row 0 at the bottom), and that range (x from, x to, y from, y to). The grid is
    in the data's own units; the model gets it standardised as the loaders standardise its inputs."""
    low, high = points.min(0), points.max(0)
    margin = np.maximum((high - low) * 0.1, 1e-3)
    low, high = low - margin, high + margin
    xs, ys = (np.linspace(low[i], high[i], size) for i in range(2))
    device = next(model.parameters()).device
    grid = torch.as_tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=torch.float32, device=device)
    grid = (grid - torch.tensor(mean, device=device)) / torch.tensor(std, device=device)
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(chunk).float() for chunk in grid.split(20_000)])
    finally:
        model.train(was_training)
    classes = logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()  # one logit: a binary head
    return classes.view(size, size).cpu().numpy(), (low[0], high[0], low[1], high[1])


def _unit_range(images: torch.Tensor) -> torch.Tensor:
    """Scale each image (N, C, H, W) to [0, 1] on its own, for display."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-12)


class _NullWriter:
    """A SummaryWriter that writes nothing, for ranks other than 0: any method, any attribute, does nothing."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return None
