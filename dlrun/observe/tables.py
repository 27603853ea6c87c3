"""Tables a person reads: the per-class classification report, and text tables for the console and markdown."""

import shutil
from pathlib import Path

import numpy as np

from dlrun.core.io import write_csv


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


def write_confusion_csv(path: Path, cm: np.ndarray, classes: list[str]) -> None:
    """Rows are the true class, columns the predicted class."""
    write_csv(path, ["true\\pred", *classes], [[name, *map(int, row)] for name, row in zip(classes, cm)])


def plain_table(header: list[str], body: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column (a status with its reason) left unpadded."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
    lines = []
    for cells in [header, *body]:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths)] + [cells[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def markdown_table(header: list, body: list[list]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])


def print_table(console, title: str, header: list[str], body: list[list[str]], texts: list[int], left=(), highlight=None):
    """A table fitted to the terminal: rich on a terminal, plain columns when piped. Text columns (and `left`) are
    left-aligned and may be cut; numbers are right-aligned and never cut. Returns (the body as shown, whether its
    last column, a status, was cut)."""
    width = console.rich.width if console.tty else shutil.get_terminal_size().columns
    heads, body, cut = fit_table(header, body, width, texts)
    if not console.tty:
        print(title)
        print(plain_table(heads[0], [*heads[1:], *body]), flush=True)
        return body, cut
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    # No borders, two spaces between columns: the width fit_table counted.
    table = Table(
        title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )
    for i, lines in enumerate(zip(*heads)):
        name = "\n".join(line for line in lines if line)
        aligned = "left" if i in texts or name in left else "right"
        table.add_column(escape(name), justify=aligned, no_wrap=i not in texts, overflow="fold")
    for cells in body:  # values such as [50,50] are text, not rich markup
        table.add_row(*map(escape, cells), style="bold green" if highlight and highlight(cells) else None)
    # wider than the terminal even so: lines that wrap, rather than columns that vanish
    console.rich.width = max(width, _line_width([*heads, *body]))
    console.rich.print(table)
    return body, cut


MIN_CELL = 16  # a cut text cell keeps at least this many characters (a verdict, still_improving, is never cut)


def fit_table(header: list[str], body: list[list[str]], width: int, texts: list[int]):
    """A plain table that fits `width` where it can: a header wider than its column's values on two lines
    (`train/loss` over `(last)`), then long text cells (run names, values, a failure's reason) cut with "…", the
    widest first; numbers are never cut. Returns (the header lines, the body, whether a status, the last column,
    was cut)."""
    heads = [header]
    if _line_width([header, *body]) > width:
        values = [max((len(cells[i]) for cells in body), default=0) for i in range(len(header))]
        two = [_split_header(name) if len(name) > values[i] else (name, "") for i, name in enumerate(header)]
        if any(bottom for _, bottom in two):
            heads = [[top for top, _ in two], [bottom for _, bottom in two]]
    widths = [max(len(cell) for cell in column) for column in zip(*heads, *body)]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        candidates = [i for i in texts if widths[i] > MIN_CELL]
        if not candidates:
            break
        i = max(candidates, key=lambda c: (widths[c], c))
        widths[i] -= 1
        excess -= 1
    heads = [[_cut_header(name, widths[i]) if i in texts else name for i, name in enumerate(line)] for line in heads]
    cut = [[_cut(cell, widths[i]) if i in texts else cell for i, cell in enumerate(cells)] for cells in body]
    last = len(widths) - 1
    return heads, cut, last in texts and any(len(cells[last]) > widths[last] for cells in body)


def _line_width(lines: list[list[str]]) -> int:
    return sum(max(len(cell) for cell in column) for column in zip(*lines)) + 2 * (len(lines[0]) - 1)


def _split_header(name: str) -> tuple[str, str]:
    """`train/loss (last)` -> (`train/loss`, `(last)`), `best val/f1` -> (`best`, `val/f1`), `optimizer.momentum` ->
    (`optimizer.`, `momentum`)."""
    if " (" in name:  # the qualifier whole: `val/auroc` over `(best epoch)`
        top, bottom = name.rsplit(" (", 1)
        return top, f"({bottom}"
    if " " in name:
        top, bottom = name.rsplit(" ", 1)
        return top, bottom
    if "." in name.strip("."):
        top, bottom = name.rsplit(".", 1)
        return top + ".", bottom
    return name, ""


def _cut(text: str, width: int) -> str:
    """A run's path keeps its start and its end (the job's values); other texts their start."""
    if len(text) <= width:
        return text
    if "/" in text:
        head = (width - 1) // 3
        return text[:head] + "…" + text[len(text) - (width - 1 - head) :]
    return text[: width - 1] + "…"


def _cut_header(name: str, width: int) -> str:
    if len(name) > width and "." in name:
        name = name.rsplit(".", 1)[-1]
    return _cut(name, width)
