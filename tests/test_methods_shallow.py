"""The supervised shallow methods (KSH, CCA-ITQ, BRE, MLH, SDH) and LSH's centring option: what each learns from
labels, that their optimisers lower their losses, their fast formulas against brute force, determinism, errors,
and a run of each through deephash-baseline on digits under the cnnh protocol."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from deephash.baselines.run import run_baseline
from deephash.methods.bre import best_weight, objective
from deephash.methods.kernels import LowRankSimilarity, one_hot
from deephash.methods.ksh import frobenius2, optimise_projection
from deephash.methods.mlh import bound_gradient, loss_tables
from deephash.methods.registry import SHALLOW, build_method, load_method
from deephash.utils.errors import ConfigError
from tests.conftest import compose_config

SUPERVISED = ["ksh", "cca_itq", "bre", "mlh", "sdh"]
# small settings: each fit well under a second on the toy data below
FAST = {
    "ksh": {"n_anchors": 60, "n_iter": 30},
    "cca_itq": {},
    "bre": {"n_points": 10, "n_iter": 3},
    "mlh": {"pairs_per_iter": 3000, "n_iter": 10},
    "sdh": {"n_anchors": 60},
}


def hamming_map(query_codes, db_codes, query_labels, db_labels) -> float:
    """Mean average precision of the Hamming ranking over the whole database, ties to the lower index."""
    dist = (query_codes[:, None, :] != db_codes[None, :, :]).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")
    relevant = db_labels[order] == np.asarray(query_labels)[:, None]
    precision = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    return float(((precision * relevant).sum(axis=1) / relevant.sum(axis=1)).mean())


def hidden_classes(n: int = 500, classes: int = 4, seed: int = 0):
    """Classes told apart by 3 dimensions, buried under 20 dimensions of noise as wide: the geometry alone hardly
    finds them (mAP little above chance without labels), the labels do."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, 3)) * 2.0
    X = np.concatenate(
        [centres[y] + 0.3 * rng.standard_normal((n, 3)), 2.5 * rng.standard_normal((n, 20))], 1
    )
    return X, y


@pytest.fixture(scope="module")
def toy():
    X, y = hidden_classes()
    return X[100:], y[100:], X[:100], y[:100]


def _map(method, toy) -> float:
    X, y, Xq, yq = toy
    return hamming_map(method.encode(Xq), method.encode(X), yq, y)


@pytest.mark.parametrize("name", SUPERVISED)
def test_labels_are_what_they_learn_from(name, toy):
    """With the true labels the hidden classes are found; with the labels permuted, retrieval falls to chance."""
    X, y, Xq, yq = toy
    chance = float(np.mean([np.mean(y == label) for label in yq]))
    unsupervised = _map(build_method("itq", 12, seed=0).fit(X), toy)
    learnt = _map(build_method(name, 12, seed=0, **FAST[name]).fit(X, y), toy)
    permuted = _map(
        build_method(name, 12, seed=0, **FAST[name]).fit(X, np.random.default_rng(1).permutation(y)), toy
    )
    assert unsupervised < chance + 0.1, (unsupervised, chance)
    assert permuted < chance + 0.1, (permuted, chance)
    assert learnt > permuted + 0.2, (learnt, permuted)


def test_ksh_reaches_map_one_on_separable_data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    X = rng.standard_normal((3, 5))[y] * 4 + 0.2 * rng.standard_normal((180, 5))
    ksh = build_method("ksh", 8, seed=0, n_anchors=40).fit(X[::2], y[::2])
    assert hamming_map(ksh.encode(X[1::2]), ksh.encode(X[::2]), y[1::2], y[::2]) == pytest.approx(1.0)


