"""A user's own image folder: bad files and stray folders are named in one line before any training, or
left out and counted with dataset.skip_bad=true; only folders that hold images become classes."""

import io
import json
import os
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

import dlrun
from dlrun.core.errors import ConfigError, DataError
from dlrun.data import load_data, make_loaders
from tests.helpers import DLRUN, compose_config


def write_images(folder, classes=("cat", "dog"), per_class: int = 3, size=(4, 5), fmt="png", seed: int = 0):
    """`per_class` tiny RGB images in folder/<class>/; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / name / f"{i}.{fmt}"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
            paths.append(path)
    return paths


def png_bytes(size=(4, 5)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), 7, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bomb_png() -> bytes:
    """65 bytes whose header claims 30000x30000 pixels: over twice PIL's Image.MAX_IMAGE_PIXELS."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def make_bad(path, kind: str):
    """A file in `path`'s place that no training can read, of the given kind; returns its path."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(png_bytes()[:60])  # cut in its pixel data
    elif kind == "cut_header":
        path.write_bytes(png_bytes()[:20])
    elif kind == "text":
        path = path.with_suffix(".jpg")
        path.write_text("name,label\nfido,dog\n")
    elif kind == "bomb":
        path.write_bytes(bomb_png())
    elif kind == "broken_link":
        path.symlink_to(path.parent / "gone.png")
    elif kind == "unreadable":
        path.write_bytes(png_bytes())
        path.chmod(0)
    elif kind == "pipe":
        os.mkfifo(path)
    return path


# What each kind's line says, besides the file's path.
REASONS = {
    "empty": "empty (0 bytes)",
    "truncated": "truncated or damaged",
    "cut_header": "truncated or damaged",
    "text": "not an image",
    "bomb": "900,000,000 pixels",
    "broken_link": "broken link",
    "unreadable": "Permission denied",
    "pipe": "not a regular file",
}
as_root = os.name == "posix" and os.geteuid() == 0
root_reads_anything = pytest.mark.skipif(as_root, reason="root reads a file whatever its mode; the CLI test drops that right")
KINDS = [pytest.param(k, marks=root_reads_anything) if k == "unreadable" else k for k in REASONS]


def image_config(root, *overrides: str):
    return compose_config("dataset=image_folder", f"dataset.root={root}", "dataset.num_workers=0", *overrides)


def load(root, *overrides: str, val_fraction: float = 0.25):
    return load_data(image_config(root, *overrides).dataset, 0, val_fraction)


def one_line_error(root, *overrides: str) -> str:
    with pytest.raises(DataError) as caught:
        load(root, *overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def all_paths(data) -> set[str]:
    return {path for part in (data.train, data.val, data.test) for path, _ in part.folder.samples}


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_file_is_one_line_that_names_it(tmp_path, kind):
    write_images(tmp_path)
    bad = make_bad(tmp_path / "dog" / "bad.png", kind)
    message = one_line_error(tmp_path)
    assert message.startswith(f"{bad}: cannot read this image: ") and REASONS[kind] in message
    assert "dataset.skip_bad=true" in message


def test_skip_bad_leaves_out_every_bad_file_and_counts_them(tmp_path, capsys):
    good = write_images(tmp_path, per_class=4)
    kinds = [k for k in REASONS if not (k == "unreadable" and as_root)]
    bad = [make_bad(tmp_path / ("cat", "dog")[i % 2] / f"bad{i}.png", kind) for i, kind in enumerate(kinds)]
    message = one_line_error(tmp_path)
    assert message.startswith(str(bad[0])) and f"{len(bad) - 1} more bad files" in message

    data = load(tmp_path, "dataset.skip_bad=true")
    assert all_paths(data) == {str(p) for p in good}
    assert data.skipped == {"count": len(bad), "paths": sorted(str(p) for p in bad)}
    warning = [line for line in capsys.readouterr().err.splitlines() if "unreadable image files" in line]
    assert len(warning) == 1 and warning[0].startswith(f"dlrun: warning: left out {len(bad)} unreadable image files")
    assert str(sorted(bad)[0]) in warning[0] and f"and {len(bad) - 3} more" in warning[0]


# Root reads a file whatever its mode; without the capability that lets it, it is refused like anyone.
DROP_ROOTS_READ = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if as_root else []


@pytest.mark.skipif(as_root and not shutil.which("setpriv"), reason="as root, needs setpriv to make chmod 000 count")
def test_the_cli_names_an_unreadable_file_in_one_line_before_training(tmp_path):
    write_images(tmp_path / "pics")
    locked = make_bad(tmp_path / "pics" / "cat" / "locked.png", "unreadable")
    args = ["train", "dataset=image_folder", f"dataset.root={tmp_path / 'pics'}", "device=cpu", "hydra.run.dir=run"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([*DROP_ROOTS_READ, DLRUN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"dlrun: error: {locked}: cannot read this image: cannot open it (Permission denied); "
        "dataset.skip_bad=true leaves such files out"
    ]
    assert "epoch 1" not in proc.stdout


def test_a_run_with_skip_bad_records_the_files_in_metrics_json(tmp_path, capsys):
    write_images(tmp_path / "pics", per_class=4)
    bad = [make_bad(tmp_path / "pics" / "cat" / "empty.png", "empty"), make_bad(tmp_path / "pics" / "dog" / "x.png", "text")]
    run = dlrun.train(
        [
            "dataset=image_folder",
            f"dataset.root={tmp_path / 'pics'}",
            "dataset.skip_bad=true",
            "dataset.resize=8",
            "dataset.num_workers=0",
            "device=cpu",
            "trainer.epochs=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert run.status == "completed" and metrics["skipped_files"] == {"count": 2, "paths": [str(p) for p in bad]}
    err = capsys.readouterr().err
    assert "dlrun: warning: left out 2 unreadable image files (dataset.skip_bad=true)" in err and "Traceback" not in err
    assert "left out" in (tmp_path / "run" / "train.log").read_text()


def test_skip_bad_takes_true_or_false(tmp_path):
    write_images(tmp_path)
    with pytest.raises(ConfigError, match="dataset.skip_bad"):
        dlrun.train(["dataset=image_folder", f"dataset.root={tmp_path}", "dataset.skip_bad=sometimes", "device=cpu"])


def test_an_empty_class_folder_is_named(tmp_path, capsys):
    write_images(tmp_path, classes=("cat", "dog", "owl"))
    for path in (tmp_path / "owl").iterdir():
        path.unlink()
    (tmp_path / "owl" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # a hidden file is no content
    message = one_line_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'owl'}: this class folder holds no images") and "skip_bad" in message

    data = load(tmp_path, "dataset.skip_bad=true")
    assert data.classes == ["cat", "dog"]
    assert f"dlrun: warning: {tmp_path}: left out class folders without readable images: owl" in capsys.readouterr().err


def test_a_class_folder_of_bad_files_only_is_left_out_with_skip_bad(tmp_path, capsys):
    write_images(tmp_path, classes=("cat", "dog"))
    (tmp_path / "owl").mkdir()
    bad = make_bad(tmp_path / "owl" / "0.png", "empty")
    assert one_line_error(tmp_path).startswith(f"{bad}: cannot read this image: the file is empty")
    data = load(tmp_path, "dataset.skip_bad=true")
    assert data.classes == ["cat", "dog"] and data.skipped["paths"] == [str(bad)]
    assert "left out class folders without readable images: owl" in capsys.readouterr().err


def test_a_split_that_lacks_a_class_is_named(tmp_path):
    write_images(tmp_path / "train", classes=("cat", "dog", "owl"))
    write_images(tmp_path / "test", classes=("cat", "dog"), seed=1)
    message, train = one_line_error(tmp_path), tmp_path / "train"
    assert message == f"{tmp_path / 'test'}: this split lacks the class folders owl ({train} holds cat, dog, owl)"

    (tmp_path / "test" / "owl").mkdir()  # there, but empty
    assert one_line_error(tmp_path).startswith(f"{tmp_path / 'test' / 'owl'}: this class folder holds no images")
    make_bad(tmp_path / "test" / "owl" / "0.png", "truncated")  # with skip_bad it is left out: the class is missing again
    assert "this split lacks the class folders owl" in one_line_error(tmp_path, "dataset.skip_bad=true")

    write_images(tmp_path / "val", classes=("cat", "dog", "owl", "yak"), seed=2)
    (tmp_path / "test" / "owl" / "0.png").write_bytes(png_bytes())
    message = one_line_error(tmp_path)
    assert message == f"{tmp_path / 'val'}: this split has class folders that train/ lacks: yak ({train} holds cat, dog, owl)"


def test_folders_without_images_are_no_classes(tmp_path, capsys):
    write_images(tmp_path)
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "labels.csv").write_text("file,label\n")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    data = load(tmp_path)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dlrun: warning:")]
    assert warnings == [f"dlrun: warning: {tmp_path}: left out folders that hold no images (so no class folders): MNIST, notes"]


def test_a_folder_of_dataset_files_only_is_one_line(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03")
    assert one_line_error(tmp_path).startswith(f"{tmp_path}: no class folders with images; image_folder reads root/<class>/")
    write_images(tmp_path, classes=("cat",))
    assert one_line_error(tmp_path).startswith(f"{tmp_path}: only one class folder (cat); a classifier needs two or more")


def test_images_outside_class_folders_are_named(tmp_path):
    write_images(tmp_path, classes=("flowers",))
    for path in (tmp_path / "flowers").iterdir():
        path.rename(tmp_path / path.name)
    (tmp_path / "flowers").rmdir()
    assert one_line_error(tmp_path).startswith(f"{tmp_path}: 3 images but no class folders; image_folder reads")


def test_folders_beside_the_splits_are_named(tmp_path, capsys):
    write_images(tmp_path / "train")
    write_images(tmp_path / "validation", seed=1)
    data = load(tmp_path)
    assert not any("validation" in path for path in all_paths(data))
    assert f"{tmp_path}: only train/, val/ and test/ are read; left out beside them: validation" in capsys.readouterr().err


def test_files_are_in_torchvision_order_so_seeded_splits_stay(tmp_path):
    from torchvision.datasets import ImageFolder

    for sub in ("cat/b", "cat/b-x", "cat/b/c", "cat", "dog/Z", "dog"):
        write_images(tmp_path, classes=(sub,), per_class=2)
    data = load(tmp_path, "dataset.test_fraction=0.3")
    assert data.train.folder.samples == ImageFolder(str(tmp_path)).samples
    assert len(all_paths(data)) == 12


def test_a_link_back_up_is_walked_once(tmp_path):
    write_images(tmp_path)
    (tmp_path / "dog" / "again").symlink_to(tmp_path / "dog")
    assert len(all_paths(load(tmp_path))) == 6


def test_images_of_another_size_are_named_at_load_without_resize(tmp_path):
    write_images(tmp_path)
    odd = tmp_path / "dog" / "wide.png"
    Image.fromarray(np.zeros((4, 9, 3), np.uint8)).save(odd)
    message = one_line_error(tmp_path, "dataset.resize=null")
    assert message.startswith(f"{odd}: 9x4 pixels, but {tmp_path / 'cat' / '0.png'} has 5x4; set dataset.resize")
    assert load(tmp_path, "dataset.resize=8").in_shape == (3, 8, 8)


@pytest.mark.parametrize("workers", [0, 1])
def test_damage_past_the_header_names_the_file_when_read(tmp_path, workers):
    write_images(tmp_path, fmt="jpg", size=(48, 48))
    bad = tmp_path / "dog" / "1.jpg"
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) * 3 // 4])  # the header is whole; the scan data is cut short
    cfg = image_config(tmp_path, "dataset.resize=8", f"dataset.num_workers={workers}", "dataset.test_fraction=0.5")
    data = load_data(cfg.dataset, 0, 0.25)  # the header check passes it
    with pytest.raises(DataError) as caught:
        for loader in make_loaders(data, cfg, "cpu"):
            list(loader)
    message = str(caught.value)
    assert message.startswith(f"{bad}: cannot read this image: the file is truncated or damaged") and "\n" not in message
