"""CNNH and CNNH+: stage 1 (the target codes) never raises its objective and matches the dense formula; the loss
keeps its targets in buffers that checkpoints carry; both methods train through deephash-train on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deephash.methods.cnnh import CNNHLoss, CNNHPlusHead, _coordinate_step, approximate_codes
from deephash.methods.deep import HashOutput
from deephash.models.checkpoint import load_hash_module, read_checkpoint
from tests.conftest import compose_config


def dense_objective(H: np.ndarray, labels: np.ndarray) -> float:
    """``||S - H H^T / q||_F^2 / n^2`` with ``S`` +-1 by label, computed on the full matrices."""
    S = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    return float(((S - H @ H.T / H.shape[1]) ** 2).sum() / len(labels) ** 2)


def test_stage_one_never_raises_its_objective_at_any_step():
    """Every coordinate step lowers the objective (or leaves the entry alone), and the tracked objective is the
    dense one."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    n, q = len(labels), 8
    H = rng.uniform(-1, 1, (n, q))
    G, T, norms = H.T @ H, H.sum(axis=0), (H**2).sum(axis=1)
    C = np.zeros((4, q))
    np.add.at(C, labels, H)
    f = dense_objective(H, labels) * q * q * n * n
    for _ in range(3):
        for i in rng.permutation(n):
            for j in range(q):
                change = _coordinate_step(H[i], C[labels[i]], G, T, norms, i, j, q)
                assert change <= 0
                f += change
                assert np.abs(H).max() <= 1 + 1e-12
    assert f / (q * q * n * n) == pytest.approx(dense_objective(H, labels), rel=1e-9)
    np.testing.assert_allclose(G, H.T @ H, atol=1e-9)


def test_stage_one_history_and_targets():
    labels = np.repeat(np.arange(5), 30)
    H, history = approximate_codes(labels, 16, sweeps=15, tol=0.0, seed=1)
    assert np.all(np.diff(history) <= 1e-12) and history[-1] < 0.6 * history[0]
    assert history[-1] == pytest.approx(dense_objective(H, labels), rel=1e-9)
    codes = H >= 0
    dist = (codes[:, None, :] != codes[None, :, :]).sum(axis=2)
    same = labels[:, None] == labels[None, :]
    assert dist[same].mean() < 1 and dist[~same].mean() > 6  # one code per class, classes far apart
    H2, _ = approximate_codes(labels, 16, sweeps=15, tol=0.0, seed=1)
    np.testing.assert_array_equal(H, H2)


def test_the_loss_keeps_its_targets_and_scores_unknown_samples_by_class():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    index = torch.tensor([40, 3, 17, 5, 22, 9, 31, 8, 12, 1])  # pool indices, in no order
    loss = CNNHLoss(bits=12, num_classes=3, sweeps=10)
    loss.setup(labels, index)
    assert loss.targets.shape == (10, 12) and torch.equal(loss.pool_index, index.sort().values)
    assert len(loss.objective) >= 2
    known = loss.lookup(torch.tensor([5, 40]), torch.tensor([0, 0]))
    np.testing.assert_array_equal(known[0], loss.targets[loss.pool_index.tolist().index(5)])
    unknown = loss.lookup(torch.tensor([1000, 2]), torch.tensor([2, 1]))
    assert torch.equal(unknown, loss.class_targets[[2, 1]])
    # a perfect output scores (almost) zero, the opposite output a large loss
    target = loss.lookup(index, labels)
    perfect = HashOutput(None, target.clamp(0.001, 0.999), torch.zeros(10, 4))
    wrong = HashOutput(None, (1 - target).clamp(0.001, 0.999), torch.zeros(10, 4))
    assert loss(perfect, labels, index) < 0.01 < 5 < loss(wrong, labels, index)
    # a fresh loss takes the buffers, whatever their size, from a state dict; setup then has nothing to redo
    fresh = CNNHLoss(bits=12, num_classes=3, sweeps=10)
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.targets, loss.targets)
    fresh.setup(labels.flip(0), index.flip(0))
    assert torch.equal(fresh.targets, loss.targets)


def test_cnnh_plus_classifies_from_f7_beside_the_hash_outputs():
    head = CNNHPlusHead(32, 12, 10)
    assert head.classifier.in_features == 32 and head.latent.out_features == 12
    out = head(torch.randn(4, 32))
    assert out.latent.shape == (4, 12) and out.logits.shape == (4, 10)
    assert ((out.latent > 0) & (out.latent < 1)).all()


@pytest.mark.parametrize("method", ["cnnh", pytest.param("cnnh_plus", marks=pytest.mark.slow)])
def test_each_trains_through_deephash_train_under_the_cnnh_protocol(method: str, tmp_path: Path) -> None:
    from deephash.train import train

    overrides = [
        "data=digits",
        "trainer=cpu",
        "logger=none",
        f"method={method}",
        "data.protocol=cnnh",
        "data.n_queries=100",
        "data.train_per_class=60",
        "data.val_size=50",
        "model.net.bits=16",
        "trainer.max_epochs=6",
        "trainer.enable_model_summary=false",
        "retrieval.modes=[hamming]",
        "retrieval.grid_queries=0",
    ]
    metrics = train(compose_config("train", overrides, tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["method"] == method and saved["protocol"] == "cnnh"
    assert metrics["modes"]["hamming"]["mAP"] > 0.6  # chance is about 0.1
    assert (saved["val_acc"] is None) == (method == "cnnh")
    # the checkpoint holds stage 1's targets for the 550 training images (600 labelled less 50 for val)
    ckpt = read_checkpoint(Path(saved["evaluated_checkpoint"]))
    assert ckpt["state_dict"]["loss.targets"].shape == (550, 16)
    assert ckpt["state_dict"]["loss.pool_index"].shape == (550,)
    assert load_hash_module(saved["evaluated_checkpoint"]).method == method