def test_cca_itq_differs_from_itq_and_beats_it_on_labelled_clusters():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 600)
    # the clusters are far apart in few directions, yet most of the variance is in others
    X = np.concatenate([rng.standard_normal((5, 4))[y] * 2, 2.5 * rng.standard_normal((600, 16))], axis=1)
    itq = build_method("itq", 8, seed=0).fit(X[100:])
    cca = build_method("cca_itq", 8, seed=0).fit(X[100:], y[100:])
    assert not np.array_equal(itq.encode(X), cca.encode(X))
    split = X[100:], y[100:], X[:100], y[:100]
    assert _map(cca, split) > _map(itq, split) + 0.2


def test_cca_itq_directions_are_canonical_correlations(toy):
    """The first direction's projection correlates with the labels as much as any linear projection can."""
    from deephash.methods.cca_itq import cca_directions

    X, y, _, _ = toy
    W = cca_directions(X, y, 3, 1e-8)
    _, Y = one_hot(y)
    proj = (X - X.mean(0)) @ W[:, 0]
    # the squared multiple correlation of the projection with the one-hot labels
    coef, *_ = np.linalg.lstsq(np.c_[np.ones(len(y)), Y[:, 1:]], proj, rcond=None)
    fitted = np.c_[np.ones(len(y)), Y[:, 1:]] @ coef
    r2 = 1 - ((proj - fitted) ** 2).sum() / ((proj - proj.mean()) ** 2).sum()
    np.testing.assert_allclose(np.linalg.norm(W[:, 0]), np.sqrt(r2), rtol=1e-6)  # scaled by its correlation
    assert r2 > 0.9


# --------------------------------------------------------------------------- losses fall


def test_ksh_gradient_phase_and_greedy_residual_fall(toy):
    X, y, _, _ = toy
    ksh = build_method("ksh", 12, seed=0, **FAST["ksh"]).fit(X, y)
    for bit in ksh.history:
        costs = bit["costs"]
        assert costs[-1] <= costs[0] + 1e-9
    residuals = [bit["residual"] for bit in ksh.history]
    start = frobenius2(LowRankSimilarity(y, scale=12))
    assert residuals[-1] < 0.8 * start and residuals[0] < start


def test_ksh_accelerated_descent_lowers_the_smoothed_cost_to_a_stationary_point():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 80)
    K = rng.standard_normal((80, 10))
    S = LowRankSimilarity(y, scale=4)
    _, costs = optimise_projection(K, S, rng.standard_normal(10) * 0.1, 500)
    assert costs[-1] < costs[0] and len(costs) > 3


def test_bre_sweeps_never_raise_the_reconstruction_error(toy):
    X, y, _, _ = toy
    bre = build_method("bre", 12, seed=0, n_points=10, n_iter=4).fit(X, y)
    assert np.all(np.diff(bre.history) <= 1e-12) and bre.history[-1] < 0.9 * bre.history[0]


def test_mlh_loss_falls(toy):
    X, y, _, _ = toy
    mlh = build_method("mlh", 12, seed=0, **FAST["mlh"]).fit(X, y)
    assert mlh.history[-1] < 0.7 * mlh.history[0]


# --------------------------------------------------------------------------- fast formulas against brute force


def test_low_rank_similarity_matches_the_dense_matrix():
    y = np.array([0, 1, 1, 2, 0, 2, 2])
    S = LowRankSimilarity(y, scale=3)
    dense = 3 * np.where(y[:, None] == y[None, :], 1.0, -1.0)
    np.testing.assert_allclose(S.dense(), dense)
    code = np.array([1.0, -1, 1, -1, -1, 1, 1])
    S.subtract(code)
    dense -= np.outer(code, code)
    v = np.arange(7.0)
    np.testing.assert_allclose(S.dense(), dense)
    np.testing.assert_allclose(S.matvec(v), dense @ v)
    assert S.quadratic(v) == pytest.approx(v @ dense @ v)
    K = np.random.default_rng(0).standard_normal((7, 3))
    np.testing.assert_allclose(S.sandwich(K), K.T @ dense @ K)
    assert frobenius2(S) == pytest.approx((dense**2).sum())


