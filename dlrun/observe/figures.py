"""Figures a person reads in the run directory and on TensorBoard's image cards (about 350 px wide): the confusion
matrix, PR and ROC curves, the threshold sweep of a binary task, learning curves, image grids and class templates.

matplotlib through its object API, drawn by the Agg canvas: no pyplot state and no screen needed."""

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.ticker import MaxNLocator

from dlrun.observe.png import save_png

# Every figure is laid out in pixels at this dpi, so its rendered size is chosen, not inherited from rcParams.
DPI = 100
# Beyond this many classes a cell is too small for its number: the matrix becomes a plain heatmap.
ANNOTATE_MAX = 20
# Curve figures with more classes than this label only the lowest and highest few.
LEGEND_MAX = 10
# Measures text as the Agg canvas will draw it, before any figure exists to size.
_RULER = RendererAgg(1, 1, DPI)


@functools.lru_cache(maxsize=4096)  # the same names and numbers are measured for every epoch's card
def _text_px(text: str, size: float) -> tuple[float, float]:
    """Width and height in pixels of one line of `text` at `size` points, as the Agg canvas draws it."""
    width, height, _ = _RULER.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return width, height


def _confusion_layout(cm: np.ndarray, classes: list[str], panels: list, title: str) -> dict:
    """Cell size, fonts, tick spacing and margins in pixels: each panel is a square matrix with its labels around it."""
    n = len(classes)
    annotate = n <= ANNOTATE_MAX
    tick_pt = 8.0 if annotate else 7.0
    name_w = max((_text_px(name, tick_pt)[0] for name in classes), default=0.0)
    line_h = _text_px("Ag", tick_pt)[1]
    number_pt, cell = 8.5, max(5, min(12, 720 // max(n, 1)))
    if annotate:
        widest = max(
            _text_px(_cell_text(values, fmt, cm, i, j), 8.5)[0] for _, values, fmt in panels for i, j in np.ndindex(cm.shape)
        )
        cell = max(30 if n <= 12 else 26, int(widest) + 8)
    # A few classes still get a panel wide enough for its title, and cells big enough to be seen as cells.
    title_w = max(_text_px(f"{title} {name}".strip(), 10)[0] for name, _, _ in panels)
    cell = max(cell, int(np.ceil(max(180, title_w + 8) / max(n, 1))))
    if annotate:  # the numbers as large as their cells allow, 3 px clear of each side
        number_pt = min(11 if n <= 5 else 9.5, 8.5 * (cell - 6) / max(widest, 1.0))
    # Labels drawn upright, sideways or at 45 degrees, whichever keeps neighbours apart.
    rotation = 0 if name_w <= cell - 4 else (45 if annotate else 90)
    step = max(1, int(np.ceil(1.3 * line_h / cell)), int(np.ceil((name_w + 4) / cell)) if rotation == 0 else 1)
    drop = {0: line_h, 45: 0.72 * (name_w + line_h), 90: name_w}[rotation]
    return dict(
        annotate=annotate,
        tick_pt=tick_pt,
        number_pt=number_pt,
        rotation=rotation,
        step=step,
        side=n * cell,
        left=name_w + 2.2 * line_h + 12,
        bottom=drop + 2.2 * line_h + 14,
        top=2.4 * line_h + 10,
        colorbar=0 if annotate else 70,
    )


def _ordinal(k: int) -> str:
    return f"{k}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(k if k < 20 else k % 10, 'th') }"


def _cell_text(values: np.ndarray, fmt: str, cm: np.ndarray, i: int, j: int) -> str:
    return format(int(cm[i, j]), "d") if fmt == "d" else format(values[i, j], fmt)


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "", normalized_too: bool = True) -> Figure:
    """A heatmap of counts and, beside it, the row-normalised view (recall per class on the diagonal).

    Sized in pixels: for 10 classes one panel is about 430 px square, which a 350 px TensorBoard card shows
    with its numbers still legible; beyond ANNOTATE_MAX classes it is a heatmap with a colour bar and thinned labels."""
    cm = np.asarray(cm)
    panels = _panels(cm, normalized_too)
    return _confusion_panels(cm, classes, title, panels, _confusion_layout(cm, classes, panels, title))


def _panels(cm: np.ndarray, normalized_too: bool) -> list[tuple[str, np.ndarray, str]]:
    """(name, values, number format) of each panel: the counts, and the row-normalised view."""
    panels = [("counts", cm.astype(float), "d")]
    if normalized_too:
        rows = cm.sum(axis=1, keepdims=True)
        panels.append(("row-normalised", np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0), ".2f"))
    return panels


