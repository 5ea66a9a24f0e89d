"""The deep hashing methods dpsh, hashnet, dsh, greedyhash and csq: each loss learns a separable toy problem and
its codes then retrieve perfectly; each loss's value on a tiny example worked by hand; HashNet's continuation,
GreedyHash's straight-through gradient, CSQ's centres; checkpoints that reload with identical codes; their
YAMLs (checkpoint monitor, re-rank layer) and one real run each through the Hydra config; the method sweep; the
published figures in experiments/paper_results.yaml."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from deephash.evaluation.hamming_metrics import hamming_retrieval_metrics
from deephash.methods.csq import CSQLoss, hadamard, hash_centres
from deephash.methods.deep import HashHead, HashLoss, HashOutput
from deephash.methods.dpsh import DPSHLoss
from deephash.methods.dsh import DSHLoss
from deephash.methods.greedyhash import GreedyHashLoss, StraightThroughSign
from deephash.methods.hashnet import HashNetHead, HashNetLoss, continuation_scale
from deephash.methods.registry import DEEP
from deephash.models.checkpoint import load_hash_module
from deephash.retrieval.codes import pack_codes
from tests.conftest import CONF_DIR, compose_config
from tests.test_methods import _save

REPO = Path(__file__).resolve().parents[1]
METHODS = ("dpsh", "hashnet", "dsh", "greedyhash", "csq")
WITH_CLASSIFIER = {"greedyhash"}


def _parts(method: str, bits: int, num_classes: int, train_size: int = 64) -> tuple[HashHead, HashLoss]:
    """The method's head on 32-d features and its loss, built from its YAML as Hydra builds them."""
    cfg = compose_config("train", [f"method={method}", "seed=0"], Path("unused"))
    head = hydra.utils.instantiate(cfg.model.net.head)(32, bits, num_classes)
    loss = hydra.utils.instantiate(cfg.model.loss)(bits=bits, num_classes=num_classes)
    loss.setup(torch.zeros(train_size, dtype=torch.long), torch.arange(train_size))
    return head, loss


def _clusters(n_per_class: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """F7-like features: non-negative Gaussian clusters in 32-d, one per class, far apart."""
    gen = torch.Generator().manual_seed(0)  # the same class means for every split
    means = 2 * torch.randn(num_classes, 32, generator=gen)
    gen.manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return torch.relu(means[labels] + 0.3 * torch.randn(len(labels), 32, generator=gen)), labels


def _brute_force_map(
    query: np.ndarray, database: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray
) -> float:
    """mAP of bool codes ranked by (Hamming distance, index), every relevant item counted."""
    aps = []
    for code, label in zip(query, q_labels):
        distance = (database != code).sum(axis=1)
        order = np.lexsort((np.arange(len(database)), distance))
        relevant = db_labels[order] == label
        hits = np.cumsum(relevant)
        aps.append((hits[relevant] / (np.flatnonzero(relevant) + 1)).mean())
    return float(np.mean(aps))


# ------------------------------------------------------------------------------- learning a toy problem


@pytest.mark.parametrize("method", METHODS)
def test_each_loss_falls_on_separable_clusters_and_its_codes_retrieve_perfectly(method: str) -> None:
    torch.manual_seed(0)
    bits, num_classes = 16, 4
    head, loss = _parts(method, bits, num_classes, train_size=128)
    x, y = _clusters(32, num_classes, seed=1)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    losses = []
    for step in range(300):
        head.update(step)
        out = head(x)
        value = loss(HashOutput(out.logits, out.latent, x), y, torch.arange(len(y)))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), (losses[:3], losses[-3:])

    head.eval()
    queries, q_labels = _clusters(8, num_classes, seed=2)
    with torch.no_grad():
        db_codes, q_codes = head.codes(head(x).latent).numpy(), head.codes(head(queries).latent).numpy()
    assert _brute_force_map(q_codes, db_codes, q_labels.numpy(), y.numpy()) == 1.0
    found = hamming_retrieval_metrics(
        pack_codes(q_codes), pack_codes(db_codes), q_labels.numpy(), y.numpy(), bits, ks=(1,), map_at=10
    )
    assert found.metrics["mAP"] == 1.0


# ----------------------------------------------------------------------------- each loss worked by hand


