"""The method contract: the worked example of docs/ARCHITECTURE.md trained, indexed and searched; checkpoints
that record their method (and the old ones that did not); shallow methods that need labels; and each command
refusing the other kind of method in one line."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

from deephash.config import rewrite_moved_keys, validate_train_config
from deephash.methods.deep import DEEP_METHODS, HashHead, HeadOutput
from deephash.methods.latent import LatentHead, LatentLoss
from deephash.methods.registry import DEEP, SHALLOW, build_method
from deephash.methods.shallow import SHALLOW_METHODS, BaseHash
from deephash.models.checkpoint import load_hash_module
from deephash.models.module import HashModule
from deephash.models.net import HashNetwork
from deephash.utils.errors import ConfigError
from tests.conftest import compose_config
from tests.fixtures_models import latent_module

REPO = Path(__file__).resolve().parents[1]
FAST = ["data=digits", "trainer=cpu", "logger=none", "test=false", "trainer.limit_val_batches=2"]


def _example(root: Path) -> Path:
    """Write the worked example's files (each code block after a line naming its path) under ``root``."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Adding a method", 1)[1]
    written = 0
    for path, body in re.findall(r"`([\w/]+\.(?:py|yaml))`[^\n]*:\n\n```\w+\n(.*?)```", section, re.S):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
        written += 1
    assert written == 2, "the section shows the method's module and its YAML"
    return root


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The worked example trained on digits: a run directory with its checkpoint, index and queries."""
    from deephash.train import train

    root = _example(tmp_path_factory.mktemp("example"))
    sys.path.insert(0, str(root))
    try:
        run = root / "run"
        cfg = compose_config(
            "train",
            [
                *FAST,
                "method=tanhsign",
                f"hydra.searchpath=[file://{root / 'my_conf'}]",
                "model.net.bits=16",
                "trainer.max_epochs=4",
                "retrieval.modes=[hamming,hierarchical]",
            ],
            run,
        )
        metrics = train(cfg)
    finally:
        sys.path.remove(str(root))
    assert metrics["method"] == "tanhsign"
    return run


@pytest.mark.slow
def test_worked_example_trains_indexes_and_retrieves(example: Path) -> None:
    import json

    metrics = json.loads((example / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["method"] == "tanhsign" and metrics["bits"] == 16
    # 4 epochs on digits: far above chance (0.1), so the loss trained the codes
    assert metrics["modes"]["hamming"]["mAP"] > 0.6
    assert metrics["modes"]["hierarchical"]["precision@k"]["10"] > 0.8
    manifest = json.loads((example / "index" / "manifest.json").read_text())
    assert manifest["meta"]["method"] == "tanhsign" and manifest["meta"]["features"] == "f7"


def test_worked_example_codes_follow_its_sign_rule(example: Path) -> None:
    """The index holds sign(tanh(.)) bits, not a 0.5 threshold (which would set every bit of a tanh code)."""
    from deephash.retrieval import load_index

    sys.path.insert(0, str(example.parent))
    try:
        module = load_hash_module(example / "checkpoints" / "last.ckpt")
    finally:
        sys.path.remove(str(example.parent))
    assert module.method == "tanhsign" and module.net.head.code_rule == "sign"
    x = torch.from_numpy(load_digits().images[:64] / 16).float()[:, None]
    latent = module.net(x).latent
    codes, _ = module.net.encode(x)
    assert torch.equal(codes, latent >= 0)
    assert not torch.equal(codes, latent >= 0.5)
    ones = np.unpackbits(load_index(example / "queries").codes, axis=1)[:, :16].mean()
    assert 0.2 < ones < 0.8


@pytest.mark.slow
def test_worked_example_searches_in_a_fresh_process(example: Path, tmp_path: Path) -> None:
    """deephash-search loads the method's checkpoint by importing the head's module the checkpoint records;
    without that module importable it refuses the checkpoint in one line."""
    from PIL import Image

    image = tmp_path / "digit.png"
    Image.fromarray((load_digits().images[5] * 16).clip(0, 255).astype(np.uint8)).save(image)
    argv = [
        sys.executable,
        "-m",
        "deephash.search",
        str(image),
        "--index",
        str(example / "index"),
        "--ckpt",
        str(example / "checkpoints" / "last.ckpt"),
        "--k",
        "5",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example.parent), str(REPO)])}
    found = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert found.returncode == 0, found.stderr
    assert str(image) in found.stdout
    env["PYTHONPATH"] = str(REPO)
    refused = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "trained with hashing method 'tanhsign'" in line
    assert "latent" in line  # names the methods this installation has


# ------------------------------------------------------------------------------- checkpoints and methods


def test_a_checkpoint_records_its_method_and_reloads_with_identical_codes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = latent_module(bits=12, num_classes=4, init="caffe", f7_dim=32)
    path = _save(module, tmp_path / "m.ckpt")
    loaded = load_hash_module(path)
    assert loaded.method == "latent" and loaded.net.spec == module.net.spec
    assert loaded.net.spec["head"] == {"init": "caffe"}
    x = torch.randn(5, 1, 8, 8)
    module.eval()
    assert all(torch.equal(a, b) for a, b in zip(module.net.encode(x), loaded.net.encode(x)))


def test_a_checkpoint_of_the_releases_before_methods_loads_as_latent(tmp_path: Path) -> None:
    """Old checkpoints kept the network's settings flat and named H and F8 ``net.latent``/``net.classifier``."""
    torch.manual_seed(1)
    module = latent_module(bits=8, num_classes=3, f7_dim=32).eval()
    state = {
        k.replace("net.head.latent.", "net.latent.").replace("net.head.classifier.", "net.classifier."): v
        for k, v in module.state_dict().items()
    }
    assert any(k.startswith("net.latent.") for k in state)
    hparams = {
        "backbone": "smallcnn",
        "bits": 8,
        "num_classes": 3,
        "weights": None,
        "in_channels": 1,
        "f7_dim": 32,
        "dropout": 0.5,
        "init": "torch",
        "backbone_dropout": "torchvision",
        "scheduler_interval": "step",
        "lr_mult": {},
        "forcing_binary_weight": 0.0,
        "balance_weight": 0.0,
        "channels_last": False,
        "compile": False,
    }
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams, "pytorch-lightning_version": "2.4"}, path)
    loaded = load_hash_module(path)
    x = torch.randn(4, 1, 8, 8)
    assert loaded.method == "latent"
    assert all(torch.equal(a, b) for a, b in zip(module.net.encode(x), loaded.net.encode(x)))


