"""Evaluators: how a trained model is judged, as objects that describe themselves.

An :class:`Evaluator` is a *measure* (how two sets of test features become a distance matrix) and a
*protocol* (which gallery images count for which query, over how many random trials):

* measures: :class:`Embedding` (Euclidean or cosine distance of flip-averaged embeddings) and
  :class:`Pairwise` (the model scores every (query, gallery) pair itself through ``model.pair_distances``,
  block by block with bounded memory: QAConv's matching, IPAD's pair-specific distance);
* protocols: :class:`Standard` (Market-1501 style: same identity in the same camera removed),
  :class:`SYSU` (infrared queries, random visible galleries, all- or indoor-search, single- or multi-shot),
  :class:`RegDB` (one modality against the other, nothing removed) and :class:`VehicleID` (a random
  gallery image per vehicle, repeated). ``protocol="auto"`` picks the dataset's own.

Post-processing steps compose with any measure: :class:`ReRank` (k-reciprocal re-ranking) and
:class:`TLift` (temporal lifting, with a shuffled-time control). Every piece has a ``describe()`` that
enters the key of a stored evaluation (:func:`reidbook.experiment.evaluate`), so a changed setting is a
new evaluation, never a stale one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import Record, ReIDDataset, build_test_loader
from ..engine import Feed, extract_features, feed_images, resolve_device
from .distance import cosine_distance, euclidean_distance
from .pairwise import pairwise_distance_matrix
from .protocols import evaluate_regdb, evaluate_sysu_trials, evaluate_vehicleid_trials
from .ranking import evaluate_rank
from .rerank import re_ranking
from .tlift import tlift

Features = Tensor | dict[str, Tensor]
REPORTED_RANKS = (1, 5, 10, 20)


def _take(features: Features, index: Tensor | slice) -> Features:
    if isinstance(features, dict):
        return {name: value[index] for name, value in features.items()}
    return features[index]


def _cat(a: Features, b: Features) -> Features:
    if isinstance(a, dict):
        return {name: torch.cat([a[name], b[name]]) for name in a}
    return torch.cat([a, b])


# ------------------------------------------------------------------------------------------------ measures
@dataclass(frozen=True)
class Embedding:
    """Distances between embeddings: ``"euclidean"`` (squared, as torchreid) or ``"cosine"`` (1 - cos);
    ``flip`` averages each image's embedding with its mirror image's."""

    metric: str = "euclidean"
    flip: bool = True

    def __post_init__(self) -> None:
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {self.metric!r}")

    #: k-reciprocal re-ranking squares its input, as the reference code does for Euclidean distances.
    rerank_square = True

    def distances(self, model: nn.Module, a: Features, b: Features, device: torch.device) -> Tensor:
        if isinstance(a, dict):
            raise TypeError("an Embedding measure needs one embedding tensor per image in eval mode, "
                            "not a dict of features")
        distance = euclidean_distance if self.metric == "euclidean" else cosine_distance
        return distance(a.flatten(1).to(device), b.flatten(1).to(device)).cpu()


@dataclass(frozen=True)
class Pairwise:
    """The model's own pair distances, ``model.pair_distances(query_feats, gallery_feats) -> (q, g)``,
    computed in blocks of ``q_chunk`` x ``g_chunk`` pairs (memory bounded, no loop over pairs)."""

    flip: bool = False
    q_chunk: int = 256
    g_chunk: int = 1024

    #: pair distances are re-ranked as given, as the QAConv authors do with theirs.
    rerank_square = False

    def distances(self, model: nn.Module, a: Features, b: Features, device: torch.device) -> Tensor:
        if not callable(getattr(model, "pair_distances", None)):
            raise ValueError(f"a Pairwise measure needs a model with pair_distances(query, gallery); "
                             f"{type(model).__name__} has none")
        was_training = model.training
        model.eval()
        try:
            return pairwise_distance_matrix(model.pair_distances, a, b, q_chunk=self.q_chunk,
                                            g_chunk=self.g_chunk, device=device, progress=False,
                                            conversion="as_distance")
        finally:
            model.train(was_training)


Measure = Embedding | Pairwise


# ----------------------------------------------------------------------------------------------- protocols
@dataclass
class TestSplit:
    """What protocols and post-processing steps see of one evaluation: the model, its measure, the query
    and gallery records and their features. Distance matrices between the two roles, and the results of
    post-processing chains, are computed once and kept (``cache``), so several evaluations of one split
    (with and without re-ranking, TLift, the control) share them."""

    model: nn.Module
    measure: Measure
    device: torch.device
    query: Sequence[Record]
    gallery: Sequence[Record]
    query_feats: Features
    gallery_feats: Features
    cache: dict[Any, Tensor] = field(default_factory=dict, repr=False)

    def distances(self, a: Features, b: Features) -> Tensor:
        with torch.no_grad():
            return self.measure.distances(self.model, a, b, self.device)

    def role_distances(self, a: str, b: str) -> Tensor:
        """Distances between the ``"query"`` or ``"gallery"`` features, computed once."""
        if (a, b) not in self.cache:
            self.cache[a, b] = self.distances(getattr(self, f"{a}_feats"), getattr(self, f"{b}_feats"))
        return self.cache[a, b]


def _labels(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def _with_ranks(metrics: Mapping[str, Any]) -> dict[str, Any]:
    cmc = np.asarray(metrics["cmc"])
    ranks = {f"rank{k}": float(cmc[k - 1]) for k in REPORTED_RANKS if k <= len(cmc)}
    return {**metrics, **ranks}


@dataclass(frozen=True)
class Standard:
    """Market-1501 / DukeMTMC-reID / MSMT17 / CUHK03 / VeRi-776: a gallery image of the query's identity
    in the query's camera is removed from its ranking (:func:`evaluate_rank`)."""

    max_rank: int = 50

    def score(self, distances: Tensor, split: TestSplit) -> dict[str, Any]:
        (q_pids, q_cams), (g_pids, g_cams) = _labels(split.query), _labels(split.gallery)
        return _with_ranks(evaluate_rank(distances, q_pids, g_pids, q_cams, g_cams, max_rank=self.max_rank))


