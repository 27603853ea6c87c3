"""The figures a run writes, as a person sees them: sizes that fit a TensorBoard card (about 350 px wide),
class names that do not run into each other, nothing cut off at the edges, and legends that carry the numbers."""

import itertools

import numpy as np
import pytest
from matplotlib.text import Text
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score, roc_curve

from dlrun.observe import figures

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish "
    "forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle "
    "mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
    "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()
CARD = 350  # TensorBoard's image cards show a picture about this many pixels wide


def confusion(n: int, diagonal: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 40, size=(n, n))
    np.fill_diagonal(cm, rng.integers(diagonal // 2, diagonal, size=n))
    return cm


def drawn(fig):
    """The rendered pixels and the renderer that drew them, to measure where each text landed."""
    return figures.render(fig), fig.canvas.get_renderer()


def texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def assert_inside(fig, renderer) -> None:
    """Everything drawn lies within the picture: no class name or number is cut off at an edge."""
    drawn_box = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
    assert drawn_box.x0 >= -1 and drawn_box.y0 >= -1, f"cut off at the left or bottom: {drawn_box}"
    assert drawn_box.x1 <= fig.bbox.width + 1 and drawn_box.y1 <= fig.bbox.height + 1, f"cut off: {drawn_box}"


def assert_apart(labels: list[Text], renderer) -> None:
    boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in labels if label.get_text()]
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"the labels {a!r} and {b!r} overlap"


def smallest_font_on_a_card(fig, width_px: int) -> float:
    """The smallest text's height in pixels once the picture is shrunk to a TensorBoard card's width."""
    return min(t.get_fontsize() for t in texts(fig)) * figures.DPI / 72 * min(1.0, CARD / width_px)


def test_ten_class_test_matrix_fits_beside_its_row_normalised_view():
    cm = confusion(10)
    fig = figures.confusion_figure(cm, CIFAR10, "test")
    rgb, renderer = drawn(fig)
    height, width, _ = rgb.shape
    assert width <= 1000 and height <= 520, f"{width}x{height} px"
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        assert box.width == pytest.approx(box.height, abs=1)  # square cells
    assert_inside(fig, renderer)
    counts, normalised = ({t.get_text() for t in ax.texts} for ax in fig.axes)
    assert {str(v) for v in cm.flatten()} == counts
    recall = np.diag(cm) / cm.sum(1)
    assert {f"{r:.2f}" for r in recall} <= normalised


def test_one_panel_matrix_is_square_and_legible_on_a_card():
    fig = figures.confusion_figure(confusion(10), CIFAR10, "val epoch 12", normalized_too=False)
    rgb, renderer = drawn(fig)
    height, width, _ = rgb.shape
    assert width <= 500 and 0.85 <= height / width <= 1.15, f"{width}x{height} px"
    assert smallest_font_on_a_card(fig, width) >= 8.5, "numbers too small to read on a TensorBoard card"
    assert fig.axes[0].get_title() == "val epoch 12 counts"
    assert_inside(fig, renderer)


def test_hundred_classes_become_a_heatmap_whose_names_stay_apart():
    fig = figures.confusion_figure(confusion(100, diagonal=100), CIFAR100, "test")
    rgb, renderer = drawn(fig)
    counts = fig.axes[0]
    assert len(counts.texts) == 0  # 10,000 numbers would be unreadable: colour alone
    shown = [label.get_text() for label in counts.get_xticklabels()]
    assert set(shown) <= set(CIFAR100) and len(shown) >= 25
    assert "every 2nd class named" in counts.get_xlabel()
    assert [label.get_text() for label in counts.get_yticklabels()] == shown
    assert min(label.get_fontsize() for label in counts.get_xticklabels()) >= 6
    assert_apart(counts.get_xticklabels(), renderer)
    assert_apart(counts.get_yticklabels(), renderer)
    assert_inside(fig, renderer)


def test_twenty_classes_keep_their_numbers_and_every_name():
    names = CIFAR100[:20]
    fig = figures.confusion_figure(confusion(20), names, "test", normalized_too=False)
    _, renderer = drawn(fig)
    ax = fig.axes[0]
    assert len(ax.texts) == 400
    assert [label.get_text() for label in ax.get_yticklabels()] == names
    assert_apart(ax.get_yticklabels(), renderer)
    assert_inside(fig, renderer)


def test_a_two_class_matrix_is_big_enough_for_its_titles():
    fig = figures.confusion_figure(np.array([[84, 8], [18, 90]]), ["0", "1"], "test")
    _, renderer = drawn(fig)
    assert_apart([ax.title for ax in fig.axes], renderer)
    assert all(ax.get_window_extent(renderer).width >= 179 for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].texts] == ["84", "8", "18", "90"]
    assert_inside(fig, renderer)


