"""Datasets as uint8 tensors, and a loader that serves batches from the training device.

Every dataset is decoded once into `Split`s of uint8 images (N, C, H, W) and int64 labels.
`DeviceLoader` moves a split to the device once, shuffles indices there each epoch and
normalises each batch on the device: no per-sample Python and no worker processes.
"""

import gzip
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from dlrun.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    x: torch.Tensor  # uint8 images, (N, C, H, W)
    y: torch.Tensor  # int64 labels, (N,)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.x[index], self.y[index])


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_data(cfg, seed: int, val_fraction: float) -> Data:
    """Build the train/val/test splits for `cfg` (the `dataset` config group)."""
    loaders = {"digits": _load_digits, "mnist": _load_mnist}
    if cfg.name not in loaders:
        raise ConfigError("dataset.name", cfg.name, f"must be one of {', '.join(loaders)}")
    train, test, classes = loaders[cfg.name](cfg)
    train, val = _split_off(train, val_fraction, seed)
    mean, std = _channel_stats(train.x)
    return Data(train, val, test, classes, mean, std)


def _split_off(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off a seeded random `fraction` of `split` as a held-out part."""
    n_out = max(1, round(len(split) * fraction))
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[n_out:].sort().values), split.subset(perm[:n_out].sort().values)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = x.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def _load_digits(cfg) -> tuple[Split, Split, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; scale them onto uint8 like every other image set.
    x = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    # digits has no official test split: hold one out with a fixed seed, whatever the run's seed.
    train, test = _split_off(Split(x, y), cfg.test_fraction, cfg.split_seed)
    return train, test, [str(i) for i in range(10)]


MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _load_mnist(cfg) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import MNIST

    root = _check_root(cfg.root)
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file() and not (raw / f"{name}.gz").is_file()]
    if missing and cfg.download:
        _download(MNIST, root)
    missing = [name for name in MNIST_FILES if not (raw / name).is_file() and not (raw / f"{name}.gz").is_file()]
    if missing:
        raise DataError(
            f"dataset.root={cfg.root}: MNIST files not found; expected {', '.join(missing)} (plain or .gz) "
            f"in {raw}{'' if cfg.download else ' (download is off: dataset.download=false)'}"
        )
    root = _unpacked_root(raw, root)
    splits = []
    for train in (True, False):
        stem = "train" if train else "t10k"
        try:
            ds = MNIST(str(root), train=train, download=False)
        except Exception as err:  # torchvision raises asserts and numpy errors on bad files
            raise DataError(
                f"dataset.root={cfg.root}: cannot read MNIST's {stem}-*-ubyte files in {root / 'MNIST' / 'raw'}: "
                f"the file is truncated or not an IDX file ({type(err).__name__}: {err})"
            ) from err
        if len(ds.data) != len(ds.targets):
            raise DataError(f"dataset.root={cfg.root}: MNIST {stem} images and labels differ in length")
        splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    return splits[0], splits[1], [str(i) for i in range(10)]


def _check_root(root: str) -> Path:
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError("dataset.root", root, "must be a directory, but it is a file")
    return path


def _download(dataset_cls, root: Path) -> None:
    """torchvision's own download, with its progress bar; one line when there is no network."""
    try:
        dataset_cls(str(root), train=True, download=True)
        dataset_cls(str(root), train=False, download=True)
    except Exception as err:
        log.warning("download of %s failed: %s", dataset_cls.__name__, str(err).splitlines()[0])


def _unpacked_root(raw: Path, root: Path) -> Path:
    """Return a root whose MNIST/raw holds the plain IDX files torchvision reads.

    .gz files are unpacked beside themselves, or into ~/.cache/dlrun when that folder is read-only."""
    if all((raw / name).is_file() for name in MNIST_FILES):
        return root
    for target_root in (root, Path.home() / ".cache" / "dlrun" / str(raw.resolve()).strip("/").replace("/", "_")):
        target = target_root / "MNIST" / "raw"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name in MNIST_FILES:
                if (target / name).is_file():
                    continue
                source = raw / name if (raw / name).is_file() else raw / f"{name}.gz"
                _unpack(source, target / name)
            return target_root
        except PermissionError:
            continue
    raise DataError(f"cannot unpack the MNIST .gz files in {raw}: no writable folder")


def _unpack(source: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    except (OSError, EOFError) as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, PermissionError):
            raise
        raise DataError(f"{source}: the file is truncated or not gzip data ({err})") from err
    tmp.replace(dest)


class DeviceLoader:
    """Batches of a split held on `device`: one shuffle per epoch, normalised on the device.

    A trailing batch of one sample joins the batch before it, since batch norm cannot train on one.

    With several ranks, every rank draws the same permutation (same seed) and takes every
    `world_size`-th index of it from `rank`, so step s of all ranks together is the batch that one
    process with batch_size x world_size would take. A shuffled (training) shard is padded with the
    permutation's first indices to ceil(n / world_size), so that every rank takes as many steps."""

    def __init__(self, split: Split, batch_size: int, device, mean, std, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _served(self) -> int:
        """Samples this rank serves per epoch."""
        n, w = len(self.y), self.world_size
        if w == 1:
            return n
        return math.ceil(n / w) if self.shuffle else len(range(self.rank, n, w))

    def __len__(self) -> int:
        n = self._served()
        batches = math.ceil(n / self.batch_size)
        return batches - 1 if batches > 1 and n % self.batch_size == 1 else batches

    def _bounds(self):
        n, n_batches = self._served(), len(self)
        for i in range(n_batches):
            yield i * self.batch_size, n if i == n_batches - 1 else (i + 1) * self.batch_size

    def _order(self) -> torch.Tensor | None:
        n, w = len(self.y), self.world_size
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        elif w == 1:
            return None  # contiguous slices, no gather
        else:
            order = torch.arange(n, device=self.device)
        if w > 1:
            if self.shuffle:
                order = order[torch.arange(math.ceil(n / w) * w, device=self.device) % n]
            order = order[self.rank :: w]
        return order

    def __iter__(self):
        order = self._order()
        for start, stop in self._bounds():
            if order is not None:
                index = order[start:stop]
                x, y = self.x[index], self.y[index]
            else:
                x, y = self.x[start:stop], self.y[start:stop]
            yield self.normalize(x), y

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float().div_(255) - self.mean) / self.std
