"""Tables a person reads: the per-class classification report, and text tables for the console and markdown."""

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