@dataclass(frozen=True)
class SYSU:
    """SYSU-MM01: infrared queries against ``trials`` random visible galleries, ``mode`` ``"all"`` or
    ``"indoor"`` search, ``shots`` 1 (single-shot) or 10 (multi-shot); see
    :func:`reidbook.evaluation.protocols.evaluate_sysu_trials`. The distances are to every visible test
    image; each trial keeps its gallery's columns."""

    mode: str = "all"
    shots: int = 1
    trials: int = 10
    seed: int = 0

    def score(self, distances: Tensor, split: TestSplit) -> dict[str, Any]:
        (q_pids, q_cams), (g_pids, g_cams) = _labels(split.query), _labels(split.gallery)
        result = evaluate_sysu_trials(distances, q_pids, g_pids, q_cams, g_cams, mode=self.mode,
                                      num_trials=self.trials, num_shots=self.shots, seed=self.seed)
        return {k: v for k, v in result.items() if k != "trials"}


@dataclass(frozen=True)
class RegDB:
    """RegDB, one split: queries of one modality against the gallery of the other, nothing removed (the
    direction is the dataset's: the reader's ``direction``); splits are separate datasets and runs."""

    def score(self, distances: Tensor, split: TestSplit) -> dict[str, Any]:
        (q_pids, _), (g_pids, _) = _labels(split.query), _labels(split.gallery)
        return _with_ranks(evaluate_regdb(distances, q_pids, g_pids))


