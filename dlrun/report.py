"""Files and figures a person reads without TensorBoard: CSVs, the confusion matrix and curves."""

import contextlib
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
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            raise OSError(err.errno, err.strerror, str(path)) from err  # name the file the user knows
        raise


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


def render(fig) -> np.ndarray:
    """Draw the figure once, as an (H, W, 3) uint8 RGB array, and close it: the same pixels can then
    go to a PNG file and to TensorBoard without drawing twice."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def save_png(rgb: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda f: plt.imsave(f, rgb, format="png"))


def save_figure(fig, path: Path) -> None:
    save_png(render(fig), path)


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


def classification_report(cm: np.ndarray, classes: list[str]) -> tuple[list[str], list[list]]:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows true, columns predicted),
    then the macro and support-weighted averages, as scikit-learn's classification_report lays them out."""
    cm = np.asarray(cm, dtype=float)
    tp, predicted, support = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    rows = [[name, p, r, f, int(s)] for name, p, r, f, s in zip(classes, precision, recall, f1, support)]
    weights = support / max(support.sum(), 1)
    for name, avg in (("macro avg", np.mean), ("weighted avg", lambda v: float(np.sum(v * weights)))):
        rows.append([name, avg(precision), avg(recall), avg(f1), int(support.sum())])
    rows = [[name, round(float(p), 6), round(float(r), 6), round(float(f), 6), s] for name, p, r, f, s in rows]
    return ["class", "precision", "recall", "f1", "support"], rows


def image_grid_figure(images: np.ndarray, titles: list[str], columns: int = 8):
    """Images (N, C, H, W) in [0, 1], each with a title above it, tiled into one picture: one axes
    for all of them draws several times faster than one axes each."""
    n, channels, h, w = images.shape
    columns = min(columns, n)
    rows = max(1, -(-n // columns))
    cell_w = w + max(2, w // 8)
    inch = 1.3 / cell_w  # each image 1.3 inches wide, whatever its size in pixels
    title_h = int(np.ceil(0.4 / inch))  # two lines of 7-point text
    cell_h = h + title_h
    canvas = np.ones((rows * cell_h, columns * cell_w, 3))
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * cell_h + title_h, c * cell_w + (cell_w - w) // 2
        canvas[top:top + h, left:left + w] = image.transpose(1, 2, 0) if channels == 3 else image[0][..., None]
    fig = plt.figure(figsize=(canvas.shape[1] * inch, canvas.shape[0] * inch))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for i, title in enumerate(titles[:n]):
        r, c = divmod(i, columns)
        ax.text((c + 0.5) * cell_w, r * cell_h + title_h - 0.5, title, ha="center", va="bottom", fontsize=7)
    return fig
