"""Where a run's numbers go: TensorBoard event files, history.csv and metrics.json in the run directory."""

import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from dlrun import report

METRICS = ("loss", "accuracy", "precision", "recall", "f1")
HPARAM_METRICS = [f"{split}/{m}" for split in ("test", "val") for m in ("accuracy", "f1", "loss")]


def flatten(node, prefix: str = "") -> dict:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}, with values TensorBoard's HParams accepts."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    def __init__(self, run_dir: Path, cfg, classes: list[str], info: dict):
        self.run_dir = Path(run_dir)
        self.classes = classes
        self.history: list[dict] = []
        self.start = time.time()
        self.metrics = {"status": "running", **info}
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        self.cfg = cfg
        self.writer.add_custom_scalars(
            {
                "Learning curves (train vs val)": {
                    m: ["Multiline", [f"train/{m}", f"val/{m}"]] for m in METRICS
                },
            }
        )
        if cfg.logging.hparams:
            # Written into this run's own event file (not add_hparams, which makes a new
            # timestamped run) so that each run is one run in TensorBoard and in the HParams tab.
            params = flatten({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "logging"})
            exp, ssi, sei = hparams(params, {m: 0.0 for m in HPARAM_METRICS})
            self._session_end = sei
            for summary in (exp, ssi):
                self.writer.file_writer.add_summary(summary)
        self.save_metrics()

    def log_steps(self, first_step: int, losses: list[float], lrs: list[float]) -> None:
        for i, (loss, lr) in enumerate(zip(losses, lrs)):
            self.writer.add_scalar("train/loss_step", loss, first_step + i)
            self.writer.add_scalar("train/lr", lr, first_step + i)

    def log_epoch(self, row: dict, val_cm: np.ndarray | None) -> None:
        epoch = row["epoch"]
        for key, value in row.items():
            if "/" in key:
                self.writer.add_scalar(key, value, epoch)
        every = self.cfg.logging.confusion_matrix_every
        if val_cm is not None and every and epoch % every == 0:
            fig = report.confusion_figure(val_cm, self.classes, f"val epoch {epoch}", normalized_too=False)
            self.writer.add_figure("val/confusion_matrix", fig, epoch)
        self.writer.flush()
        self.history.append(row)
        header = list(row)
        report.write_csv(self.run_dir / "history.csv", header, [[r.get(h, "") for h in header] for r in self.history])

    def log_test(self, test: dict, cm: np.ndarray, epoch: int) -> None:
        for key, value in test.items():
            self.writer.add_scalar(f"test/{key}", value, epoch)
        fig = report.confusion_figure(cm, self.classes, "test")
        self.writer.add_figure("test/confusion_matrix", fig, epoch)
        report.save_figure(report.confusion_figure(cm, self.classes, "test"), self.run_dir / "confusion_matrix.png")
        report.write_confusion_csv(self.run_dir / "confusion_matrix.csv", cm, self.classes)
        self.metrics["test"] = test

    def save_metrics(self, **fields) -> None:
        self.metrics.update(fields, wall_time_s=round(time.time() - self.start, 3))
        report.write_json(self.run_dir / "metrics.json", self.metrics)

    def close(self, status: str) -> None:
        if self.history:
            report.save_figure(report.curves_figure(self.history), self.run_dir / "curves.png")
        if status == "completed" and self.cfg.logging.hparams:
            self.writer.file_writer.add_summary(self._session_end)
        self.writer.close()
        self.save_metrics(status=status)