def test_bre_best_weight_is_the_exact_line_minimum():
    """The weight chosen by scoring the sorted flips lowers the brute-force objective by the most any value can."""
    rng = np.random.default_rng(3)
    n, bits, c = 30, 4, 3
    y = rng.integers(0, c, n)
    _, Y = one_hot(y)
    proj = rng.standard_normal((n, bits))
    column = rng.standard_normal(n)
    U = np.concatenate([np.ones((n, 1)), Y, np.where(proj > 0, 1.0, -1.0)], axis=1)
    M = np.concatenate([[0.5], np.full(c, -1.0), np.full(bits, 0.5 / bits)])

    def brute(p_col: np.ndarray) -> float:
        Z = np.where(proj > 0, 1.0, -1.0)
        Z[:, 1] = np.where(p_col > 0, 1.0, -1.0)
        d_r = (bits - Z @ Z.T) / (2 * bits)
        d_m = (y[:, None] != y[None, :]).astype(float)
        return float(((d_m - d_r) ** 2).sum())

    assert brute(proj[:, 1]) == pytest.approx(objective(U, M))
    new = best_weight(U, M, 1 + c + 1, proj[:, 1], column, 0.0, bits)
    assert new is not None
    # the objective is constant between the flips: one value inside each interval tries them all
    flips = np.sort(-proj[:, 1] / column)
    inside = np.concatenate([[flips[0] - 1], (flips[1:] + flips[:-1]) / 2, [flips[-1] + 1]])
    best = min(brute(proj[:, 1] + w * column) for w in inside)
    assert brute(proj[:, 1] + new * column) == pytest.approx(best)
    assert best < brute(proj[:, 1])


def test_mlh_loss_adjusted_inference_matches_enumeration():
    """The step direction comes from the codes maximising loss + score, found here by trying all of them."""
    rng = np.random.default_rng(0)
    bits, rho = 4, 2
    pos, neg = loss_tables(bits, rho, 1.0)
    codes = np.array(list(itertools.product([-1.0, 1.0], repeat=bits)))
    for same in (True, False):
        W = rng.standard_normal((bits, 3))
        x1, x2 = rng.standard_normal((1, 3)), rng.standard_normal((1, 3))
        s1, s2 = (x1 @ W.T)[0], (x2 @ W.T)[0]
        table = pos if same else neg
        scores = [(table[int((g1 != g2).sum())] + g1 @ s1 + g2 @ s2, g1, g2) for g1 in codes for g2 in codes]
        _, g1, g2 = max(scores, key=lambda t: t[0])
        expected = np.outer(np.sign(s1) - g1, x1[0]) + np.outer(np.sign(s2) - g2, x2[0])
        np.testing.assert_allclose(bound_gradient(W, x1, x2, np.array([same]), pos, neg), expected)


# --------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", SUPERVISED)
def test_a_seed_fixes_the_codes_and_save_load_keeps_them(name, toy, tmp_path):
    X, y, Xq, _ = toy
    a = build_method(name, 12, seed=5, **FAST[name]).fit(X, y)
    b = build_method(name, 12, seed=5, **FAST[name]).fit(X, y)
    np.testing.assert_array_equal(a.encode(Xq), b.encode(Xq))
    loaded = load_method(a.save(tmp_path / f"{name}.npz"))
    assert type(loaded) is type(a) and repr(loaded) == repr(a)
    np.testing.assert_array_equal(loaded.encode(Xq), a.encode(Xq))
    codes = a.encode(X)
    assert codes.dtype == bool and codes.shape == (len(X), 12)


@pytest.mark.parametrize("name", SUPERVISED)
def test_a_missing_y_is_one_line(name, toy):
    assert SHALLOW[name].supervised
    with pytest.raises(ConfigError) as err:
        build_method(name, 8).fit(toy[0])
    assert str(err.value) == (
        f"{name} is a supervised method and needs the training labels: fit(X, y) with y the (n,) class labels"
    )


