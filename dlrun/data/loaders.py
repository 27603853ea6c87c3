"""Loaders that serve normalised batches on the training device.

`DeviceLoader` moves a split to the device once, shuffles indices there each epoch, and converts,
augments and normalises each batch on the device: no per-sample Python and no worker processes.
`FileLoader` serves an image folder read by a DataLoader's workers behind the same batch interface.
"""

import dataclasses
import math
import weakref

import torch
from torch.utils.data import DataLoader, Subset

from dlrun.core.errors import ConfigError, DataError
from dlrun.data.augment import BatchAugment
from dlrun.data.sources import Data, FileSplit, Split


def make_loaders(data: Data, cfg, device, rank: int = 0, world_size: int = 1):
    """The train, val and test loaders for `data`: device-resident where it fits, file-reading otherwise."""
    trainer, dataset = cfg.trainer, cfg.dataset
    images = len(data.in_shape) == 3
    augment = BatchAugment.from_config(dataset.get("augment"))
    overfit = trainer.get("overfit_batches", 0)
    if overfit:  # the first batches of training, for training and validation alike, in a fixed order
        first = data.train.subset(torch.arange(min(len(data.train), overfit * trainer.batch_size)))
        data, augment = dataclasses.replace(data, train=first, val=first), None
    if augment is not None and not images:
        raise ConfigError("dataset.augment", "on", f"applies to images; {dataset.name} has inputs of shape {data.in_shape}")
    common = dict(
        rank=rank,
        world_size=world_size,
        memory_format=torch.channels_last if images and trainer.get("channels_last", False) else None,
    )
    loader = DeviceLoader
    if isinstance(data.train, FileSplit):
        workers = dataset.get("num_workers", 2)
        if not isinstance(workers, int) or workers < 0:
            raise ConfigError("dataset.num_workers", workers, "must be an integer >= 0 (0: read in the training process)")
        loader, common["num_workers"] = FileLoader, workers
    kw = dict(device=device, mean=data.mean, std=data.std, limit=trainer.get("limit_batches"), **common)
    return (
        loader(data.train, trainer.batch_size, shuffle=not overfit, seed=cfg.seed, augment=augment, **kw),
        loader(data.val, trainer.eval_batch_size, shuffle=False, **kw),
        loader(data.test, trainer.eval_batch_size, shuffle=False, **kw),
    )


class _Batches:
    """Which samples each batch of an epoch takes, and how a batch becomes the model's input.

    A trailing batch of one sample joins the batch before it, since batch norm cannot train on one.

    With several ranks, every rank draws the same permutation (same seed) and takes every
    `world_size`-th index of it from `rank`, so step s of all ranks together is the batch that one
    process with batch_size x world_size would take. A shuffled (training) shard is padded with the
    permutation's first indices to ceil(n / world_size), so that every rank takes as many steps."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        device,
        mean,
        std,
        shuffle: bool,
        *,
        index_device,
        feature_dims: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: BatchAugment | None = None,
        memory_format=None,
        limit: int | None = None,
    ):
        self.n = n
        self.limit = limit  # at most this many batches per epoch (debug=fast), or all
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.augment = augment
        self.memory_format = memory_format
        shape = (1, -1) if feature_dims else (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape)
        self.std = torch.tensor(std, device=self.device).view(shape)
        # (x / 255 - mean) / std as one multiply-add straight from uint8: one pass over the batch, not three.
        self.scale, self.shift = 1 / (255 * self.std), -self.mean / self.std
        self.index_device = torch.device(index_device)
        self.generator = torch.Generator(device=self.index_device).manual_seed(seed)
        # Augmentation draws from its own stream, so the order of samples does not depend on it;
        # every rank augments differently.
        self.augment_generator = torch.Generator(device=self.device).manual_seed(seed + 1 + rank)

    def _served(self) -> int:
        """Samples this rank serves per epoch."""
        n, w = self.n, self.world_size
        if w == 1:
            return n
        return math.ceil(n / w) if self.shuffle else len(range(self.rank, n, w))

    def _all_batches(self) -> int:
        n = self._served()
        batches = math.ceil(n / self.batch_size)
        return batches - 1 if batches > 1 and n % self.batch_size == 1 else batches

    def __len__(self) -> int:
        return self._all_batches() if self.limit is None else min(self.limit, self._all_batches())

    def _bounds(self):
        n, n_batches = self._served(), self._all_batches()
        for i in range(len(self)):
            yield i * self.batch_size, n if i == n_batches - 1 else (i + 1) * self.batch_size

    def _order(self) -> torch.Tensor | None:
        n, w, on = self.n, self.world_size, self.index_device
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=on)
        elif w == 1:
            return None  # contiguous slices, no gather
        else:
            order = torch.arange(n, device=on)
        if w > 1:
            if self.shuffle:
                order = order[torch.arange(math.ceil(n / w) * w, device=on) % n]
            order = order[self.rank :: w]
        return order

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> floats in [0, 1] -> augmented (training) -> normalised; features are only normalised."""
        if x.is_floating_point():
            return (x - self.mean) / self.std
        if self.augment is not None and self.shuffle:
            x = self.augment(x.float().div_(255), self.augment_generator)
            x = x.sub_(self.mean).div_(self.std)
        else:
            x = torch.addcmul(self.shift, x, self.scale)
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)


class DeviceLoader(_Batches):
    """Batches of an in-memory split held on `device`: one shuffle per epoch, prepared on the device.
    `options`: seed, rank, world_size, augment, memory_format and limit, as _Batches takes them."""

    def __init__(self, split: Split, batch_size: int, device, mean, std, shuffle: bool, **options):
        super().__init__(
            len(split), batch_size, device, mean, std, shuffle, index_device=device, feature_dims=split.x.dim() == 2, **options
        )
        self.x = split.x.to(device)
        self.y = split.y.to(device)

    def __iter__(self):
        order = self._order()
        for start, stop in self._bounds():
            if order is not None:  # index_select: a quarter of what x[index]'s indexing machinery takes a batch
                index = order[start:stop]
                x, y = self.x.index_select(0, index), self.y.index_select(0, index)
            else:
                x, y = self.x[start:stop], self.y[start:stop]
            yield self.prepare(x), y


class FileLoader(_Batches):
    """Batches of image files read by a DataLoader's workers (pinned memory, workers kept between epochs),
    then moved to `device` and prepared there like a DeviceLoader's."""

    def __init__(self, split: FileSplit, batch_size: int, device, mean, std, shuffle: bool, num_workers: int = 2, **options):
        super().__init__(len(split), batch_size, device, mean, std, shuffle, index_device="cpu", feature_dims=False, **options)
        self.y = split.y
        self.loader = DataLoader(
            Subset(split.folder, split.indices.tolist()),
            batch_sampler=_IndexBatches(self),
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __iter__(self):
        try:
            for x, y in self.loader:
                yield self.prepare(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
        except DataError as err:
            # From a worker, the message holds the worker's traceback; its last line is the DataError's own.
            raise DataError(str(err).strip().splitlines()[-1].removeprefix(f"{DataError.__module__}.DataError: ")) from None


class _IndexBatches:
    """The DataLoader's batch sampler: the same per-epoch order and batches as a DeviceLoader's."""

    def __init__(self, batches: _Batches):
        # A weak reference: a cycle through the FileLoader would leave its worker processes to the garbage
        # collector, which stops them only after a 5 s timeout per iterator.
        self.batches = weakref.proxy(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        order = self.batches._order()
        for start, stop in self.batches._bounds():
            yield order[start:stop].tolist() if order is not None else list(range(start, stop))
