"""Evaluation: ranking metrics, dataset protocols, k-reciprocal re-ranking, pairwise scoring, distances."""

from .distance import cosine_distance, euclidean_distance, flip_average
from .pairwise import pairwise_distance_matrix
from .protocols import (
    evaluate_regdb,
    evaluate_regdb_trials,
    evaluate_sysu,
    evaluate_sysu_trials,
    evaluate_vehicleid_trials,
    sample_sysu_gallery,
    split_vehicleid,
    summarize_trials,
)
from .ranking import evaluate_rank, rank_metrics
from .rerank import re_ranking
from .tlift import tlift

__all__ = [
    "cosine_distance",
    "euclidean_distance",
    "evaluate_rank",
    "evaluate_regdb",
    "evaluate_regdb_trials",
    "evaluate_sysu",
    "evaluate_sysu_trials",
    "evaluate_vehicleid_trials",
    "flip_average",
    "pairwise_distance_matrix",
    "rank_metrics",
    "re_ranking",
    "sample_sysu_gallery",
    "split_vehicleid",
    "summarize_trials",
    "tlift",
]
