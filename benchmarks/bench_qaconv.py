"""Benchmark: the cost of QAConv's pair matching and of TLift, against plain embedding distances.

QAConv scores every (query, gallery) pair with an (hw x hw) matrix product, so its cost grows with the
number of map locations squared; ``pairs_per_chunk`` bounds how many pairs' similarities are held at once.
For each map size (4x2: 64x32 images at stride 16; 8x4: the book's CPU setting; 24x8: the paper's 384x128)
and chunk size this prints pairs per second, the peak memory growth of the call (measured in a spawned
child, as in ``bench_evaluation.py``) and the time that rate implies for Market-1501's test set
(3,368 x 15,913 pairs). TLift is timed on a Market-1501-sized random score matrix.

    python benchmarks/bench_qaconv.py --threads 2 [--map-sizes 8x4 24x8] [--skip-tlift]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from bench_evaluation import measure

from reidbook.evaluation import euclidean_distance, pairwise_distance_matrix, tlift
from reidbook.models.qaconv import QueryAdaptiveConv

MARKET_PAIRS = 3368 * 15913
MAP_SIZES = ((4, 2), (8, 4), (24, 8))
CHUNKS = (512, 2048, 8192)
CHANNELS = 128


def map_size_arg(text: str) -> tuple[int, int]:
    """'8x4' -> (8, 4)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a map size is HxW, e.g. 8x4; got {text!r}") from None
    return height, width


def random_maps(count: int, map_size: tuple[int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(count, CHANNELS, *map_size, generator=generator), dim=1)


def score_block(map_size: tuple[int, int], chunk: int, num_q: int, num_g: int) -> int:
    """Score num_q x num_g random maps with the matcher in eval mode; returns the number of pairs."""
    matcher = QueryAdaptiveConv(map_size, pairs_per_chunk=chunk).eval()
    query, gallery = random_maps(num_q, map_size, 0), random_maps(num_g, map_size, 1)
    with torch.no_grad():
        pairwise_distance_matrix(matcher.logits, query, gallery, progress=False)
    return num_q * num_g


def embedding_block(num_q: int, num_g: int, dim: int) -> int:
    generator = torch.Generator().manual_seed(0)
    query, gallery = (torch.randn(n, dim, generator=generator) for n in (num_q, num_g))
    euclidean_distance(query, gallery)
    return num_q * num_g


def market_tlift() -> tuple[int, int]:
    rng = np.random.default_rng(0)
    num_q, num_g = 3368, 15913
    score = rng.random((num_q, num_g), dtype=np.float32)
    q_cams, g_cams = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    q_times, g_times = rng.uniform(0, 3600, num_q), rng.uniform(0, 3600, num_g)
    tlift(score, q_cams, q_times, g_cams, g_times)
    return num_q, num_g


def row(name: str, seconds: float, peak_mib: float, pairs: int) -> None:
    rate = pairs / seconds
    print(f"  {name:<40} {rate:>12,.0f} pairs/s  peak +{peak_mib:7.0f} MiB  "
          f"Market-1501 test set: {MARKET_PAIRS / rate:8.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--map-sizes", nargs="+", default=MAP_SIZES, type=map_size_arg, metavar="HxW")
    parser.add_argument("--skip-tlift", action="store_true")
    args = parser.parse_args()
    print(f"QAConv matching, {CHANNELS} channels, {args.threads} threads (CPU)")
    for map_size in args.map_sizes:
        hw = map_size[0] * map_size[1]
        num_g = max(256, 2_000_000 // hw**2)  # about the same work for every map size
        for chunk in CHUNKS:
            seconds, peak, pairs = measure(score_block, (map_size, chunk, 64, num_g), args.threads)
            row(f"{map_size[0]}x{map_size[1]} maps, pairs_per_chunk={chunk}", seconds, peak, pairs)
    seconds, peak, pairs = measure(embedding_block, (1024, 16384, 2048), args.threads)
    row("embeddings, 2048-d, squared euclidean", seconds, peak, pairs)
    if not args.skip_tlift:
        seconds, peak, (num_q, num_g) = measure(market_tlift, (), args.threads)
        print(f"TLift on a {num_q} x {num_g} score matrix (6 cameras): {seconds:.1f} s, peak +{peak:.0f} MiB")


if __name__ == "__main__":
    main()
