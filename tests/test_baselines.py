"""Classical hashing baselines: interface, determinism, persistence, errors and retrieval quality."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from deephash.baselines.features import flatten_images
from deephash.methods.itq import ITQ
from deephash.methods.lsh import LSH
from deephash.methods.pca import principal_components
from deephash.methods.pcah import PCAH
from deephash.methods.registry import METHODS, build_method, load_method
from deephash.methods.sh import SH, select_modes
from deephash.methods.shallow import HashMethod
from deephash.utils.errors import ConfigError, DataError, DeephashError, IndexFormatError

NAMES = ["lsh", "pcah", "itq", "sh"]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's bundled 8x8 digits (1797 x 64, 10 classes): 200 queries, the rest is the database."""
    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(X))
    query, database = perm[:200], perm[200:]
    return X[database], y[database], X[query], y[query]


def hamming_map(query_codes: np.ndarray, db_codes: np.ndarray, query_labels, db_labels) -> float:
    """Mean average precision of Hamming ranking over the whole database, ties to the lower index."""
    aps = []
    for code, label in zip(query_codes, query_labels):
        dist = np.count_nonzero(db_codes != code, axis=1)
        order = np.lexsort((np.arange(len(db_codes)), dist))
        relevant = db_labels[order] == label
        ranks = np.flatnonzero(relevant) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", [12, 24, 48])
def test_codes_are_bool_n_by_bits(digits, name, bits):
    X_db, _, X_q, _ = digits
    method = build_method(name, bits).fit(X_db)
    assert isinstance(method, HashMethod)
    assert method.name == name and method.bits == bits
    for X in (X_db, X_q):
        codes = method.encode(X)
        assert codes.dtype == bool and codes.shape == (len(X), bits)
    # No bit is constant over the training set.
    assert (method.encode(X_db).any(axis=0) & ~method.encode(X_db).all(axis=0)).all()


@pytest.mark.parametrize("name", NAMES)
def test_encoding_is_row_wise(digits, name):
    """A point gets the same code whether encoded with the training set, the queries, or alone."""
    X_db, _, X_q, _ = digits
    method = build_method(name, 24).fit(X_db)
    both = method.encode(np.concatenate([X_db, X_q]))
    np.testing.assert_array_equal(both[: len(X_db)], method.encode(X_db))
    np.testing.assert_array_equal(both[len(X_db) :], method.encode(X_q))
    np.testing.assert_array_equal(method.encode(X_q[3:4]), both[len(X_db) + 3 : len(X_db) + 4])


@pytest.mark.parametrize("name", ["lsh", "itq"])
def test_seeded_methods_are_deterministic_and_seed_dependent(digits, name):
    X_db, _, X_q, _ = digits
    a = build_method(name, 32, seed=7).fit(X_db).encode(X_q)
    b = build_method(name, 32, seed=7).fit(X_db).encode(X_q)
    c = build_method(name, 32, seed=8).fit(X_db).encode(X_q)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", ["pcah", "sh"])
def test_unseeded_methods_are_deterministic(digits, name):
    X_db, _, X_q, _ = digits
    a = build_method(name, 32, seed=0).fit(X_db).encode(X_q)
    b = build_method(name, 32, seed=1).fit(X_db).encode(X_q)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(digits, tmp_path, name):
    X_db, _, X_q, _ = digits
    method = build_method(name, 20, seed=3).fit(X_db)
    path = method.save(tmp_path / "sub" / f"{name}.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{name}.npz"]  # no temp files left
    loaded = load_method(path)
    assert type(loaded) is type(method) and repr(loaded) == repr(method)
    np.testing.assert_array_equal(loaded.encode(X_q), method.encode(X_q))
    np.testing.assert_array_equal(loaded.encode(X_db), method.encode(X_db))


def test_itq_options_survive_save_load(digits, tmp_path):
    X_db, _, X_q, _ = digits
    method = build_method("itq", 16, seed=2, n_iter=3).fit(X_db)
    loaded = load_method(method.save(tmp_path / "itq.npz"))
    assert loaded.n_iter == 3
    np.testing.assert_array_equal(loaded.encode(X_q), method.encode(X_q))


def test_itq_beats_lsh_and_everything_beats_chance(digits):
    X_db, y_db, X_q, y_q = digits
    scores = {}
    for name in NAMES:
        method = build_method(name, 32, seed=0).fit(X_db)
        scores[name] = hamming_map(method.encode(X_q), method.encode(X_db), y_q, y_db)
    chance = np.mean([np.mean(y_db == label) for label in y_q])
    assert scores["itq"] > scores["lsh"] + 0.05, scores
    assert scores["itq"] > max(scores["pcah"], scores["sh"]), scores
    assert min(scores.values()) > chance + 0.1, (scores, chance)