def _softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def _sign(x: float) -> float:
    return 1.0 if x >= 0 else -1.0


def _out(latent: list[list[float]], logits: list[list[float]] | None = None) -> HashOutput:
    latent_t = torch.tensor(latent, dtype=torch.float64)
    logits_t = None if logits is None else torch.tensor(logits, dtype=torch.float64)
    return HashOutput(logits_t, latent_t, latent_t)


LABELS = [0, 0, 1]
U = [[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]]


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def test_dpsh_loss_by_hand() -> None:
    """Theta = u_i.u_j / 2 over the 6 ordered pairs of 3 samples; quantization eta / n x mean ||u - sign u||^2."""
    nll = []
    for i, j in _pairs(3):
        theta = (U[i][0] * U[j][0] + U[i][1] * U[j][1]) / 2
        nll.append(_softplus(theta) - (LABELS[i] == LABELS[j]) * theta)
    quantization = sum((v - _sign(v)) ** 2 for row in U for v in row) / 3
    expected = sum(nll) / 6 + 10.0 / 50 * quantization
    loss = DPSHLoss(2, 2, eta=10.0, train_size=50)
    assert loss(_out(U), torch.tensor(LABELS), torch.arange(3)).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(RuntimeError, match="dpsh needs the training set's size"):
        DPSHLoss(2, 2)(_out(U), torch.tensor(LABELS), torch.arange(3))


def test_hashnet_loss_by_hand() -> None:
    """Weighted: the mean over the similar pairs plus the mean over the dissimilar ones; alpha 10/bits by default."""
    h = [[0.9, -0.8], [0.7, 0.6], [-0.5, 0.4]]
    for alpha, built in ((0.5, HashNetLoss(2, 2, alpha=0.5)), (5.0, HashNetLoss(2, 2))):
        similar, dissimilar = [], []
        for i, j in _pairs(3):
            product = alpha * (h[i][0] * h[j][0] + h[i][1] * h[j][1])
            s = LABELS[i] == LABELS[j]
            (similar if s else dissimilar).append(_softplus(product) - s * product)
        expected = sum(similar) / len(similar) + sum(dissimilar) / len(dissimilar)
        value = built(_out(h), torch.tensor(LABELS), torch.arange(3)).item()
        assert value == pytest.approx(expected, rel=1e-12)
    # a batch of one class has no dissimilar pair: that term is 0, not NaN
    one_class = HashNetLoss(2, 2)(_out(h), torch.tensor([1, 1, 1]), torch.arange(3))
    assert torch.isfinite(one_class)


def test_dsh_loss_by_hand() -> None:
    """m = 2 x bits = 4: the dissimilar pairs (0, 2) at D = 9.0625 (beyond m) and (1, 2) at D = 3.8125 (inside)."""
    similar, dissimilar = [], []
    for i, j in _pairs(3):
        d = (U[i][0] - U[j][0]) ** 2 + (U[i][1] - U[j][1]) ** 2
        if LABELS[i] == LABELS[j]:
            similar.append(d / 2)
        else:
            dissimilar.append(max(4 - d, 0) / 2)
    regulariser = sum(abs(abs(v) - 1) for row in U for v in row) / 3
    expected = (sum(similar) + sum(dissimilar)) / 6 + 0.01 * regulariser
    assert DSHLoss(2, 2).margin == 4
    value = DSHLoss(2, 2)(_out(U), torch.tensor(LABELS), torch.arange(3)).item()
    assert value == pytest.approx(expected, rel=1e-12)


def test_greedyhash_loss_by_hand() -> None:
    h = [[0.5, -1.5, 2.0], [-0.25, 0.75, 1.0]]
    logits = [[2.0, 0.5], [0.1, -0.3]]
    labels = [1, 0]
    ce = 0.0
    for row, label in zip(logits, labels):
        ce += -(row[label] - math.log(sum(math.exp(v) for v in row)))
    penalty = sum(abs(v - _sign(v)) ** 3 for row in h for v in row) / 6
    expected = ce / 2 + 0.1 * penalty
    value = GreedyHashLoss(3, 2)(_out(h, logits), torch.tensor(labels), torch.arange(2)).item()
    assert value == pytest.approx(expected, rel=1e-12)