def _confusion_panels(cm: np.ndarray, classes: list[str], title: str | None, panels: list, layout: dict) -> Figure:
    """The figure of confusion_figure for a layout; title None: no titles and no numbers (confusion_pixels's frame)."""
    side, bottom = layout["side"], layout["bottom"]
    # The panels share their rows, so only the first one repeats the class names down its side.
    lefts = [layout["left"]] + [layout["colorbar"] + 28] * (len(panels) - 1)
    width = int(np.ceil(sum(lefts) + len(panels) * side + layout["colorbar"] + 16))
    fig = Figure(figsize=(width / DPI, int(np.ceil(layout["top"] + side + bottom)) / DPI), dpi=DPI)
    x = 0.0
    for k, (name, values, fmt) in enumerate(panels):
        x += lefts[k]
        ax = _pixel_axes(fig, x, bottom, side, side)
        numbered = dict(layout, annotate=layout["annotate"] and title is not None)
        _draw_confusion(ax, cm, values, fmt, classes, numbered, names_down_side=k == 0)
        if title is not None:
            ax.set_title(f"{title} {name}".strip(), fontsize=10)
        if layout["colorbar"]:
            bar = fig.colorbar(ax.images[0], cax=_pixel_axes(fig, x + side + 8, bottom, 12, side))
            bar.ax.tick_params(labelsize=layout["tick_pt"])
        x += side
    return fig


def confusion_pixels(cm: np.ndarray, classes: list[str], title: str = "", normalized_too: bool = True) -> np.ndarray:
    """The picture of confusion_figure(cm, classes, title, normalized_too) as (H, W, 3) uint8 RGB, in a few
    milliseconds rather than matplotlib's 0.15 s a panel: matplotlib draws the frame (axes, class names, labels)
    once per layout, then numpy colours the cells and pastes the numbers' and the titles' glyphs as Agg rasterises
    them. Every epoch's val card in TensorBoard is one, and the jobs of a sweep share their frames. Beyond
    ANNOTATE_MAX classes (a colour bar whose ticks follow the counts) it is matplotlib's own drawing."""
    cm = np.asarray(cm)
    panels = _panels(cm, normalized_too)
    layout = _confusion_layout(cm, classes, panels, title)
    if not 0 < len(classes) <= ANNOTATE_MAX:
        return render(_confusion_panels(cm, classes, title, panels, layout))
    # The numbers' size is not part of the frame: val and test cards of one dataset share it, whatever their counts
    frame = _card_frame(tuple(classes), tuple((k, v) for k, v in layout.items() if k != "number_pt"), len(panels))
    picture = frame.pixels.copy()
    for box, (name, values, fmt) in zip(frame.boxes, panels):
        high = values.max()
        colours = matplotlib.colormaps["Blues"](values / high if high > 0 else np.zeros_like(values), bytes=True)[..., :3]
        # The axes' frame lies over the edge cells: each pixel keeps the share of black it had over a blank cell.
        cells = colours[box.cell_of_row[:, None], box.cell_of_col[None, :]] * (1 - box.frame_cover)
        picture[box.rows, box.cols] = (cells + 0.5).astype(np.uint8)
        for i, j in np.ndindex(cm.shape):
            white = values[i, j] > high / 2  # as _draw_confusion picks the numbers' colour
            centre = (box.top + (i + 0.5) * box.pitch, box.left + (j + 0.5) * box.pitch)
            text = _cell_text(values, fmt, cm, i, j)
            _paste_text(picture, text, layout["number_pt"], 255 if white else 0, centre, centred=True)
        baseline = box.top - TITLE_PAD_PT * DPI / 72
        _paste_text(picture, f"{title} {name}".strip(), 10, 0, (baseline, box.left + box.side / 2), centred=False)
    return picture


# matplotlib's rcParams["axes.titlepad"]: the title's baseline above the axes, in points.
TITLE_PAD_PT = 6.0


@dataclass(frozen=True)
class _PanelBox:
    """Where a panel's cells are in its frame: the pixel rows and columns of the matrix."""

    rows: slice
    cols: slice
    cell_of_row: np.ndarray  # the matrix row each pixel row of `rows` shows
    cell_of_col: np.ndarray
    frame_cover: np.ndarray  # (rows, cols, 1): how much of each pixel the axes' black frame covers
    top: float
    left: float
    pitch: float  # a cell's side, in pixels
    side: float


@dataclass(frozen=True)
class _CardFrame:
    """A confusion matrix's picture with its cells blank and no numbers or titles, and where its panels are."""

    pixels: np.ndarray
    boxes: list[_PanelBox]


@functools.lru_cache(maxsize=16)
def _card_frame(classes: tuple, layout_items: tuple, panels: int) -> _CardFrame:
    layout, n = dict(layout_items), len(classes)
    blank = np.zeros((n, n))
    fig = _confusion_panels(blank, list(classes), None, [("", blank, "d")] * panels, layout)
    pixels = render(fig)
    empty = np.asarray(matplotlib.colormaps["Blues"](0.0, bytes=True)[:3], dtype=np.uint8)
    return _CardFrame(pixels, [_panel_box(pixels, ax.get_window_extent(), n, empty) for ax in fig.axes])


