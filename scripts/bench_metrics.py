"""What dlrun's per-epoch scores cost: one MNIST epoch of the course's MLP and of the default CNN, with no
metrics, with dlrun's scores (one confusion matrix and the kept probabilities, every average, AUROC and
AP), and with the torchmetrics collection dlrun used before, measured side by side in one run.

    python scripts/bench_metrics.py --data-root ../shared/data
"""

import argparse
import time
from pathlib import Path

import torch
from bench import build, dlrun_config

from dlrun.data import DeviceLoader, load_data
from dlrun.engine.optim import Regime, Schedule
from dlrun.engine.steps import evaluate, train_one_epoch
from dlrun.observe.metrics import classification_metrics


class NoMetrics:
    def reset(self):
        pass

    def update(self, logits, target, loss):
        pass

    def compute(self):
        return {}


def torchmetrics_collection(num_classes: int):
    """The scores as torchmetrics objects, one per score (as dlrun computed macro scores before)."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassAUROC,
        MulticlassAveragePrecision,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    kw = dict(num_classes=num_classes, validate_args=False)
    scores = {"accuracy": MulticlassAccuracy(average="micro", **kw)}
    for average in ("macro", "micro", "weighted"):
        for name, cls in (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score)):
            scores[f"{name}_{average}"] = cls(average=average, **kw)
    scores["auroc"] = MulticlassAUROC(thresholds=None, **kw)
    scores["average_precision"] = MulticlassAveragePrecision(thresholds=None, **kw)
    collection = MetricCollection(scores)

    class Adapter:
        def reset(self):
            collection.reset()

        def update(self, logits, target, loss):
            collection.update(logits, target)

        def compute(self):
            return collection.compute()

    return Adapter()


def one_epoch(model_name: str, data, metrics) -> tuple[float, float]:
    """Seconds for a training epoch and for an evaluation of the val split, both with `metrics`."""
    model, optimizer = build(model_name, data.in_shape, channels_last=False)
    cfg = dlrun_config(f"model={model_name}", "logging.grad_norm=false")
    loader = DeviceLoader(data.train, 64, "cpu", data.mean, data.std, shuffle=True)
    val = DeviceLoader(data.val, 256, "cpu", data.mean, data.std, shuffle=False)
    regime = Regime(cfg.trainer, model, Schedule(cfg.scheduler, optimizer, 1, len(loader)), False)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    train_one_epoch(model, loader, loss_fn, optimizer, regime, metrics, lambda *a: None)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(model, val, loss_fn, metrics)
    return train_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per variant; the table shows the median")
    args = parser.parse_args()
    root = Path(args.data_root).expanduser().resolve()
    data = load_data(dlrun_config("dataset=mnist", f"dataset.root={root}").dataset, seed=0, val_fraction=0.1)
    variants = {"no metrics": NoMetrics, "dlrun": lambda: classification_metrics(10)}
    try:
        import torchmetrics  # noqa: F401

        variants["torchmetrics"] = lambda: torchmetrics_collection(10)
    except ImportError:
        pass
    print(f"MNIST: {len(data.train)} train / {len(data.val)} val samples, CPU, {torch.get_num_threads()} threads")
    for model_name in ("mlp", "cnn"):
        times = {name: [] for name in variants}
        for _ in range(args.repeats):  # interleaved, so that a noisy minute hits every variant alike
            for name, make in variants.items():
                times[name].append(one_epoch(model_name, data, make()))
        base = sorted(t[0] for t in times["no metrics"])[args.repeats // 2]
        for name, runs in times.items():
            train_s = sorted(t[0] for t in runs)[args.repeats // 2]
            val_s = sorted(t[1] for t in runs)[args.repeats // 2]
            cost = f"{train_s / base - 1:+6.1%}"
            print(f"{model_name:>4} {name:<13} train epoch {train_s:6.2f} s ({cost})   val pass {val_s:5.2f} s")


if __name__ == "__main__":
    main()
