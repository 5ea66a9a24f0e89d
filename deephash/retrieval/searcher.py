"""The Python API of retrieval: a saved index and the checkpoint it was built with, ready for a notebook.

    searcher = deephash.Searcher.from_run("outputs/train/2024-05-01_12-00-00")
    results = searcher.search(["cat.jpg", "dog.png"], k=10, mode="hierarchical")
    results[0].ids, results[0].labels, results[0].class_names, results[0].distances

``deephash-search`` is a shell over :class:`Searcher`. :func:`index_images` indexes a plain folder of images
(someone's own photos: no classes, no labels) with a trained checkpoint, so a searcher can search it;
evaluation refuses such an index, since its metrics need labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from deephash.data.query import load_query_image, query_transform
from deephash.data.scan import IMG_EXTENSIONS, check_utf8_names
from deephash.models.checkpoint import load_hash_module
from deephash.models.module import HashModule
from deephash.retrieval.codes import hamming_distance_matrix, pack_codes
from deephash.retrieval.hierarchical import PoolRule
from deephash.retrieval.index_reader import load_index
from deephash.retrieval.index_writer import save_index
from deephash.retrieval.items import IndexStore
from deephash.retrieval.manifest import MANIFEST, check_preprocess, sha256_file
from deephash.retrieval.modes import MODES, SEARCHES, ModeQuery
from deephash.retrieval.pairs import score_pairs
from deephash.retrieval.shards import load_shards
from deephash.retrieval.sublinear import COARSE_METHODS, build_hamming_index
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, DataError, IndexFormatError
from deephash.utils.logging import get_logger

log = get_logger(__name__)

# a query: an image file, a PIL image, or a tensor already preprocessed for the model (C, H, W)
ImageLike = str | os.PathLike | Image.Image | torch.Tensor
UNLABELLED = -1  # the label of every item of an index built from a plain folder


class Encoded(NamedTuple):
    """Images through the model: ``codes`` (q, ceil(bits/8)) uint8 packed, ``f7`` (q, d) float32."""

    codes: np.ndarray
    f7: np.ndarray


@dataclass(frozen=True)
class SearchResult:
    """One query's results, best first: database rows, item ids, labels and class names (None for an
    unlabelled index), Hamming and L2 distances. ``distances`` is the one the mode ranks by."""

    query: str
    mode: str
    index: np.ndarray  # (k,) int64 database rows
    ids: list[str]
    labels: np.ndarray | None  # (k,) int64
    class_names: list[str] | None
    hamming: np.ndarray  # (k,) int
    l2: np.ndarray  # (k,) float32

    @property
    def distances(self) -> np.ndarray:
        return self.l2 if self.mode in ("hierarchical", "euclidean") else self.hamming

    def records(self) -> list[dict[str, Any]]:
        """The results as JSON-able rows (what ``deephash-search`` prints)."""
        rows = []
        for rank, i in enumerate(self.index):
            row: dict[str, Any] = {"rank": rank + 1, "index": int(i), "id": self.ids[rank]}
            row["label"] = int(self.labels[rank]) if self.labels is not None else None
            if self.class_names is not None:
                row["class"] = self.class_names[rank]
            row.update(hamming=int(self.hamming[rank]), l2=float(self.l2[rank]))
            rows.append(row)
        return rows


class Searcher:
    """Encode images with a trained model and search a saved index built with the same checkpoint."""

    def __init__(self, module: HashModule, store: IndexStore, device: str = "cpu", coarse: str = "flat"):
        if coarse not in COARSE_METHODS:
            raise ConfigError(f"coarse must be one of {', '.join(COARSE_METHODS)}, got {coarse!r}")
        spec = store.manifest.get("meta", {}).get("preprocess")
        if spec is None:
            raise IndexFormatError(
                f"index {store.path} records no query preprocessing; rebuild it with deephash-index build"
            )
        spec = check_preprocess(spec, str(store.path / MANIFEST))
        if spec["channels"] != module.in_channels:
            raise ConfigError(
                f"the model expects {module.in_channels}-channel input, the index preprocessing "
                f"gives {spec['channels']}"
            )
        self.module, self.store, self.device = module.eval().to(device), store, device
        self.transform = query_transform(spec)
        side = spec["size"] if spec["transform"] == "native" else [spec["image_size"]] * 2
        self.input_shape = (int(spec["channels"]), *map(int, side))  # (C, H, W) of a preprocessed query
        self._index = (
            store.hamming_index if coarse == "flat" else build_hamming_index(store.codes, store.bits, coarse)
        )

    @classmethod
    def from_index(
        cls,
        index_dir: str | os.PathLike | Sequence[str | os.PathLike],
        ckpt: str | os.PathLike,
        device: str = "cpu",
        coarse: str = "flat",
    ) -> Searcher:
        """An index directory (or the shards of one: a list of directories, or a ``shards.json``) and the
        checkpoint it was built with (checked by its sha256)."""
        module = load_hash_module(ckpt, map_location=device)
        store = load_shards(
            index_dir,
            expect_bits=module.bits,
            expect_feature_dim=module.feature_dim,
            expect_checkpoint_sha256=sha256_file(ckpt),
        )
        return cls(module, store, device, coarse)

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        ckpt: str | os.PathLike | None = None,
        device: str = "cpu",
        coarse: str = "flat",
    ) -> Searcher:
        """A training run's database index (``<run>/index``) with the checkpoint it was built with."""
        index_dir = Path(run_dir) / "index"
        if not index_dir.is_dir():
            raise ConfigError(
                f"{run_dir} has no index/ (a run trained with evaluate=true has one; or build it with "
                f"deephash-index build ckpt_path=<run>/checkpoints/last.ckpt)"
            )
        return cls.from_index(index_dir, ckpt or index_checkpoint(index_dir), device, coarse)

    @property
    def labelled(self) -> bool:
        return is_labelled(self.store)

    def encode(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 64) -> Encoded:
        """Packed codes and F7 features of ``images`` (files, PIL images or preprocessed tensors)."""
        check_int(batch_size, "batch_size", 1)
        tensors = [self._tensor(image) for image in _as_list(images)]
        codes, f7 = [], []
        with torch.inference_mode():
            for start in range(0, len(tensors), batch_size):
                batch = torch.stack(tensors[start : start + batch_size]).to(self.device)
                c, f = self.module.net.encode(batch)
                codes.append(pack_codes(c.cpu().numpy()))
                f7.append(f.float().cpu().numpy())
        if not codes:
            return Encoded(np.zeros((0, (self.store.bits + 7) // 8), np.uint8), np.zeros((0, 0), np.float32))
        return Encoded(np.concatenate(codes), np.concatenate(f7))

    def search(
        self,
        images: ImageLike | Sequence[ImageLike],
        k: int = 10,
        mode: str = "hierarchical",
        pool: PoolRule | None = None,
    ) -> list[SearchResult]:
        """The ``k`` nearest database items of each image under ``mode`` (one of :data:`MODES`).

        ``pool``: the hierarchical pool rule (and ``hamming_radius``'s radius); default ``PoolRule()``."""
        check_int(k, "k", 1)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        pool = pool or PoolRule()
        images = _as_list(images)
        if not images:  # no queries, no results, in every mode
            return []
        encoded = self.encode(images)
        rows = self._rows(encoded, k, mode, pool)
        return [
            self._result(_name(image, i), mode, encoded.codes[i], encoded.f7[i], row)
            for i, (image, row) in enumerate(zip(images, rows))
        ]

    def _tensor(self, image: ImageLike) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            if tuple(image.shape) != self.input_shape or not image.is_floating_point():
                shape = "x".join(map(str, self.input_shape))
                raise ConfigError(
                    f"a query tensor must be a preprocessed float image of shape {shape} (or a batch "
                    f"n x {shape}), got {image.dtype} {'x'.join(map(str, image.shape))}; pass image files or "
                    "PIL images to have them preprocessed"
                )
            return image
        if isinstance(image, Image.Image):
            return self.transform(image)
        return self.transform(load_query_image(image))

    def _rows(self, encoded: Encoded, k: int, mode: str, pool: PoolRule) -> list[np.ndarray]:
        """Database rows of each query's results, best first."""
        store, k_all = self.store, min(k, self.store.count)
        query_f7 = store.query_features(encoded.f7)
        found = SEARCHES[mode](ModeQuery(self._index, store.f7, encoded.codes, query_f7, k_all, pool))
        return [row[row >= 0] for row in found]

    def _result(
        self, query: str, mode: str, code: np.ndarray, f7: np.ndarray, idx: np.ndarray
    ) -> SearchResult:
        store = self.store
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size:
            hamming = hamming_distance_matrix(code[None], store.codes[idx])[0]
            # the distance the search ranks by: exact L2, or the codec's (PCA space, PQ's ADC)
            row = np.asarray(store.query_features(f7[None]), np.float32)
            exact = getattr(store.f7, "exact", None)  # a PQ index that re-ranks its results: exact L2
            rows = store.f7 if exact is None else exact
            l2 = np.sqrt(score_pairs(rows, row, np.zeros(len(idx), np.int64), idx, len(idx)))
        else:
            hamming, l2 = np.zeros(0, np.int64), np.zeros(0, np.float32)
        names = store.manifest.get("meta", {}).get("class_names")
        labels = store.labels[idx] if self.labelled else None
        return SearchResult(
            query=query,
            mode=mode,
            index=idx,
            ids=[store.ids[i] for i in idx],
            labels=labels,
            class_names=[names[int(c)] for c in labels] if names and labels is not None else None,
            hamming=hamming,
            l2=l2,
        )


def is_labelled(store: IndexStore) -> bool:
    """False for an index of a plain image folder (:func:`index_images`), whose items have no class."""
    return bool(store.manifest.get("meta", {}).get("labelled", True))


def refuse_unlabelled(index: IndexStore | str | os.PathLike) -> None:
    """One line, before any work, when an evaluation is handed an unlabelled index (or would overwrite one):
    its metrics need labels. A directory without an index passes."""
    if not isinstance(index, IndexStore):
        if not (Path(index) / MANIFEST).is_file():
            return
        index = load_index(index, verify=False)
    if not is_labelled(index):
        raise ConfigError(
            f"index {index.path} is unlabelled (built from a plain image folder): retrieval metrics need "
            f"labels; search it with deephash-search or deephash.Searcher instead"
        )


def index_checkpoint(index_dir: str | os.PathLike) -> Path:
    """The checkpoint an index records it was built with; one line if that file is gone."""
    manifest = Path(index_dir) / MANIFEST
    try:
        recorded = json.loads(manifest.read_text()).get("meta", {}).get("checkpoint")
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"cannot read {manifest}: {err}") from None
    if not recorded or not Path(recorded).is_file():
        raise ConfigError(
            f"index {index_dir} was built with checkpoint {recorded}, which is not there any more; "
            f"pass the checkpoint explicitly (ckpt=...)"
        )
    return Path(recorded)


def image_files(root: str | os.PathLike) -> list[str]:
    """Every image file under ``root`` (recursively, by extension), as sorted paths relative to it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    found = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )
    if not found:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {root}")
    check_utf8_names(root, found, "file names")
    return found


def index_images(
    ckpt: str | os.PathLike,
    image_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    preprocess: dict[str, Any],
    *,
    batch_size: int = 64,
    device: str = "cpu",
) -> IndexStore:
    """Encode every image under ``image_dir`` with ``ckpt`` and save an unlabelled index at ``index_dir``.

    ``preprocess``: the query preprocessing of the checkpoint's training data (an index manifest's
    ``meta.preprocess``). Ids are the paths relative to ``image_dir``; labels are :data:`UNLABELLED`.
    Unreadable files are left out, logged and listed in the manifest. Codes and features are held in memory
    until saved (a photo collection, not a million-image dataset: use a folder datamodule for those).
    """
    check_int(batch_size, "batch_size", 1)
    module = load_hash_module(ckpt, map_location=device)
    if preprocess["channels"] != module.in_channels:
        raise ConfigError(
            f"the model expects {module.in_channels}-channel input, the preprocessing gives "
            f"{preprocess['channels']}"
        )
    module.eval().to(device)
    transform = query_transform(preprocess)
    root = Path(image_dir).expanduser()
    ids, codes, f7, bad = [], [], [], []
    paths = image_files(root)
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch, names = [], []
            for rel in paths[start : start + batch_size]:
                try:
                    batch.append(transform(load_query_image(root / rel)))
                    names.append(rel)
                except DataError as err:
                    log.warning("left out of the index: %s", err)
                    bad.append(rel)
            if batch:
                c, f = module.net.encode(torch.stack(batch).to(device))
                codes.append(pack_codes(c.cpu().numpy()))
                f7.append(f.float().cpu().numpy())
                ids.extend(names)
    if not ids:
        raise DataError(f"none of the {len(paths)} images under {root} could be read")
    save_index(
        index_dir,
        codes_packed=np.concatenate(codes),
        f7=np.concatenate(f7),
        labels=np.full(len(ids), UNLABELLED, np.int64),
        ids=ids,
        bits=module.bits,
        meta={
            "dataset": "images",
            "split": "database",
            "labelled": False,
            "root": str(root.resolve()),
            "method": module.method,
            "features": module.net.features,  # the re-rank layer
            "backbone": module.backbone,
            "checkpoint": str(Path(ckpt).resolve()),
            "checkpoint_sha256": sha256_file(ckpt),
            "class_names": None,
            "preprocess": dict(preprocess),
            "bad_images": bad,
        },
    )
    log.info("indexed %d images of %s into %s (%d unreadable left out)", len(ids), root, index_dir, len(bad))
    return load_index(index_dir, expect_bits=module.bits)


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.dim() == 4 else [images]
    return list(images)


def _name(image: ImageLike, i: int) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"<image {i}>"
