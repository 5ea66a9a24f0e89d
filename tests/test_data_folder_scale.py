"""Folder datasets at scale: cached parallel file lists, the bad-image policy, loader options, GPU-style decoding."""

from __future__ import annotations

import functools
import io
import os
import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image, ImageFile

import deephash.data.bad_images as bad_images
import deephash.data.scan as scan
from deephash.data import FolderDataModule
from deephash.data.gpu_decode import collate_encoded, decode_batch, read_encoded
from deephash.data.sources import PathList
from deephash.data.transforms import IMAGENET_STD
from deephash.models.module import HashModule
from deephash.utils.errors import ConfigError, DataError
from tests.fixtures_data import write_image, write_image_tree, write_list_file
from tests.fixtures_models import latent_module

CLASSES = ("cat", "dog")


def _dm(root, **kwargs) -> FolderDataModule:
    kwargs = {
        "transform": "native",
        "image_size": 16,
        "n_queries": 2,
        "batch_size": 4,
        "test_fraction": 0.25,
        "val_size": 2,
        **kwargs,
    }
    return FolderDataModule(root=str(root), **kwargs)


def _age(root: Path, seconds: float = 60.0) -> None:
    """Backdate every folder, as in a dataset copied long before the run."""
    t = time.time() - seconds
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))


