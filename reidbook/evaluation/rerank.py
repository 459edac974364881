"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), in torch, with bounded memory.

It computes what the authors' ``re_ranking.py`` (also shipped by torchreid) computes -- the same
squaring and column-max normalisation of the distances, the same neighbour sets, weights, query
expansion and Jaccard distance -- but without the dense (N, N) matrices of the reference (N = q + g):

* the normalised distance matrix is produced ``chunk_size`` rows at a time from the three input blocks;
  only the first max(k1 + 1, k2) neighbours of each row are kept (``torch.topk``);
* the k-reciprocal encodings V (Eq. 7) and their query expansion (Eq. 11) are sparse: each row has at
  most (k1 + 1) * (round(k1 / 2) + 2) non-zeros before expansion and k2 times that after;
* the Jaccard distance (Eq. 10) walks an inverted index of V over (query, gallery) pairs sharing a
  neighbour, at most ``max_pairs`` pairs at a time.

Peak memory beyond the inputs: the (q, g) float32 output (the Jaccard distances are turned into the
final ones in place), about ``12 * chunk_size * N`` bytes for a distance chunk, ``8 * N * (k1 + 1)``
for the neighbour lists, ~20 bytes per non-zero of V (tens to a few hundred per row), and
``~50 * max_pairs`` bytes for the Jaccard step. Measured on a Market-1501-sized problem (N = 19,281),
see ``benchmarks/bench_evaluation.py``: well under 1 GB on top of the inputs, against ~7 GB for the
dense reference.

Ties: neighbours at exactly equal distance are ordered by gallery index among those ``torch.topk``
selects; the reference's ``np.argsort`` (quicksort) orders them arbitrarily. This only matters with
duplicate images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .ranking import ArrayLike, as_tensor


class _NormalisedDistances:
    """Rows and entries of the reference's ``original_dist``: M = (S / colmax(S))^T, S = squared D (or D
    itself with ``square=False``).

    D = [[q_q, q_g], [q_g^T, g_g]] is (N, N) but never built; S is squared in the input dtype and then
    cast to float32, exactly like the reference.
    """

    def __init__(self, q_g: Tensor, q_q: Tensor, g_g: Tensor, chunk_size: int, square: bool = True) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.square = square
        self.num_query, self.num_gallery = q_g.shape
        self.num_all = self.num_query + self.num_gallery
        self.chunk_size = chunk_size
        self.column_max = self._column_max()  # (N,) float32

    def _squared(self, block: Tensor) -> Tensor:
        return (block.pow(2) if self.square else block).float()

    def _column_max(self) -> Tensor:
        """(N,) max over each column of S, computed from row chunks of the blocks."""
        col_max = torch.full((self.num_all,), -torch.inf, device=self.q_g.device)
        q = self.num_query
        for start in range(0, q, self.chunk_size):
            rows = slice(start, min(start + self.chunk_size, q))
            q_g_rows = self._squared(self.q_g[rows])
            col_max[:q] = torch.maximum(col_max[:q], self._squared(self.q_q[rows]).amax(0))
            col_max[rows] = torch.maximum(col_max[rows], q_g_rows.amax(1))  # the q_g^T block
            col_max[q:] = torch.maximum(col_max[q:], q_g_rows.amax(0))
        for start in range(0, self.num_gallery, self.chunk_size):
            col_max[q:] = torch.maximum(
                col_max[q:], self._squared(self.g_g[start : start + self.chunk_size]).amax(0)
            )
        return col_max

    def rows(self, start: int, stop: int) -> Tensor:
        """(stop - start, N) float32 rows of M, i.e. columns start..stop of S divided by their max."""
        q = self.num_query
        parts = []
        if start < q:  # columns of S inside the query range: [q_q[:, r]; q_g[r, :]]
            r = slice(start, min(stop, q))
            parts.append(torch.cat([self.q_q[:, r].T, self.q_g[r]], dim=1))
        if stop > q:  # columns in the gallery range: [q_g[:, t]; g_g[:, t]]
            t = slice(max(start, q) - q, stop - q)
            parts.append(torch.cat([self.q_g[:, t].T, self.g_g[:, t].T], dim=1))
        s_columns = self._squared(torch.cat(parts, dim=0))  # (c, N)
        return s_columns / self.column_max[start:stop, None]

    def entries(self, rows: Tensor, cols: Tensor) -> Tensor:
        """M[rows, cols] = S[cols, rows] / colmax[rows], gathered from the right blocks."""
        q = self.num_query
        d = torch.empty(rows.shape, dtype=self.q_g.dtype, device=rows.device)
        r_query, c_query = rows < q, cols < q
        for r_mask, c_mask, block, r_off, c_off, transposed in (
            (r_query, c_query, self.q_q, 0, 0, False),  # D[c, r] = q_q[c, r]
            (~r_query, c_query, self.q_g, q, 0, False),  # D[c, r] = q_g[c, r - q]
            (r_query, ~c_query, self.q_g, 0, q, True),  # D[c, r] = q_g^T[c - q, r] = q_g[r, c - q]
            (~r_query, ~c_query, self.g_g, q, q, False),  # D[c, r] = g_g[c - q, r - q]
        ):
            m = r_mask & c_mask
            rr, cc = rows[m] - r_off, cols[m] - c_off
            d[m] = block[rr, cc] if transposed else block[cc, rr]
        return self._squared(d) / self.column_max[rows]

    def query_gallery(self, rows: slice) -> Tensor:
        """Rows of the (q, g) block M[:q, q:] = S[q:, :q]^T / colmax[:q] = squared q_g / query colmax."""
        return self._squared(self.q_g[rows]) / self.column_max[: self.num_query][rows, None]


