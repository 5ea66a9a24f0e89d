"""Evaluate a classical hashing baseline exactly like the deep model: fit, encode, index, evaluate, report.

The method is fitted on the protocol's fit set (:func:`deephash.data.protocols.fit_splits`: the *training*
split, except under ``cnnh``, where a supervised method learns from the labelled subset and an unsupervised one
from the database), a seeded subsample of at most ``fit_samples`` rows, then encodes the query and database
splits. Both are saved as indexes (``<run>/index``, ``<run>/queries``),
evaluated with :func:`deephash.evaluation.pipeline.evaluate_retrieval` on what was saved, and reported with
the same files and ``metrics.json`` layout as a training run. Input representations (``features.name``):

* ``pixels``: every image as stored (gray or RGB, ``uint8``), resized to ``features.size`` and flattened to
  [0, 1] by :func:`deephash.baselines.flatten_images`. The indexes' ``f7.npy`` then holds these pixel
  vectors (float16), so the hierarchical and euclidean modes re-rank on raw pixels.
* ``f7``: the F7 features of a trained checkpoint (``ckpt_path``), from :func:`encode_split`; the
  baseline replaces the model's own codes.
* ``pretrained_f7``: the F7 of a pretrained backbone without fine-tuning (``features.backbone``,
  ``features.weights``), encoded the same way. Exhaustive L2 on it (``retrieval.modes=[euclidean]``) is the
  "AlexNet" curve of the paper's figure 8; the method's codes only serve the Hamming modes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from deephash.baselines.features import flatten_images, pretrained_f7_module
from deephash.data.protocols import fit_splits
from deephash.data.transforms import to_mode
from deephash.evaluation.run import evaluate_indexes
from deephash.methods.registry import DEEP, SHALLOW
from deephash.methods.shallow import HashMethod, validate_bits
from deephash.models.backbones import BACKBONES, NATIVE_BACKBONES
from deephash.retrieval import EncodedItems, IndexStore, load_index, save_index
from deephash.retrieval.codes import pack_codes
from deephash.retrieval.encode import encode_split
from deephash.runs import build_predict_trainer, claim_run_dir, finish_loggers, instantiate_loggers
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError
from deephash.utils.io import atomic_write_json
from deephash.utils.logging import get_logger

log = get_logger(__name__)
FEATURES = ("pixels", "f7", "pretrained_f7")
FOLDER_PIXELS = 32  # side of the pixel features of datasets without a native size (image folders)
_BLOCK = 16384  # rows converted to float and encoded at a time


def validate_baseline_config(cfg: DictConfig) -> None:
    """One-line ConfigError for a bad method, bits, features, fit_samples or checkpoint, before any work."""
    if "data" not in cfg or cfg.data is None or "_target_" not in cfg.data:
        raise ConfigError("no dataset selected; pass data=<digits|mnist|cifar10|folder>")
    method = cfg.get("method")
    if not method or "name" not in method:
        deep = OmegaConf.select(cfg, "model.method", default=None)
        if deep in DEEP:
            raise ConfigError(f"method={deep} is a deep method; train it with deephash-train method={deep}")
        raise ConfigError(f"no hashing method selected; pass method=<{'|'.join(SHALLOW)}>")
    validate_bits(cfg.get("bits"))
    features = cfg.get("features")
    name = features.get("name") if features else None
    if name not in FEATURES:
        raise ConfigError(
            f"features must be one of {', '.join(FEATURES)}, got {name!r}; pass features=<{'|'.join(FEATURES)}>"
        )
    size = features.get("size")
    if name == "pixels" and size is not None:
        check_int(size, "features.size (pixels per side, or null)")
    fit_samples = cfg.get("fit_samples")
    if fit_samples is not None:
        check_int(fit_samples, "fit_samples (or null: the whole train split)", 2)
    ckpt = cfg.get("ckpt_path")
    if name == "f7" and ckpt is None:
        raise ConfigError(
            "features=f7 needs ckpt_path=<run>/checkpoints/last.ckpt (the model whose F7 is hashed)"
        )
    if name != "f7" and ckpt is not None:
        raise ConfigError("ckpt_path is only used with features=f7; pass features=f7 or drop ckpt_path")
    if ckpt is not None and not Path(str(ckpt)).expanduser().is_file():
        raise ConfigError(f"ckpt_path not found: {ckpt} (expected a .ckpt written by deephash-train)")
    if name == "pretrained_f7":
        _check_pretrained_f7(features, cfg.data.get("transform"))


def _check_pretrained_f7(features: DictConfig, transform: str | None) -> None:
    backbone = features.get("backbone")
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown features.backbone {backbone!r}; expected one of: {', '.join(BACKBONES)}")
    if features.get("weights") is None:
        raise ConfigError(
            "features=pretrained_f7 needs features.weights: a torchvision weight name such as IMAGENET1K_V1, "
            "or the path of a saved state dict"
        )
    if backbone not in NATIVE_BACKBONES and transform == "native":
        raise ConfigError(
            f"features.backbone={backbone} needs 3-channel ImageNet-style input; pass data.transform=imagenet"
        )


def build_baseline(cfg: DictConfig) -> HashMethod:
    """The unfitted method of ``cfg.method`` (a ``_partial_`` of ``build_method``) for ``cfg.bits``/``cfg.seed``."""
    factory = hydra.utils.instantiate(cfg.method)
    return factory(bits=cfg.bits, seed=cfg.seed)


def fit_rows(n: int, fit_samples: int | None, seed: int) -> np.ndarray:
    """Sorted rows ``(m,)`` of a seeded subsample of ``min(n, fit_samples)`` of ``n`` training rows."""
    if fit_samples is None or fit_samples >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=fit_samples, replace=False)).astype(np.int64)


def pixel_size(datamodule: Any, size: int | None) -> tuple[int, int]:
    """``(H, W)`` of the pixel features: ``size`` x ``size``, else the dataset's native size (32 x 32 without one)."""
    if size is not None:
        return (int(size), int(size))
    return (
        tuple(datamodule.native_size)
        if datamodule.native_size is not None
        else (FOLDER_PIXELS, FOLDER_PIXELS)
    )


