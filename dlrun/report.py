"""Files and figures a person reads without TensorBoard: CSVs, the confusion matrix and curves."""

import csv
import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename it over `path`: a crash leaves the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_confusion_csv(path: Path, cm: np.ndarray, classes: list[str]) -> None:
    """Rows are the true class, columns the predicted class."""
    write_csv(path, ["true\\pred", *classes], [[name, *map(int, row)] for name, row in zip(classes, cm)])


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "", normalized_too: bool = True):
    """A heatmap of counts and, beside it, the row-normalised view (recall per class on the diagonal)."""
    panels = [("counts", cm.astype(float), "d")]
    if normalized_too:
        rows = cm.sum(axis=1, keepdims=True)
        panels.append(("row-normalised", np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0), ".2f"))
    size = 2.2 + 0.45 * len(classes)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    annotate = len(classes) <= 20
    for ax, (name, values, fmt) in zip(axes[0], panels):
        ax.imshow(values, cmap="Blues")
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, classes, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right")
        ax.set_yticks(ticks, classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} {name}".strip())
        if annotate:
            high = values.max() / 2 if values.size else 0
            for i in range(len(classes)):
                for j in range(len(classes)):
                    text = format(int(cm[i, j]) if fmt == "d" else values[i, j], fmt)
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > high else "black")
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def curves_figure(history: list[dict], metrics=("loss", "accuracy", "f1")):
    """Train against val per epoch: a widening gap is overfitting, two high losses underfitting."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes[0], metrics):
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}/{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [row[key] for row in history], style, marker="o", markersize=3, label=split)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig
