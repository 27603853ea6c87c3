"""Datasets as uint8 tensors: each source's files read once, through torchvision's dataset classes.

Every dataset that fits in memory is decoded once into `Split`s: uint8 images (N, C, H, W), or
float features (N, D) for the generated 2-D sets, with int64 labels. Decoded images are cached
beside their files (`dlrun-uint8.pt`), so later runs skip the decoding. `DeviceLoader` moves a
split to the device once, shuffles indices there each epoch, and converts, augments and
normalises each batch on the device: no per-sample Python and no worker processes.

`image_folder` (a user's own image files, possibly larger than memory) reads its files through
a torch DataLoader with worker processes instead; `FileLoader` serves it behind the same batch
interface, so the batches reach the training loop in the same form.
"""

import contextlib
import dataclasses
import functools
import gzip
import importlib.util
import logging
import os
import pickle
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from dlrun.core import ranks
from dlrun.core.errors import ConfigError, DataError
from dlrun.core.io import atomic_write
from dlrun.data.imbalance import training_subset
from dlrun.data.tables import load_table

log = logging.getLogger(__name__)

CACHE_NAME = "dlrun-uint8.pt"
CACHE_FORMAT = 1
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Split:
    x: torch.Tensor  # uint8 images (N, C, H, W), or float32 features (N, D)
    y: torch.Tensor  # int64 labels, (N,)
    stats: tuple | None = None  # _stats(x), where a cache holds it (a part of the split has its own)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.x[index], self.y[index])


class FileSplit:
    """Part of an ImageFolder, read from disk batch by batch: the labels are in memory, the images are not."""

    def __init__(self, folder, indices=None):
        self.folder = folder
        self.indices = torch.arange(len(folder.targets)) if indices is None else indices
        self.y = torch.as_tensor(folder.targets, dtype=torch.long)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, index: torch.Tensor) -> "FileSplit":
        return FileSplit(self.folder, self.indices[index])


@dataclass
class Data:
    train: Split | FileSplit
    val: Split | FileSplit
    test: Split | FileSplit
    classes: list[str]
    mean: tuple[float, ...]  # per channel, or per feature
    std: tuple[float, ...]
    in_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for features
    skipped: dict | None = None  # image_folder with dataset.skip_bad: {"count": n, "paths": [...]} of the files left out
    # regression: Split.y holds float32 targets of shape (N,), scaled by the training split's (mean, std) below;
    # classes is ["target"], and metrics are reported back in the target's own units.
    task: str = "classification"
    target_scale: tuple[float, float] = (0.0, 1.0)
    features: tuple[str, ...] | None = None  # the inputs' names, where they have them (a CSV file's columns)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_data(cfg, seed: int, val_fraction: float, task: str | None = None) -> Data:
    """Build the train/val/test splits for `cfg` (the `dataset` config group); `task`: the run's (None: the dataset's).
    dataset.class_counts or dataset.imbalance then thin out the training split of a classification (dlrun.data.imbalance)."""
    data = _load_splits(cfg, seed, val_fraction, task)
    keep = training_subset(cfg, data.train.y, data.classes, seed) if data.task == "classification" else None
    return data if keep is None else dataclasses.replace(data, train=data.train.subset(keep))


def _load_splits(cfg, seed: int, val_fraction: float, task: str | None = None) -> Data:
    task = task or cfg.get("task", "classification")
    if cfg.name == "image_folder":
        _check_task(cfg.name, task, "classification")
        return _load_image_folder(cfg, seed, val_fraction)
    if cfg.name == "csv":
        return _load_csv(cfg, seed, val_fraction, task)
    if cfg.name not in SOURCES:
        raise ConfigError("dataset.name", cfg.name, f"must be one of {', '.join([*SOURCES, 'image_folder', 'csv'])}")
    _check_task(cfg.name, task, SOURCES[cfg.name].task)
    train, test, classes = SOURCES[cfg.name].load(cfg)
    if task == "regression":
        return _regression_data(train, test, seed, val_fraction)
    if cfg.get("resize") and train.x.dim() == 4:
        size = _size_option(cfg.resize)
        train, test = Split(_resize(train.x, size), train.y), Split(_resize(test.x, size), test.y)
    normalize = cfg.get("normalize", "dataset")
    if normalize not in ("dataset", "imagenet"):
        raise ConfigError("dataset.normalize", normalize, "must be dataset (its own mean and std) or imagenet")
    mean, std = _imagenet_stats(train.x.shape[1]) if normalize == "imagenet" else train.stats or _stats(train.x)
    train, val = _split_off(train, val_fraction, seed)
    data = Data(train, val, test, classes, mean, std, tuple(train.x.shape[1:]))
    expected = known_shape(cfg)
    if expected is not None and (data.in_shape, data.num_classes) != expected:
        raise DataError(
            f"dataset.root={cfg.get('root')}: {cfg.name} has inputs {data.in_shape} in {data.num_classes} "
            f"classes, not {expected[0]} in {expected[1]}: the files are not {cfg.name}'s"
        )
    return data


def _load_csv(cfg, seed: int, val_fraction: float, task: str | None) -> Data:
    """A user's CSV file (dlrun.data.tables): float features, standardised by the loaders with the training split's
    statistics; the task is the target column's unless dataset.task (or the run's task) names one."""
    table = load_table(cfg, seed, val_fraction, task)
    train, val, test = (Split(*table.parts[name]) for name in ("train", "val", "test"))
    in_shape = (len(table.features),)
    return Data(
        train,
        val,
        test,
        table.classes,
        table.mean,
        table.std,
        in_shape,
        task=table.task,
        target_scale=table.target_scale,
        features=tuple(table.features),
    )


def _check_task(name: str, task: str, own: str) -> None:
    if task != own:
        raise ConfigError("task", task, f"does not fit dataset={name}, a {own} set (task={own}, or a {task} dataset)")


def _regression_data(train: Split, test: Split, seed: int, val_fraction: float) -> Data:
    """Features standardised by the loaders with the training set's statistics; targets scaled here by the
    training split's mean and std (kept on Data, so that metrics are reported in the target's own units)."""
    mean, std = _stats(train.x)
    train, val = _split_off(train, val_fraction, seed)
    y_mean, y_std = train.y.mean().item(), max(train.y.std().item(), 1e-6)
    scaled = [Split(s.x, ((s.y - y_mean) / y_std).float()) for s in (train, val, test)]
    return Data(*scaled, ["target"], mean, std, tuple(train.x.shape[1:]), task="regression", target_scale=(y_mean, y_std))


def known_shape(dataset) -> tuple[tuple[int, ...], int] | None:
    """(input shape, class count) of a dataset config, known before loading it, or None (an image folder's
    shape is known only from its files). Checks use it, so that a model that cannot take the data fails
    before any data is read or downloaded."""
    source = SOURCES.get(dataset.get("name"))
    if source is None:
        return None
    shape, num_classes = source.in_shape, dataset.get("num_classes", source.num_classes)
    resize = dataset.get("resize")
    if resize and len(shape) == 3:
        shape = (shape[0], *_size_option(resize))
    return tuple(shape), num_classes


def known_task(dataset) -> str | None:
    """classification or regression, for a shipped dataset; None when only its files can tell."""
    source = SOURCES.get(dataset.get("name"))
    return source.task if source is not None else None


def _split_off(split, fraction: float, seed: int):
    """Split off a seeded random `fraction` of `split` as a held-out part."""
    n_out = max(1, round(len(split) * fraction))
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[n_out:].sort().values), split.subset(perm[:n_out].sort().values)


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel of uint8 images (in [0, 1] units), or per feature of float features."""
    if x.is_floating_point():
        return tuple(x.mean(0).tolist()), tuple(x.std(0).clamp_min(1e-6).tolist())
    # A histogram per channel gives exact moments without a float copy of the whole set.
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        m = (counts * values).sum() / counts.sum()
        mean.append(m.item())
        std.append(max(((counts * (values - m) ** 2).sum() / counts.sum()).sqrt().item(), 1e-6))
    return tuple(mean), tuple(std)


def _imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    # Grey images: the ImageNet statistics of the channels' average.
    return (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels


def _size_option(value) -> tuple[int, int]:
    size = [value, value] if isinstance(value, int) else list(value) if value is not None else []
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ConfigError("dataset.resize", value, "must be null, a size in pixels (32) or [height, width]")
    return int(size[0]), int(size[1])


def _resize(x: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 images once at load time, in chunks so that no float copy of the whole set exists."""
    if tuple(x.shape[2:]) == size:
        return x
    out = torch.empty(len(x), x.shape[1], *size, dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].float()
        part = F.interpolate(part, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _check_root(root: str) -> Path:
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError("dataset.root", root, "must be a directory, but it is a file")
    return path


# Decoded tensors are cached beside the files they came from, or under ~/.cache/dlrun when that
# folder is read-only; a cache is used only while its sources keep their sizes and mtimes.


def _cache_paths(folder: Path) -> list[Path]:
    mangled = str(folder.resolve()).strip("/").replace("/", "_")
    return [folder / CACHE_NAME, Path.home() / ".cache" / "dlrun" / mangled / CACHE_NAME]


def _cached(folder: Path, sources: list[Path], decode) -> dict:
    """`decode()`'s dict of tensors, from the cache when it matches `sources`; written to the cache otherwise."""
    stamp = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sources}
    paths = _cache_paths(folder)
    for path in paths:
        if not path.is_file():
            continue
        try:
            blob = torch.load(path, weights_only=True, mmap=True)
        except Exception as err:  # a cache cut short by a crash or a full disk: decode again
            log.warning("ignoring the unreadable cache %s (%s)", path, type(err).__name__)
            continue
        if isinstance(blob, dict) and blob.get("format") == CACHE_FORMAT and blob.get("sources") == stamp:
            log.info("decoded tensors read from %s", path)
            if "train_stats" in blob:
                return blob
            break  # a cache of an earlier dlrun: written again with the training images' statistics
    else:
        blob = {**decode(), "format": CACHE_FORMAT, "sources": stamp}
    # Each run normalises by them: about 0.1 s of bincount over MNIST's 47M pixels, once here instead.
    blob["train_stats"] = _stats(blob["train_x"])
    for path in paths:
        if path.parent.exists() and not _writable(path.parent):
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: torch.save(blob, f))
            log.info("decoded tensors cached in %s", path)
            return blob
        except OSError as err:  # read-only or full: try the next place
            with contextlib.suppress(OSError):
                path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
            log.info("cannot cache in %s: %s", path.parent, err.strerror or err)
    log.warning("decoded tensors not cached: no writable folder among %s", ", ".join(str(p.parent) for p in paths))
    return blob


def _writable(folder: Path) -> bool:
    # The mode bits count even for root, who may write anywhere: a folder shared read-only stays untouched.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _torchvision_datasets():
    """torchvision's dataset classes, imported when a set needs them: torchvision's import pulls in
    torch._dynamo, a second of every run that trains on digits or a generated set otherwise."""
    import torchvision.datasets

    return torchvision.datasets


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (pixel values 0..16, and targets), read from the CSV file it ships
    without importing scikit-learn, which takes a second: the images load_digits() returns."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset=digits needs scikit-learn, which ships the digits (pip install scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def _sklearn_data_file(name: str, dataset: str) -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset={dataset} needs scikit-learn, which ships it (pip install scikit-learn)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


def _load_diabetes(cfg) -> tuple[Split, Split, list[str]]:
    """scikit-learn's diabetes regression set (442 patients, 10 features, disease progression after a year),
    read from the files it ships (load_diabetes(scaled=False)'s values) without importing scikit-learn."""
    x = np.loadtxt(_sklearn_data_file("diabetes_data_raw.csv.gz", "diabetes"))
    y = np.loadtxt(_sklearn_data_file("diabetes_target.csv.gz", "diabetes"))
    split = Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
    train, test = _split_off(split, cfg.test_fraction, cfg.split_seed)
    return train, test, ["target"]


# dataset=function: y = f(x) + noise on a 1-D range, for function approximation.
FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sin": np.sin,
    "cubic": lambda x: x**3,
    "square": lambda x: x**2,
    "abs": np.abs,
    "step": lambda x: (x > 0).astype(np.float64),
    "sinc": np.sinc,
    "exp": np.exp,
}


def _load_function(cfg) -> tuple[Split, Split, list[str]]:
    fn = FUNCTIONS.get(cfg.function)
    if fn is None:
        raise ConfigError("dataset.function", cfg.function, f"must be one of {', '.join(FUNCTIONS)}")
    low, high = cfg.range
    if not low < high:
        raise ConfigError("dataset.range", list(cfg.range), "must be [low, high] with low < high")
    rng = np.random.default_rng(cfg.seed)
    x = rng.uniform(low, high, size=cfg.n_samples)
    y = fn(x) + rng.normal(size=cfg.n_samples) * cfg.noise
    split = Split(torch.as_tensor(x[:, None], dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
    train, test = _split_off(split, cfg.test_fraction, cfg.seed)
    return train, test, ["target"]


def _load_digits(cfg) -> tuple[Split, Split, list[str]]:
    images, targets = digits_arrays()
    # Pixel values are 0..16; scale them onto uint8 like every other image set.
    x = torch.from_numpy(images).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(targets).long()
    # digits has no official test split: hold one out with a fixed seed, whatever the run's seed.
    train, test = _split_off(Split(x, y), cfg.test_fraction, cfg.split_seed)
    return train, test, [str(i) for i in range(10)]


MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _load_idx_set(cfg, class_name: str) -> tuple[Split, Split, list[str]]:
    """MNIST, FashionMNIST or KMNIST through torchvision: root/<class_name>/raw holds the IDX files, plain or .gz.
    torchvision is imported only to download or decode them: a run from the cache does without its import."""
    root = _check_root(cfg.root)
    raw = root / class_name / "raw"

    def missing() -> list[str]:
        return [name for name in MNIST_FILES if not (raw / name).is_file() and not (raw / f"{name}.gz").is_file()]

    if missing() and cfg.download:
        _download(getattr(_torchvision_datasets(), class_name), root)
    if missing():
        raise DataError(
            f"dataset.root={cfg.root}: {class_name} files not found; expected {', '.join(missing())} (plain or .gz) "
            f"in {raw}{'' if cfg.download else ' (download is off: dataset.download=false)'}"
        )
    sources = [raw / name if (raw / name).is_file() else raw / f"{name}.gz" for name in MNIST_FILES]
    blob = _cached(raw.parent, sources, lambda: _decode_idx(getattr(_torchvision_datasets(), class_name), raw, sources, cfg.root))
    if class_name == "MNIST":
        classes = [str(i) for i in range(10)]
    else:  # a cache written by an earlier dlrun lacks the names
        classes = blob.get("classes") or list(getattr(_torchvision_datasets(), class_name).classes)
    return Split(blob["train_x"], blob["train_y"], blob["train_stats"]), Split(blob["test_x"], blob["test_y"]), classes


def _decode_idx(cls, raw: Path, sources: list[Path], root_option) -> dict:
    """torchvision reads plain IDX files only: .gz files are unpacked into a temporary folder first."""
    with tempfile.TemporaryDirectory(prefix="dlrun-") as tmp:
        root = raw.parent.parent
        if any(s.suffix == ".gz" for s in sources):
            root = Path(tmp)
            (root / cls.__name__ / "raw").mkdir(parents=True)
            for name, source in zip(MNIST_FILES, sources):
                _unpack(source, root / cls.__name__ / "raw" / name)
        blob = {}
        for train in (True, False):
            stem = "train" if train else "t10k"
            try:
                ds = cls(str(root), train=train, download=False)
            except Exception as err:  # torchvision raises asserts and numpy errors on bad files
                raise DataError(
                    f"dataset.root={root_option}: cannot read {cls.__name__}'s {stem}-*-ubyte files in {raw}: "
                    f"the file is truncated or not an IDX file ({type(err).__name__}: {err})"
                ) from err
            if len(ds.data) != len(ds.targets):
                raise DataError(f"dataset.root={root_option}: {cls.__name__} {stem} images and labels differ in length")
            blob[f"{'train' if train else 'test'}_x"] = ds.data.unsqueeze(1).contiguous()
            blob[f"{'train' if train else 'test'}_y"] = ds.targets.long()
        return {**blob, "classes": list(cls.classes)}


def _download(dataset_cls, root: Path) -> None:
    """torchvision's own download, with its progress bar; one line when there is no network. It downloads
    into a temporary folder, and only files that arrived are moved into root/<Name>/raw: a failed download
    leaves no folder behind in the user's data folder."""
    name = dataset_cls.__name__
    with tempfile.TemporaryDirectory(prefix="dlrun-download-") as tmp:
        tmp = Path(tmp)
        try:
            dataset_cls(str(tmp), train=True, download=True)
            dataset_cls(str(tmp), train=False, download=True)
        except Exception as err:
            reason = str(err).splitlines()[0].strip() if str(err).strip() else type(err).__name__
            log.info("download of %s failed: %s", name, reason)  # the missing files' error says what to do
            return
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):  # MNIST/raw/..., cifar-10-batches-py/...
            dest = root / path.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(dest))


def _unpack(source: Path, dest: Path) -> None:
    try:
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    except (OSError, EOFError) as err:
        if isinstance(err, PermissionError):
            raise
        raise DataError(f"{source}: the file is truncated or not gzip data ({err})") from err


def _load_cifar(cfg, class_name: str) -> tuple[Split, Split, list[str]]:
    """CIFAR-10 or CIFAR-100 through torchvision, from the python pickle batches it downloads."""
    cls = getattr(_torchvision_datasets(), class_name)
    root = _check_root(cfg.root)
    folder = root / cls.base_folder
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]

    def missing() -> list[str]:
        return [name for name in names if not (folder / name).is_file()]

    if missing() and cfg.download:
        _download(cls, root)
    if missing():
        raise DataError(
            f"dataset.root={cfg.root}: {class_name} files not found; expected {', '.join(missing())} in {folder}"
            f"{'' if cfg.download else ' (download is off: dataset.download=false)'}"
        )
    blob = _cached(folder, [folder / name for name in names], lambda: _decode_cifar(cls, root, folder, names))
    train = Split(blob["train_x"], blob["train_y"], blob["train_stats"])
    return train, Split(blob["test_x"], blob["test_y"]), list(blob["classes"])


def _decode_cifar(cls, root: Path, folder: Path, names: list[str]) -> dict:
    # torchvision checks each file's MD5 before reading it; dlrun reports a bad file by name instead,
    # so it reads through a subclass whose file lists carry no checksums (existence is still checked).
    reader = type(
        cls.__name__,
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )
    blob = {}
    try:
        for part in ("train", "test"):
            ds = reader(str(root), train=part == "train", download=False)
            blob[f"{part}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            blob[f"{part}_y"] = torch.tensor(ds.targets, dtype=torch.long)
            if len(blob[f"{part}_x"]) != len(blob[f"{part}_y"]):
                raise ValueError(f"{part} images and labels differ in length")
    except Exception as err:
        raise DataError(
            f"{_bad_pickle(folder, names) or folder}: cannot read this {cls.__name__} batch: "
            f"the file is truncated or not a CIFAR pickle ({type(err).__name__}: {str(err)[:200]})"
        ) from err
    blob["classes"] = list(ds.classes)
    return blob


def _bad_pickle(folder: Path, names: list[str]) -> Path | None:
    """The first batch file that does not unpickle to a dict (torchvision's error does not say which)."""
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                if not isinstance(pickle.load(f, encoding="latin1"), dict):
                    return folder / name
        except Exception:
            return folder / name
    return None


def _load_toy(cfg) -> tuple[Split, Split, list[str]]:
    """The course's 2-D sets, generated from `dataset.seed` (fixed by default, so every run sees the same points)."""
    n, noise = cfg.n_samples, cfg.noise
    if not isinstance(n, int) or n < 10:
        raise ConfigError("dataset.n_samples", n, "must be an integer >= 10")
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ConfigError("dataset.noise", noise, "must be a number >= 0")
    rng = np.random.default_rng(cfg.seed)
    if cfg.name == "spiral":
        k = cfg.num_classes
        if not isinstance(k, int) or k < 2:
            raise ConfigError("dataset.num_classes", k, "must be an integer >= 2")
        x, y = _spiral(n, k, noise, rng)
    elif cfg.name == "xor":
        x, y = _xor(n, noise, rng)
    else:
        from sklearn import datasets  # scikit-learn loads in a second: only for the sets it makes

        seed = int(rng.integers(2**31))
        if cfg.name == "moons":
            x, y = datasets.make_moons(n, noise=noise, random_state=seed)
        else:
            x, y = datasets.make_circles(n, noise=noise, factor=cfg.factor, random_state=seed)
    split = Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
    train, test = _split_off(split, cfg.test_fraction, cfg.seed)
    return train, test, [str(i) for i in range(int(split.y.max()) + 1)]


def _spiral(n: int, k: int, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """K arms winding out from the centre (CS231n's spiral): radius grows along the arm, the angle is noisy."""
    per_class = np.array_split(np.arange(n), k)
    x, y = np.zeros((n, 2)), np.zeros(n, dtype=np.int64)
    for j, idx in enumerate(per_class):
        r = np.linspace(0.0, 1.0, len(idx))
        t = np.linspace(j * 4, (j + 1) * 4, len(idx)) + rng.normal(size=len(idx)) * noise
        x[idx] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[idx] = j
    return x, y


def _xor(n: int, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Points around the four corners (+-1, +-1), as many at each; the class is 1 where the two signs differ."""
    corner = rng.permutation(np.arange(n) % 4)
    corners = np.stack([corner // 2, corner % 2], 1) * 2 - 1
    x = corners + rng.normal(size=(n, 2)) * noise
    return x, (corners[:, 0] != corners[:, 1]).astype(np.int64)


@dataclass(frozen=True)
class Source:
    """A dataset held in memory: its loader (cfg -> train, test, classes), and the shape of one input and
    the class count before any resize (spiral's class count is its config's num_classes)."""

    load: Callable
    in_shape: tuple[int, ...]
    num_classes: int  # 1 for a regression: one output
    task: str = "classification"


SOURCES: dict[str, Source] = {
    "digits": Source(_load_digits, (1, 8, 8), 10),
    "mnist": Source(functools.partial(_load_idx_set, class_name="MNIST"), (1, 28, 28), 10),
    "fashion_mnist": Source(functools.partial(_load_idx_set, class_name="FashionMNIST"), (1, 28, 28), 10),
    "kmnist": Source(functools.partial(_load_idx_set, class_name="KMNIST"), (1, 28, 28), 10),
    "cifar10": Source(functools.partial(_load_cifar, class_name="CIFAR10"), (3, 32, 32), 10),
    "cifar100": Source(functools.partial(_load_cifar, class_name="CIFAR100"), (3, 32, 32), 100),
    "spiral": Source(_load_toy, (2,), 3),
    "xor": Source(_load_toy, (2,), 2),
    "moons": Source(_load_toy, (2,), 2),
    "circles": Source(_load_toy, (2,), 2),
    "diabetes": Source(_load_diabetes, (10,), 1, task="regression"),
    "function": Source(_load_function, (1,), 1, task="regression"),
}


# A user's own image folder. Every file named like an image is checked when the data loads, from its
# header (and, for PNG, its chunk checksums), without decoding pixels: a bad file is named before any
# training, or left out and counted with dataset.skip_bad=true. Damage past the header (a JPEG cut
# short) shows when the file is decoded, and stops the run with the file's name.

# torchvision's ImageFolder's extensions, so that a folder keeps the files it had when read through torchvision.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "root/<class>/*.png|jpg, or root/train/<class>/... with optional val/ and test/ beside it"
SPLIT_FOLDERS = ("train", "val", "test")
# The first bytes of PNG, JPEG, GIF, BMP, TIFF (both byte orders) and WebP (RIFF) files.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _load_image_folder(cfg, seed: int, val_fraction: float) -> Data:
    """A user's images in root/<class>/*, or in root/train/<class>/* with val/ and test/ beside train/."""
    root = _check_root(cfg.root)
    if not root.is_dir():
        raise DataError(f"dataset.root={cfg.root}: no such folder; image_folder reads {LAYOUT}")
    if cfg.channels not in (1, 3):
        raise ConfigError("dataset.channels", cfg.channels, "must be 1 (greyscale) or 3 (RGB)")
    if cfg.normalize not in ("imagenet", "dataset"):
        raise ConfigError("dataset.normalize", cfg.normalize, "must be imagenet or dataset")
    skip_bad = cfg.get("skip_bad", False)
    if not isinstance(skip_bad, bool):
        raise ConfigError("dataset.skip_bad", skip_bad, "must be true or false")
    size = _size_option(cfg.resize) if cfg.resize is not None else None
    reader = ImageReader("L" if cfg.channels == 1 else "RGB", size)

    folders = _split_folders(root)
    found = {name: _find_classes(path) for name, path in folders.items()}
    sizes, skipped = _check_files(found, skip_bad)
    classes = _settle_classes(found, folders, skip_bad)
    index = {name: i for i, name in enumerate(classes)}
    parts = {
        name: FileSplit(ImageFiles([(p, index[c]) for c in classes for p in by_class[c]], classes, reader))
        for name, by_class in found.items()
    }
    if size is None:  # no resize: every image must have the first one's size, so that batches stack
        reader.expected = _one_size(parts, sizes)

    train = parts.get("train", parts.get("all"))
    test, val = parts.get("test"), parts.get("val")
    if test is None:
        train, test = _split_off(train, cfg.test_fraction, cfg.split_seed)
    if val is None:
        train, val = _split_off(train, val_fraction, seed)
    in_shape = (cfg.channels, *(size or reader.expected))
    if cfg.normalize == "imagenet":
        mean, std = _imagenet_stats(cfg.channels)
    else:
        # The statistics of a seeded sample of training images: reading every file would cost a whole epoch.
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512]
        mean, std = _stats(torch.stack([train.folder[int(train.indices[i])][0] for i in pick]))
    report = {"count": len(skipped), "paths": skipped} if skipped else None
    return Data(train, val, test, classes, mean, std, in_shape, skipped=report)


def _split_folders(root: Path) -> dict[str, Path]:
    """The folders that hold the splits, by name: train/ and those of val/ and test/ that exist, or root itself ("all")."""
    if not (root / "train").is_dir():
        return {"all": root}
    beside = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in SPLIT_FOLDERS)
    if beside:  # a validation/ or testing/ folder would otherwise go unnoticed
        _warn(f"{root}: only train/, val/ and test/ are read; left out beside them: {_few(beside)}")
    return {name: root / name for name in SPLIT_FOLDERS if (root / name).is_dir()}


def _find_classes(folder: Path) -> dict[str, list[str]]:
    """Class name -> its image files, for each subfolder that holds images or nothing at all (a class
    still to fill, checked later). A subfolder holding other files only (a dataset's raw/ folder, notes)
    is no class: it is named in a warning and left out. Hidden files and folders are never read."""
    classes, others = {}, []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        _unreadable_folder(err)
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        images, other_files = _images_under(Path(entry.path))
        if images or not other_files:
            classes[entry.name] = images
        else:
            others.append(entry.name)
    if others:
        _warn(f"{folder}: left out folders that hold no images (so no class folders): {_few(others)}")
    if not classes:
        loose = sum(1 for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        held = f"{loose} images but no class folders" if loose else "no class folders with images"
        raise DataError(f"{folder}: {held}; image_folder reads {LAYOUT}")
    return classes


def _images_under(folder: Path) -> tuple[list[str], int]:
    """The image files anywhere under `folder`, in torchvision's ImageFolder's order (so seeded splits stay
    as they were), and how many other files it holds."""
    found, other_files, seen = [], 0, set()
    for top, dirs, files in os.walk(folder, onerror=_unreadable_folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back to a folder above: walked once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        names = [f for f in files if not f.startswith(".")]
        found += [(top, f) for f in names if f.lower().endswith(IMAGE_SUFFIXES)]
        other_files += sum(1 for f in names if not f.lower().endswith(IMAGE_SUFFIXES))
    return [os.path.join(top, f) for top, f in sorted(found)], other_files


def _unreadable_folder(err: OSError) -> None:
    raise DataError(f"{err.filename}: cannot list this folder ({err.strerror})")


def _check_files(found: dict[str, dict[str, list[str]]], skip_bad: bool) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Each file's (width, height) from its header, and the files left out as unreadable (with skip_bad;
    without it the first bad file is a DataError). Bad files are removed from `found`."""
    paths = [p for by_class in found.values() for files in by_class.values() for p in files]
    with ThreadPoolExecutor(max_workers=8) as pool:  # threads: on a network drive the opens wait, not compute
        probes = dict(zip(paths, pool.map(_probe, paths)))
    bad = {p: why for p, (_, why) in probes.items() if why}
    if bad and not skip_bad:
        first = next(iter(bad))
        more = f"; {len(bad) - 1} more bad files" if len(bad) > 1 else ""
        raise DataError(f"{first}: cannot read this image: {bad[first]}{more}; dataset.skip_bad=true leaves such files out")
    if bad:
        for path, why in bad.items():
            log.info("left out %s: %s", path, why)
        _warn(f"left out {len(bad)} unreadable image files (dataset.skip_bad=true): {_few(bad)}; all in the run's metrics.json")
        for by_class in found.values():
            for name, files in by_class.items():
                by_class[name] = [p for p in files if p not in bad]
    return {p: wh for p, (wh, _) in probes.items() if wh}, list(bad)


def _probe(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) of an image file from its header, or why it is no readable image; no pixels are decoded."""
    try:
        info = os.stat(path)
    except OSError as err:
        broken = os.path.islink(path) and isinstance(err, FileNotFoundError)
        return None, f"a broken link (to {os.readlink(path)})" if broken else f"cannot open it ({err.strerror})"
    if not stat.S_ISREG(info.st_mode):  # a pipe would block the open forever
        return None, "not a regular file"
    if info.st_size == 0:
        return None, "the file is empty (0 bytes)"
    try:
        with Image.open(path) as img:
            width_height = img.size
            img.verify()  # PNG: every chunk's checksum, which a truncated file fails; other formats: the header
    except PermissionError as err:
        return None, f"cannot open it ({err.strerror})"
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(pixels[1]):,} pixels" if pixels else str(err)
        return None, f"{count}, over twice PIL's Image.MAX_IMAGE_PIXELS: refused as a possible decompression bomb"
    except UnidentifiedImageError:
        with open(path, "rb") as f:
            start = f.read(4)
        if start.startswith(IMAGE_MAGIC):  # an image's first bytes, but not a whole header
            return None, "the file is truncated or damaged (PIL cannot read its header)"
        return None, "not an image: its bytes are in no image format PIL reads"
    except Exception as err:  # OSError, SyntaxError, ValueError or struct.error, from a damaged file
        return None, f"the file is truncated or damaged ({type(err).__name__}: {err})"
    return width_height, None


def _settle_classes(found: dict[str, dict[str, list[str]]], folders: dict[str, Path], skip_bad: bool) -> list[str]:
    """The class names, once every split's class folders hold images and every split has the same ones."""
    for name, by_class in found.items():
        empty = [c for c, files in by_class.items() if not files]
        if empty and not skip_bad:
            raise DataError(
                f"{folders[name] / empty[0]}: this class folder holds no images"
                f"{f' (nor do {_few(empty[1:])})' if len(empty) > 1 else ''}; add images or remove it, "
                "or set dataset.skip_bad=true to leave such folders out"
            )
        if empty:
            _warn(f"{folders[name]}: left out class folders without readable images: {_few(empty)}")
        for c in empty:
            del by_class[c]
    first = "train" if "train" in found else "all"
    classes = sorted(found[first])
    if len(classes) < 2:
        held = f"only one class folder ({classes[0]})" if classes else "no class folders with images left"
        raise DataError(f"{folders[first]}: {held}; a classifier needs two or more (image_folder reads {LAYOUT})")
    for name, by_class in found.items():
        missing, extra = [c for c in classes if c not in by_class], sorted(set(by_class) - set(classes))
        if missing or extra:
            lacks = f"lacks the class folders {_few(missing)}"
            differs = lacks if missing else f"has class folders that {folders[first].name}/ lacks: {_few(extra)}"
            raise DataError(f"{folders[name]}: this split {differs} ({folders[first]} holds {_few(classes, 8)})")
    return classes


def _one_size(parts: dict[str, FileSplit], sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(height, width) shared by every image, which must agree when dataset.resize is null."""
    paths = [p for part in parts.values() for p, _ in part.folder.samples]
    width, height = sizes[paths[0]]
    for path in paths:
        if sizes[path] != (width, height):
            w, h = sizes[path]
            raise DataError(
                f"{path}: {w}x{h} pixels, but {paths[0]} has {width}x{height}; set dataset.resize to give them one size"
            )
    return height, width


def _few(items, shown: int = 3) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _warn(text: str) -> None:
    """A warning in the run's log and, from the main rank, one line on stderr: the log alone goes unread."""
    log.warning(text)
    if ranks.is_main():
        print(f"dlrun: warning: {text}", file=sys.stderr, flush=True)


class ImageFiles:
    """One split's image files with their class indices, each read by `loader` when asked for (in the
    DataLoader's workers): the interface of torchvision's ImageFolder that FileSplit and FileLoader use."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], loader):
        self.samples, self.classes, self.loader = samples, classes, loader
        self.targets = [target for _, target in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        return self.loader(path), target


class ImageReader:
    """Read one image file as a uint8 (C, H, W) tensor; a bad file is a DataError that names it.

    It runs in the DataLoader's worker processes, so it is a plain class that pickles."""

    def __init__(self, mode: str, size: tuple[int, int] | None):
        self.mode, self.size = mode, size
        self.expected: tuple[int, int] | None = None

    def __call__(self, path: str) -> torch.Tensor:
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
                if self.size is not None:
                    img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = np.array(img)
        except Exception as err:
            # The check at load passed this file: its damage lies past the header.
            raise DataError(
                f"{path}: cannot read this image: the file is truncated or damaged ({type(err).__name__}: {err}); "
                "replace or remove it"
            ) from None
        if self.size is None and self.expected is not None and array.shape[:2] != self.expected:
            raise DataError(
                f"{path}: {array.shape[1]}x{array.shape[0]} pixels, but the first image has "
                f"{self.expected[1]}x{self.expected[0]}; set dataset.resize to give them one size"
            )
        tensor = torch.from_numpy(array)
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()