def scores(n: int, samples: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n, samples)
    logits = rng.normal(size=(samples, n)) + rng.uniform(0.5, 3.0, n) * np.eye(n)[y]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def pr_curves(names: list[str]) -> dict:
    y, p = scores(len(names))
    curves = {}
    for k, name in enumerate(names):
        precision, recall, _ = precision_recall_curve(y == k, p[:, k])
        curves[name] = (recall, precision, average_precision_score(y == k, p[:, k]))
    return curves


def legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_pr_curves_name_each_class_with_its_average_precision():
    curves = pr_curves(CIFAR10)
    fig = figures.pr_curve_figure(curves, "test")
    rgb, renderer = drawn(fig)
    assert legend_texts(fig) == [f"{name} (AP {ap:.3f})" for name, (_, _, ap) in curves.items()]
    ax = fig.axes[0]
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1) and ax.get_xlabel() == "recall"
    assert f"mean AP {np.mean([ap for _, _, ap in curves.values()]):.3f}" in ax.get_title()
    assert rgb.shape[1] <= 500
    assert not fig.legends[0].get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    assert_inside(fig, renderer)


def test_pr_curves_of_a_hundred_classes_name_only_the_best_and_worst_outside_the_plot():
    curves = pr_curves(CIFAR100)
    fig = figures.pr_curve_figure(curves)
    _, renderer = drawn(fig)
    ranked = sorted(curves, key=lambda name: curves[name][2], reverse=True)
    named = [text.split(" (")[0] for text in legend_texts(fig)]
    assert named == ranked[:5] + ranked[-5:]
    assert "highest and lowest 5 of 100 classes" in fig.legends[0].get_title().get_text()
    assert len(fig.axes[0].lines) == 100  # the other 90 still drawn, faintly
    assert not fig.legends[0].get_window_extent(renderer).overlaps(fig.axes[0].get_window_extent(renderer))
    assert_inside(fig, renderer)


def test_roc_curves_carry_their_auroc_over_a_dashed_chance_line():
    y, p = scores(3)
    curves = {}
    for k, name in enumerate(["cat", "dog", "bird"]):
        fpr, tpr, _ = roc_curve(y == k, p[:, k])
        curves[name] = (fpr, tpr, roc_auc_score(y == k, p[:, k]))
    fig = figures.roc_curve_figure(curves, "test")
    _, renderer = drawn(fig)
    assert legend_texts(fig)[:3] == [f"{name} (AUROC {auc:.3f})" for name, (_, _, auc) in curves.items()]
    chance = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert len(chance) == 1 and list(chance[0].get_xdata()) == [0, 1] and list(chance[0].get_ydata()) == [0, 1]
    assert_inside(fig, renderer)


def test_threshold_figure_marks_the_best_f1_threshold_and_half():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 800)
    s = 1 / (1 + np.exp(-(rng.normal(size=800) + 1.5 * (2 * y - 1) - 0.8)))
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = float(thresholds[np.argmax(f1[:-1])])
    fig = figures.threshold_figure(thresholds, precision, recall, f1, best, title="val, positive class cat")
    _, renderer = drawn(fig)
    ax = fig.axes[0]
    marked = sorted(line.get_xdata()[0] for line in ax.lines if len(set(line.get_xdata())) == 1)
    assert marked == sorted([best, 0.5])
    assert f"best F1 threshold {best:.2f} (F1 {f1_score(y, s >= best):.3f})" in legend_texts(fig)
    assert f"default threshold 0.50 (F1 {f1_score(y, s >= 0.5):.3f})" in legend_texts(fig)
    assert {f"{best:.2f}", "0.50"} <= {t.get_text().strip() for t in ax.texts}
    assert ax.get_title().startswith("val, positive class cat")
    assert_inside(fig, renderer)


def test_class_templates_are_tiles_named_by_their_class():
    rng = np.random.default_rng(0)
    fig = figures.class_templates_figure(rng.uniform(size=(10, 1, 28, 28)), [str(d) for d in range(10)])
    rgb, renderer = drawn(fig)
    assert [t.get_text() for t in fig.axes[0].texts] == [str(d) for d in range(10)]
    assert rgb.shape[1] <= 500 and rgb.shape[0] < rgb.shape[1]  # a few columns, not one long strip
    assert_inside(fig, renderer)


def test_a_hundred_templates_keep_their_long_names_apart():
    rng = np.random.default_rng(0)
    fig = figures.class_templates_figure(rng.uniform(size=(100, 3, 32, 32)), CIFAR100)
    _, renderer = drawn(fig)
    names = fig.axes[0].texts
    assert [t.get_text() for t in names] == CIFAR100
    assert_apart(names, renderer)
    assert_inside(fig, renderer)
