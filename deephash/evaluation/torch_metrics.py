"""The Hamming-mode metrics of :func:`deephash.evaluation.hamming_metrics.hamming_retrieval_metrics` on a
torch device (``retrieval.device``, its ``device`` argument): distances, the (distance, index) ranking and
every per-query count are computed in torch; the same per-query values then go through the same averaging.

The rankings, the top items and every count are the CPU path's exactly (sorting the unique keys
``distance * n + index`` is the stable sort by distance); average precision sums the same float64 terms
in another order, so mAP and mAP@k agree to about 1e-15.
"""

from __future__ import annotations

import numpy as np
import torch

from deephash.evaluation.hamming_counts import HammingCounts, HammingInputs, class_ids
from deephash.retrieval.torch_search import code_words, hamming_distances

_BLOCK_CELLS = 1 << 23  # query x database cells per block (a few int64/float64 arrays of that size)


def device_counts(inputs: HammingInputs, device: torch.device | str) -> HammingCounts:
    """The per-query counts of ``hamming_retrieval_metrics`` computed in torch on ``device``."""
    queries, database, bits, map_at = inputs.queries, inputs.database, inputs.bits, inputs.map_at
    q, n = len(queries), len(database)

    device = torch.device(device)
    db_class, query_class = (
        torch.from_numpy(c.astype(np.int64)).to(device)
        for c in class_ids(inputs.db_labels, inputs.query_labels)
    )
    db_words, query_words = code_words(database, device), code_words(queries, device)
    cut = np.concatenate([inputs.ks, inputs.curve_ks]).clip(max=n)
    cut_t = torch.from_numpy(cut - 1).to(device)
    deep = min(map_at, n)
    stats = HammingCounts(q, n, len(cut) + 1, bits, min(inputs.top_n, n))
    index = torch.arange(n, dtype=torch.int64, device=device)
    inverse_rank = 1.0 / torch.arange(1, n + 1, dtype=torch.float64, device=device)
    step = max(1, _BLOCK_CELLS // n)
    for start in range(0, q, step):
        rows = slice(start, min(q, start + step))
        dist = hamming_distances(query_words[rows], db_words)
        relevant = db_class[None, :] == query_class[rows, None]  # database order
        order = torch.sort(dist * n + index, dim=1).indices
        ranked = torch.gather(relevant, 1, order)
        found = torch.cumsum(ranked, dim=1)  # relevant items among the top p + 1
        n_relevant = found[:, -1]
        # the m-th relevant item at rank p adds m / (p + 1), as (1 / (p + 1)) * m like the CPU path
        terms = torch.where(ranked, inverse_rank * found, 0.0)
        ap = terms.sum(dim=1) / n_relevant.clamp(min=1)
        found_deep = found[:, deep - 1]
        ap_at = terms[:, :deep].sum(dim=1) / found_deep.clamp(min=1)
        per_distance = torch.zeros((len(dist), bits + 1), dtype=torch.int64, device=device)
        per_distance.scatter_add_(1, dist, torch.ones_like(dist))
        hits_per_distance = torch.zeros_like(per_distance).scatter_add_(1, dist, relevant.to(torch.int64))
        stats.ap[rows] = ap.cpu().numpy()
        stats.ap_at[rows] = ap_at.cpu().numpy()
        stats.n_relevant[rows] = n_relevant.cpu().numpy()
        stats.hits_at[rows] = found[:, cut_t].cpu().numpy()
        stats.retrieved[rows] = torch.cumsum(per_distance, dim=1).cpu().numpy()
        stats.hits_within[rows] = torch.cumsum(hits_per_distance, dim=1).cpu().numpy()
        stats.top[rows] = order[:, : stats.top.shape[1]].cpu().numpy()
    return stats


__all__ = ["device_counts"]