def pixel_features(datamodule: Any, pool_index: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw pixels ``uint8 (n, H * W * C)`` of pool items: gray for 1-channel datasets, else RGB, resized
    (bilinear, antialiased) to ``size = (H, W)`` where they differ."""
    mode, channels = ("L", 1) if datamodule.native_channels == 1 else ("RGB", 3)
    h, w = size
    out = np.empty((len(pool_index), h * w * channels), np.uint8)
    for row, p in enumerate(pool_index):
        image = datamodule.pool.image(int(p))
        image = to_mode(image, mode)
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR)
        out[row] = np.asarray(image, dtype=np.uint8).reshape(-1)
    return out


def as_float(X: np.ndarray) -> np.ndarray:
    """Features ``(n, d)`` as float32: pixels scaled to [0, 1], F7 as is."""
    return flatten_images(X) if X.dtype == np.uint8 else np.asarray(X, dtype=np.float32)


def float_blocks(X: np.ndarray, block: int = _BLOCK) -> Iterator[np.ndarray]:
    """``as_float`` of ``X`` in row blocks, so a large (or memory-mapped) split is never copied whole."""
    for start in range(0, len(X), block):
        yield as_float(X[start : start + block])


def encode_packed(method: HashMethod, X: np.ndarray) -> np.ndarray:
    """Packed codes ``uint8 (n, ceil(bits / 8))`` of features ``X: (n, d)``, encoded block by block."""
    return np.concatenate([pack_codes(method.encode(block)) for block in float_blocks(X)])


def wandb_defaults(cfg: DictConfig, dataset: str) -> None:
    """Fill what the W&B logger leaves unset for a baseline: group ``<dataset>-baselines`` (a sweep's jobs keep
    the sweep's group), name ``<method>-bits<k>-seed<s>``, bits, and the method and features as tags. Explicit
    values are kept."""
    from deephash.tracking.wandb import hydra_job

    wandb_cfg = OmegaConf.select(cfg, "logger.wandb", default=None)
    if not wandb_cfg:
        return
    with open_dict(wandb_cfg):
        if wandb_cfg.get("group") is None and hydra_job()[0] is None:
            wandb_cfg.group = f"{dataset}-baselines"
        if wandb_cfg.get("name") is None:
            wandb_cfg.name = f"{cfg.method.name}-bits{cfg.bits}-seed{cfg.seed}"
        if wandb_cfg.get("bits") is None:
            wandb_cfg.bits = int(cfg.bits)
        wandb_cfg.tags = [*(wandb_cfg.get("tags") or []), str(cfg.method.name), str(cfg.features.name)]


def run_baseline(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.method`` on the training split, then index, evaluate and report; returns metrics.json."""
    validate_baseline_config(cfg)
    method = build_baseline(cfg)
    run_dir = claim_run_dir(cfg, resumes=False)  # ckpt_path is the F7 model here, never a resume
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    module = _feature_module(cfg, datamodule)
    datamodule.save_splits(run_dir)
    info: dict[str, Any] = {
        "method": method.name,
        "features": str(cfg.features.name),
        "dataset": datamodule.name,
        "bits": int(method.bits),
        "seed": int(cfg.seed),
        "protocol": datamodule.protocol,
        "data": datamodule.describe(),
    }
    if cfg.features.name == "f7":
        info["checkpoint"] = str(Path(str(cfg.ckpt_path)).expanduser().resolve())
    if cfg.features.name == "pretrained_f7":
        info["features_backbone"] = str(cfg.features.backbone)
        info["features_weights"] = str(cfg.features.weights)
    if cfg.features.name == "pixels":  # the data line above names the network's input, which pixels skip
        h, w = pixel_size(datamodule, cfg.features.get("size"))
        channels = 1 if datamodule.native_channels == 1 else 3
        info["features_input"] = [channels, h, w]
        log.info(
            "features: pixels as stored, %dx%dx%d = %d-d (not the %s transform's %s)",
            channels, h, w, channels * h * w, datamodule.transform,
            "x".join(str(n) for n in info["data"]["input"]),
        )  # fmt: skip
    atomic_write_json(run_dir / "metrics.json", {"status": "running", **info})  # a crash turns it "failed"
    wandb_defaults(cfg, datamodule.name)
    loggers = instantiate_loggers(cfg.get("logger"), cfg)

    work = run_dir / ".encode"
    fit_from = fit_splits(datamodule.protocol, bool(method.supervised))
    train, queries, database = _split_features(cfg, datamodule, module, work, fit_from)
    log.info(
        "fitting %s (%d bits) on %d x %d %s features",
        method.name,
        method.bits,
        *train.f7.shape,
        info["features"],
    )
    start = time.perf_counter()
    method.fit(as_float(train.f7), train.labels)  # unsupervised methods ignore the labels
    fit_seconds = time.perf_counter() - start
    method.save(run_dir / "method.npz")

    index_dir = Path(cfg.retrieval.index_dir) if cfg.retrieval.get("index_dir") else run_dir / "index"
    meta = {k: v for k, v in info.items() if k not in ("data", "checkpoint")}
    # not "checkpoint": the manifest would then claim the model's own codes, which a search checks for
    meta.update(
        features_checkpoint=info.get("checkpoint"),
        preprocess=_preprocess(cfg, datamodule),
        class_names=datamodule.class_names,
    )
    store = _save_split(index_dir, method, database, {**meta, "split": "database"})
    query_store = _save_split(run_dir / "queries", method, queries, {**meta, "split": "query"})
    shutil.rmtree(work, ignore_errors=True)  # the indexes hold the features now

    metrics: dict[str, Any] = {
        "status": "completed",
        **info,
        "method_params": method.params(),
        "feature_dim": int(train.f7.shape[1]),
        "fit_splits": list(fit_from),
        "fit_samples": int(train.count),
        "fit_seconds": round(fit_seconds, 3),
        "method_file": str(run_dir / "method.npz"),
        # the same evaluation as a trained model's, coarse stage (retrieval.coarse) included
        **evaluate_indexes(cfg.retrieval, store, query_store, datamodule, run_dir),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    log.info("retrieval metrics written to %s", run_dir / "metrics.json")
    finish_loggers(loggers, metrics, run_dir)
    return metrics


def _feature_module(cfg: DictConfig, datamodule: Any) -> Any:
    """The network whose F7 is hashed: a trained checkpoint's (``f7``), a pretrained backbone's
    (``pretrained_f7``), or None for pixels."""
    if cfg.features.name == "pretrained_f7":
        return pretrained_f7_module(
            cfg.features,
            num_classes=datamodule.num_classes,
            in_channels=datamodule.in_channels,
            bits=int(cfg.bits),
        )
    return _load_module(cfg, datamodule) if cfg.features.name == "f7" else None


def _load_module(cfg: DictConfig, datamodule: Any) -> Any:
    """The checkpoint's HashModule, checked against the data it was trained on (or, for checkpoints that do not
    record it, the datamodule's input channels)."""
    from deephash.models.checkpoint import check_trained_on, load_hash_module

    check_trained_on(
        cfg.ckpt_path,
        datamodule.identity(),
        "features=f7 hashes the F7 of a model trained on this data: train one (deephash-train finetune=true "
        f"ckpt_path={cfg.ckpt_path} fine-tunes this one), or use features=pretrained_f7",
    )
    module = load_hash_module(Path(str(cfg.ckpt_path)).expanduser())
    want = module.in_channels
    if want != datamodule.in_channels:
        raise ConfigError(
            f"checkpoint {cfg.ckpt_path} takes {want}-channel input but data gives {datamodule.in_channels}-channel "
            f"images; pass the data options it was trained with (e.g. data.transform=native or imagenet)"
        )
    return module


def _split_features(
    cfg: DictConfig, datamodule: Any, module: Any, work: Path, fit_from: tuple[str, ...] = ("train",)
) -> tuple[EncodedItems, EncodedItems, EncodedItems]:
    """Fit subsample (of the union of the splits ``fit_from``), queries and database before hashing: their
    ``f7`` holds the input features, pixels (uint8) or a network's F7 (float16)."""
    splits = datamodule.splits
    fit_pool = np.unique(np.concatenate([splits[name] for name in fit_from]))
    train_index = fit_pool[fit_rows(len(fit_pool), cfg.get("fit_samples"), int(cfg.seed))]
    if module is None:
        size = pixel_size(datamodule, cfg.features.get("size"))

        def pixels(split: str, pool_index: np.ndarray) -> EncodedItems:
            ids = [datamodule.pool.sample_id(int(p)) for p in pool_index] if split != "train" else []
            return EncodedItems(
                codes=None,
                f7=pixel_features(datamodule, pool_index, size),
                labels=datamodule.pool.labels[pool_index],
                ids=ids,
                pool_index=pool_index,
            )

        return (
            pixels("train", train_index),
            pixels("query", splits["query"]),
            pixels("database", splits["database"]),
        )

    trainer = build_predict_trainer(cfg, None)
    queries = encode_split(module, datamodule, "query", work / "query", trainer)
    database = encode_split(module, datamodule, "database", work / "database", trainer)
    # every protocol's database holds the fit set: take its rows instead of encoding it again
    if np.isin(train_index, database.pool_index).all():
        source = database
    else:
        source = encode_split(module, datamodule, "train", work / "train", trainer)
    train = source.take(np.searchsorted(source.pool_index, train_index))
    train.ids = []
    return train, queries, database


def _save_split(path: Path, method: HashMethod, split: EncodedItems, meta: dict[str, Any]) -> IndexStore:
    """Encode ``split`` with ``method`` and save codes, features (float16), labels and ids as an index."""
    save_index(
        path,
        codes_packed=encode_packed(method, split.f7),
        f7=float_blocks(split.f7),
        labels=split.labels,
        ids=split.ids,
        bits=method.bits,
        meta=meta,
    )
    return load_index(path, expect_bits=method.bits, pool_index=split.pool_index)


def _preprocess(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """How an image becomes this index's features, so a new image can be encoded the same way."""
    if cfg.features.name in ("f7", "pretrained_f7"):
        from deephash.data.query import preprocess_spec

        return {"features": str(cfg.features.name), **preprocess_spec(datamodule)}
    h, w = pixel_size(datamodule, cfg.features.get("size"))
    channels = 1 if datamodule.native_channels == 1 else 3
    return {
        "features": "pixels",
        "channels": channels,
        "size": [h, w],
        "resample": "bilinear",
        "scale": 1 / 255,
    }