def test_foreign_and_unknown_method_checkpoints_are_refused_in_one_line(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1, "hidden": 64}}, foreign)
    with pytest.raises(ConfigError, match=r"is not a deephash checkpoint \(no hashing method"):
        load_hash_module(foreign)
    module = latent_module()
    path = _save(module, tmp_path / "unknown.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["net"] = {**ckpt["hyper_parameters"]["net"], "method": "nosuch"}
    ckpt["hyper_parameters"]["net"]["head_class"] = "no_such_package.NoHead"
    torch.save(ckpt, path)
    with pytest.raises(ConfigError) as err:
        load_hash_module(path)
    message = str(err.value)
    assert "\n" not in message and "trained with hashing method 'nosuch'" in message
    assert all(name in message for name in DEEP)


def test_the_module_refuses_a_yaml_that_names_one_method_and_builds_another() -> None:
    net = HashNetwork("smallcnn", 8, 3, "latent", in_channels=1)
    with pytest.raises(ConfigError, match="model.method is 'dpsh' but model.net.head builds method 'latent'"):
        HashModule(net, LatentLoss, method="dpsh")


def test_a_head_without_a_valid_code_rule_cannot_register() -> None:
    with pytest.raises(TypeError, match="code_rule must be one of"):

        class Rounded(HashHead):  # noqa: F841 - defining it is the test
            name = "rounded"
            code_rule = "round"

    assert "rounded" not in DEEP_METHODS


def test_each_head_builds_the_same_hash_layer_from_a_seed() -> None:
    """The method changes the head's function, not how its layers are drawn: same seed, same weights."""

    class Plain(HashHead):
        name = "plain-test"
        has_classifier = True

        def forward(self, f7: torch.Tensor) -> HeadOutput:
            return HeadOutput(self.latent(f7), self.classifier(self.latent(f7)))

    try:
        torch.manual_seed(3)
        a = HashNetwork("smallcnn", 8, 3, LatentHead, in_channels=1)
        torch.manual_seed(3)
        b = HashNetwork("smallcnn", 8, 3, Plain, in_channels=1)
        assert torch.equal(a.head.latent.weight, b.head.latent.weight)
        x = torch.randn(2, 1, 8, 8)
        a.eval(), b.eval()
        # the same pre-activations; latent thresholds their sigmoid at 0.5, Plain their sign at 0
        assert torch.equal(a.encode(x)[0], b.encode(x)[0])
    finally:
        DEEP_METHODS.pop("plain-test")


def test_the_latent_layer_reranks_on_latent_when_the_yaml_says_so() -> None:
    torch.manual_seed(0)
    net = HashNetwork("smallcnn", 8, 3, "latent", in_channels=1, features="latent").eval()
    x = torch.randn(3, 1, 8, 8)
    codes, features = net.encode(x)
    assert net.feature_dim == 8 and features.shape == (3, 8)
    assert torch.equal(features, net(x).latent)
    with pytest.raises(ConfigError, match="model.net.features must be one of f7, latent, got 'f8'"):
        HashNetwork("smallcnn", 8, 3, "latent", in_channels=1, features="f8")


def _save(module: HashModule, path: Path) -> Path:
    """A checkpoint as Lightning writes it (state_dict and hyper_parameters)."""
    import pytorch_lightning as pl

    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


# ---------------------------------------------------------------------------------------- shallow methods


@pytest.fixture
def class_means() -> Iterator[type[BaseHash]]:
    """A supervised test method, registered as ``classmeans-test`` for the test only: codes are the signs of
    projections on random mixes of the class means."""

    class ClassMeans(BaseHash):
        name = "classmeans-test"
        supervised = True
        state_keys = ("mean", "projection")

        def _fit(self, X: np.ndarray, y: np.ndarray | None) -> BaseHash:
            mean = X.mean(axis=0)
            means = np.stack([X[y == c].mean(axis=0) - mean for c in np.unique(y)])
            mix = np.random.default_rng(self.seed).standard_normal((len(means), self.bits))
            self._set_state(X.shape[1], {"mean": mean, "projection": means.T @ mix})
            return self

        def encode(self, X: np.ndarray) -> np.ndarray:
            X = self._query_features(X)
            return (X - self.mean) @ self.projection >= 0

    yield ClassMeans
    SHALLOW_METHODS.pop(ClassMeans.name)


def test_a_supervised_shallow_method_refuses_to_fit_without_labels(class_means: type[BaseHash]) -> None:
    X, y = load_digits(return_X_y=True)
    method = build_method("classmeans-test", 16)
    with pytest.raises(ConfigError, match=r"^classmeans-test is a supervised method and needs the training"):
        method.fit(X)
    with pytest.raises(Exception, match=r"labels must have shape \(1797,\)"):
        method.fit(X, y[:10])
    codes = method.fit(X, y).encode(X)
    assert codes.shape == (1797, 16) and 0.2 < codes.mean() < 0.8
    # unsupervised methods take labels and ignore them
    lsh = build_method("lsh", 16, seed=1)
    assert np.array_equal(lsh.fit(X, y).encode(X), build_method("lsh", 16, seed=1).fit(X).encode(X))


def test_the_baseline_runner_gives_a_supervised_method_the_training_labels(
    class_means: type[BaseHash], tmp_path: Path
) -> None:
    """deephash-baseline fits a supervised method with the labels of its training rows: a method built from
    class means retrieves digits far better than chance."""
    from deephash.baselines.run import run_baseline

    conf = tmp_path / "conf" / "method"
    conf.mkdir(parents=True)
    (conf / "classmeans-test.yaml").write_text(
        "_target_: deephash.methods.registry.build_method\n_partial_: true\nname: classmeans-test\n"
    )
    cfg = compose_config(
        "baseline",
        [
            "method=classmeans-test",
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            "data=digits",
            "logger=none",
            "bits=16",
            "retrieval.modes=[hamming]",
        ],
        tmp_path / "run",
    )
    metrics = run_baseline(cfg)
    assert metrics["method"] == "classmeans-test" and metrics["fit_samples"] > 1000
    assert metrics["modes"]["hamming"]["mAP"] > 0.5


def test_each_command_refuses_the_other_kind_of_method(tmp_path: Path) -> None:
    from deephash.baselines.run import validate_baseline_config

    cfg = compose_config("train", ["method=itq"], tmp_path / "a")
    with pytest.raises(ConfigError, match=r"method=itq is a shallow method; run it with deephash-baseline"):
        validate_train_config(cfg)
    cfg = compose_config("baseline", ["method=latent"], tmp_path / "b")
    with pytest.raises(ConfigError, match=r"method=latent is a deep method; train it with deephash-train"):
        validate_baseline_config(cfg)


def test_registries_hold_every_method_once(class_means: type[BaseHash]) -> None:
    assert "latent" in DEEP and {"lsh", "pcah", "itq", "sh"} <= set(SHALLOW)
    assert not set(DEEP) & set(SHALLOW)
    assert SHALLOW["classmeans-test"] is class_means  # a method defined anywhere registers itself
    with pytest.raises(TypeError):
        SHALLOW["other"] = class_means  # a read-only view: methods register by subclassing


# ------------------------------------------------------------------------------------------ moved keys


def test_keys_of_the_releases_before_methods_are_moved_to_their_place() -> None:
    assert rewrite_moved_keys(["model.bits=16,32", "~model.init", "+model.dropout=0.1", "seed=1"]) == [
        "model.net.bits=16,32",
        "~model.net.head.init",
        "+model.net.dropout=0.1",
        "seed=1",
    ]
    assert rewrite_moved_keys(["model.forcing_binary_weight=0.1", "model.net.bits=8", "data=mnist"]) == [
        "model.loss.forcing_binary_weight=0.1",
        "model.net.bits=8",
        "data=mnist",
    ]


def test_the_old_keys_still_configure_the_run_from_the_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deephash.train", "model.bits=16", "model.init=caffe", "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.model.net.bits == 16 and cfg.model.net.head.init == "caffe" and "bits" not in cfg.model


def test_a_composed_latent_run_builds_the_paper_network(tmp_path: Path) -> None:
    """conf/model + conf/method/latent: H is a 48-unit sigmoid layer feeding F8, trained with the latent loss."""
    import hydra

    cfg = compose_config("train", [], tmp_path)
    module = hydra.utils.instantiate(cfg.model, net={"num_classes": 10, "in_channels": 1})
    assert isinstance(module.net.head, LatentHead) and module.bits == 48 and module.method == "latent"
    assert isinstance(module.loss, LatentLoss) and module.loss.bits == 48 and module.loss.num_classes == 10
    assert module.hparams["method"] == "latent" and module.hparams["net"]["bits"] == 48


class _RecordingLoss(LatentLoss):
    """The latent loss, remembering what ``setup`` and each batch hand it."""

    def setup(self, labels: torch.Tensor, index: torch.Tensor) -> None:
        self.setup_args = (labels.clone(), index.clone())

    def forward(self, out, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self.batch_index = index
        return super().forward(out, labels, index)


def test_a_loss_gets_the_training_split_before_training_and_each_batch_s_pool_indices() -> None:
    """What CNNH's stage 1 needs: every training sample's label and pool index, then per-sample lookups."""
    import pytorch_lightning as pl

    from deephash.data.digits import DigitsDataModule

    datamodule = DigitsDataModule(batch_size=32, n_queries=50, val_size=0.1, seed=0, transform="native")
    datamodule.setup("fit")
    net = HashNetwork("smallcnn", 8, 10, "latent", in_channels=1)
    module = HashModule(net, _RecordingLoss, optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    labels, index = module.loss.setup_args
    assert torch.equal(index, torch.from_numpy(datamodule.splits["train"]))
    assert torch.equal(labels, torch.from_numpy(datamodule.labels("train")))
    assert set(module.loss.batch_index.tolist()) <= set(datamodule.splits["train"].tolist())
