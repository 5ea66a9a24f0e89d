"""The runs of a plan as Hydra override lists: training, hashing baselines, the Yahoo-style folder run."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from experiments.plan import (
    BASELINE_BITS,
    CNNH_DEEP,
    CNNH_EXPERIMENTS,
    CNNH_SHALLOW,
    METHOD_EXPERIMENTS,
    METHOD_MODES,
    PAPER_BITS,
    SMALL_CNN_EXPERIMENTS,
    YAHOO_BITS,
    Job,
    Plan,
    is_complete,
    read_metrics,
)

log = logging.getLogger(__name__)
README_10K50K_BITS = (12, 32, 48)
# the CNNH table's runs: every mode but the Hamming ranking is left out, and mAP@5000 is added (the cut-off that
# Lu et al.'s reprint of the table names)
CNNH_RETRIEVAL = ["retrieval.modes=[hamming]", "retrieval.map_at=5000"]
# the table's LSH: sign random projections of the raw features (deephash.methods.lsh)
CNNH_OPTIONS = {"lsh": ["method.centre=false"]}
# smoke: digits has about 180 images per class (10 queries and 50 labelled ones each), and small settings
SMOKE_CNNH_DATA = ["data.n_queries=100", "data.train_per_class=50"]
SMOKE_CNNH_OPTIONS = {
    "ksh": ["method.n_anchors=100", "method.n_iter=50"],
    "bre": ["method.n_iter=2"],
    "mlh": ["method.n_iter=3", "method.pairs_per_iter=5000"],
    "sdh": ["method.n_anchors=200"],
}


def hydra_value(value: Any) -> str:
    """A value as a Hydra override accepts it: quoted unless it is a plain word or path."""
    text = str(value)
    if re.fullmatch(r"[\w./+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def common_overrides(plan: Plan) -> list[str]:
    """Overrides of every training run: logger, data folder, weights, device."""
    out = [f"logger={plan.logger}", f"paths.data_dir={hydra_value(plan.data_dir)}", "task_name=reproduce"]
    if not plan.smoke:
        if plan.weights is not None:
            out.append(f"model.net.weights={hydra_value(plan.weights)}")
        if plan.download:
            out.append("data.download=true")
        if not _cuda():
            out.append("trainer=cpu")
    return out


def seeded(plan: Plan, name: str, entry: str, overrides: list[str]) -> list[Job]:
    """The job ``name`` once, or once per seed of ``--seeds`` (``<name>/seed<s>`` with ``seed=<s>``)."""
    if plan.seeds is None:
        return [Job(name, entry, overrides)]
    return [Job(f"{name}/seed{seed}", entry, [*overrides, f"seed={seed}"]) for seed in plan.seeds]


def training_jobs(plan: Plan) -> list[Job]:
    """The paper's 48/128-bit runs first, then the rest of the code-length sweep, for every dataset.

    Every code length runs ``experiment=paper_<dataset>_48`` with ``model.net.bits=<k>``: paper_<dataset>_128
    is the same configuration at 128 bits, and one experiment for the sweep keeps its runs one setting in
    the comparison (which averages only runs whose overrides differ in the seed and code length). A dataset
    of ``plan.small_cnn`` (no AlexNet weights) runs its small CNN recipe the same way.
    """
    order = [b for b in PAPER_BITS if b in plan.bits] + [b for b in plan.bits if b not in PAPER_BITS]
    jobs = []
    for dataset in plan.trained:
        for bits in order:
            if plan.smoke:
                experiment = ["experiment=demo", f"trainer.max_epochs={plan.epochs}"]
            elif dataset in plan.small_cnn:
                experiment = [f"experiment={SMALL_CNN_EXPERIMENTS[dataset]}"]
            else:
                experiment = [f"experiment=paper_{dataset}_{BASELINE_BITS}"]
            overrides = [*experiment, f"model.net.bits={bits}", *common_overrides(plan), *plan.overrides]
            jobs += seeded(plan, f"{dataset}/bits{bits}", "train", overrides)
    if not plan.smoke and "cifar10" in plan.trained:
        # the authors' README table: mAP@1000, the 10,000 test images against the 50,000 training images
        for bits in README_10K50K_BITS:
            overrides = [f"experiment=paper_cifar10_10k50k_{bits}", *common_overrides(plan), *plan.overrides]
            jobs += seeded(plan, f"cifar10_10k50k/bits{bits}", "train", overrides)
    return jobs


def baseline_jobs(plan: Plan) -> list[Job]:
    """LSH/PCAH/ITQ/SH at 48 bits on pixels, and on F7 where the 48-bit model completed.

    With ``--seeds`` each seed's baselines take the F7 of that seed's model (``.../seed<s>``).
    """
    jobs = []
    for dataset, suffix in ((ds, s) for ds in plan.trained for s in _seed_suffixes(plan)):
        model_run = plan.runs / dataset / f"bits{BASELINE_BITS}{suffix}"
        metrics = read_metrics(model_run)
        # the checkpoint the model's own numbers came from (runs before that key: best, else last)
        checkpoint = (
            metrics.get("evaluated_checkpoint")
            or metrics.get("best_checkpoint")
            or metrics.get("last_checkpoint")
        )
        for features in plan.features:
            extra = [f"features={features}"]
            if features == "f7":
                if not (is_complete(metrics) and checkpoint and Path(checkpoint).is_file()):
                    log.warning(
                        "%s%s: no completed %d-bit model, F7 baselines left out",
                        dataset,
                        suffix,
                        BASELINE_BITS,
                    )
                    continue
                extra += [f"ckpt_path={hydra_value(checkpoint)}", *_data_options(model_run)]
                if not plan.smoke and _cuda():
                    extra.append("trainer=gpu")
            for method in plan.methods:
                overrides = [
                    f"method={method}",
                    f"data={dataset}",
                    f"bits={BASELINE_BITS}",
                    f"logger={plan.logger}",
                    f"paths.data_dir={hydra_value(plan.data_dir)}",
                    *extra,
                ]
                if plan.download and not plan.smoke:
                    overrides.append("data.download=true")
                if suffix:
                    overrides.append(f"seed={suffix.removeprefix('/seed')}")
                jobs.append(Job(f"{dataset}/baselines/{method}-{features}{suffix}", "baseline", overrides))
    return jobs


def cnnh_jobs(plan: Plan) -> list[Job]:
    """The compared methods of figures 4 and 6 under Xia et al.'s protocol (``data.protocol=cnnh``), on raw pixels:
    each shallow method of ``--cnnh-methods`` at the table's code lengths (unsupervised ones fitted on the whole
    database, ``fit_samples=null``), and CNNH / CNNH+ at 48 bits with the dataset's CPU recipe (smoke: the demo
    network on digits)."""
    jobs = []
    for dataset in plan.trained:
        data = [f"data={dataset}", "data.protocol=cnnh", *(SMOKE_CNNH_DATA if plan.smoke else [])]
        if plan.download and not plan.smoke:
            data.append("data.download=true")
        for method in (m for m in CNNH_SHALLOW if m in plan.cnnh_methods):
            options = [
                *CNNH_OPTIONS.get(method, []),
                *(SMOKE_CNNH_OPTIONS.get(method, []) if plan.smoke else []),
            ]
            for bits in plan.cnnh_bits:
                overrides = [
                    f"method={method}",
                    *data,
                    f"bits={bits}",
                    "fit_samples=null",
                    f"logger={plan.logger}",
                    f"paths.data_dir={hydra_value(plan.data_dir)}",
                    *CNNH_RETRIEVAL,
                    *options,
                ]
                jobs += seeded(plan, f"{dataset}/cnnh/{method}/bits{bits}", "baseline", overrides)
        if BASELINE_BITS not in plan.cnnh_bits or not (plan.smoke or dataset in CNNH_EXPERIMENTS):
            continue
        if plan.smoke:
            recipe = ["experiment=demo", *data[1:], f"trainer.max_epochs={plan.epochs}"]
        else:
            recipe = [f"experiment={CNNH_EXPERIMENTS[dataset]}", *data[2:]]
        for method in (m for m in CNNH_DEEP if m in plan.cnnh_methods):
            overrides = [
                *recipe,
                f"method={method}",
                f"model.net.bits={BASELINE_BITS}",
                *common_overrides(plan),
                *CNNH_RETRIEVAL,
                *plan.overrides,
            ]
            jobs += seeded(plan, f"{dataset}/cnnh/{method}/bits{BASELINE_BITS}", "train", overrides)
    return jobs


def method_run(dataset: str, method: str, bits: int, seed: int) -> str:
    """The run name of a deep method in the methods' comparison: ``mnist/methods/dpsh/bits48/seed1``."""
    return f"{dataset}/methods/{method}/bits{bits}/seed{seed}"