def test_csq_loss_by_hand() -> None:
    """2 classes at 4 bits: the first two rows of H_4 as centres, BCE of (h + 1)/2 against their bits."""
    centres = [[1, 1, 1, 1], [1, -1, 1, -1]]
    h = [[0.5, 0.8, -0.2, 0.9], [0.3, -0.6, 0.1, -0.95]]
    labels = [0, 1]
    bce, quantization = 0.0, 0.0
    for row, label in zip(h, labels):
        for v, c in zip(row, centres[label]):
            p, t = (v + 1) / 2, (c + 1) / 2
            bce -= t * math.log(p) + (1 - t) * math.log(1 - p)
            quantization += (abs(v) - 1) ** 2
    expected = bce / 8 + 0.05 * quantization / 8
    loss = CSQLoss(4, 2)
    assert loss.centres.tolist() == centres
    value = loss(_out(h), torch.tensor(labels), torch.arange(2)).item()
    assert value == pytest.approx(expected, rel=1e-6)  # the BCE runs in float32


# ----------------------------------------------------------------- HashNet, GreedyHash and CSQ's own parts


def test_hashnet_scale_follows_the_authors_continuation() -> None:
    """beta = (1 + 0.005 t)^0.5 with t the last multiple of 200 iterations, counted from 1 (global step 0)."""
    head = HashNetHead(32, 8, 3)
    expected = {
        0: 1.0,
        198: 1.0,
        199: math.sqrt(2),
        398: math.sqrt(2),
        399: math.sqrt(3),
        9999: math.sqrt(51),
    }
    for step, beta in expected.items():
        head.update(step)
        assert head.scale.item() == pytest.approx(beta, rel=1e-6)
        assert continuation_scale(step, 200, 0.005, 0.5, 1.0) == pytest.approx(beta, rel=1e-12)
    f7 = torch.randn(4, 32)
    assert torch.allclose(head(f7).latent, torch.tanh(math.sqrt(51) * head.latent(f7)))
    assert continuation_scale(0, 1, 0.5, 1.0, 2.0) == pytest.approx(3.0)  # init_scale (1 + 0.5 x 1)^1


def test_greedyhash_backward_is_the_straight_through_gradient() -> None:
    h = torch.tensor([[0.3, -2.0, 0.0, 1e-4]], requires_grad=True)
    codes = StraightThroughSign.apply(h)
    assert codes.tolist() == [[1.0, -1.0, 1.0, 1.0]]  # 0 is +1, as the stored bit
    incoming = torch.tensor([[0.5, -1.5, 2.0, 7.0]])
    (grad,) = torch.autograd.grad(codes, h, grad_outputs=incoming)
    assert torch.equal(grad, incoming)


def _min_distance(centres: torch.Tensor) -> int:
    c = centres.numpy()
    distance = (c[:, None, :] != c[None, :, :]).sum(axis=2)
    return int(distance[~np.eye(len(c), dtype=bool)].min())


@pytest.mark.parametrize("bits", [12, 32, 48])
def test_csq_centres_are_half_the_bits_apart_and_fixed_by_the_seed(bits: int) -> None:
    centres = hash_centres(10, bits, seed=3)
    assert centres.shape == (10, bits) and set(centres.unique().tolist()) == {-1.0, 1.0}
    assert _min_distance(centres) >= bits / 2
    assert torch.equal(centres, hash_centres(10, bits, seed=3))
    if bits == 32:  # 2 x 10 <= 32, a power of 2: rows of H_32 and -H_32
        h = torch.from_numpy(hadamard(32)).float()
        assert torch.equal(centres, torch.cat([h, -h])[:10])
        assert torch.equal(h @ h.T, 32 * torch.eye(32))
    else:
        assert not torch.equal(centres, hash_centres(10, bits, seed=4))


def test_csq_centres_with_too_few_bits_settle_for_less_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    centres = hash_centres(40, 8, seed=0)  # at most 16 codes of 8 bits are 4 apart
    assert len(centres.unique(dim=0)) == 40
    assert "csq: no 40 random centres of 8 bits pairwise 4 bits apart" in caplog.text


def test_csq_centres_are_a_buffer_saved_with_the_module() -> None:
    cfg = compose_config("train", ["method=csq", "model=smallcnn", "seed=5"], Path("unused"))
    module = hydra.utils.instantiate(cfg.model, net={"num_classes": 10, "in_channels": 1})
    assert torch.equal(module.state_dict()["loss.centres"], hash_centres(10, 48, seed=5))
    assert module.hparams["loss"]["seed"] == 5


