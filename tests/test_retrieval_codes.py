"""Packed codes: packing, padding to FAISS's fast sizes, exact Hamming distances against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from deephash.retrieval import codes as codes_mod
from deephash.retrieval.codes import (
    FAST_CODE_BYTES,
    check_packed,
    hamming_distance_matrix,
    iter_hamming_distances,
    pack_codes,
    pad_codes,
    padded_code_bytes,
    unpack_codes,
)
from deephash.utils.errors import ConfigError, IndexFormatError

BITS = [12, 48, 64, 128]


def brute_hamming(q_bits: np.ndarray, db_bits: np.ndarray) -> np.ndarray:
    """(q, bits) bool, (n, bits) bool -> (q, n) number of differing bits."""
    return (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=-1)


@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.random((37, bits)) < 0.5
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (37, -(-bits // 8))
    np.testing.assert_array_equal(packed, np.packbits(codes, axis=1))
    np.testing.assert_array_equal(pack_codes(codes.astype(np.uint8)), packed)
    np.testing.assert_array_equal(unpack_codes(packed, bits), codes)
    # big-endian within a byte: the first bit is the byte's most significant bit
    one = np.zeros((1, bits), bool)
    one[0, 0] = True
    assert pack_codes(one)[0, 0] == 0x80
    check_packed(packed, bits)


def test_pack_rejects_non_binary() -> None:
    with pytest.raises(ConfigError, match="binary codes"):
        pack_codes(np.array([[0, 1, 2]]))
    with pytest.raises(ConfigError, match=r"\(n, bits\)"):
        pack_codes(np.zeros(8, bool))


def test_check_packed_rejects_wrong_width_and_padding_bits() -> None:
    packed = pack_codes(np.ones((4, 12), bool))
    with pytest.raises(IndexFormatError, match=r"packed as \(n, 6\) uint8"):
        check_packed(packed, 48)
    dirty = packed.copy()
    dirty[2, -1] |= 0x01
    with pytest.raises(IndexFormatError, match="nonzero padding bits"):
        check_packed(dirty, 12)


def test_padded_code_bytes_table() -> None:
    assert FAST_CODE_BYTES == (4, 8, 16, 20, 32, 64)
    expected = {1: 4, 2: 4, 4: 4, 5: 8, 6: 8, 8: 8, 9: 16, 16: 16, 17: 20, 20: 20, 21: 32, 33: 64, 64: 64}
    expected |= {65: 72, 72: 72, 100: 104, 128: 128}
    assert {n: padded_code_bytes(n) for n in expected} == expected
    with pytest.raises(ConfigError):
        padded_code_bytes(0)


@pytest.mark.parametrize("bits", BITS)
def test_padding_preserves_distances(bits: int) -> None:
    rng = np.random.default_rng(1)
    db, q = pack_codes(rng.random((50, bits)) < 0.5), pack_codes(rng.random((9, bits)) < 0.5)
    size = padded_code_bytes(db.shape[1])
    padded_db, padded_q = pad_codes(db, size), pad_codes(q, size)
    assert padded_db.shape == (50, size) and not padded_db[:, db.shape[1] :].any()
    np.testing.assert_array_equal(
        hamming_distance_matrix(padded_q, padded_db), hamming_distance_matrix(q, db)
    )
    with pytest.raises(ConfigError, match="cannot pad"):
        pad_codes(db, db.shape[1] - 1)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("popcount", ["bitwise_count", "table"])
def test_hamming_matrix_matches_brute_force(
    bits: int, popcount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if popcount == "table":
        monkeypatch.setattr(codes_mod, "_HAS_BITWISE_COUNT", False)
    elif not codes_mod._HAS_BITWISE_COUNT:
        pytest.skip("numpy < 2.0 has no bitwise_count")
    rng = np.random.default_rng(bits)
    db_bits, q_bits = rng.random((301, bits)) < 0.5, rng.random((17, bits)) < 0.5
    db_bits[100:150] = db_bits[:50]  # duplicates
    expected = brute_hamming(q_bits, db_bits)
    db, q = pack_codes(db_bits), pack_codes(q_bits)
    got = hamming_distance_matrix(q, db)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    for chunk in (1, 7, 64, 1000):  # chunk sizes that do not divide 301
        np.testing.assert_array_equal(hamming_distance_matrix(q, db, chunk=chunk), expected)


def test_iter_hamming_distances_blocks_and_out() -> None:
    rng = np.random.default_rng(3)
    db, q = pack_codes(rng.random((95, 20)) < 0.5), pack_codes(rng.random((4, 20)) < 0.5)
    blocks = list(iter_hamming_distances(q, db, chunk=30))
    assert [s for s, _ in blocks] == [0, 30, 60, 90] and [b.shape[1] for _, b in blocks] == [30, 30, 30, 5]
    out = np.full((4, 95), -7, np.int32)
    assert hamming_distance_matrix(q, db, out=out) is out
    np.testing.assert_array_equal(out, np.hstack([b for _, b in blocks]))
    with pytest.raises(ConfigError, match="must have shape"):
        hamming_distance_matrix(q, db, out=np.empty((4, 94), np.int32))
    with pytest.raises(ConfigError, match="query and database codes"):
        hamming_distance_matrix(q, db[:, :2])


@pytest.mark.parametrize("bits", [256, 300, 512])
@pytest.mark.parametrize("popcount", ["bitwise_count", "table"])
def test_long_codes_reach_distance_bits_in_every_hamming_path(
    bits: int, popcount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A code and its complement are ``bits`` apart: a count summed in 8 bits would wrap (300 -> 44, 256 and
    512 -> 0) and rank the complement first. The index's distances, the torch kernel's and the evaluation's
    ranking all agree with brute force there."""
    import torch

    from deephash.evaluation.hamming_metrics import hamming_retrieval_metrics
    from deephash.retrieval.torch_search import code_words, hamming_distances

    if popcount == "table":
        monkeypatch.setattr(codes_mod, "_HAS_BITWISE_COUNT", False)
        monkeypatch.setattr("deephash.evaluation.hamming_metrics._HAS_BITWISE_COUNT", False)
    elif not codes_mod._HAS_BITWISE_COUNT:
        pytest.skip("numpy < 2.0 has no bitwise_count")
    rng = np.random.default_rng(bits)
    q_bits = rng.random((3, bits)) < 0.5
    db_bits = np.concatenate([~q_bits, rng.random((5, bits)) < 0.5, q_bits])  # complements first
    expected = brute_hamming(q_bits, db_bits)
    assert (np.diagonal(expected[:, :3]) == bits).all()
    q, db = pack_codes(q_bits), pack_codes(db_bits)
    np.testing.assert_array_equal(hamming_distance_matrix(q, db), expected)
    words = hamming_distances(code_words(q, "cpu"), code_words(db, "cpu"))
    np.testing.assert_array_equal(words.numpy(), expected)
    # the complement is each query's only relevant item: ranked last of 11, where the wrap would put it first
    labels = np.arange(3)
    db_labels = np.concatenate([labels, np.full(8, 9)])
    result = hamming_retrieval_metrics(q, db, labels, db_labels, bits, ks=(1,), map_at=11, threads=1)
    assert result.metrics["precision@k"]["1"] == 0.0
    assert result.metrics["mAP"] == pytest.approx(1 / 11)
    assert torch.equal(torch.as_tensor(result.top[:, 0]), torch.as_tensor(np.arange(8, 11)))