def re_ranking(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 512,
    max_pairs: int = 4_000_000,
    square: bool = True,
) -> np.ndarray:
    """Re-ranked (q, g) distances: d* = (1 - lambda) d_J + lambda d (Eq. 12 of Zhong et al.).

    Args:
        q_g_dist, q_q_dist, g_g_dist: (q, g), (q, q), (g, g) distances, numpy or torch (any device); like
            the reference they are squared and each column of the joint matrix divided by its maximum.
        k1: size of the k-reciprocal neighbourhood R(p, k1) (Eq. 4); candidates are expanded with
            R(q, round(k1 / 2)) when they share more than 2/3 of it (Eq. 6).
        k2: local query expansion over the k2 nearest neighbours (Eq. 11); 1 disables it.
        lambda_value: weight of the original distance.
        chunk_size, max_pairs: memory bounds (see the module docstring); they do not change the result.
        square: square the distances first, as the reference does because it expects Euclidean distances
            (torchreid passes squared Euclidean ones, which it then squares again). ``False`` uses the
            distances as given, as the QAConv authors' re-ranking does with QAConv's distances.
    """
    q_g = as_tensor(q_g_dist)
    device = q_g.device
    q_q, g_g = as_tensor(q_q_dist, device), as_tensor(g_g_dist, device)
    _check_inputs(q_g, q_q, g_g, k1, k2, lambda_value)
    dist = _NormalisedDistances(q_g, q_q, g_g, chunk_size, square)
    neighbours = _nearest_neighbours(dist, max(k1 + 1, k2))  # (N, K) int64
    v_rows, v_cols, v_vals = _k_reciprocal_encoding(dist, neighbours, k1)
    if k2 != 1:
        v_rows, v_cols, v_vals = _query_expansion(v_rows, v_cols, v_vals, neighbours[:, :k2], dist.num_all)
    jaccard = _jaccard_query_gallery(v_rows, v_cols, v_vals, dist.num_query, dist.num_all, max_pairs)
    for start in range(0, dist.num_query, chunk_size):  # in place: final = jaccard (1 - l) + d l
        rows = slice(start, start + chunk_size)
        jaccard[rows].mul_(1 - lambda_value).add_(dist.query_gallery(rows) * lambda_value)
    return jaccard.cpu().numpy()