def _panel_box(pixels: np.ndarray, box, n: int, empty: np.ndarray) -> _PanelBox:
    top, left, pitch = pixels.shape[0] - box.y1, box.x0, box.width / n
    rows = slice(int(np.floor(top)), int(np.ceil(top + box.height)))
    cols = slice(int(np.floor(left)), int(np.ceil(box.x1)))

    def cell_of(pixels_at: range, start: float) -> np.ndarray:
        return np.clip(((np.asarray(pixels_at) + 0.5 - start) // pitch).astype(int), 0, n - 1)

    return _PanelBox(
        rows=rows,
        cols=cols,
        cell_of_row=cell_of(range(rows.start, rows.stop), top),
        cell_of_col=cell_of(range(cols.start, cols.stop), left),
        frame_cover=np.clip(1 - pixels[rows, cols].astype(np.float32) / empty, 0, 1).mean(-1, keepdims=True),
        top=top,
        left=left,
        pitch=pitch,
        side=box.width,
    )


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, size: float) -> tuple[np.ndarray, float, float]:
    """One line of text as Agg rasterises it: its coverage (H, W) in [0, 1], how far it reaches below the
    baseline and how far right of its origin it starts, in pixels."""
    font = get_font(findfont(FontProperties(size=size)))
    font.clear()
    font.set_size(size, DPI)
    font.set_text(text, 0, flags=get_hinting_flag())
    font.draw_glyphs_to_bitmap(antialiased=True)
    return np.asarray(font.get_image(), dtype=np.float32) / 255, font.get_descent() / 64, font.get_bitmap_offset()[0] / 64


def _paste_text(picture: np.ndarray, text: str, size: float, colour: int, at: tuple[float, float], centred: bool) -> None:
    """Text of one colour (0 black, 255 white) laid over the picture, centred on `at` (row, column) like
    ha="center", va="center", or with its baseline's middle there (a title)."""
    alpha, descent, bearing = _glyphs(text, size)
    row, column = at
    if centred:  # matplotlib centres the line's box, as tall as "lp" at least, whatever the text's own glyphs
        _, text_h, text_d = _text_box(text, size)
        _, lp_h, lp_d = _text_box("lp", size)
        row += max(text_h, lp_h) / 2 - max(text_d, lp_d)
    top = max(0, round(row - (alpha.shape[0] - descent)))
    left = max(0, round(column - _text_box(text, size)[0] / 2 + bearing))
    region = picture[top : top + alpha.shape[0], left : left + alpha.shape[1]]
    cover = alpha[: region.shape[0], : region.shape[1], None]
    region[...] = (region * (1 - cover) + colour * cover + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=4096)
def _text_box(text: str, size: float) -> tuple[float, float, float]:
    return _RULER.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)


def _pixel_axes(fig: Figure, x: float, y: float, w: float, h: float):
    """Axes placed in pixels from the figure's lower left corner, so layouts computed in pixels stay exact."""
    width, height = fig.bbox.width, fig.bbox.height
    return fig.add_axes((x / width, y / height, w / width, h / height))


def _draw_confusion(ax, cm, values, fmt: str, classes: list[str], layout: dict, names_down_side: bool) -> None:
    n = len(classes)
    # Without numbers, a square-root colour scale keeps the few off-diagonal confusions visible next to the diagonal.
    norm = None if layout["annotate"] else PowerNorm(0.5, vmin=0, vmax=max(values.max(), 1e-12))
    ax.imshow(values, cmap="Blues", norm=norm, vmin=0 if norm is None else None, interpolation="nearest", aspect="auto")
    ticks = np.arange(0, n, layout["step"])
    names = [classes[t] for t in ticks]
    rotation = layout["rotation"]
    ax.set_xticks(ticks, names, rotation=rotation, fontsize=layout["tick_pt"], ha="right" if rotation == 45 else "center")
    if rotation == 45:
        for label in ax.get_xticklabels():
            label.set_rotation_mode("anchor")
    ax.set_yticks(ticks, names if names_down_side else [], fontsize=layout["tick_pt"])
    ax.tick_params(length=2, pad=2)
    # Say so when names were thinned, or a reader takes the named rows for the only ones.
    every = f" (every {_ordinal(layout['step'])} class named)" if layout["step"] > 1 else ""
    ax.set_xlabel("predicted" + every, fontsize=9)
    if names_down_side:
        ax.set_ylabel("true" + every, fontsize=9)
    if layout["annotate"]:
        high = values.max() / 2 if values.size else 0
        for i, j in np.ndindex(cm.shape):
            colour = "white" if values[i, j] > high else "black"
            ax.text(j, i, _cell_text(values, fmt, cm, i, j), ha="center", va="center", fontsize=layout["number_pt"], color=colour)


