"""Each dataset's real loader on a tiny fixture written here: IDX files for the MNIST family, CIFAR pickle
batches, PNG folders, and the generated 2-D sets; the uint8 cache; DLRUN_DATA_DIR; bad-file errors."""

import gzip
import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers import compose_config, run_dlrun
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from test_mnist import FILES, idx_images, idx_labels, tiny_mnist

import dlrun
from dlrun.core.errors import ConfigError, DataError
from dlrun.data import CACHE_NAME, FileSplit, load_data, make_loaders

CIFAR = {
    # config name: (torchvision folder, train files, test files, meta file, label key, meta key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 100),
}


def dataset_config(*overrides: str):
    return compose_config(*overrides).dataset


def write_cifar(root, name: str, per_file: int = 6, n_test: int = 8, seed: int = 0):
    """CIFAR pickle batches in torchvision's layout; returns (train_x, train_y, test_x, test_y) as NCHW uint8."""
    folder_name, train_files, test_files, meta_file, label_key, meta_key, n_classes = CIFAR[name]
    folder = root / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    parts = {}
    for files, n in ((train_files, per_file), (test_files, n_test)):
        xs, ys = [], []
        for file in files:
            x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, n_classes, n)]
            entry = {"data": x, label_key: y}
            if name == "cifar100":
                entry["coarse_labels"] = [v // 5 for v in y]
            (folder / file).write_bytes(pickle.dumps(entry))
            xs.append(x)
            ys += y
        parts[files is train_files] = (torch.from_numpy(np.concatenate(xs)).view(-1, 3, 32, 32), torch.tensor(ys))
    (folder / meta_file).write_bytes(pickle.dumps({meta_key: [f"class{i}" for i in range(n_classes)]}))
    return (*parts[True], *parts[False])


def write_pngs(folder, classes=("cat", "dog", "owl"), per_class: int = 5, size=(12, 10), seed: int = 0):
    """`per_class` RGB PNGs in folder/<class>/; returns {path: (class index, HWC uint8 array)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            path = folder / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            written[path] = (c, pixels)
    return written


def write_idx_set(root, folder: str, gz: bool = True):
    (train_x, train_y), (test_x, test_y) = tiny_mnist()
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for name, data in zip(FILES, [idx_images(train_x), idx_labels(train_y), idx_images(test_x), idx_labels(test_y)]):
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return train_x, train_y, test_x, test_y


# The MNIST family and the uint8 cache


@pytest.mark.parametrize(
    "name, folder, first_class", [("fashion_mnist", "FashionMNIST", "T-shirt/top"), ("kmnist", "KMNIST", "o")]
)
def test_mnist_family_reads_its_own_folder(tmp_path, name, folder, first_class):
    train_x, train_y, test_x, test_y = write_idx_set(tmp_path, folder)
    data = load_data(dataset_config(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false"), 0, 0.1)
    assert data.classes[0] == first_class and data.num_classes == 10
    assert data.in_shape == (1, 28, 28) and data.train.x.dtype == torch.uint8
    assert torch.equal(data.test.x.squeeze(1), test_x) and torch.equal(data.test.y, test_y)
    assert len(data.train) + len(data.val) == len(train_y)
    # Normalisation statistics are those of the training file, in [0, 1] units.
    assert data.mean[0] == pytest.approx(train_x.float().div(255).mean().item(), abs=1e-5)
    assert data.std[0] == pytest.approx(train_x.float().div(255).std(unbiased=False).item(), abs=1e-5)


def test_second_load_reads_the_uint8_cache_not_the_files(tmp_path):
    train_x, _, test_x, _ = write_idx_set(tmp_path, "MNIST")
    cfg = dataset_config("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    load_data(cfg, 0, 0.1)
    assert (tmp_path / "MNIST" / CACHE_NAME).is_file()
    # Scramble a source file but keep its size and mtime: only a load from the cache still sees the true pixels.
    source = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    stat = source.stat()
    source.write_bytes(bytes(stat.st_size))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert torch.equal(load_data(cfg, 0, 0.1).test.x.squeeze(1), test_x)
    # A changed file (new mtime) is decoded again, and here it is not gzip at all.
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_data(cfg, 0, 0.1)


def test_the_cache_holds_the_normalisation_statistics_and_an_older_cache_gets_them(tmp_path):
    """A run from the cache reads the training images' mean and std from it (bincount over MNIST's 47M pixels is
    about 0.1 s a run): the numbers a load from the files gives. A cache an earlier dlrun wrote, without them, is
    written again with them."""
    train_x, _, _, _ = write_idx_set(tmp_path, "MNIST")
    cfg = dataset_config("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    first = load_data(cfg, 0, 0.1)
    cache = tmp_path / "MNIST" / CACHE_NAME
    blob = torch.load(cache, weights_only=True)
    assert blob["train_stats"] == (first.mean, first.std)
    assert first.mean[0] == pytest.approx(train_x.float().div(255).mean().item(), abs=1e-5)
    blob["train_stats"] = ((0.5,), (0.25,))  # read from the cache, not computed again
    torch.save(blob, cache)
    assert (load_data(cfg, 0, 0.1).mean, load_data(cfg, 0, 0.1).std) == ((0.5,), (0.25,))
    del blob["train_stats"]
    torch.save(blob, cache)
    again = load_data(cfg, 0, 0.1)
    assert (again.mean, again.std) == (first.mean, first.std)
    assert torch.load(cache, weights_only=True)["train_stats"] == (first.mean, first.std)


def test_read_only_root_caches_under_home(tmp_path, monkeypatch):
    root, home = tmp_path / "data", tmp_path / "home"
    _, _, test_x, _ = write_idx_set(root, "MNIST")
    monkeypatch.setenv("HOME", str(home))
    for folder in (root / "MNIST" / "raw", root / "MNIST", root):
        folder.chmod(0o555)
    try:
        cfg = dataset_config("dataset=mnist", f"dataset.root={root}", "dataset.download=false")
        assert torch.equal(load_data(cfg, 0, 0.1).test.x.squeeze(1), test_x)
        assert sorted(p.name for p in (root / "MNIST").iterdir()) == ["raw"]  # nothing written beside the files
        assert [p.name for p in (home / ".cache" / "dlrun").rglob(CACHE_NAME)] == [CACHE_NAME]
    finally:
        for folder in (root, root / "MNIST", root / "MNIST" / "raw"):
            folder.chmod(0o755)


def test_unreadable_cache_is_rebuilt(tmp_path):
    _, _, test_x, _ = write_idx_set(tmp_path, "MNIST", gz=False)
    (tmp_path / "MNIST" / CACHE_NAME).write_bytes(b"cut short by a full disk")
    cfg = dataset_config("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    assert torch.equal(load_data(cfg, 0, 0.1).test.x.squeeze(1), test_x)
    assert torch.load(tmp_path / "MNIST" / CACHE_NAME, weights_only=True)["test_x"].shape == (len(test_x), 1, 28, 28)


# CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_batches(tmp_path, name):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, name)
    data = load_data(dataset_config(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false"), 0, 0.2)
    assert data.in_shape == (3, 32, 32) and data.train.x.dtype == torch.uint8
    assert data.classes == [f"class{i}" for i in range(CIFAR[name][-1])]
    assert torch.equal(data.test.x, test_x) and torch.equal(data.test.y, test_y)
    both = torch.cat([data.train.y, data.val.y])
    assert sorted(both.tolist()) == sorted(train_y.tolist()) and len(data.val) == round(0.2 * len(train_y))
    assert data.mean == pytest.approx(tuple(train_x.float().div(255).mean(dim=(0, 2, 3)).tolist()), abs=1e-5)


def test_cifar_truncated_batch_names_the_file(tmp_path):
    write_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError) as caught:
        load_data(dataset_config("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false"), 0, 0.1)
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


def test_cifar_missing_files_say_which_and_where(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError) as caught:
        load_data(dataset_config("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false"), 0, 0.1)
    message = str(caught.value)
    assert "test_batch" in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" not in message  # only what is missing


@pytest.mark.slow
def test_dlrun_trains_on_cifar_found_through_dlrun_data_dir(tmp_path):
    # No dataset.root on the command line: the root comes from the environment. The shipped cifar10
    # config augments (crop and flip) on the device; bf16 and channels-last batches reach a CNN.
    write_cifar(tmp_path / "data", "cifar10", per_file=8, n_test=12)
    run_dir = tmp_path / "run"
    proc = run_dlrun(
        "train",
        "dataset=cifar10",
        "model=cnn",
        "model.channels=[4]",
        "trainer.epochs=1",
        "trainer.precision=bf16",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"DLRUN_DATA_DIR": str(tmp_path / "data")},
    )
    assert "input (3, 32, 32)" in proc.stdout and "bf16" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["precision"] == "bf16"
    assert (tmp_path / "data" / "cifar-10-batches-py" / CACHE_NAME).is_file()


def test_dlrun_data_dir_sets_every_datasets_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DLRUN_DATA_DIR", str(tmp_path))
    for name in ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "image_folder"):
        assert dataset_config(f"dataset={name}").root == str(tmp_path)
    monkeypatch.delenv("DLRUN_DATA_DIR")
    assert dataset_config("dataset=cifar10").root == "./data"


def test_each_dataset_sets_the_default_epochs():
    assert compose_config("dataset=mnist").trainer.epochs == 2
    assert compose_config("dataset=digits").trainer.epochs == 20
    assert compose_config("dataset=mnist", "trainer.epochs=7").trainer.epochs == 7


def test_a_dataset_may_set_the_cosine_warm_up():
    assert compose_config("dataset=mnist").scheduler.fn.warmup_epochs == 0.2
    assert compose_config("dataset=digits").scheduler.fn.warmup_epochs == 1.0
    assert compose_config("dataset=mnist", "scheduler.fn.warmup_epochs=0.5").scheduler.fn.warmup_epochs == 0.5


# Image folders


def test_image_folder_without_split_folders_is_split_by_seed(tmp_path):
    write_pngs(tmp_path, per_class=10)
    cfg = dataset_config(
        "dataset=image_folder",
        f"dataset.root={tmp_path}",
        "dataset.resize=8",
        "dataset.test_fraction=0.2",
        "dataset.num_workers=0",
    )
    data = load_data(cfg, seed=0, val_fraction=0.25)
    assert data.classes == ["cat", "dog", "owl"] and data.in_shape == (3, 8, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    assert isinstance(data.train, FileSplit) and data.mean == pytest.approx((0.485, 0.456, 0.406))
    # The test split depends on split_seed only, not on the run's seed.
    test_paths = {data.test.folder.samples[i][0] for i in data.test.indices.tolist()}
    again = load_data(cfg, seed=1, val_fraction=0.25)
    assert {again.test.folder.samples[i][0] for i in again.test.indices.tolist()} == test_paths
    assert len(test_paths | {data.train.folder.samples[i][0] for i in data.train.indices.tolist()}) == 24


def test_image_folder_uses_train_val_test_folders(tmp_path):
    write_pngs(tmp_path / "train", per_class=4)
    write_pngs(tmp_path / "val", per_class=2, seed=1)
    write_pngs(tmp_path / "test", per_class=3, seed=2)
    cfg = dataset_config("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.resize=null", "dataset.normalize=dataset")
    data = load_data(cfg, seed=0, val_fraction=0.5)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 9)
    assert data.in_shape == (3, 12, 10)  # the files' own size, as height x width
    # normalize=dataset: statistics of the training images themselves.
    pixels = torch.stack([data.train.folder[i][0] for i in range(12)]).float().div(255)
    assert data.mean == pytest.approx(tuple(pixels.mean(dim=(0, 2, 3)).tolist()), abs=1e-6)


def test_image_folder_class_folders_must_agree(tmp_path):
    write_pngs(tmp_path / "train")
    write_pngs(tmp_path / "test", classes=("cat", "dog"))
    with pytest.raises(DataError, match="class folders"):
        load_data(dataset_config("dataset=image_folder", f"dataset.root={tmp_path}"), 0, 0.2)


def test_image_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError) as caught:
        load_data(dataset_config("dataset=image_folder", f"dataset.root={tmp_path}"), 0, 0.2)
    assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_image_names_the_file(tmp_path, workers):
    write_pngs(tmp_path, per_class=2)
    bad = tmp_path / "dog" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    cfg = compose_config(
        "dataset=image_folder",
        f"dataset.root={tmp_path}",
        "dataset.resize=8",
        f"dataset.num_workers={workers}",
        "dataset.test_fraction=0.5",
    )
    with pytest.raises(DataError) as caught:  # at load now, from the file's header, before any batch
        data = load_data(cfg.dataset, 0, 0.25)
        for loader in make_loaders(data, cfg, "cpu"):
            list(loader)
    assert str(caught.value).startswith(str(bad)) and "\n" not in str(caught.value)


def test_images_of_different_sizes_need_resize(tmp_path):
    write_pngs(tmp_path, per_class=2)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "owl" / "small.png")
    cfg = compose_config(
        "dataset=image_folder",
        f"dataset.root={tmp_path}",
        "dataset.resize=null",
        "dataset.num_workers=0",
        "dataset.test_fraction=0.3",
    )
    with pytest.raises(DataError, match="dataset.resize"):
        data = load_data(cfg.dataset, 0, 0.25)
        for loader in make_loaders(data, cfg, "cpu"):
            list(loader)


@pytest.mark.slow
def test_dlrun_trains_on_an_image_folder(tmp_path):
    write_pngs(tmp_path / "pics" / "train", per_class=6)
    write_pngs(tmp_path / "pics" / "test", per_class=3, seed=1)
    run_dir = tmp_path / "run"
    dlrun.train(
        [
            "dataset=image_folder",
            f"dataset.root={tmp_path / 'pics'}",
            "dataset.resize=16",
            "dataset.num_workers=1",
            "dataset.augment.hflip=true",
            "model=cnn",
            "model.channels=[4]",
            "trainer.epochs=2",
            f"hydra.run.dir={run_dir}",
        ]
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 2
    rows = (run_dir / "confusion_matrix.csv").read_text().splitlines()
    assert rows[0].split(",")[1:] == ["cat", "dog", "owl"]
    assert sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == 9  # the test/ folder, every image once


# The generated 2-D sets


@pytest.mark.parametrize("name", ["spiral", "xor", "moons", "circles"])
def test_toy_sets_are_seeded_float_features(name):
    data = load_data(dataset_config(f"dataset={name}", "dataset.n_samples=200"), seed=0, val_fraction=0.1)
    assert data.in_shape == (2,) and data.train.x.dtype == torch.float32
    assert len(data.train) + len(data.val) + len(data.test) == 200
    assert len(data.mean) == 2 and len(data.std) == 2
    counts = torch.bincount(torch.cat([data.train.y, data.val.y, data.test.y]))
    assert counts.min() >= 200 // len(counts) - 1  # balanced classes
    again = load_data(dataset_config(f"dataset={name}", "dataset.n_samples=200"), seed=0, val_fraction=0.1)
    assert torch.equal(again.train.x, data.train.x)
    other = load_data(dataset_config(f"dataset={name}", "dataset.n_samples=200", "dataset.seed=1"), 0, 0.1)
    assert not torch.equal(other.train.x, data.train.x)


def test_toy_noise_and_classes_options():
    def spread(noise):
        data = load_data(dataset_config("dataset=xor", f"dataset.noise={noise}"), 0, 0.1)
        return (data.train.x.abs() - 1).abs().mean().item()  # distance from the corners

    assert spread(0.0) == pytest.approx(0.0) and spread(0.5) > spread(0.1) > 0
    spiral = load_data(dataset_config("dataset=spiral", "dataset.num_classes=5"), 0, 0.1)
    assert spiral.num_classes == 5


def test_a_cnn_on_features_and_augmenting_features_are_config_errors():
    cfg = compose_config("dataset=moons", "model=cnn")
    data = load_data(cfg.dataset, 0, 0.1)
    with pytest.raises(Exception) as caught:
        instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
    error = caught.value.__cause__ if not isinstance(caught.value, ConfigError) else caught.value
    assert isinstance(error, ConfigError) and "(2,)" in str(error)
    OmegaConf.update(cfg, "dataset.augment", {"hflip": True}, force_add=True)
    with pytest.raises(ConfigError, match="dataset.augment"):
        make_loaders(data, cfg, "cpu")


@pytest.mark.parametrize("override, key", [("dataset.noise=-1", "dataset.noise"), ("dataset.n_samples=3", "dataset.n_samples")])
def test_bad_toy_options_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_data(dataset_config("dataset=moons", override), 0, 0.1)


def test_resize_option_resizes_once_and_stays_uint8():
    data = load_data(dataset_config("dataset=digits", "dataset.resize=16"), 0, 0.1)
    assert data.in_shape == (1, 16, 16) and data.train.x.dtype == torch.uint8
    for bad in ("[1,2,3]", "true"):
        with pytest.raises(ConfigError, match="dataset.resize"):
            load_data(dataset_config("dataset=digits", f"dataset.resize={bad}"), 0, 0.1)


def test_imagenet_normalisation_option():
    grey = load_data(dataset_config("dataset=digits", "dataset.normalize=imagenet"), 0, 0.1)
    assert grey.mean == pytest.approx((0.449,), abs=1e-3) and grey.std == pytest.approx((0.226,), abs=1e-3)
    with pytest.raises(ConfigError, match="dataset.normalize=imagenett"):
        load_data(dataset_config("dataset=digits", "dataset.normalize=imagenett"), 0, 0.1)