@dataclass(frozen=True)
class VehicleID:
    """VehicleID: the query and gallery images of the reader's split are pooled back into the test set,
    and ``trials`` seeded draws each take one random gallery image per vehicle, the others as queries
    (:func:`reidbook.evaluation.protocols.evaluate_vehicleid_trials`). Post-processing does not apply."""

    trials: int = 10
    seed: int = 0
    uses_whole_test_set = True

    def score(self, distances: Tensor | None, split: TestSplit) -> dict[str, Any]:
        everything = _cat(split.query_feats, split.gallery_feats)
        pids = np.concatenate([_labels(split.query)[0], _labels(split.gallery)[0]])

        def trial_distances(query: np.ndarray, gallery: np.ndarray) -> Tensor:
            return split.distances(_take(everything, torch.as_tensor(query)),
                                   _take(everything, torch.as_tensor(gallery)))

        result = evaluate_vehicleid_trials(trial_distances, pids, num_trials=self.trials, seed=self.seed)
        return {k: v for k, v in result.items() if k != "trials"}


Protocol = Standard | SYSU | RegDB | VehicleID


def protocol_for(dataset: ReIDDataset) -> Protocol:
    """The dataset's own protocol, by its reader's name."""
    if dataset.name.startswith("sysu"):
        return SYSU()
    if dataset.name.startswith("regdb"):
        return RegDB()
    if dataset.name.startswith("vehicleid"):
        return VehicleID()
    return Standard()