# ------------------------------------------------------------------------------ checkpoints and configs


@pytest.mark.parametrize("method", METHODS)
def test_a_checkpoint_of_each_method_reloads_with_identical_codes(method: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = compose_config("train", [f"method={method}", "model=smallcnn", "model.net.bits=12"], tmp_path)
    module = hydra.utils.instantiate(cfg.model, net={"num_classes": 4, "in_channels": 1, "f7_dim": 32})
    module.net.head.update(4321)  # HashNet's scale: a buffer the checkpoint keeps
    path = _save(module, tmp_path / "m.ckpt")
    loaded = load_hash_module(path)
    assert loaded.method == method and loaded.net.spec == module.net.spec
    x = torch.randn(6, 1, 8, 8)
    module.eval()
    assert all(torch.equal(a, b) for a, b in zip(module.net.encode(x), loaded.net.encode(x)))
    assert torch.equal(module.net(x).latent, loaded.net(x).latent)


@pytest.mark.parametrize("method", METHODS)
def test_each_yaml_names_its_method_monitor_and_rerank_layer(method: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"method={method}", "callbacks=none"], tmp_path)
    assert cfg.model.method == method and cfg.model.net.features == "f7"
    head = hydra.utils.get_class(cfg.model.net.head._target_)
    assert DEEP[method] is head and head.has_classifier == (method in WITH_CLASSIFIER)
    monitor = cfg.callbacks.model_checkpoint
    if head.has_classifier:
        assert (monitor.monitor, monitor.mode) == ("val/acc", "max")
    else:  # no val/acc to select on
        assert (monitor.monitor, monitor.mode) == ("val/loss", "min") and "val/acc" not in monitor.filename
    first = (REPO / "conf" / "method" / f"{method}.yaml").read_text().splitlines()[0]
    assert first == "# @package _global_"


def test_the_methods_sweep_spans_every_deep_method_at_the_paper_s_code_lengths() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=methods"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert str(cfg.hydra.mode).endswith("MULTIRUN")
    assert params.method.split(",") == ["latent", *METHODS] and set(METHODS) <= set(DEEP)
    assert params["model.net.bits"] == "12,24,32,48" and len(params.seed.split(",")) == 3


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_is_evaluated_through_the_real_config(method: str, tmp_path: Path) -> None:
    from deephash.train import train

    overrides = [
        "data=digits",
        "trainer=cpu",
        "logger=none",
        "callbacks=none",
        f"method={method}",
        "model.net.bits=16",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "test=false",
        "retrieval.modes=[hamming,hierarchical]",
        "retrieval.grid_queries=2",
    ]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["method"] == metrics["method"] == method and saved["bits"] == 16
    for mode in ("hamming", "hierarchical"):
        assert 0 < saved["modes"][mode]["mAP"] <= 1 and 0 <= saved["modes"][mode]["precision@k"]["10"] <= 1
    # best_val evaluates the checkpoint its monitor kept, not last.ckpt
    assert saved["selection"] == "best_val" and Path(saved["evaluated_checkpoint"]).is_file()
    assert Path(saved["evaluated_checkpoint"]).name != "last.ckpt"
    if method in WITH_CLASSIFIER:
        assert 0 <= saved["val_acc"] <= 1
    else:  # the val loss picked the checkpoint, and is not reported as an accuracy
        assert saved["val_acc"] is None and "-loss" in Path(saved["evaluated_checkpoint"]).name


# ------------------------------------------------------------------------------------ published figures


def test_published_figures_of_the_deep_methods_name_their_source_and_protocol() -> None:
    section = yaml.safe_load((REPO / "experiments" / "paper_results.yaml").read_text())["deep_methods"]
    assert {entry["method"] for entry in section} == set(METHODS)
    for entry in section:
        assert entry["method"] in DEEP and 0 < entry["value"] <= 100 and entry["unit"] == "percent"
        assert (
            entry["metric"].startswith("mAP")
            and entry["source"]
            and entry["bits"] in (12, 16, 24, 32, 48, 64)
        )
        assert {"queries", "database", "train", "backbone"} <= set(entry["protocol"])