def methods_jobs(plan: Plan) -> list[Job]:
    """The deep methods of ``--deep-methods`` under one protocol, the paper's (smoke: digits' demo network).

    Every method's 48-bit run with the first seed comes first, then the other seeds, then the other code lengths
    (first seed), so a comparison cut short still has each method at 48 bits. A dataset without a CPU recipe
    (:data:`METHOD_EXPERIMENTS`) is left out.
    """
    seeds = plan.method_seeds
    order = [(BASELINE_BITS, seed) for seed in seeds if BASELINE_BITS in plan.method_bits]
    order += [(bits, seeds[0]) for bits in plan.method_bits if bits != BASELINE_BITS]
    jobs = []
    for dataset in plan.trained:
        if plan.smoke:
            recipe = ["experiment=demo", f"trainer.max_epochs={plan.epochs}"]
        elif dataset in METHOD_EXPERIMENTS:
            recipe = [f"experiment={METHOD_EXPERIMENTS[dataset]}"]
        else:
            continue
        modes = f"retrieval.modes=[{','.join(METHOD_MODES)}]"
        for bits, seed in order:
            for method in plan.deep_methods:
                overrides = [
                    *recipe,
                    f"method={method}",
                    f"model.net.bits={bits}",
                    f"seed={seed}",
                    modes,
                    *common_overrides(plan),
                    *plan.overrides,
                ]
                jobs.append(Job(method_run(dataset, method, bits, seed), "train", overrides))
    return jobs


