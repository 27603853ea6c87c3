"""Figures a person reads without TensorBoard: the confusion matrix, learning curves and image grids.

matplotlib through its object API, drawn by the Agg canvas: no pyplot state and no screen needed."""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from dlrun.core.io import atomic_write


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "", normalized_too: bool = True):
    """A heatmap of counts and, beside it, the row-normalised view (recall per class on the diagonal)."""
    panels = [("counts", cm.astype(float), "d")]
    if normalized_too:
        rows = cm.sum(axis=1, keepdims=True)
        panels.append(("row-normalised", np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0), ".2f"))
    size = 2.2 + 0.45 * len(classes)
    fig = Figure(figsize=(size * len(panels), size))
    axes = fig.subplots(1, len(panels), squeeze=False)
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
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if values[i, j] > high else "black")
    fig.tight_layout()
    return fig


def render(fig) -> np.ndarray:
    """Draw the figure once, as an (H, W, 3) uint8 RGB array: the same pixels can then go to a PNG file
    and to TensorBoard without drawing twice."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(rgb: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda f: imsave(f, rgb, format="png"))


def save_figure(fig, path: Path) -> None:
    save_png(render(fig), path)


def curves_figure(history: list[dict], metrics=("loss", "accuracy", "f1")):
    """Train against val per epoch: a widening gap is overfitting, two high losses underfitting."""
    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
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
        canvas[top : top + h, left : left + w] = image.transpose(1, 2, 0) if channels == 3 else image[0][..., None]
    fig = Figure(figsize=(canvas.shape[1] * inch, canvas.shape[0] * inch))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for i, title in enumerate(titles[:n]):
        r, c = divmod(i, columns)
        ax.text((c + 0.5) * cell_w, r * cell_h + title_h - 0.5, title, ha="center", va="bottom", fontsize=7)
    return fig
