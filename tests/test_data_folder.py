"""FolderDataModule on image trees and list files with JPEG/PNG/BMP/WebP, gray, RGBA, palette and CMYK images."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from deephash.data import FolderDataModule
from deephash.data.folder import default_num_workers, stratified_holdout
from deephash.data.scan import scan_list_file, scan_tree
from deephash.utils.errors import ConfigError, DataError
from tests.fixtures_data import write_image, write_image_tree, write_list_file


@pytest.fixture
def tree(tmp_path):
    paths, labels = write_image_tree(tmp_path / "images", per_class=8)
    return tmp_path / "images", paths, labels


def _dm(root, **kwargs) -> FolderDataModule:
    kwargs = {
        "transform": "native",
        "image_size": 16,
        "n_queries": 3,
        "batch_size": 4,
        "test_fraction": 0.25,
        **kwargs,
    }
    return FolderDataModule(root=str(root), **kwargs)


def test_scan_tree_lists_a_class_folder(tree):
    root, paths, labels = tree
    files = scan_tree(str(root))
    found, found_labels, classes = files.paths.tolist(), files.labels, files.classes
    assert classes == ["cat", "dog", "fish"]
    assert found == paths  # relative, sorted, every extension in any case, non-images skipped
    np.testing.assert_array_equal(found_labels, labels)
    assert found_labels.dtype == np.int64
    assert "cat/sub/cat_07.webp" in found and "cat/cat_05.JPG" in found
    assert not any(p.endswith(".txt") for p in found)


def test_every_mode_becomes_a_3_channel_tensor(tree):
    root, paths, _ = tree
    dm = _dm(root)
    dm.setup()
    modes = set()
    for p in range(len(dm.pool)):
        rel = dm.pool.sample_id(p)
        with Image.open(root / rel) as raw:
            modes.add(raw.mode)
        img = dm.pool.image(p)
        assert img.mode == "RGB"
        x = dm.eval_transform(img)
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert {"RGB", "L", "RGBA", "CMYK", "P"} <= modes
    image, label, index = dm.dataset("database", train=True)[5]
    assert (
        image.shape == (3, 16, 16) and label == dm.labels("database")[5] and index == dm.splits["database"][5]
    )
    assert sorted(dm.sample_ids("database") + dm.sample_ids("test")) == sorted(paths)


def test_gray_image_is_replicated_and_cmyk_converted(tmp_path):
    write_image(tmp_path / "a" / "gray.png", "L", "PNG", seed=1)
    write_image(tmp_path / "b" / "cmyk.jpg", "CMYK", "JPEG", seed=2)
    write_image(tmp_path / "b" / "rgba.png", "RGBA", "PNG", seed=3)
    dm = _dm(tmp_path, test_fraction=0.5, n_queries=1)
    dm.setup()
    ids = dm.sample_ids("database") + dm.sample_ids("test")
    index = {sid: p for sid, p in zip(ids, np.concatenate([dm.splits["database"], dm.splits["test"]]))}
    gray = np.asarray(dm.pool.image(int(index["a/gray.png"])))
    assert gray.shape == (14, 20, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    with Image.open(tmp_path / "a" / "gray.png") as raw:
        np.testing.assert_array_equal(gray[..., 0], np.asarray(raw))
    assert np.asarray(dm.pool.image(int(index["b/rgba.png"]))).shape == (14, 20, 3)
    assert np.asarray(dm.pool.image(int(index["b/cmyk.jpg"]))).shape == (14, 20, 3)


def test_16_bit_and_float_images_keep_their_tones(tmp_path):
    """PIL's convert("RGB") clips 16-bit pixels to 255 and float ones in [0, 1] to 0 or 1: a 16-bit scan
    would train and search as a white square. The folder source, query preprocessing and the pixel
    baselines all scale them to 8 bits instead."""
    from deephash.data.query import query_transform
    from deephash.data.transforms import to_mode

    tones = np.linspace(0, 1, 14 * 20).reshape(14, 20)
    expected = np.rint(tones * 255).astype(np.uint8)
    for cls in ("a", "b"):  # two classes of one 16-bit PNG and one float TIFF each
        (tmp_path / cls).mkdir()
        Image.fromarray(np.rint(tones * 65535).astype(np.uint16)).save(tmp_path / cls / "deep.png")
        Image.fromarray(tones.astype(np.float32), "F").save(tmp_path / cls / "float.tiff")
    for name in ("deep.png", "float.tiff"):
        with Image.open(tmp_path / "a" / name) as raw:
            assert raw.mode in ("I;16", "I", "F")
            assert np.abs(np.asarray(to_mode(raw, "L")).astype(int) - expected).max() <= 1
    dm = _dm(tmp_path, test_fraction=0.5, n_queries=1)
    dm.setup()
    for p in range(len(dm.pool)):
        rgb = np.asarray(dm.pool.image(p)).astype(int)
        assert rgb.shape == (14, 20, 3) and np.abs(rgb[..., 1] - expected).max() <= 1
    spec = {"transform": "native", "channels": 1, "size": [14, 20], "mean": [0.0], "std": [1.0]}
    x = query_transform(spec)(Image.open(tmp_path / "a" / "deep.png"))
    assert x.shape == (1, 14, 20) and abs(float(x.mean()) - 0.5) < 0.01  # not ~1.0 (clipped white)


def test_holdout_split_is_stratified_and_fixed(tree):
    root, _, labels = tree
    a, b = _dm(root, seed=1), _dm(root, seed=2)
    a.setup()
    b.setup()
    assert a.sample_ids("test") == b.sample_ids("test")  # the test source does not move with seed
    np.testing.assert_array_equal(np.bincount(a.labels("test")), [2, 2, 2])
    assert len(a.pool.train) == 18
    assert not np.array_equal(a.splits["query"], b.splits["query"]) or not np.array_equal(
        a.splits["val"], b.splits["val"]
    )
    c = _dm(root, split_seed=5)
    c.setup()
    assert c.sample_ids("test") != a.sample_ids("test")


def test_stratified_holdout_keeps_singletons_in_training():
    keep, held = stratified_holdout(np.array([0, 0, 0, 0, 1, 2, 2]), 0.5, seed=0)
    assert np.intersect1d(keep, held).size == 0 and len(keep) + len(held) == 7
    assert 4 in keep  # class 1's only image
    assert len(held) == 3


def test_imagenet_batches(tree):
    root, _, _ = tree
    dm = _dm(root, transform="imagenet", image_size=24, resize=28)
    images, labels, index = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 24, 24)
    np.testing.assert_array_equal(labels.numpy(), dm.pool.labels[index.numpy()])
    query, database = dm.predict_dataloader()
    assert sum(len(b[0]) for b in query) == 3
    assert torch.cat([b[2] for b in database]).tolist() == dm.splits["database"].tolist()


def test_list_files_with_test_list_and_classes_file(tree, tmp_path):
    root, paths, labels = tree
    entries = list(zip(paths, labels.tolist()))
    write_list_file(root / "train.txt", entries[::2])
    write_list_file(root / "test.txt", entries[1::2])
    (tmp_path / "names.txt").write_text("# one name a line\nkitten\npuppy\n\nfishy\n")
    dm = _dm(root, list_file="train.txt", test_list_file="test.txt", classes_file=str(tmp_path / "names.txt"))
    dm.setup()
    assert dm.class_names == ["kitten", "puppy", "fishy"]
    assert dm.sample_ids("database") == paths[::2]
    np.testing.assert_array_equal(dm.labels("test"), labels[1::2])
    dm.save_splits(tmp_path / "run")
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes["class_to_idx"] == {"kitten": 0, "puppy": 1, "fishy": 2} and classes["dataset"] == "folder"


def test_list_file_without_classes_file_names_labels(tree):
    root, paths, labels = tree
    write_list_file(root / "all.txt", list(zip(paths, labels.tolist())))
    dm = _dm(root, list_file=str(root / "all.txt"))
    assert dm.class_names == ["0", "1", "2"]
    dm.setup()
    assert len(dm.pool) == len(paths) and len(dm.pool.test) == 6


def test_scan_list_file_handles_spaces_comments_and_blank_lines(tmp_path):
    write_image(tmp_path / "my cls" / "an image.png", "RGB", "PNG")
    (tmp_path / "l.txt").write_text("# comment\n\n  my cls/an image.png   3  \n")
    files = scan_list_file(str(tmp_path / "l.txt"), str(tmp_path))
    paths, labels = files.paths.tolist(), files.labels
    assert paths == ["my cls/an image.png"] and labels.tolist() == [3]


# ---- errors -------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"folder dataset root {tmp_path / 'nope'} does not exist")):
        _dm(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist"):
        scan_tree(str(tmp_path / "nope"))


def test_one_class(tmp_path):
    write_image(tmp_path / "only" / "a.png", "RGB", "PNG")
    message = f"folder dataset at {tmp_path} has 1 class; expected at least 2 class subfolders"
    with pytest.raises(DataError, match=re.escape(message)):
        _dm(tmp_path).setup()


def test_empty_class_folder(tree):
    root, _, _ = tree
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=re.escape(f"class folder {root / 'empty'} has no images")):
        _dm(root).setup()


def test_bad_list_line_names_file_and_line(tree):
    root, paths, _ = tree
    (root / "bad.txt").write_text(f"# header\n{paths[0]} 0\n\n{paths[1]} cat\n")
    with pytest.raises(DataError) as err:
        _dm(root, list_file="bad.txt").setup()
    assert str(err.value).startswith(f"{root / 'bad.txt'}, line 4: expected 'relative/path label'")
    assert f"got '{paths[1]} cat'" in str(err.value)


def test_missing_listed_file(tree):
    root, paths, _ = tree
    write_list_file(root / "l.txt", [(paths[0], 0), ("dog/ghost.jpg", 1), ("dog/ghost2.jpg", 1)])
    with pytest.raises(
        DataError, match=r"l.txt: 2 listed file\(s\) not found under .*, first: dog/ghost.jpg"
    ):
        _dm(root, list_file="l.txt").setup()


def test_missing_list_file(tree):
    root, _, _ = tree
    with pytest.raises(DataError, match="file nope.txt not found"):
        _dm(root, list_file="nope.txt").setup()


def test_unreadable_image_names_the_file(tree):
    root, _, _ = tree
    (root / "dog" / "zz_broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    dm = _dm(root)
    dm.setup()
    ids = dm.sample_ids("database") + dm.sample_ids("test")
    assert "dog/zz_broken.jpg" in ids
    pool_index = np.concatenate([dm.splits["database"], dm.splits["test"]])[ids.index("dog/zz_broken.jpg")]
    with pytest.raises(DataError, match=re.escape(f"cannot read image {root / 'dog' / 'zz_broken.jpg'}: ")):
        dm.pool.image(int(pool_index))


def test_folder_argument_errors(tree):
    root, _, _ = tree
    with pytest.raises(ConfigError, match=r"data.test_fraction must be a fraction in \(0, 1\), got 1.5"):
        _dm(root, test_fraction=1.5)
    with pytest.raises(ConfigError, match="data.test_list_file and data.classes_file need data.list_file"):
        _dm(root, test_list_file="t.txt")
    with pytest.raises(ConfigError, match="data.root must be set"):
        FolderDataModule(root=None)


# ---- scale: hidden folders, empty files, links, loader settings -------------------------------------------


def test_hidden_folders_empty_files_and_link_loops_are_skipped(tree):
    root, paths, labels = tree
    write_image(root / "cat" / ".thumbnails" / "t.jpg", "RGB", "JPEG")
    (root / "dog" / "zero.jpg").write_bytes(b"")
    (root / "fish" / "loop").symlink_to(root / "fish", target_is_directory=True)
    files = scan_tree(str(root))
    found, found_labels = files.paths.tolist(), files.labels
    assert found == paths  # no hidden folder, no empty file, the loop walked once
    np.testing.assert_array_equal(found_labels, labels)


def test_scan_list_file_leaves_out_empty_files(tmp_path):
    write_image(tmp_path / "a" / "x.png", "RGB", "PNG")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "l.txt").write_text("a/x.png 0\na/empty.png 1\n")
    files = scan_list_file(str(tmp_path / "l.txt"), str(tmp_path))
    paths, labels = files.paths.tolist(), files.labels
    assert paths == ["a/x.png"] and labels.tolist() == [0]


def test_folder_yaml_loader_defaults(tree):
    from omegaconf import OmegaConf

    from tests.conftest import CONF_DIR

    cfg = OmegaConf.load(f"{CONF_DIR}/data/folder.yaml")
    cfg.root, cfg.seed, cfg.n_queries = str(tree[0]), 0, 2
    dm = FolderDataModule(**{k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"})
    assert (dm.num_workers, dm.persistent_workers, dm.prefetch_factor) == (default_num_workers(), True, None)
    assert dm.on_bad_image == "skip" and dm.decode_on_gpu is False and dm.cache_dir is None
    assert dm.pin_memory is torch.cuda.is_available()
    loader = dm.train_dataloader()
    assert (
        loader.num_workers == default_num_workers()
        and loader.persistent_workers
        and loader.prefetch_factor == 2
    )


def test_folder_datasets_pickle_for_spawned_workers(tree):
    import pickle

    root, _, _ = tree
    dm = _dm(root)
    for device_decode in (False, True):
        ds = dm.dataset("database", train=False, device_decode=device_decode)
        clone = pickle.loads(pickle.dumps(ds))
        a, b = clone[3], ds[3]
        assert a[1:] == b[1:] and clone.collate_fn is ds.collate_fn
        if device_decode and isinstance(a[0], np.ndarray):
            np.testing.assert_array_equal(a[0], b[0])
        else:
            torch.testing.assert_close(a[0], b[0])


# ---- labels that cannot be trusted: links, stray labels, odd list files ----------------------------------


def test_link_out_of_a_class_folder_is_not_followed(tree, caplog):
    """``fish/loop -> ..`` would list every cat and dog image again under fish."""
    root, paths, labels = tree
    (root / "fish" / "loop").symlink_to("..", target_is_directory=True)
    (root / "fish" / "cats").symlink_to(root / "cat", target_is_directory=True)
    (root / "fish" / "inside").symlink_to(".", target_is_directory=True)  # a cycle within the class
    files = scan_tree(str(root))
    assert files.paths.tolist() == paths
    np.testing.assert_array_equal(files.labels, labels)
    assert "2 folder link(s)" in caplog.text and "fish/cats" in caplog.text


def test_link_to_a_folder_inside_the_class_is_walked_once(tree):
    root, paths, labels = tree
    write_image(root / "dog" / "deep" / "extra.png", "RGB", "PNG")
    (root / "dog" / "again").symlink_to(root / "dog" / "deep", target_is_directory=True)
    found = scan_tree(str(root)).paths.tolist()
    assert sum(p.endswith("extra.png") for p in found) == 1 and len(found) == len(paths) + 1


@pytest.mark.parametrize("target", ["cat", "cat/sub"])
def test_a_class_folder_linked_to_another_class_is_refused(tree, target):
    root, _, _ = tree
    write_image(root / "cat" / "sub" / "x.png", "RGB", "PNG")
    (root / "kitten").symlink_to(root / target, target_is_directory=True)
    with pytest.raises(
        DataError, match=r"class folder(s 'cat' and 'kitten'| 'kitten') under .* (are the same|is inside)"
    ):
        _dm(root).setup()


def test_a_class_folder_linked_from_outside_the_root_is_a_class(tmp_path):
    write_image_tree(tmp_path / "elsewhere", classes=("bird",), per_class=3)
    write_image_tree(tmp_path / "images", classes=("cat", "dog"), per_class=3)
    (tmp_path / "images" / "bird").symlink_to(tmp_path / "elsewhere" / "bird", target_is_directory=True)
    files = scan_tree(str(tmp_path / "images"))
    assert files.classes == ["bird", "cat", "dog"] and np.bincount(files.labels).tolist() == [3, 3, 3]


def test_list_label_beyond_the_classes_without_a_classes_file_is_refused(tree):
    root, paths, labels = tree
    entries = list(zip(paths, labels.tolist()))
    entries[0] = (entries[0][0], 999)  # a typo: 999 classes, 996 of them empty
    write_list_file(root / "all.txt", entries)
    with pytest.raises(
        DataError, match=r"uses 4 distinct labels but the largest is 999, so labels 3, 4, 5, 6, 7 \.\.\. "
    ):
        _dm(root, list_file="all.txt").setup()


def test_list_labels_with_gaps_are_accepted_with_a_classes_file(tree, tmp_path):
    root, paths, labels = tree
    write_list_file(root / "all.txt", [(p, 2 * int(c)) for p, c in zip(paths, labels)])
    (tmp_path / "names.txt").write_text("cat\nunused\ndog\nunused too\nfish\n")
    dm = _dm(root, list_file="all.txt", classes_file=str(tmp_path / "names.txt"))
    dm.setup()
    assert dm.num_classes == 5 and sorted(set(dm.labels("database").tolist())) == [0, 2, 4]


def test_list_and_classes_files_with_a_byte_order_mark(tree, tmp_path):
    root, paths, labels = tree
    lines = "".join(f"{p} {c}\n" for p, c in zip(paths, labels))
    (root / "all.txt").write_text("\ufeff" + lines, encoding="utf-8")
    (tmp_path / "names.txt").write_text("\ufeffcat\ndog\nfish\n", encoding="utf-8")
    dm = _dm(root, list_file="all.txt", classes_file=str(tmp_path / "names.txt"))
    dm.setup()
    assert dm.class_names == ["cat", "dog", "fish"] and paths[0] in _all_ids(dm)


@pytest.mark.parametrize("path", ["../outside.png", "cat/../../outside.png", "/abs/outside.png"])
def test_list_paths_outside_the_root_are_refused_unless_allowed(tmp_path, path):
    root = tmp_path / "images"
    write_image_tree(root, per_class=3)
    write_image(tmp_path / "outside.png", "RGB", "PNG")
    absolute = path.startswith("/")
    listed = str(tmp_path / "outside.png") if absolute else path
    (root / "l.txt").write_text(
        f"cat/cat_00.jpg 0\ndog/dog_00.jpg 1\n{listed} 1\ncat/cat_01.png 0\ndog/dog_01.png 1\n"
    )
    with pytest.raises(DataError, match=re.escape(f"l.txt, line 3: {listed} is outside the dataset root; ")):
        _dm(root, list_file="l.txt", n_queries=1, test_fraction=0.3).setup()
    dm = _dm(root, list_file="l.txt", n_queries=1, test_fraction=0.3, allow_outside_root=True)
    dm.setup()
    assert listed in _all_ids(dm)


def test_duplicate_list_lines_are_named(tree):
    root, paths, labels = tree
    entries = list(zip(paths, labels.tolist()))
    write_list_file(root / "all.txt", [*entries, (f"./{paths[4]}", 0)])
    with pytest.raises(
        DataError,
        match=rf"all.txt, lines 7 and {len(paths) + 3} both list \./{re.escape(paths[4])}; list each image once",
    ):
        _dm(root, list_file="all.txt").setup()


def _all_ids(dm: FolderDataModule) -> set[str]:
    return {i for split in ("train", "val", "test") for i in dm.sample_ids(split)}
