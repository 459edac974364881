"""Benchmark: vectorised ``evaluate_rank`` and torch ``re_ranking`` against per-query numpy references.

Market-1501-sized random problem (3,368 queries x 15,913 gallery images, 751 identities, 6 cameras) built
from clustered random embeddings, so the metrics are neither 0 nor 1. Each measured call runs in a fresh
(spawned) child process; "peak memory" is that child's peak resident set size during the call (VmHWM,
reset just before the call via /proc/self/clear_refs) minus its RSS before the call. It counts numpy *and*
torch allocations (and allocator slack) of the call itself, not the inputs already in memory.

    python benchmarks/bench_evaluation.py --threads 2 [--rerank-size 3000] [--full-rerank] [--full-reference]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections.abc import Callable

import numpy as np
import torch

from reidbook.evaluation import euclidean_distance, evaluate_rank, re_ranking

MARKET = {"queries": 3368, "gallery": 15913, "ids": 751, "cameras": 6}


# ----------------------------------------------------------------- references (per-query numpy loops)


def reference_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The standard per-query Python path (as torchreid's ``eval_market1501`` plus AGW's mINP).

    The argsort is stable here (torchreid uses numpy's default quicksort) so that ties, frequent among
    15,913 float32 distances, are broken the same way as in ``evaluate_rank``.
    """
    indices = np.argsort(distmat, axis=1, kind="stable")  # ties by gallery index, as evaluate_rank
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q_idx in range(len(q_pids)):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        last_hit = np.flatnonzero(raw_cmc).max()
        all_inp.append(cmc[last_hit] / (last_hit + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = [hits / (rank + 1.0) for rank, hits in enumerate(raw_cmc.cumsum())]
        all_ap.append((np.asarray(precision) * raw_cmc).sum() / raw_cmc.sum())
    cmc = np.asarray(all_cmc, dtype=np.float64).sum(0) / len(all_ap)
    return {"cmc": cmc, "mAP": float(np.mean(all_ap)), "mINP": float(np.mean(all_inp))}


def _reciprocal_neighbours(rank, i, k):
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def reference_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """The authors' algorithm with dense numpy matrices and per-row loops (as their re_ranking.py)."""
    full = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    full = np.power(full, 2).astype(np.float32)
    dist = np.transpose(full / np.max(full, axis=0))
    del full
    num_query, num_all = q_g.shape[0], dist.shape[0]
    rank = np.argsort(dist, kind="stable").astype(np.int32)  # the reference's quicksort breaks ties randomly
    half = int(np.around(k1 / 2.0))
    V = np.zeros_like(dist)
    for i in range(num_all):
        own = _reciprocal_neighbours(rank, i, k1)
        expansion = own
        for candidate in own:
            theirs = _reciprocal_neighbours(rank, candidate, half)
            if len(np.intersect1d(theirs, own)) > 2.0 / 3 * len(theirs):
                expansion = np.append(expansion, theirs)
        expansion = np.unique(expansion)
        weights = np.exp(-dist[i, expansion])
        V[i, expansion] = weights / np.sum(weights)
    query_dist = dist[:num_query]
    del dist
    if k2 != 1:
        V = np.stack([np.mean(V[rank[i, :k2]], axis=0) for i in range(num_all)])
    del rank
    inverted = [np.where(V[:, k] != 0)[0] for k in range(num_all)]
    jaccard = np.zeros_like(query_dist)
    for i in range(num_query):
        shared = np.zeros(num_all, dtype=np.float32)
        for k in np.where(V[i] != 0)[0]:
            others = inverted[k]
            shared[others] += np.minimum(V[i, k], V[others, k])
        jaccard[i] = 1 - shared / (2.0 - shared)
    final = jaccard * (1 - lambda_value) + query_dist * lambda_value
    return final[:, num_query:]


# ----------------------------------------------------------------- measurement


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def _child(fn: Callable, args: tuple, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    queue.put((seconds, (peak - before) / 1024, result))


def measure(fn: Callable, args: tuple, threads: int) -> tuple[float, float, object]:
    """(seconds, peak RSS growth in MiB, result) of ``fn(*args)`` in a spawned child."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, threads, queue))
    proc.start()
    seconds, peak_mib, result = queue.get()
    proc.join()
    return seconds, peak_mib, result


# ----------------------------------------------------------------- problems


def clustered_embeddings(num: int, ids: np.ndarray, rng: np.random.Generator, dim: int = 64) -> np.ndarray:
    centres = np.random.default_rng(12345).normal(size=(int(ids.max()) + 1, dim))
    return (centres[ids] + 1.2 * rng.normal(size=(num, dim))).astype(np.float32)


def market_like(num_q: int, num_g: int, num_ids: int, num_cams: int, seed: int):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    q_feat = clustered_embeddings(num_q, q_pids, rng)
    g_feat = clustered_embeddings(num_g, g_pids, rng)
    return q_feat, g_feat, q_pids, g_pids, q_cams, g_cams


def report(name: str, ours: tuple, ref: tuple | None, diff: float | None) -> None:
    print(f"  {name}: ours {ours[0]:8.2f} s, peak +{ours[1]:7.0f} MiB", end="")
    if ref is not None:
        speed_up = ref[0] / ours[0]
        print(f" | reference {ref[0]:8.2f} s, peak +{ref[1]:7.0f} MiB | speed-up x{speed_up:.1f}", end="")
    print(f" | max |diff| {diff:.3g}" if diff is not None else "")


def bench_evaluate_rank(args) -> None:
    q_feat, g_feat, q_pids, g_pids, q_cams, g_cams = market_like(
        args.queries, args.gallery, args.ids, args.cameras, args.seed
    )
    distmat = euclidean_distance(q_feat, g_feat)  # (q, g) float32, squared
    print(f"evaluate_rank on {distmat.shape[0]} x {distmat.shape[1]} (float32), {args.threads} threads")
    ours = measure(evaluate_rank, (torch.from_numpy(distmat), q_pids, g_pids, q_cams, g_cams), args.threads)
    ref = measure(reference_evaluate_rank, (distmat, q_pids, g_pids, q_cams, g_cams), args.threads)
    diff = max(
        float(np.abs(ours[2]["cmc"] - ref[2]["cmc"]).max()),
        abs(ours[2]["mAP"] - ref[2]["mAP"]),
        abs(ours[2]["mINP"] - ref[2]["mINP"]),
    )
    report("evaluate_rank", ours, ref, diff)
    print(
        f"  rank-1 {ours[2]['cmc'][0]:.4f}  mAP {ours[2]['mAP']:.6f} (ref {ref[2]['mAP']:.6f})  "
        f"mINP {ours[2]['mINP']:.6f} (ref {ref[2]['mINP']:.6f})  valid queries {ours[2]['num_valid_queries']}"
    )


def rerank_inputs(num_q: int, num_g: int, args):
    q_feat, g_feat, *_ = market_like(num_q, num_g, args.ids, args.cameras, args.seed + 1)
    return (
        euclidean_distance(q_feat, g_feat),
        euclidean_distance(q_feat, q_feat),
        euclidean_distance(g_feat, g_feat),
    )


def bench_re_ranking(args) -> None:
    total = args.queries + args.gallery
    num_q = round(args.rerank_size * args.queries / total)
    inputs = rerank_inputs(num_q, args.rerank_size - num_q, args)
    print(f"re_ranking on a subset: {num_q} + {args.rerank_size - num_q} images (k1=20, k2=6, lambda=0.3)")
    ours = measure(re_ranking, inputs, args.threads)
    ref = measure(reference_re_ranking, inputs, args.threads)
    report("re_ranking", ours, ref, float(np.abs(ours[2] - ref[2]).max()))
    if not args.full_rerank:
        return
    inputs = rerank_inputs(args.queries, args.gallery, args)
    print(f"re_ranking at full size: {args.queries} + {args.gallery} images")
    ours = measure(re_ranking, inputs, args.threads)
    ref = measure(reference_re_ranking, inputs, args.threads) if args.full_reference else None
    diff = float(np.abs(ours[2] - ref[2]).max()) if ref is not None else None
    report("re_ranking", ours, ref, diff)
    in_mib = sum(x.nbytes for x in inputs) / 2**20
    print(f"  (inputs: {in_mib:.0f} MiB of float32 distances; output {ours[2].nbytes / 2**20:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, value in MARKET.items():
        parser.add_argument(f"--{name}", type=int, default=value)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerank-size", type=int, default=3000, help="q + g of the re-ranking subset")
    parser.add_argument("--full-rerank", action="store_true", help="also run ours on the full problem")
    parser.add_argument("--full-reference", action="store_true", help="and the dense reference (>8 GB RAM)")
    parser.add_argument("--skip-rank", action="store_true")
    args = parser.parse_args()
    if not args.skip_rank:
        bench_evaluate_rank(args)
    bench_re_ranking(args)


if __name__ == "__main__":
    main()