def _check_inputs(q_g: Tensor, q_q: Tensor, g_g: Tensor, k1: int, k2: int, lambda_value: float) -> None:
    q, g = q_g.shape if q_g.ndim == 2 else (-1, -1)
    if q_g.ndim != 2 or tuple(q_q.shape) != (q, q) or tuple(g_g.shape) != (g, g):
        raise ValueError(
            "expected q_g_dist (q, g), q_q_dist (q, q), g_g_dist (g, g); got "
            f"{tuple(q_g.shape)}, {tuple(q_q.shape)}, {tuple(g_g.shape)}"
        )
    if not 1 <= k1 < q + g or not 1 <= k2 <= q + g:
        raise ValueError(f"need 1 <= k1 < q + g = {q + g} and 1 <= k2 <= q + g, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _nearest_neighbours(dist: _NormalisedDistances, k: int) -> Tensor:
    """(N, k) indices of each row's k smallest normalised distances, ties ordered by index."""
    out = torch.empty(dist.num_all, k, dtype=torch.long, device=dist.q_g.device)
    for start in range(0, dist.num_all, dist.chunk_size):
        stop = min(start + dist.chunk_size, dist.num_all)
        values, index = torch.topk(dist.rows(start, stop), k, dim=1, largest=False, sorted=True)
        by_index = index.sort(dim=1).indices  # order by index, then stably by value
        values, index = values.gather(1, by_index), index.gather(1, by_index)
        out[start:stop] = index.gather(1, values.sort(dim=1, stable=True).indices)
    return out


def _reciprocal_mask(ranks: Tensor, rows: Tensor) -> Tensor:
    """(c, k) bool: is ``rows[i]`` among the neighbours (``ranks``) of its own neighbour ranks[rows[i], a]?"""
    forward = ranks[rows]  # (c, k)
    backward = ranks[forward]  # (c, k, k)
    return (backward == rows[:, None, None]).any(dim=2)


def _k_reciprocal_encoding(dist: _NormalisedDistances, neighbours: Tensor, k1: int) -> tuple[Tensor, ...]:
    """Sparse V (Eq. 7): rows, cols, float32 values; V[i, j] = exp(-d(i, j)) / sum over R*(i, k1) (Eq. 6)."""
    half = int(round(k1 / 2))  # banker's rounding, as np.around in the reference
    ranks, half_ranks = neighbours[:, : k1 + 1], neighbours[:, : half + 1]
    num_all, device = dist.num_all, neighbours.device
    rows_out, cols_out, vals_out = [], [], []
    for start in range(0, num_all, dist.chunk_size):
        rows = torch.arange(start, min(start + dist.chunk_size, num_all), device=device)  # (c,)
        recip = _reciprocal_mask(ranks, rows)  # (c, k1+1): R(i, k1)
        candidates = ranks[rows]  # (c, k1+1)
        cand_sets = half_ranks[candidates]  # (c, k1+1, h+1)
        cand_valid = _reciprocal_mask(half_ranks, candidates.reshape(-1)).view(cand_sets.shape)  # R(c, k1/2)
        in_own_set = (cand_sets[..., None] == candidates[:, None, None, :]) & recip[:, None, None, :]
        overlap = (in_own_set.any(dim=3) & cand_valid).sum(dim=2).double()  # (c, k1+1)
        accept = recip & (overlap > 2.0 / 3 * cand_valid.sum(dim=2).double())  # Eq. 6 condition

        members = torch.zeros(len(rows), num_all + 1, dtype=torch.bool, device=device)  # last col: dump
        members.scatter_(1, torch.where(recip, candidates, num_all), True)
        expanded = torch.where(accept[..., None] & cand_valid, cand_sets, num_all).flatten(1)
        members.scatter_(1, expanded, True)
        local_rows, cols = members[:, :num_all].nonzero(as_tuple=True)  # row-major, cols ascending
        global_rows = local_rows + start
        weights = torch.exp(-dist.entries(global_rows, cols))  # float32
        row_sums = torch.zeros(len(rows), device=device).index_add_(0, local_rows, weights)
        rows_out.append(global_rows)
        cols_out.append(cols)
        vals_out.append(weights / row_sums[local_rows])
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)