def _seed_suffixes(plan: Plan) -> list[str]:
    """``[""]``, or ``["/seed0", "/seed1", ...]`` with ``--seeds``."""
    return [""] if plan.seeds is None else [f"/seed{seed}" for seed in plan.seeds]


def yahoo_jobs(plan: Plan) -> list[Job]:
    """``experiment=paper_yahoo`` on ``--yahoo-root`` (none without); in smoke the small CNN for a few
    epochs on CPU."""
    if plan.yahoo_root is None:
        return []
    overrides = [
        "experiment=paper_yahoo",
        f"data.root={hydra_value(plan.yahoo_root)}",
        *common_overrides(plan),
    ]
    if plan.smoke:
        overrides += [
            "model=smallcnn",
            "trainer=cpu",
            "data.transform=native",
            "data.image_size=32",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "trainer.max_steps=-1",
            f"trainer.max_epochs={plan.epochs}",
            "trainer.val_check_interval=null",
            "trainer.check_val_every_n_epoch=1",
        ]
    return seeded(plan, f"yahoo/bits{YAHOO_BITS}", "train", [*overrides, *plan.yahoo_overrides])


def _data_options(model_run: Path) -> list[str]:
    """The data options a model was trained with that change its input (so its F7 is computed alike)."""
    path = model_run / "config.yaml"
    if not path.is_file():
        return []
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    keys = ("transform", "image_size", "resize", "protocol", "n_queries", "val_size")
    return [f"data.{k}={hydra_value(data[k])}" for k in keys if data.get(k) is not None]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
