"""MNIST through torchvision's own MNIST class, on tiny IDX files written here in its MNIST/raw layout."""

import gzip
import json
import struct

import pytest
import torch
from helpers import run_dlrun
from hydra import compose, initialize_config_module

from dlrun.core.errors import ConfigError, DataError
from dlrun.data import load_data

N_TRAIN, N_TEST = 20, 10
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_images(images: torch.Tensor) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x803, n, rows, cols) + images.numpy().tobytes()


def idx_labels(labels: torch.Tensor) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.to(torch.uint8).numpy().tobytes()


def tiny_mnist():
    g = torch.Generator().manual_seed(0)
    make = lambda n: (torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10)  # noqa: E731
    return make(N_TRAIN), make(N_TEST)


def write_mnist(root, gz: bool):
    """Write the four files under root/MNIST/raw; return the ((x, y) train, (x, y) test) they hold."""
    (train_x, train_y), (test_x, test_y) = tiny_mnist()
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    contents = [idx_images(train_x), idx_labels(train_y), idx_images(test_x), idx_labels(test_y)]
    for name, data in zip(FILES, contents):
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return (train_x, train_y), (test_x, test_y)


def mnist_config(root, download: bool = False):
    with initialize_config_module("dlrun.configs", version_base="1.3"):
        cfg = compose("train", overrides=["dataset=mnist", f"dataset.root={root}", f"dataset.download={download}"])
    return cfg.dataset


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_reads_tiny_idx_files(tmp_path, gz):
    (train_x, train_y), (test_x, test_y) = write_mnist(tmp_path, gz)
    data = load_data(mnist_config(tmp_path), seed=0, val_fraction=0.1)
    assert data.in_shape == (1, 28, 28)
    assert data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, N_TEST)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (18, 1, 28, 28)
    # The test set is held out as written; train and val together are the training file, split.
    assert torch.equal(data.test.x.squeeze(1), test_x) and torch.equal(data.test.y, test_y)
    rejoined = torch.cat([data.train.y, data.val.y]).sort().values
    assert torch.equal(rejoined, train_y.sort().values)
    pixels = torch.cat([data.train.x, data.val.x]).flatten(1)
    assert {tuple(p.tolist()) for p in pixels} == {tuple(p.tolist()) for p in train_x.flatten(1)}


def assert_names_the_files(err: DataError, folder):
    message = str(err)
    assert "\n" not in message
    assert str(folder) in message
    for name in FILES:
        assert name in message


def test_missing_files_without_download_name_what_and_where(tmp_path):
    with pytest.raises(DataError) as caught:
        load_data(mnist_config(tmp_path, download=False), seed=0, val_fraction=0.1)
    assert_names_the_files(caught.value, tmp_path / "MNIST" / "raw")


def test_missing_files_offline_with_download_end_in_the_same_line(tmp_path, monkeypatch):
    # Offline for certain, whatever the machine: every URL goes through a proxy that refuses connections.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DataError) as caught:
        load_data(mnist_config(tmp_path, download=True), seed=0, val_fraction=0.1)
    assert_names_the_files(caught.value, tmp_path / "MNIST" / "raw")


def test_truncated_gz_names_the_file(tmp_path):
    write_mnist(tmp_path, gz=True)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError) as caught:
        load_data(mnist_config(tmp_path), seed=0, val_fraction=0.1)
    assert "train-images-idx3-ubyte" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_truncated_plain_file_is_a_data_error(tmp_path):
    write_mnist(tmp_path, gz=False)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError) as caught:
        load_data(mnist_config(tmp_path), seed=0, val_fraction=0.1)
    assert "t10k" in str(caught.value)


def test_root_that_is_a_file_is_a_config_error(tmp_path):
    root = tmp_path / "not-a-folder"
    root.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_data(mnist_config(root), seed=0, val_fraction=0.1)
    assert "dataset.root" in str(caught.value) and str(root) in str(caught.value)


@pytest.mark.slow
def test_dlrun_trains_on_tiny_mnist(tmp_path):
    write_mnist(tmp_path / "data", gz=True)
    run_dir = tmp_path / "run"
    proc = run_dlrun(
        "train",
        "dataset=mnist",
        f"dataset.root={tmp_path / 'data'}",
        "trainer.epochs=1",
        "model=logistic",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert "mnist" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["dataset"] == "mnist"
    rows = (run_dir / "confusion_matrix.csv").read_text().splitlines()[1:]
    assert sum(int(v) for row in rows for v in row.split(",")[1:]) == N_TEST