def render(fig) -> np.ndarray:
    """Draw the figure once, as an (H, W, 3) uint8 RGB array: the same pixels can then go to a PNG file
    and to TensorBoard without drawing twice."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig, path: Path) -> None:
    save_png(render(fig), path)


def curves_figure(history: list[dict], metrics=("loss", "accuracy", "f1")):
    """Train against val per epoch: a widening gap is overfitting, two high losses underfitting."""
    width, height = 4.2 * len(metrics), 3.4
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    # Fixed margins, in inches: 0.55 left of each plot for its tick labels, 0.5 below, 0.32 above for the title
    # (tight_layout would measure every label by drawing the figure an extra time, 0.15 s a figure).
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.32 / height, wspace=0.2)
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes[0], metrics):
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}/{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [row[key] for row in history], style, marker="o", markersize=3, label=split)
        # y given: matplotlib then skips measuring the axes to lift the title over any tick labels on top (none here)
        ax.set_title(metric, y=1.0)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig


def curves_pixels(history: list[dict], metrics=("loss", "accuracy", "f1")) -> np.ndarray:
    """The picture of curves_figure(history, metrics) as (H, W, 3) uint8 RGB, a third faster: the figure of the last
    history with the same curves is drawn again with this one's points (its axes keep the ticks and labels that
    matplotlib builds slowly, on first use)."""
    shown = tuple(f"{split}/{m}" for m in metrics for split in ("train", "val") if history and f"{split}/{m}" in history[0])
    with _kept_lock:
        fig = _kept.get(("curves", tuple(metrics), shown))
        if fig is None:
            _kept[("curves", tuple(metrics), shown)] = fig = curves_figure(history, metrics)
        else:
            epochs = [row["epoch"] for row in history]
            for ax, metric in zip(fig.axes, metrics):
                keys = [key for key in (f"train/{metric}", f"val/{metric}") if key in shown]
                for line, key in zip(ax.lines, keys):
                    line.set_data(epochs, [row[key] for row in history])
                ax.relim()
                ax.autoscale_view()
        return render(fig)


# Figures kept between drawings (curves_pixels, pr_curve_pixels, roc_curve_pixels), by layout; a few per process.
_kept: dict = {}
_kept_lock = threading.Lock()


def sweep_curves_figure(lines: list[dict], panels) -> Figure:
    """A sweep's curves.png: one panel per (key, title) of `panels`, one line per job or group as
    summary.curve_lines gives them ({"index", "of", "name", "best", "values": {key: (mean, std or None)}});
    the best one thick and starred, each group's std shaded about its mean."""
    fig = Figure(figsize=(5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for line in lines:
        n = line["of"]
        colour = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"](
            line["index"] % 20 if n <= 20 else line["index"] / max(n - 1, 1)
        )
        for ax, (key, _) in zip(axes[0], panels):
            if key not in line["values"]:
                continue
            mean, std = line["values"][key]
            epochs = np.arange(1, len(mean) + 1)
            label = ("* " if line["best"] else "") + line["name"]
            width = 2.5 if line["best"] else 1.2
            ax.plot(
                epochs, mean, marker="o" if len(mean) < 30 else None, markersize=3, color=colour, linewidth=width, label=label
            )
            if std is not None:
                ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15)
    for ax, (_, title) in zip(axes[0], panels):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, y=1.0)  # y given: see curves_figure
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0][-1].get_legend_handles_labels()
    # Fixed margins, in inches, as curves_figure's (tight_layout would draw the figure once more to measure it):
    # the legend's rows below, in up to half the height, then the tick labels and the axis name.
    legend = min(0.5, 0.06 * -(-len(handles) // 3) + 0.02) if handles else 0.0
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.6 / width, right=1 - 0.15 / width, bottom=legend + 0.55 / height, top=1 - 0.35 / height, wspace=0.22
    )
    return fig


def image_grid_figure(images: np.ndarray, titles: list[str], columns: int = 8):
    """Images (N, C, H, W) in [0, 1], each with a title above it, tiled into one picture: one axes
    for all of them draws several times faster than one axes each."""
    grid = _image_grid(images, columns)
    canvas, inch = grid["canvas"], grid["inch"]
    fig = Figure(figsize=(canvas.shape[1] * inch, canvas.shape[0] * inch))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for title, (x, y) in zip(titles, grid["title_at"]):
        ax.text(x, y, title, ha="center", va="bottom", fontsize=GRID_TITLE_PT)
    return fig


GRID_TITLE_PT = 7


def _image_grid(images: np.ndarray, columns: int) -> dict:
    """The tiles of image_grid_figure on one canvas in [0, 1], its scale (inches a canvas pixel) and where each
    title's bottom centre goes, in canvas pixels."""
    n, channels, h, w = images.shape
    columns = min(columns, n)
    rows = max(1, -(-n // columns))
    cell_w = w + max(2, w // 8)
    inch = 1.3 / cell_w  # each image 1.3 inches wide, whatever its size in pixels
    title_h = int(np.ceil(0.4 / inch))  # two lines of 7-point text
    cell_h = h + title_h
    canvas = np.ones((rows * cell_h, columns * cell_w, 3))
    title_at = []
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * cell_h + title_h, c * cell_w + (cell_w - w) // 2
        canvas[top : top + h, left : left + w] = image.transpose(1, 2, 0) if channels == 3 else image[0][..., None]
        title_at.append(((c + 0.5) * cell_w, r * cell_h + title_h - 0.5))
    return {"canvas": canvas, "inch": inch, "title_at": title_at}


def image_grid_pixels(images: np.ndarray, titles: list[str], columns: int = 8) -> np.ndarray:
    """The picture of image_grid_figure as (H, W, 3) uint8 RGB, without matplotlib's text layout (a tenth of a
    second for 32 titles): the canvas scaled as imshow scales it, each title's lines pasted from Agg's glyphs."""
    grid = _image_grid(images, columns)
    canvas, inch = grid["canvas"], grid["inch"]
    height, width = (int(side * inch * DPI) for side in canvas.shape[:2])
    scale_y, scale_x = height / canvas.shape[0], width / canvas.shape[1]
    rows_at = np.minimum(((np.arange(height) + 0.5) / scale_y).astype(int), canvas.shape[0] - 1)
    cols_at = np.minimum(((np.arange(width) + 0.5) / scale_x).astype(int), canvas.shape[1] - 1)
    picture = (canvas[rows_at[:, None], cols_at[None, :]] * 255).astype(np.uint8)  # imshow's float-to-byte
    _, line_h, descent = _text_box("lp", GRID_TITLE_PT)
    for title, (x, y) in zip(titles, grid["title_at"]):
        lines = title.split("\n")
        baseline = (y + 0.5) * scale_y - descent  # va="bottom": the last line's descent ends at y
        for k, line in enumerate(reversed(lines)):
            at = (baseline - k * LINE_SPACING * line_h, (x + 0.5) * scale_x)
            _paste_text(picture, line, GRID_TITLE_PT, 0, at, centred=False)
    return picture


# matplotlib's Text linespacing: baselines this many line heights apart.
LINE_SPACING = 1.2


def _highlighted(curves: dict) -> tuple[list[str], str]:
    """The classes the legend names: all of them up to LEGEND_MAX, else the lowest and highest scoring few,
    so a legend of 100 entries never hides the plot; the second value says which were chosen."""
    names = list(curves)
    if len(names) <= LEGEND_MAX:
        return names, ""
    ranked = sorted(names, key=lambda name: curves[name][2], reverse=True)
    few = LEGEND_MAX // 2
    return ranked[:few] + ranked[-few:], f"highest and lowest {few} of {len(names)} classes"


def _curves_figure(curves: dict, score: str, axes_names: tuple[str, str], title: str, steps: bool, chance: bool) -> Figure:
    """One line per class with its score in the legend, which sits below the axes where it cannot cover a curve."""
    fig = _curves_frame(*_curves_layout(curves), axes_names)
    _draw_curves(fig, curves, score, title, steps, chance)
    return fig


def _curves_pixels(curves: dict, score: str, axes_names: tuple[str, str], title: str, steps: bool, chance: bool):
    """The picture of _curves_figure as (H, W, 3) uint8 RGB in half its time: see _CurvesFrame."""
    layout = _curves_layout(curves)
    with _kept_lock:
        frame = _kept.get(("curves of classes", *layout, axes_names))
        if frame is None:
            frame = _kept[("curves of classes", *layout, axes_names)] = _CurvesFrame.drawn(*layout, axes_names)
        return frame.picture(curves, score, title, steps, chance)


@dataclass
class _CurvesFrame:
    """A figure of PR or ROC curves whose frame, which no curve changes (the axes span 0 to 1 both ways), is rendered
    once: its tick marks, tick labels, axis names and grid, without the spines, which lie over the curves. Each
    picture restores those pixels and draws on them only what lies above them, in the order the figure's own
    drawing takes: the curves, the spines, the title, the legend."""

    fig: Figure
    canvas: FigureCanvasAgg
    background: object  # the canvas's pixels of the frame (copy_from_bbox)

    @classmethod
    def drawn(cls, width: float, height: float, legend: float, axes_names: tuple[str, str]) -> "_CurvesFrame":
        fig = _curves_frame(width, height, legend, axes_names)
        canvas = FigureCanvasAgg(fig)
        spines = fig.axes[0].spines.values()
        for spine in spines:
            spine.set_visible(False)
        canvas.draw()
        for spine in spines:
            spine.set_visible(True)
        return cls(fig, canvas, canvas.copy_from_bbox(fig.bbox))

    def picture(self, curves: dict, score: str, title: str, steps: bool, chance: bool) -> np.ndarray:
        fig, ax = self.fig, self.fig.axes[0]
        for artist in [*ax.lines, *fig.legends]:
            artist.remove()
        _draw_curves(fig, curves, score, title, steps, chance)
        self.canvas.restore_region(self.background)
        renderer = self.canvas.get_renderer()
        # sorted by zorder as Axes.draw sorts its children (a stable sort: lines, then spines, then the title)
        for artist in sorted([*ax.lines, *ax.spines.values(), ax.title], key=lambda a: a.get_zorder()):
            artist.draw(renderer)
        for legend in fig.legends:  # the figure's own, drawn after its axes
            legend.draw(renderer)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def _curves_layout(curves: dict) -> tuple[float, float, float]:
    """(width, height, legend height), in inches: the plot about 4 inches square, its title above, its tick labels
    and axis name below, then the legend's rows (0.17 inches each at 8 points)."""
    named, which = _highlighted(curves)
    rows = -(-(len(named) + 1) // 2)
    legend = 0.17 * rows + 0.08 + (0.2 if which else 0)
    return 4.6, 4.85 + 0.19 * rows + (0.2 if which else 0), legend


def _curves_frame(width: float, height: float, legend: float, axes_names: tuple[str, str]) -> Figure:
    # Fixed margins, in inches: a layout engine draws the figure twice more.
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0.52 / width, (0.5 + legend) / height, 3.96 / width, (height - 0.77 - legend) / height))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=axes_names[0], ylabel=axes_names[1])
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    return fig


def _draw_curves(fig: Figure, curves: dict, score: str, title: str, steps: bool, chance: bool) -> None:
    ax = fig.axes[0]
    named, which = _highlighted(curves)
    colours = iter(matplotlib.colormaps["tab10"].colors)
    for name in [name for name in curves if name not in named]:  # the unnamed majority, faint, underneath
        x, y = _thinned(*curves[name][:2])
        ax.plot(x, y, color="0.6", alpha=0.35, linewidth=0.7, clip_on=False, **_steps(x, steps))
    for name in named:
        (x, y), value = _thinned(*curves[name][:2]), curves[name][2]
        label = f"{name} ({score} {value:.3f})"
        ax.plot(x, y, color=next(colours), linewidth=1.6, clip_on=False, label=label, **_steps(x, steps))
    mean = np.mean([value for _, _, value in curves.values()]) if curves else float("nan")
    ax.set_title(f"{title}, mean {score} {mean:.3f}", fontsize=10, y=1.0)  # y given: see curves_figure
    if chance:
        ax.plot((0, 1), (0, 1), linestyle="--", color="0.4", linewidth=1, label=f"chance ({score} 0.500)")
    _legend_below(fig, ax, which, loc="lower center")


# A curve's points closer than this share of the axes to the one before them are one point on a ~400 px plot.
THIN_CELLS = 1000


def _thinned(x, y) -> tuple[np.ndarray, np.ndarray]:
    """The curve less each point in the same 1/THIN_CELLS cell of the axes as the point before it (the last kept):
    the 10,000 test samples of MNIST make curves of thousands of points, drawn in half the time this way and the
    same to the eye. A short curve is left whole."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) <= 2 * THIN_CELLS:
        return x, y
    cell = np.round(x * THIN_CELLS) * (THIN_CELLS + 1) + np.round(y * THIN_CELLS)
    keep = np.ones(len(x), dtype=bool)
    keep[1:] = cell[1:] != cell[:-1]
    keep[-1] = True
    return x[keep], y[keep]


def _steps(x, steps: bool) -> dict:
    """Average precision is the area under precision held constant up to each recall reached: a step drawn
    on the left of each point, whichever way the points run (precision_recall_curve's recall decreases)."""
    if not steps or len(x) < 2:
        return {}
    return {"drawstyle": "steps-post" if x[0] > x[-1] else "steps-pre"}


def _legend_below(fig: Figure, ax, title: str = "", loc: str = "outside lower center") -> None:
    """`outside lower center` makes a constrained layout leave room for it; `lower center` sits in a margin left for it."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc=loc, ncols=2, fontsize=8, title=title or None, title_fontsize=8, frameon=False)


PR_AXES, ROC_AXES = ("recall", "precision"), ("false positive rate", "true positive rate")


def pr_curve_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str = "") -> Figure:
    """Precision against recall, one line per class: curves maps a class name to (recall, precision, average precision).
    Beyond LEGEND_MAX classes only the highest and lowest few are coloured and named; the rest stay faint grey."""
    return _curves_figure(curves, "AP", PR_AXES, f"{title} precision-recall".strip(), steps=True, chance=False)


def roc_curve_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str = "") -> Figure:
    """True against false positive rate, one line per class: curves maps a class name to (fpr, tpr, AUROC),
    over the dashed diagonal of a classifier that guesses."""
    return _curves_figure(curves, "AUROC", ROC_AXES, f"{title} ROC".strip(), steps=False, chance=True)


def pr_curve_pixels(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str = "") -> np.ndarray:
    """The picture of pr_curve_figure(curves, title) as (H, W, 3) uint8 RGB (see _curves_pixels)."""
    return _curves_pixels(curves, "AP", PR_AXES, f"{title} precision-recall".strip(), steps=True, chance=False)


def roc_curve_pixels(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str = "") -> np.ndarray:
    """The picture of roc_curve_figure(curves, title) as (H, W, 3) uint8 RGB (see _curves_pixels)."""
    return _curves_pixels(curves, "AUROC", ROC_AXES, f"{title} ROC".strip(), steps=False, chance=True)


def threshold_figure(thresholds, precision, recall, f1, best: float, default: float = 0.5, title: str = "") -> Figure:
    """Precision, recall and F1 of a binary task against its decision threshold, with the threshold that maximises
    F1 and the usual 0.5 marked, so the price of moving off 0.5 is read off the curves."""
    thresholds = np.asarray(thresholds, dtype=float)
    # precision_recall_curve returns one more precision and recall than thresholds (the point with no threshold).
    series = {
        name: np.asarray(values, dtype=float)[: len(thresholds)]
        for name, values in (("precision", precision), ("recall", recall), ("F1", f1))
    }
    order = np.argsort(thresholds)
    fig = Figure(figsize=(4.6, 4.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for (name, values), colour in zip(series.items(), ("tab:blue", "tab:orange", "tab:green")):
        width = 1.8 if name == "F1" else 1.3
        ax.plot(thresholds[order], values[order], color=colour, linewidth=width, clip_on=False, label=name)
    marks = (("best F1", best, "-"), ("default", default, ":"))
    for (name, at, line), side in zip(marks, ("right", "left") if best <= default else ("left", "right")):
        f1_at = np.interp(at, thresholds[order], series["F1"][order]) if len(thresholds) else float("nan")
        ax.axvline(at, color="0.2", linestyle=line, linewidth=1.2, label=f"{name} threshold {at:.2f} (F1 {f1_at:.3f})")
        # The values go on the side away from the other marker, so two close thresholds stay legible.
        ax.text(at, 1.01, f" {at:.2f} ", transform=ax.get_xaxis_transform(), ha=side, va="bottom", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="decision threshold", ylabel="score")
    ax.set_title("\n".join(filter(None, (title, "precision, recall and F1 by threshold"))), fontsize=10, pad=14)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    _legend_below(fig, ax)
    return fig


def predictions_figure(pred: np.ndarray, target: np.ndarray, title: str = "") -> Figure:
    """A regression's predictions against the true targets, with the identity line a perfect model sits on."""
    pred, target = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    fig = Figure(figsize=(4.2, 4.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(target, pred, s=10, alpha=0.6, edgecolors="none")
    both = np.concatenate([pred, target]) if len(pred) else np.zeros(1)
    low, high = float(both.min()), float(both.max())
    ax.plot([low, high], [low, high], color="0.2", linestyle="--", linewidth=1.2, label="predicted = true")
    ax.set(xlabel="true", ylabel="predicted", aspect="equal")
    ax.set_title("\n".join(filter(None, (title, "predicted against true"))), fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def residuals_figure(pred: np.ndarray, target: np.ndarray, title: str = "") -> Figure:
    """The histogram of a regression's residuals (true - predicted): centred on 0 when the model is unbiased."""
    residuals = np.asarray(target, dtype=float) - np.asarray(pred, dtype=float)
    fig = Figure(figsize=(4.2, 3.4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.hist(residuals, bins=min(40, max(5, len(residuals) // 5)), color="tab:blue", alpha=0.8)
    ax.axvline(0, color="0.2", linestyle="--", linewidth=1.2)
    mean = residuals.mean() if len(residuals) else float("nan")
    ax.set(xlabel="residual (true - predicted)", ylabel="count")
    ax.set_title("\n".join(filter(None, (title, f"residuals, mean {mean:.3g}"))), fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    return fig


def function_figure(xs: np.ndarray, learned: np.ndarray, x: np.ndarray, y: np.ndarray, title: str = "") -> Figure:
    """A 1-D regression: the training points and the function the model learned over their range."""
    fig = Figure(figsize=(5.0, 3.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(x, y, s=8, alpha=0.4, color="0.4", edgecolors="none", label="training data")
    ax.plot(xs, learned, color="tab:red", linewidth=2, label="learned function")
    ax.set(xlabel="x", ylabel="y")
    ax.set_title(title or "learned function", fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
    return fig


def class_templates_figure(images: np.ndarray, classes: list[str], columns: int | None = None) -> Figure:
    """A linear model's weights per class, images (C, channels, H, W) in [0, 1], as tiles named by their class:
    each tile is the input that class scores highest, so a trained model shows recognisable digits or shapes."""
    images = np.asarray(images, dtype=float)
    n, channels, h, w = images.shape
    columns = min(n, columns or (5 if n <= 10 else int(np.ceil(np.sqrt(n)))))
    rows = -(-n // columns)
    # Whole-pixel magnification to about 80 px a tile: nearest-neighbour blocks, no smoothing of the weights.
    scale = max(1, round(80 / max(h, w)))
    tile_h, tile_w = h * scale, w * scale
    font = 8.5
    name_w, name_h = max(_text_px(str(c), font)[0] for c in classes[:n]), _text_px("Ag", font)[1]
    cell_w, cell_h = max(tile_w + 14, int(np.ceil(name_w)) + 10), tile_h + int(np.ceil(name_h)) + 12
    canvas = np.ones((rows * cell_h + 6, columns * cell_w, 3))
    for i, image in enumerate(np.clip(images, 0, 1)):
        r, c = divmod(i, columns)
        top, left = r * cell_h + cell_h - tile_h - 2, c * cell_w + (cell_w - tile_w) // 2
        tile = image.transpose(1, 2, 0) if channels == 3 else np.repeat(image[0][..., None], 3, axis=2)
        canvas[top - 1 : top + tile_h + 1, left - 1 : left + tile_w + 1] = 0.75  # a thin frame: templates fade into white
        canvas[top : top + tile_h, left : left + tile_w] = tile.repeat(scale, axis=0).repeat(scale, axis=1)
    fig = Figure(figsize=(canvas.shape[1] / DPI, canvas.shape[0] / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for i, name in enumerate(classes[:n]):
        r, c = divmod(i, columns)
        ax.text((c + 0.5) * cell_w, r * cell_h + cell_h - tile_h - 5, str(name), ha="center", va="bottom", fontsize=font)
    return fig


def lr_find_figure(lrs, losses, smoothed, points: dict[str, tuple[float, float]], chosen: str) -> Figure:
    """The range test's loss against lr on a log axis: the raw loss faint, the smoothed one drawn, and each rule's
    point (points maps a rule to its (lr, smoothed loss)), the chosen rule's larger, with a dashed line at its lr."""
    fig = Figure(figsize=(5.2, 3.8), dpi=DPI)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.92)  # fixed margins: a layout engine costs more than the plot
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="0.7", linewidth=0.8, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=1.6, label="smoothed loss")
    for (rule, (lr, loss)), colour in zip(points.items(), ("tab:red", "tab:green", "tab:purple")):
        size, label = (11, f"{rule}: {lr:.3g} (suggested)") if rule == chosen else (7, f"{rule}: {lr:.3g}")
        ax.plot([lr], [loss], "o", color=colour, markersize=size, zorder=3, label=label)
    ax.axvline(points[chosen][0], color="0.4", linestyle="--", linewidth=0.9)
    # The blow-up that ends a test would flatten the rest: the axis ends a little above the curve up to its minimum.
    values = np.asarray(smoothed, dtype=float)
    lowest = int(np.argmin(values))
    top, bottom = values[: lowest + 1].max(), min(values.min(), float(np.min(losses[: lowest + 1])))
    pad = 0.05 * (top - bottom) or 0.05 * abs(top) or 0.05
    ax.set_ylim(bottom - 2 * pad, min(values.max(), top + 10 * pad) + pad)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="training loss")
    ax.set_title(f"lr range test: {chosen} suggests {points[chosen][0]:.3g}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="upper left")
    return fig


# A 2-D input set's decision boundary: the figure's size in pixels, whatever the data.
BOUNDARY_PX = (520, 440)
# Region colours are the class colours this far towards white, so that the points on them stand out.
REGION_TINT = 0.6


def boundary_colours(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) RGB in [0, 1]: each class's colour for its points, and the paler one of its region."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "hsv"]
    points = np.array([cmap(k if n <= 20 else k / n)[:3] for k in range(n)])
    return points, points + (1 - points) * REGION_TINT


def decision_boundary_figure(regions, extent, points, labels, classes: list[str], axis_names=("x1", "x2"), title="") -> Figure:
    """The class the model predicts at each point of a grid (regions: (H, W) class indices, row 0 at the bottom;
    extent: x from, x to, y from, y to), with the training points (N, 2) in their class colours over it."""
    width, height = BOUNDARY_PX
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    point_colours, region_colours = boundary_colours(len(classes))
    ax.imshow(region_colours[regions], origin="lower", extent=extent, aspect="auto", interpolation="nearest")
    labels = np.asarray(labels)
    for k, name in enumerate(classes):
        chosen = labels == k
        ax.scatter(*np.asarray(points)[chosen].T, s=9, color=point_colours[k], edgecolors="black", linewidths=0.3, label=name)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set(xlabel=axis_names[0], ylabel=axis_names[1])
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.legend(title="class", fontsize=7, title_fontsize=8, loc="upper right", framealpha=0.85, ncols=2 if len(classes) > 8 else 1)
    return fig
