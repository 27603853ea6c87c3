"""Decision boundaries of the 2-D sets: decision_boundary.png of the best weights, and TensorBoard images every
logging.boundary_every epochs, so that the boundary can be watched as it forms. That other inputs (digits) get
none is checked on test_imbalance's digits runs."""

from types import SimpleNamespace

import numpy as np
import torch
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import dlrun
from dlrun.observe.figures import BOUNDARY_PX, boundary_colours
from dlrun.observe.tracker import BOUNDARY_GRID, boundary_regions, drawable

QUIET = ["logging.graph=false", "logging.misclassified=0", "logging.confusion_matrix_every=0"]


def images_by_tag(run_dir) -> dict[str, list[int]]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_the_grid_is_predicted_in_the_model_input_space():
    # A model that says class 1 right of 0 in its (standardised) input: at x = 3 in the data's units, mean 3, std 2.
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        model.bias.zero_()
    points = np.array([[0.0, -1.0], [6.0, 1.0]])
    regions, extent = boundary_regions(model, points, mean=(3.0, 0.0), std=(2.0, 1.0))
    assert regions.shape == (BOUNDARY_GRID, BOUNDARY_GRID)
    assert np.allclose(extent, (-0.6, 6.6, -1.2, 1.2))  # the points' range and a tenth of it each side
    xs = np.linspace(extent[0], extent[1], BOUNDARY_GRID)
    assert (regions == (xs > 3.0)[None, :]).all()  # every row: class 1 exactly where x > the mean
    assert model.training  # left as it was


def test_a_2d_run_draws_its_boundary_every_n_epochs_and_at_the_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["dataset=moons", "dataset.n_samples=300", "trainer.epochs=2", "logging.boundary_every=1", *QUIET]
    run = dlrun.train([*args, "hydra.run.dir=run"])
    picture = imread(tmp_path / "run" / "decision_boundary.png")[..., :3]
    assert picture.shape[:2] == (BOUNDARY_PX[1], BOUNDARY_PX[0])
    # Both classes' region colours fill a good part of the figure.
    _, regions = boundary_colours(2)
    shares = [np.all(np.abs(picture - colour) < 2 / 255, axis=-1).mean() for colour in regions]
    assert min(shares) > 0.1, shares
    best = run.metrics["best"]["epoch"]
    tags = images_by_tag(tmp_path / "run")
    assert tags["boundary/epoch"] == [1, 2] and tags["boundary/best"] == [best]


def test_only_two_feature_classifications_are_drawn():
    assert drawable(SimpleNamespace(in_shape=(2,), task="classification"))
    assert not drawable(SimpleNamespace(in_shape=(1, 8, 8), task="classification"))  # digits (their runs: test_imbalance)
    assert not drawable(SimpleNamespace(in_shape=(3,), task="classification"))
    assert not drawable(SimpleNamespace(in_shape=(2,), task="regression"))