def _row_pointer(rows: Tensor, num_rows: int) -> Tensor:
    """(num_rows + 1,) CSR pointer of row-sorted COO ``rows``."""
    counts = torch.bincount(rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _expand_ranges(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenated ranges [starts[e], starts[e] + counts[e]) and, for each element, its range e."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    positions = starts[owner] + torch.arange(len(owner), device=counts.device) - offsets[owner]
    return positions, owner


def _query_expansion(
    rows: Tensor, cols: Tensor, vals: Tensor, expansion: Tensor, num_all: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse V_qe[i] = mean of V over the k2 nearest neighbours of i (Eq. 11), row-sorted COO."""
    pointer = _row_pointer(rows, num_all)
    k2 = expansion.shape[1]
    sources = expansion.reshape(-1)  # (N * k2,) rows of V to average, grouped by target row
    counts = pointer[sources + 1] - pointer[sources]
    positions, owner = _expand_ranges(pointer[sources], counts)
    keys = (owner // k2) * num_all + cols[positions]  # (target row, column) pairs, with repeats
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    sums = torch.zeros(len(unique_keys), dtype=vals.dtype, device=vals.device).index_add_(
        0, inverse, vals[positions]
    )
    return unique_keys // num_all, unique_keys % num_all, sums / k2


def _jaccard_query_gallery(
    rows: Tensor, cols: Tensor, vals: Tensor, num_query: int, num_all: int, max_pairs: int
) -> Tensor:
    """(q, g) Jaccard distance 1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk) (Eq. 10, with sum max =
    2 - sum min since rows of V sum to 1), over pairs sharing a non-zero column k."""
    device, num_gallery = rows.device, num_all - num_query
    # inverted index: for each column k, the gallery rows j with V[j, k] != 0
    in_gallery = rows >= num_query
    by_col = torch.sort(cols[in_gallery], stable=True)
    inv_rows = (rows[in_gallery] - num_query)[by_col.indices]
    inv_vals = vals[in_gallery][by_col.indices]
    col_pointer = _row_pointer(by_col.values, num_all)
    col_count = col_pointer[1:] - col_pointer[:-1]

    query_end = int((rows < num_query).sum())  # V is row-sorted: query rows come first
    q_rows, q_cols, q_vals = rows[:query_end], cols[:query_end], vals[:query_end]
    pairs_per_row = torch.zeros(num_query, dtype=torch.long, device=device)
    pairs_per_row.index_add_(0, q_rows, col_count[q_cols])
    cum_pairs = pairs_per_row.cumsum(0)
    row_pointer = _row_pointer(q_rows, num_query)

    jaccard = torch.empty(num_query, num_gallery, device=device)
    start = 0
    while start < num_query:
        done = int(cum_pairs[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(cum_pairs, done + max_pairs, right=True))
        stop = min(max(stop, start + 1), num_query)
        entries = slice(int(row_pointer[start]), int(row_pointer[stop]))
        k, v_i, local = q_cols[entries], q_vals[entries], q_rows[entries] - start
        positions, owner = _expand_ranges(col_pointer[k], col_count[k])
        shared = torch.minimum(v_i[owner], inv_vals[positions])  # min(V_ik, V_jk)
        temp_min = torch.zeros((stop - start) * num_gallery, device=device)
        temp_min.index_add_(0, local[owner] * num_gallery + inv_rows[positions], shared)
        temp_min = temp_min.view(stop - start, num_gallery)
        jaccard[start:stop] = 1 - temp_min / (2.0 - temp_min)
        start = stop
    return jaccard