# ------------------------------------------------------------------------------------------ post-processing
@dataclass(frozen=True)
class ReRank:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) with the query-query and gallery-gallery distances
    of the same measure. ``square=None`` follows the measure: Euclidean embedding distances are squared as
    in the reference code, pair distances (QAConv's) are used as given, as their authors do."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    square: bool | None = None

    def apply(self, distances: Tensor, split: TestSplit) -> Tensor:
        square = split.measure.rerank_square if self.square is None else self.square
        q_q, g_g = split.role_distances("query", "query"), split.role_distances("gallery", "gallery")
        return torch.as_tensor(re_ranking(distances, q_q, g_g, k1=self.k1, k2=self.k2,
                                          lambda_value=self.lambda_value, square=square))


def _times_and_cams(records: Sequence[Record], role: str) -> tuple[np.ndarray, np.ndarray]:
    times = np.array([np.nan if r.time is None else r.time for r in records], dtype=float)
    if np.isnan(times).any():
        raise ValueError(f"TLift needs a time stamp for every image; {int(np.isnan(times).sum())} {role} "
                         "images have none (the dataset's reader gives no times)")
    return times, np.array([r.camid for r in records])


@dataclass(frozen=True)
class TLift:
    """Temporal lifting (Liao & Shao, ECCV 2020, Eq. 3) of the scores ``1 - d``, as the authors apply it to
    re-ranked distances; distances outside [0, 1] are first mapped onto it by min-max scaling (monotone).
    ``shuffle_times=True`` is the control: the time stamps are permuted across all test images (seeded by
    ``seed``) before lifting, which destroys the temporal evidence and keeps everything else."""

    tau: float = 100
    sigma: float = 100
    K: int = 100
    alpha: float = 0.1
    shuffle_times: bool = False
    seed: int = 0

    def apply(self, distances: Tensor, split: TestSplit) -> Tensor:
        q_times, q_cams = _times_and_cams(split.query, "query")
        g_times, g_cams = _times_and_cams(split.gallery, "gallery")
        if self.shuffle_times:
            shuffled = np.random.default_rng(self.seed).permutation(np.concatenate([q_times, g_times]))
            q_times, g_times = shuffled[: len(q_times)], shuffled[len(q_times):]
        d = torch.as_tensor(distances, dtype=torch.float64)
        if d.min() < 0 or d.max() > 1:
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
        lifted = tlift(1.0 - d, q_cams, q_times, g_cams, g_times, tau=self.tau, sigma=self.sigma, K=self.K,
                       alpha=self.alpha)
        return (1.0 - lifted).float()


PostStep = ReRank | TLift


def describe(piece: Any) -> dict[str, Any]:
    """``{"kind": class name, **fields}``: what enters an evaluation's key."""
    return {"kind": type(piece).__name__, **asdict(piece)}


# ---------------------------------------------------------------------------------------------- evaluator
@dataclass
class Evaluation:
    """The result of one evaluation: scalar and curve ``metrics``, the final (post-processed) distance
    matrix (query x gallery; ``None`` for VehicleID's trials) and the description that keys it."""

    metrics: dict[str, Any]
    distances: Tensor | None
    description: dict[str, Any]


@dataclass(frozen=True)
class Evaluator:
    """A measure and a protocol (``"auto"``: the dataset's own, see :func:`protocol_for`)."""

    measure: Measure = field(default_factory=Embedding)
    protocol: Protocol | str = "auto"

    def resolve(self, dataset: ReIDDataset) -> Protocol:
        if self.protocol == "auto":
            return protocol_for(dataset)
        if isinstance(self.protocol, str):
            raise ValueError(f"protocol must be 'auto' or a protocol object, got {self.protocol!r}")
        return self.protocol

    def describe(self, dataset: ReIDDataset, post: Sequence[PostStep] = ()) -> dict[str, Any]:
        return {"measure": describe(self.measure), "protocol": describe(self.resolve(dataset)),
                "post": [describe(step) for step in post]}

    def split(self, model: nn.Module, dataset: ReIDDataset, *, height: int, width: int,
              feed: Feed = feed_images, device: str | torch.device = "auto", num_workers: int = 0,
              progress: bool = False, channels_last: bool | str = "auto") -> TestSplit:
        """Test features of ``dataset``'s query and gallery images at the model's input size
        (``channels_last``: see :func:`~reidbook.engine.extract_features`)."""
        torch_device = resolve_device(device)
        loaders = [build_test_loader(records, height=height, width=width, num_workers=num_workers)
                   for records in (dataset.query, dataset.gallery)]
        features = [extract_features(model, loader, feed=feed, flip=self.measure.flip, device=torch_device,
                                     progress=progress, channels_last=channels_last)[0] for loader in loaders]
        return TestSplit(model, self.measure, torch_device, dataset.query, dataset.gallery, *features)

    def evaluate_split(self, split: TestSplit, dataset: ReIDDataset,
                       post: Sequence[PostStep] = ()) -> Evaluation:
        """Distances of ``split`` -> each ``post`` step in turn -> the protocol's metrics."""
        protocol = self.resolve(dataset)
        whole_test_set = getattr(protocol, "uses_whole_test_set", False)
        if post and whole_test_set:
            raise ValueError(f"post-processing does not apply to the {type(protocol).__name__} protocol")
        distances = None
        if not whole_test_set:
            distances = split.role_distances("query", "gallery")
            chain: tuple[str, ...] = ()
            for step in post:
                chain += (repr(describe(step)),)
                if chain not in split.cache:
                    split.cache[chain] = step.apply(distances, split)
                distances = split.cache[chain]
        return Evaluation(_plain(protocol.score(distances, split)), distances, self.describe(dataset, post))

    def evaluate(self, model: nn.Module, dataset: ReIDDataset, *, height: int, width: int,
                 feed: Feed = feed_images, post: Sequence[PostStep] = (), device: str | torch.device = "auto",
                 num_workers: int = 0, progress: bool = False,
                 channels_last: bool | str = "auto") -> Evaluation:
        """Features of ``dataset``'s test split -> distances -> ``post`` -> the protocol's metrics."""
        split = self.split(model, dataset, height=height, width=width, feed=feed, device=device,
                           num_workers=num_workers, progress=progress, channels_last=channels_last)
        return self.evaluate_split(split, dataset, post)


def _plain(value: Any) -> Any:
    """Metrics as JSON-ready Python values (arrays become lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, Tensor)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
