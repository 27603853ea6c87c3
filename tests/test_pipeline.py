"""The batch pipeline: device-resident sampling, the same values as torchvision's standard transforms,
batched augmentation, the file-reading loader behind the same interface, and bf16 against fp32."""

import json

import pytest
import torch
from helpers import compose_config
from hypothesis import given, settings
from hypothesis import strategies as st
from test_datasets import write_idx_set, write_pngs
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import dlrun
from dlrun.core.errors import ConfigError
from dlrun.data import DeviceLoader, FileLoader, Split, load_data, make_loaders
from dlrun.data.augment import BatchAugment, random_crop
from dlrun.engine.precision import Precision


def id_split(n: int) -> Split:
    """Sample i's pixels and label are both i, so a batch says which samples it holds."""
    return Split(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n))


def epoch_ids(loader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 200), batch=st.integers(1, 70))
def test_every_sample_once_per_epoch_in_a_new_order(n, batch):
    loader = DeviceLoader(id_split(n), batch, "cpu", (0.0,), (1.0,), shuffle=True, seed=3)
    first, second = epoch_ids(loader), epoch_ids(loader)
    for epoch in (first, second):
        assert sorted(sum(epoch, [])) == list(range(n))
        assert len(epoch) == len(loader)
        assert min(len(b) for b in epoch) >= min(2, batch)  # never a lone trailing sample for batch norm
    if n >= 6:
        assert sum(first, []) != sum(second, [])
    # Same seed, same sequence of orders; another seed, another order.
    again = DeviceLoader(id_split(n), batch, "cpu", (0.0,), (1.0,), shuffle=True, seed=3)
    assert epoch_ids(again) == first and epoch_ids(again) == second
    if n >= 6:
        other = DeviceLoader(id_split(n), batch, "cpu", (0.0,), (1.0,), shuffle=True, seed=4)
        assert sum(epoch_ids(other), []) != sum(first, [])


def test_batches_match_torchvision_totensor_normalize(tmp_path):
    write_idx_set(tmp_path, "MNIST", gz=False)
    cfg = compose_config("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    data = load_data(cfg.dataset, 0, 0.1)
    standard = datasets.MNIST(
        str(tmp_path),
        train=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]),
    )
    ours = DeviceLoader(data.test, 4, "cpu", data.mean, data.std, shuffle=False)
    pairs = list(zip(ours, DataLoader(standard, batch_size=4)))
    assert len(pairs) == len(ours) == 3
    for (x, y), (x_ref, y_ref) in pairs:
        assert x.dtype == torch.float32 and x.shape == x_ref.shape
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-5)
        assert torch.equal(y, y_ref)
    # A shuffled batch holds the same values for the samples it names.
    train = DeviceLoader(data.train, 5, "cpu", data.mean, data.std, shuffle=True, seed=1)
    x, y = next(iter(train))
    for row, label in zip(x, y):
        matches = [i for i in range(len(data.train)) if data.train.y[i] == label]
        refs = [(data.train.x[i].float() / 255 - data.mean[0]) / data.std[0] for i in matches]
        assert any(torch.allclose(row, ref, atol=1e-5) for ref in refs)


def test_file_loader_matches_torchvision_image_folder(tmp_path):
    write_pngs(tmp_path / "train", per_class=3)
    write_pngs(tmp_path / "test", per_class=2, seed=1)
    cfg = compose_config("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.resize=[6,7]", "dataset.num_workers=2")
    data = load_data(cfg.dataset, 0, 0.3)
    train, val, test = make_loaders(data, cfg, "cpu")
    assert isinstance(test, FileLoader) and data.in_shape == (3, 6, 7)
    standard = datasets.ImageFolder(
        str(tmp_path / "test"),
        transform=transforms.Compose(
            [transforms.Resize((6, 7)), transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]
        ),
    )
    ((x, y),) = list(test)
    x_ref, y_ref = next(iter(DataLoader(standard, batch_size=len(standard))))
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-5)
    assert torch.equal(y, y_ref)
    # The training loader: the DeviceLoader's sampling (every sample once, a new order per epoch), from workers.
    first, second = epoch_ids(train), epoch_ids(train)
    assert sorted(sum(first, [])) == sorted(data.train.y.tolist()) == sorted(sum(second, []))
    orders = [torch.cat([x.flatten(1).sum(1) for x, _ in train]) for _ in range(2)]
    assert not torch.equal(orders[0], orders[1])