def test_option_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"bre needs n_points <= training samples \(60\), got 61"):
        build_method("bre", 8, n_points=61).fit(*hidden_classes(60))
    with pytest.raises(ConfigError, match=r"mlh rho must be at most bits \(8\), got 9"):
        build_method("mlh", 8, rho=9)
    with pytest.raises(ConfigError, match=r"mlh momentum must be a number in \[0, 1\], got 1.5"):
        build_method("mlh", 8, momentum=1.5)
    with pytest.raises(ConfigError, match="sdh kernel_width must be a positive number or null, got 0"):
        build_method("sdh", 8, kernel_width=0)
    with pytest.raises(ConfigError, match="cca_itq reg must be a positive number, got 0"):
        build_method("cca_itq", 8, reg=0)
    with pytest.raises(ConfigError, match="lsh centre must be true or false, got 'no'"):
        build_method("lsh", 8, centre="no")
    with pytest.raises(ConfigError, match=r"cca_itq needs bits <= feature dimension \(23\), got 24"):
        build_method("cca_itq", 24).fit(*hidden_classes(60))


def test_mlh_default_rho_follows_the_reference_rule():
    assert [build_method("mlh", b).rho for b in (12, 24, 32, 48)] == [2, 4, 4, 6]


def test_lsh_through_the_origin_or_the_mean():
    X = load_digits().data / 16  # non-negative pixels: hyperplanes through the origin split them unevenly
    centred, raw = (
        build_method("lsh", 32, seed=0).fit(X),
        build_method("lsh", 32, seed=0, centre=False).fit(X),
    )
    np.testing.assert_array_equal(centred.projection, raw.projection)
    assert not raw.mean.any() and centred.mean.any()
    balance = lambda m: np.abs(m.encode(X).mean(axis=0) - 0.5).mean()  # noqa: E731
    assert balance(raw) > balance(centred) + 0.1
    assert build_method("lsh", 8).centre and repr(raw) == "LSH(bits=32, seed=0, centre=False)"


# --------------------------------------------------------------------------- through deephash-baseline


@pytest.mark.parametrize("name", SUPERVISED)
def test_each_runs_through_deephash_baseline_under_the_cnnh_protocol(name, tmp_path: Path):
    options = [f"method.{k}={v}" for k, v in FAST[name].items()]
    cnnh = ["data.protocol=cnnh", "data.n_queries=100", "data.train_per_class=40", "data.val_size=40"]
    cfg = compose_config(
        "baseline",
        [
            f"method={name}",
            "data=digits",
            *cnnh,
            "bits=12",
            "logger=none",
            "retrieval.grid_queries=0",
            "retrieval.modes=[hamming]",
            *options,
        ],
        tmp_path,
    )
    metrics = run_baseline(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["method"] == name and saved["protocol"] == "cnnh"
    # fitted on the labelled subset: train and val, 40 images per class
    assert saved["fit_splits"] == ["train", "val"] and saved["fit_samples"] == 400
    assert (saved["n_queries"], saved["n_database"]) == (100, 1797 - 100)
    assert metrics["modes"]["hamming"]["mAP"] > 0.5  # chance is about 0.1
    assert isinstance(load_method(tmp_path / "method.npz"), SHALLOW[name])


def test_unsupervised_methods_fit_on_the_cnnh_database(tmp_path: Path):
    cnnh = ["data.protocol=cnnh", "data.n_queries=100", "data.train_per_class=40", "fit_samples=null"]
    cfg = compose_config(
        "baseline",
        [
            "method=lsh",
            "data=digits",
            *cnnh,
            "bits=8",
            "logger=none",
            "retrieval.grid_queries=0",
            "retrieval.modes=[hamming]",
        ],
        tmp_path,
    )
    saved = run_baseline(cfg)
    assert saved["fit_splits"] == ["database"] and saved["fit_samples"] == 1797 - 100
    splits = np.load(tmp_path / "splits.npz")
    assert len(splits["train"]) + len(splits["val"]) == 400