def test_hamming_map_helper_on_a_hand_made_ranking():
    db = np.array([[0, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    # Distances 0, 2, 1, 0 -> ranking 0, 3, 2, 1; relevant at ranks 1 and 3 -> AP = (1 + 2/3) / 2.
    ap = hamming_map(db[:1], db, np.array([5]), np.array([5, 1, 5, 2]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)


def test_principal_components_match_sklearn(digits):
    X_db = digits[0]
    mean, components, variances = principal_components(X_db, 10)
    reference = PCA(n_components=10, svd_solver="full").fit(X_db)
    np.testing.assert_allclose(mean, reference.mean_)
    np.testing.assert_allclose(variances, reference.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(components.T @ reference.components_.T), np.eye(10), atol=1e-6)


def test_pcah_bits_come_in_decreasing_variance(digits):
    X_db = digits[0]
    method = build_method("pcah", 32).fit(X_db)
    variances = method.project(X_db).var(axis=0)
    assert np.all(np.diff(variances) <= 1e-9 * variances[0])
    np.testing.assert_array_equal(method.encode(X_db), method.project(X_db) >= 0)


def test_itq_rotation_is_orthogonal_and_lowers_quantisation_loss(digits):
    X_db = digits[0]
    pca_basis = principal_components(X_db, 16)[1]
    V = (X_db - X_db.mean(axis=0)) @ pca_basis

    def rotation_of(method: ITQ) -> np.ndarray:
        return pca_basis.T @ method.projection

    def quantisation_loss(R: np.ndarray) -> float:
        """||B - V R||_F^2 with B = sign(V R)."""
        Z = V @ R
        return float(np.sum((np.where(Z >= 0, 1.0, -1.0) - Z) ** 2))

    losses = [quantisation_loss(rotation_of(ITQ(16, seed=0, n_iter=n).fit(X_db))) for n in (0, 1, 5, 50)]
    R = rotation_of(ITQ(16, seed=0).fit(X_db))
    np.testing.assert_allclose(R.T @ R, np.eye(16), atol=1e-8)
    # Each iteration can only lower the loss (alternating minimisation).
    assert all(a >= b for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0], losses
    # The part of the loss the rotation controls is -2 sum |V R|: it must grow clearly.
    l1 = [np.abs(V @ rotation_of(ITQ(16, seed=0, n_iter=n).fit(X_db))).sum() for n in (0, 50)]
    assert l1[1] > 1.05 * l1[0], l1


def test_sh_selects_the_reference_modes_on_a_box():
    """Box widths (2.5, 1): eigenvalues (k pi / 2.5)^2 = 1.58, 6.32, 14.2 on axis 0, pi^2 = 9.87 on axis 1."""
    modes = select_modes(np.array([2.5, 1.0]), 4)
    np.testing.assert_array_equal(modes, [[1, 0], [2, 0], [0, 1], [3, 0]])
    # A narrow axis gets no mode at all; a wide one can carry more bits than there are axes.
    np.testing.assert_array_equal(select_modes(np.array([4.0, 0.1]), 3), [[1, 0], [2, 0], [3, 0]])


def test_sh_codes_are_cosines_of_the_box_coordinates():
    grid = np.stack(np.meshgrid(np.linspace(0, 2.5, 26), np.linspace(0, 1, 11)), axis=-1).reshape(-1, 2)
    method = SH(4).fit(grid)
    np.testing.assert_array_equal(method.modes, [[1, 0], [2, 0], [0, 1], [3, 0]])
    Y = (grid - method.mean) @ method.components - method.mn
    R = method.mx - method.mn
    np.testing.assert_allclose(R, [2.5, 1.0], atol=1e-9)
    expected = np.stack([np.cos(k * np.pi * Y[:, j] / R[j]) for k, j in [(1, 0), (2, 0), (1, 1), (3, 0)]], 1)
    np.testing.assert_allclose(method.project(grid), expected, atol=1e-12)
    np.testing.assert_array_equal(method.encode(grid), method.project(grid) > 0)


def test_sh_allows_more_bits_than_dimensions():
    X = np.random.default_rng(0).standard_normal((300, 6)) * np.arange(6, 0, -1)
    codes = SH(24).fit(X).encode(X)
    assert codes.shape == (300, 24)
    assert len({tuple(c) for c in codes.T}) == 24  # all bits distinct


def test_sh_bits_are_roughly_balanced(digits):
    X_db = digits[0]
    method = build_method("sh", 32).fit(X_db)
    ones = method.encode(X_db).mean(axis=0)
    assert np.all((ones > 0.05) & (ones < 0.95)), ones
    assert abs(ones.mean() - 0.5) < 0.15
    # First-order modes split their axis's range in the middle.
    first_order = method.modes.max(axis=1) == 1
    assert np.all((ones[first_order] > 0.15) & (ones[first_order] < 0.85)), ones[first_order]


def test_lsh_and_pcah_balance_around_the_training_mean(digits):
    X_db = digits[0]
    for method in (LSH(32, seed=0), PCAH(32)):
        ones = method.fit(X_db).encode(X_db).mean(axis=0)
        assert np.all((ones > 0.3) & (ones < 0.7)), (method.name, ones)


def test_float32_features_are_accepted(digits):
    X_db, _, X_q, _ = digits
    for name in NAMES:
        method = build_method(name, 16).fit(X_db.astype(np.float32))
        codes64, codes32 = method.encode(X_q), method.encode(X_q.astype(np.float32))
        assert np.mean(codes64 != codes32) < 0.01


def test_build_method_errors():
    with pytest.raises(
        ConfigError, match=rf"unknown shallow hashing method 'kmeans', expected one of: {', '.join(METHODS)}$"
    ):
        build_method("kmeans", 16)
    for bits in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="bits must be an integer >= 1"):
            build_method("lsh", bits)
    with pytest.raises(ConfigError, match=r"itq got unknown options \['iters'\], accepted: n_iter"):
        build_method("itq", 16, iters=5)
    with pytest.raises(ConfigError, match="accepted: none"):
        build_method("pcah", 16, n_iter=5)
    with pytest.raises(ConfigError, match="n_iter must be an integer >= 0"):
        build_method("itq", 16, n_iter=-1)
    assert isinstance(build_method(" ITQ ", 8), ITQ)
    assert {name for name, cls in METHODS.items() if not cls.supervised} == set(NAMES)


@pytest.mark.parametrize("name", ["pcah", "itq"])
def test_pca_methods_reject_more_bits_than_the_data_has(name):
    X = np.random.default_rng(0).standard_normal((500, 64))
    with pytest.raises(ConfigError, match=rf"^{name} needs bits <= feature dimension \(64\), got 128$"):
        build_method(name, 128).fit(X)
    with pytest.raises(ConfigError, match=rf"{name} needs more training samples than bits, got 20 samples"):
        build_method(name, 32).fit(X[:20])


def test_input_errors(digits):
    X_db = digits[0]
    method = build_method("lsh", 16)
    with pytest.raises(DeephashError, match="lsh is not fitted"):
        method.encode(X_db)
    with pytest.raises(DeephashError, match="nothing to save"):
        method.save("unused.npz")
    method.fit(X_db)
    with pytest.raises(DataError, match="lsh was fitted on 64-d features, got 63-d"):
        method.encode(X_db[:, :63])
    with pytest.raises(DataError, match=r"2-D array \(n, d\), got shape \(64,\)"):
        method.encode(X_db[0])
    bad = X_db.copy()
    bad[3, 5] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        build_method("itq", 8).fit(bad)
    with pytest.raises(DataError, match="at least 2 training samples"):
        build_method("sh", 8).fit(X_db[:1])


def test_load_errors(tmp_path, digits):
    with pytest.raises(IndexFormatError, match="no saved hashing method at"):
        load_method(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an npz file")
    with pytest.raises(IndexFormatError, match="is not a saved hashing method"):
        load_method(junk)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(IndexFormatError, match="is not a saved hashing method"):
        load_method(other)
    path = build_method("pcah", 8).fit(digits[0]).save(tmp_path / "pcah.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "state_projection"}
    np.savez(tmp_path / "damaged.npz", **arrays)
    with pytest.raises(IndexFormatError, match=r"damaged pcah file \(missing arrays \['projection'\]\)"):
        load_method(tmp_path / "damaged.npz")


def test_flatten_images():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4, 4), dtype=np.uint8)
    flat = flatten_images(images)
    assert flat.dtype == np.float32 and flat.shape == (5, 48)
    np.testing.assert_allclose(flat, images.reshape(5, -1) / 255.0, rtol=1e-6)
    floats = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(flatten_images(floats), flat, rtol=1e-6)
    assert flatten_images(np.full((2, 28, 28), 65535, dtype=np.uint16)).max() == 1.0
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\], got values in \[-1"):
        flatten_images(floats * 2 - 1)
    with pytest.raises(DataError, match="unsigned integer or float pixels, got dtype int64"):
        flatten_images(images.astype(np.int64))
    with pytest.raises(DataError, match="NaN or infinite"):
        flatten_images(np.full((2, 3), np.nan))
    with pytest.raises(DataError, match=r"got shape \(5,\)"):
        flatten_images(np.zeros(5))