def _jpeg_bytes(size=(64, 48), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _smooth_jpeg(path: Path, size=(40, 30)) -> None:
    """A smooth colour gradient: JPEG decoders and resizers agree on it to within a grey level."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 127 / sum(size)], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path, format="JPEG", quality=95)


def write_bad_tree(root: Path, per_class: int = 9, empty: bool = True) -> dict[str, str]:
    """Two classes of good JPEG/PNG images plus corrupt, truncated, text and (``empty``) zero-byte files.

    Returns ``{relative path: kind}`` of the bad files.
    """
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 == 0 else ("PNG", "png")
            write_image(root / name / f"{name}_{i:02d}.{ext}", "RGB", fmt, size=(20, 14), seed=10 * label + i)
    jpeg = _jpeg_bytes()
    bad = {
        "cat/corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "dog/notes.jpg": b"just some text, not an image\n",
        "dog/truncated.jpg": jpeg[: int(len(jpeg) * 0.7)],
    }
    if empty:
        bad["cat/empty.jpg"] = b""
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    return {rel: rel.split("/")[1].split(".")[0] for rel in bad}


@pytest.fixture
def bad_tree(tmp_path):
    root = tmp_path / "images"
    return root, write_bad_tree(root)


def _module(num_classes: int) -> HashModule:
    return latent_module(
        "smallcnn",
        bits=8,
        num_classes=num_classes,
        in_channels=3,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
    )


def _trainer() -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _no_single_item_batch(dm: FolderDataModule) -> None:
    """BatchNorm cannot train on a last batch of one image."""
    dm.setup()
    if len(dm.splits["train"]) % dm.batch_size == 1:
        dm.batch_size += 1


@pytest.fixture
def count_scans(monkeypatch):
    calls = {"tree": 0, "list": 0}
    tree, listed = scan.scan_tree, scan.scan_list_file

    def counted_tree(*args, **kwargs):
        calls["tree"] += 1
        return tree(*args, **kwargs)

    def counted_list(*args, **kwargs):
        calls["list"] += 1
        return listed(*args, **kwargs)

    monkeypatch.setattr(scan, "scan_tree", counted_tree)
    monkeypatch.setattr(scan, "scan_list_file", counted_list)
    return calls


# ---- the cached file list --------------------------------------------------------------------------------


def test_file_list_is_cached_in_root_and_reused(tmp_path, count_scans):
    root = tmp_path / "images"
    write_image_tree(root, per_class=6)
    _age(root)
    first = _dm(root)
    first.setup()
    assert count_scans["tree"] == 1
    assert list((root / ".deephash-cache").glob("files-*.npz"))  # the default cache folder
    second = _dm(root)
    second.setup()
    assert count_scans["tree"] == 1  # reused: no scan
    assert second.class_names == first.class_names
    for split in ("train", "test", "query"):
        assert second.sample_ids(split) == first.sample_ids(split)
        np.testing.assert_array_equal(second.labels(split), first.labels(split))


def _add_file(root: Path) -> str:
    write_image(root / "dog" / "dog_new.png", "RGB", "PNG", seed=7)
    return "dog/dog_new.png"


def _remove_file(root: Path) -> str:
    (root / "cat" / "cat_01.png").unlink()
    return "-cat/cat_01.png"


def _add_class(root: Path) -> str:
    write_image(root / "owl" / "owl_0.jpg", "RGB", "JPEG", seed=8)
    write_image(root / "owl" / "owl_1.jpg", "RGB", "JPEG", seed=9)
    return "owl/owl_0.jpg"


def _add_in_subfolder(root: Path) -> str:
    write_image(root / "cat" / "sub" / "deep.bmp", "RGB", "BMP", seed=10)
    return "cat/sub/deep.bmp"


def _rename_file(root: Path) -> str:
    os.rename(root / "fish" / "fish_00.jpg", root / "fish" / "fish_zz.jpg")
    return "fish/fish_zz.jpg"


@pytest.mark.parametrize("change", [_add_file, _remove_file, _add_class, _add_in_subfolder, _rename_file])
def test_cache_is_rebuilt_when_a_folder_changes(tmp_path, count_scans, change):
    root = tmp_path / "images"
    write_image_tree(root, per_class=6)
    cache = tmp_path / "cache"
    _age(root)
    _dm(root, cache_dir=str(cache)).setup()
    expect = change(root)
    dm = _dm(root, cache_dir=str(cache))
    dm.setup()
    assert count_scans["tree"] == 2
    ids = dm.sample_ids("database") + dm.sample_ids("test")
    if expect.startswith("-"):
        assert expect[1:] not in ids
    else:
        assert expect in ids
    assert sorted(ids) == sorted(scan.scan_tree(str(root)).paths.tolist())


def test_folders_changed_during_the_scan_are_not_trusted(tmp_path, count_scans, monkeypatch):
    root = tmp_path / "images"
    write_image_tree(root, per_class=3)
    _age(root, seconds=5)
    monkeypatch.setattr(scan, "RACY_NS", 10**12)  # every folder counts as just modified
    _dm(root).setup()
    _dm(root).setup()
    assert count_scans["tree"] == 2
    files = scan.load_file_list(next((root / ".deephash-cache").glob("files-*.npz")))
    assert files is not None and np.all(files.dir_mtimes == -1)


def test_list_file_cache_reused_and_rebuilt_when_the_list_changes(tmp_path, count_scans):
    root = tmp_path / "images"
    paths, labels = write_image_tree(root, per_class=4)
    entries = list(zip(paths, labels.tolist()))
    write_list_file(root / "all.txt", entries)
    _age(root)
    os.utime(root / "all.txt", (time.time() - 60,) * 2)
    _dm(root, list_file="all.txt").setup()
    _dm(root, list_file="all.txt").setup()
    assert count_scans["list"] == 1
    write_list_file(root / "all.txt", entries[:-1])
    dm = _dm(root, list_file="all.txt")
    dm.setup()
    assert count_scans["list"] == 2 and len(dm.pool) == len(entries) - 1


def test_unreadable_cache_file_is_rebuilt(tmp_path, count_scans):
    root = tmp_path / "images"
    write_image_tree(root, per_class=3)
    _age(root)
    _dm(root, cache_dir=str(tmp_path / "c")).setup()
    (cache_file,) = (tmp_path / "c").glob("files-*.npz")
    cache_file.write_bytes(b"not an npz")
    dm = _dm(root, cache_dir=str(tmp_path / "c"))
    dm.setup()
    assert count_scans["tree"] == 2 and len(dm.pool) == 9
    assert scan.load_file_list(cache_file) is not None  # rewritten


def test_cache_dir_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")  # <root>/.deephash-cache cannot be created under a file
    assert scan.resolve_cache_dir(str(not_a_dir)) == tmp_path / "xdg" / "deephash"
    assert scan.resolve_cache_dir(str(tmp_path), str(tmp_path / "mine")) == tmp_path / "mine"
    with pytest.raises(ConfigError, match=f"data.cache_dir {not_a_dir / 'sub'} cannot be created"):
        scan.resolve_cache_dir(str(tmp_path), str(not_a_dir / "sub"))


def test_scan_order_matches_image_folder(tmp_path):
    from torchvision.datasets.folder import make_dataset

    root = tmp_path / "images"
    write_image_tree(root, per_class=8)
    write_image(root / "cat" / "a" / "z.jpg", "RGB", "JPEG")
    write_image(root / "cat" / "zz.jpg", "RGB", "JPEG")
    files = scan.scan_tree(str(root), threads=3)
    expected = make_dataset(
        str(root),
        {c: i for i, c in enumerate(files.classes)},
        is_valid_file=lambda p: p.lower().endswith(scan.IMG_EXTENSIONS),
    )
    assert files.paths.tolist() == [os.path.relpath(p, root) for p, _ in expected]
    np.testing.assert_array_equal(files.labels, [label for _, label in expected])
    assert files.sizes.min() > 0 and len(files.mtimes) == len(files.paths)


def test_path_list_round_trips_gathers_and_pickles():
    strings = ["a/b.jpg", "ünï/ç ode.png", "", "x" * 300, "cat/1.jpg"]
    paths = PathList.from_strings(strings)
    assert len(paths) == 5 and list(paths) == strings and paths[1] == strings[1] and paths[-1] == "cat/1.jpg"
    assert paths[1:4] == strings[1:4]
    assert paths.take(np.array([4, 1, 1, 2])).tolist() == [strings[4], strings[1], strings[1], ""]
    assert pickle.loads(pickle.dumps(paths)).tolist() == strings
    with pytest.raises(IndexError):
        paths[5]


# ---- bad images ------------------------------------------------------------------------------------------


def test_pil_keeps_refusing_truncated_images(bad_tree):
    root, _ = bad_tree
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert "truncated" in bad_images.check_image(str(root / "dog" / "truncated.jpg"))
    assert bad_images.check_image(str(root / "dog" / "notes.jpg")).startswith("cannot identify image file")
    assert bad_images.check_image(str(root / "cat" / "cat_00.jpg")) is None


def test_empty_files_are_left_out_at_scan_time(bad_tree):
    root, _ = bad_tree
    dm = _dm(root)
    dm.setup()
    ids = dm.sample_ids("database") + dm.sample_ids("test")
    assert "cat/empty.jpg" not in ids and "cat/corrupt.jpg" in ids
    assert dm.bad_images() == ["cat/empty.jpg"]


def test_error_policy_names_the_empty_file_at_setup(bad_tree):
    root, _ = bad_tree
    message = f"cannot read image {root / 'cat' / 'empty.jpg'}: empty file (0 bytes) (data.on_bad_image=error"
    with pytest.raises(DataError, match=re.escape(message)):
        _dm(root, on_bad_image="error").setup()


def test_error_policy_fails_training_naming_the_file(tmp_path):
    root = tmp_path / "images"
    bad = write_bad_tree(root, empty=False)
    dm = _dm(root, on_bad_image="error")
    _no_single_item_batch(dm)
    with pytest.raises(DataError) as err:
        _trainer().fit(_module(dm.num_classes), datamodule=dm)
    named = [rel for rel in bad if f"cannot read image {root / rel}: " in str(err.value)]
    assert len(named) == 1, str(err.value)


def test_skip_replaces_a_bad_item_with_the_next_readable_one(bad_tree):
    root, _ = bad_tree
    dm = _dm(root)
    dm.setup()
    ds = dm.dataset("database")
    ids = dm.sample_ids("database")
    k = next(
        i for i, sid in enumerate(ids) if sid in ("cat/corrupt.jpg", "dog/notes.jpg", "dog/truncated.jpg")
    )
    j = next(i for i in range(k + 1, len(ids)) if bad_images.check_image(str(root / ids[i])) is None)
    image, label, index = ds[k]
    expected = ds[j]
    torch.testing.assert_close(image, expected[0])
    assert (label, index) == expected[1:] and index != dm.splits["database"][k]
    assert ids[k] in dm.bad_images()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_training_completes_and_lists_bad_images(bad_tree, tmp_path, num_workers):
    root, bad = bad_tree
    dm = _dm(root, num_workers=num_workers, persistent_workers=False, report_dir=str(tmp_path / "run"))
    _no_single_item_batch(dm)
    trainer = _trainer()
    module = _module(dm.num_classes)
    trainer.fit(module, datamodule=dm)
    assert trainer.state.finished and trainer.global_step > 0
    trainer.test(module, datamodule=dm, verbose=False)  # the held-out images are read here
    listed = (tmp_path / "run" / "bad_images.txt").read_text().splitlines()
    assert listed == sorted(bad) == dm.bad_images()


def test_find_bad_images_caches_checks_and_exclude_removes_them(bad_tree, monkeypatch):
    root, bad = bad_tree
    dm = _dm(root)
    assert dm.find_bad_images() == sorted(bad)
    calls = []
    check = bad_images.check_image
    monkeypatch.setattr(bad_images, "check_image", lambda path: calls.append(path) or check(path))
    again = _dm(root)
    assert again.find_bad_images("database") == sorted(
        set(bad) & set(again.sample_ids("database")) - {"cat/empty.jpg"}
    )
    assert calls == []  # every result came from the cache
    write_image(root / "dog" / "notes.jpg", "RGB", "JPEG", seed=3)  # repaired in place
    assert "dog/notes.jpg" not in _dm(root).find_bad_images()
    assert calls == [str(root / "dog" / "notes.jpg")]

    found = dm.find_bad_images()
    assert dm.exclude(found) == len(found) - 1  # the empty file was never in the pool
    excluded = set(found)
    for split, indices in dm.splits.items():
        assert not excluded & set(dm.sample_ids(split)), split
        assert indices.dtype == np.int64 and np.all(np.diff(indices) > 0)
    loaded = torch.cat([batch[2] for batch in dm.encode_dataloader("database")])
    assert loaded.tolist() == dm.splits["database"].tolist()  # no substitutes once excluded
    with pytest.raises(
        DataError, match="cannot exclude dog/ghost.jpg: not an image of the folder dataset at"
    ):
        dm.exclude(["dog/ghost.jpg"])


def test_report_warns_and_rewrites_the_list(bad_tree, tmp_path, caplog):
    root, _ = bad_tree
    dm = _dm(root)
    dm.setup()
    dm.set_report_dir(tmp_path / "run")
    with caplog.at_level("WARNING", logger="deephash.data.folder"):
        assert dm.report_bad_images() == ["cat/empty.jpg"]
    assert "1 unreadable image(s)" in caplog.text and "cat/empty.jpg (empty file (0 bytes))" in caplog.text
    assert (tmp_path / "run" / "bad_images.txt").read_text() == "cat/empty.jpg\n"


# ---- loader options ----------------------------------------------------------------------------------------


def test_prefetch_factor_and_pin_memory(tmp_path):
    root = tmp_path / "images"
    write_image_tree(root, per_class=3)
    dm = _dm(root, num_workers=2, prefetch_factor=4, pin_memory=False)
    assert dm.train_dataloader().prefetch_factor == 4
    assert _dm(root, num_workers=0, prefetch_factor=4).train_dataloader().prefetch_factor is None
    assert _dm(root).pin_memory is torch.cuda.is_available()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_bad_image": "ignore"}, "data.on_bad_image must be one of skip, error, got 'ignore'"),
        ({"decode_on_gpu": "yes"}, "data.decode_on_gpu must be true or false, got 'yes'"),
        ({"prefetch_factor": 0}, "data.prefetch_factor must be an integer >= 1, got 0"),
    ],
)
def test_new_argument_errors(tmp_path, kwargs, message):
    write_image_tree(tmp_path / "images", per_class=2)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _dm(tmp_path / "images", **kwargs)


# ---- decoding on the device (run on CPU here) --------------------------------------------------------------


@pytest.fixture
def smooth_tree(tmp_path):
    root = tmp_path / "smooth"
    for label, name in enumerate(CLASSES):
        for i in range(4):
            _smooth_jpeg(root / name / f"{name}_{i}.jpg", size=(40 + 4 * i, 30 + 2 * label))
        write_image(root / name / f"{name}_png.png", "RGBA", "PNG", size=(24, 20), seed=label)
        write_image(root / name / f"{name}_bmp.bmp", "RGB", "BMP", size=(22, 18), seed=label)
        write_image(root / name / f"{name}_cmyk.jpg", "CMYK", "JPEG", size=(26, 18), seed=label)
    return root


def test_read_encoded_keeps_jpeg_bytes_and_decodes_the_rest(smooth_tree):
    jpeg = read_encoded(str(smooth_tree / "cat" / "cat_0.jpg"))
    assert isinstance(jpeg, np.ndarray) and jpeg.dtype == np.uint8 and jpeg.ndim == 1
    assert jpeg.tobytes() == (smooth_tree / "cat" / "cat_0.jpg").read_bytes()
    for name, size in (("cat_png.png", (20, 24)), ("cat_bmp.bmp", (18, 22))):
        image = read_encoded(str(smooth_tree / "cat" / name))
        assert isinstance(image, torch.Tensor) and image.shape == (3, *size) and image.dtype == torch.uint8
        with Image.open(smooth_tree / "cat" / name) as raw:
            # as a viewer shows it: transparency composited onto the white background, as on the CPU path
            white = Image.new("RGBA", raw.size, (255, 255, 255, 255))
            expected = Image.alpha_composite(white, raw.convert("RGBA")).convert("RGB")
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.asarray(expected))


@pytest.mark.parametrize("transform", ["imagenet", "native"])
def test_device_decode_matches_the_pil_path(smooth_tree, transform):
    dm = _dm(
        smooth_tree, transform=transform, image_size=24, resize=28, decode_on_gpu=True, test_fraction=0.3
    )
    batch = next(iter(dm.encode_dataloader("database", device_decode=True)))
    n = len(dm.splits["database"])
    assert isinstance(batch[0], list) and len(batch[0]) == n and n > 4
    images, labels, index = dm.on_after_batch_transfer(batch, 0)
    assert images.shape == (n, 3, 24, 24) and images.dtype == torch.float32
    pil = next(iter(dm.encode_dataloader("database")))
    torch.testing.assert_close(labels, pil[1])
    torch.testing.assert_close(index, pil[2])
    ids = [dm.pool.sample_id(int(p)) for p in index]
    grey_level = 1 / 255 / min(IMAGENET_STD)  # one uint8 step after normalisation
    assert {sid.rsplit("_", 1)[1] for sid in ids} >= {"png.png", "bmp.bmp", "cmyk.jpg", "0.jpg"}
    for k, sid in enumerate(ids):
        # same libjpeg decode; resizes agree to within rounding: at most one grey level, rarely
        diff = (images[k] - pil[0][k]).abs()
        assert diff.max() <= grey_level * 1.01 and diff.mean() < 0.002, (sid, float(diff.max()))


def test_device_decode_replaces_or_names_a_corrupt_jpeg(smooth_tree):
    (smooth_tree / "dog" / "dog_bad.jpg").write_bytes(_jpeg_bytes()[:300])
    dm = _dm(smooth_tree, decode_on_gpu=True, test_fraction=0.3, eval_batch_size=64)
    dm.setup()
    ds = dm.dataset("database", device_decode=True)
    batch = collate_encoded([ds[k] for k in range(len(ds))])
    rows = [k for k in range(len(ds)) if dm.pool.sample_id(int(batch[2][k])) == "dog/dog_bad.jpg"]
    if not rows:  # held out in the test source
        ds = dm.dataset("test", device_decode=True)
        batch = collate_encoded([ds[k] for k in range(len(ds))])
        rows = [k for k in range(len(ds)) if dm.pool.sample_id(int(batch[2][k])) == "dog/dog_bad.jpg"]
    (row,) = rows
    recorded = []
    kwargs = {
        "root": str(smooth_tree),
        "sample_id": dm.pool.sample_id,
        "record": lambda p, r: recorded.append((p, r)),
    }
    images, labels, index = decode_batch(batch, dm.device_transforms[False], on_bad_image="skip", **kwargs)
    assert images.shape == (len(batch[0]), 3, 16, 16)
    nxt = (row + 1) % len(batch[0])
    assert index[row] == batch[2][nxt] and labels[row] == batch[1][nxt]
    torch.testing.assert_close(images[row], images[nxt])
    assert recorded and recorded[0][0] == "dog/dog_bad.jpg"
    with pytest.raises(
        DataError, match=re.escape(f"cannot read image {smooth_tree / 'dog' / 'dog_bad.jpg'}: ")
    ):
        decode_batch(batch, dm.device_transforms[False], on_bad_image="error", **kwargs)


def test_device_decode_training_through_lightning(smooth_tree, tmp_path):
    (smooth_tree / "cat" / "cat_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    dm = _dm(smooth_tree, decode_on_gpu=True, report_dir=str(tmp_path / "run"), test_fraction=0.3)
    _no_single_item_batch(dm)
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0].shape)

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Spy()],
    )
    module = _module(dm.num_classes)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert seen and all(s[1:] == (3, 16, 16) for s in seen)
    assert (tmp_path / "run" / "bad_images.txt").read_text() == "cat/cat_bad.jpg\n"