def test_channels_last_batches_hold_the_same_values():
    data = load_data(compose_config("dataset=digits").dataset, 0, 0.1)
    plain = DeviceLoader(data.test, 64, "cpu", data.mean, data.std, shuffle=False)
    nhwc = DeviceLoader(data.test, 64, "cpu", data.mean, data.std, shuffle=False, memory_format=torch.channels_last)
    (x, _), (x_cl, _) = next(iter(plain)), next(iter(nhwc))
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, x_cl)


def test_random_crop_takes_a_window_of_the_padded_image():
    x = torch.rand(64, 2, 5, 6)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 6])]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 10  # each sample its own offset


def test_flip_rotation_and_shift_are_per_sample_and_seeded():
    x = torch.rand(200, 1, 8, 8)
    flip = BatchAugment(hflip=True)
    out = flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, x))
    assert 60 < sum(flipped) < 140
    turn = BatchAugment(rotate=10, translate=0.1)
    a, b = turn(x, torch.Generator().manual_seed(1)), turn(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x, atol=1e-3)
    # Small moves: the image is still mostly itself.
    assert (a - x).abs().mean() < (x - x[torch.randperm(200)]).abs().mean()


def test_augmentation_touches_training_batches_only():
    cfg = compose_config("dataset=digits", "dataset.augment.crop_padding=2", "dataset.augment.hflip=true")
    data = load_data(cfg.dataset, 0, 0.1)
    train, val, _ = make_loaders(data, cfg, "cpu")
    plain = DeviceLoader(data.train, cfg.trainer.batch_size, "cpu", data.mean, data.std, shuffle=True, seed=cfg.seed)
    (x_aug, y_aug), (x, y) = next(iter(train)), next(iter(plain))
    assert torch.equal(y_aug, y) and not torch.equal(x_aug, x)  # same samples, moved pixels
    x_val, _ = next(iter(val))
    assert torch.equal(x_val, next(iter(DeviceLoader(data.val, 1024, "cpu", data.mean, data.std, shuffle=False)))[0])


def test_bad_augment_and_precision_values_are_config_errors():
    for key, value in (("crop_padding", -1), ("rotate", 500), ("translate", 1.5), ("shear", 3)):
        with pytest.raises(ConfigError, match=f"dataset.augment.{key}"):
            BatchAugment.from_config({key: value})
    with pytest.raises(ConfigError, match="trainer.precision=16: fp16 needs device=cuda"):
        Precision(16, torch.device("cpu"))
    with pytest.raises(ConfigError, match="must be 32, bf16, 16 or auto"):
        Precision("fp8", torch.device("cpu"))


@pytest.fixture(scope="module")
def spiral_runs(tmp_path_factory):
    """The same spiral run in fp32 and in bf16: the metrics.json of each."""
    results = {}
    for precision in ("32", "bf16"):
        run_dir = tmp_path_factory.mktemp("runs") / precision
        run = dlrun.train(
            [
                "dataset=spiral",
                "model.hidden_sizes=[64,64]",
                "optimizer=adam",
                "optimizer.lr=0.01",
                "trainer.epochs=8",
                f"trainer.precision={precision}",
                "logging.confusion_matrix_every=0",
                "logging.graph=false",
                f"hydra.run.dir={run_dir}",
            ]
        )
        results[precision] = json.loads((run.run_dir / "metrics.json").read_text())
    return results


@pytest.mark.slow
def test_bf16_reaches_fp32_accuracy_on_the_spiral(spiral_runs):
    fp32, bf16 = spiral_runs["32"], spiral_runs["bf16"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert fp32["test"]["accuracy"] > 0.9  # a spiral the MLP has really learned, not chance (1/3)
    assert abs(bf16["test"]["accuracy"] - fp32["test"]["accuracy"]) <= 0.03
