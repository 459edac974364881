"""Evaluators (reidbook.evaluation.evaluators): measures, protocols and post-processing on tiny image files
whose content the test models read back exactly, checked against direct calls of the ranking, re-ranking
and TLift functions and against naive per-pair distances."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reidbook.data import IMAGENET_MEAN, IMAGENET_STD, Record, ReIDDataset
from reidbook.evaluation import evaluators
from reidbook.evaluation.evaluators import (
    SYSU,
    Embedding,
    Evaluator,
    Pairwise,
    RegDB,
    ReRank,
    Standard,
    TLift,
    VehicleID,
    describe,
    protocol_for,
)
from reidbook.evaluation.protocols import evaluate_regdb, evaluate_vehicleid_trials
from reidbook.evaluation.ranking import evaluate_rank
from reidbook.evaluation.rerank import re_ranking
from reidbook.evaluation.tlift import tlift

HEIGHT, WIDTH = 8, 4
pytestmark = pytest.mark.filterwarnings("ignore:gallery has only")  # small galleries shorten the CMC curve
SIZE = dict(height=HEIGHT, width=WIDTH, device="cpu")


# ------------------------------------------------------------------------------------------- the images
def write_image(path: Path, left: int, right: int, code: int) -> str:
    """An 8 x 4 PNG: channel 0 is ``left`` in columns 0-1 and ``right`` in columns 2-3, channel 1 is
    ``code`` everywhere (which image it is), channel 2 is 0."""
    array = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    array[:, : WIDTH // 2, 0], array[:, WIDTH // 2 :, 0], array[:, :, 1] = left, right, code
    Image.fromarray(array).save(path)
    return str(path)


def levels(img: torch.Tensor) -> torch.Tensor:
    """Undo the test transform's normalisation: (B, 3, H, W) -> pixel levels 0..255."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (img * std + mean) * 255


class Lookup(nn.Module):
    """Eval output: a fixed embedding per image, the row of ``table`` its channel-1 code (10 x row) names."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.table[torch.round(levels(img)[:, 1].mean(dim=(1, 2)) / 10).long()]


class Halves(nn.Module):
    """Eval output (B, 2): ``scale`` x the mean level / 255 of the left and of the right half of channel 0
    (a mirror image swaps them). ``pair_distances`` is an L1 distance squashed into [0, 1), counted per
    call, with the mode the model was in."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        channel = levels(img)[:, 0] * (self.scale / 255)  # (B, H, W)
        return torch.stack([channel[:, :, : WIDTH // 2].mean(dim=(1, 2)),
                            channel[:, :, WIDTH // 2 :].mean(dim=(1, 2))], dim=1)  # (B, 2)

    def pair_distances(self, query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        self.calls.append((query, gallery, self.training))
        return 1 - torch.exp(-(query[:, None] - gallery[None]).abs().sum(-1) * 3)  # (q, g)


def naive_pair_distances(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[1 - math.exp(-3 * sum(abs(float(a) - float(b)) for a, b in zip(q, g)))
                          for g in gallery] for q in query])


def naive_squared_euclidean(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[sum((float(a) - float(b)) ** 2 for a, b in zip(q, g)) for g in gallery]
                         for q in query])


def naive_cosine(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    def cos(a, b):
        return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))

    return torch.tensor([[1 - cos(q, g) for g in gallery] for q in query])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def table_dataset(folder: Path) -> ReIDDataset:
    """Two queries and four gallery images whose Lookup embeddings are rows 0-5 of :data:`TABLE`."""
    paths = [write_image(folder / f"table{row}.png", 0, 0, 10 * row) for row in range(6)]
    query = [Record(paths[0], 0, 0), Record(paths[1], 1, 0)]
    gallery = [Record(paths[2], 0, 1), Record(paths[3], 2, 1), Record(paths[4], 1, 1), Record(paths[5], 2, 1)]
    return ReIDDataset("market1501", str(folder), [], query, gallery)


# Query 0 (pid 0) is nearest its true match; query 1 (pid 1) has a wrong gallery image ranked first.
TABLE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 1.0], [0.1, 0.9], [1.0, 0.3]])


@pytest.fixture(scope="module")
def world(folder: Path) -> ReIDDataset:
    """Six identities: one query each in camera 0 and two gallery images each in cameras 1 and 2, with
    left/right levels near the identity's own and times near the identity's own moment."""
    rng = np.random.default_rng(0)
    query, gallery = [], []
    for pid in range(6):
        for shot, camid in enumerate((0, 1, 2)):
            left = int(np.clip(30 + 35 * pid + rng.integers(-25, 26), 0, 255))
            right = int(np.clip(220 - 30 * pid + rng.integers(-25, 26), 0, 255))
            path = write_image(folder / f"world{pid}-{shot}.png", left, right, 0)
            record = Record(path, pid, camid, time=float(200 * pid + rng.integers(0, 120)))
            (query if camid == 0 else gallery).append(record)
    return ReIDDataset("market1501", str(folder), [], query, gallery)


def features_by_hand(records: list[Record], scale: float = 1.0) -> torch.Tensor:
    """What :class:`Halves` gives without flipping: ``scale`` x (left, right) levels / 255, read from the
    files."""
    pixels = [np.asarray(Image.open(r.path))[0, :, 0] for r in records]  # first row of channel 0
    return torch.tensor([[scale * float(row[0]) / 255, scale * float(row[-1]) / 255] for row in pixels])


def labels(records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


# ------------------------------------------------------------------------------------------ measures
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_embedding_distances_on_hand_made_embeddings(table_dataset, metric):
    evaluator = Evaluator(Embedding(metric, flip=False), Standard(max_rank=4))
    result = evaluator.evaluate(Lookup(TABLE), table_dataset, **SIZE)
    naive = naive_squared_euclidean if metric == "euclidean" else naive_cosine
    torch.testing.assert_close(result.distances, naive(TABLE[:2], TABLE[2:]))
    # Query 1's ranking: gallery 3 (pid 2), gallery 4 (pid 1) -> AP = 1/2; query 0: AP = 1.
    metrics = result.metrics
    assert metrics["rank1"] == pytest.approx(0.5)
    assert "rank5" not in metrics  # the CMC curve is only max_rank=4 long
    assert metrics["mAP"] == pytest.approx(0.75)
    assert math.isclose(metrics["cmc"][1], 1.0)
    assert isinstance(metrics["cmc"], list)  # JSON-ready


def test_the_standard_protocol_ranks_as_evaluate_rank_does(world):
    result = Evaluator(Embedding(flip=False), Standard()).evaluate(Halves(), world, **SIZE)
    q_feats, g_feats = features_by_hand(world.query), features_by_hand(world.gallery)
    torch.testing.assert_close(result.distances, naive_squared_euclidean(q_feats, g_feats))
    (q_pids, q_cams), (g_pids, g_cams) = labels(world.query), labels(world.gallery)
    expected = evaluate_rank(result.distances, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert result.metrics["mAP"] == pytest.approx(expected["mAP"])
    assert result.metrics["mINP"] == pytest.approx(expected["mINP"])
    np.testing.assert_allclose(result.metrics["cmc"], expected["cmc"])
    assert [result.metrics[f"rank{k}"] for k in (1, 5, 10)] == pytest.approx(
        [expected["cmc"][k - 1] for k in (1, 5, 10)])
    assert 0 < expected["mAP"] < 1  # neither a perfect nor an empty ranking


def test_embedding_averages_flips_and_pairwise_does_not(world):
    model = Halves()
    flipped = Evaluator(Embedding(flip=True)).split(model, world, **SIZE)
    plain = Evaluator(Embedding(flip=False)).split(model, world, **SIZE)
    pairwise = Evaluator(Pairwise()).split(model, world, **SIZE)
    by_hand = features_by_hand(world.query)
    torch.testing.assert_close(plain.query_feats, by_hand)
    torch.testing.assert_close(pairwise.query_feats, by_hand)
    averaged = by_hand.mean(dim=1, keepdim=True).expand(-1, 2)  # the mirror image swaps left and right
    torch.testing.assert_close(flipped.query_feats, averaged)
    torch.testing.assert_close(flipped.gallery_feats,
                               features_by_hand(world.gallery).mean(dim=1, keepdim=True).expand(-1, 2))


def test_pairwise_ranks_by_the_models_pair_distances_in_eval_mode_and_restores_the_mode(world):
    model = Halves()
    model.train()
    evaluator = Evaluator(Pairwise(q_chunk=4, g_chunk=5))
    result = evaluator.evaluate(model, world, **SIZE)
    assert model.training  # mode restored
    q_feats, g_feats = features_by_hand(world.query), features_by_hand(world.gallery)
    torch.testing.assert_close(result.distances, naive_pair_distances(q_feats, g_feats))
    assert len(model.calls) == math.ceil(6 / 4) * math.ceil(12 / 5)  # blocks of at most 4 x 5 pairs
    assert not any(training for _, _, training in model.calls)
    for q_block, g_block, _ in model.calls:  # blocks of the plain, not flip-averaged, features
        assert len(q_block) <= 4 and len(g_block) <= 5
        assert any(torch.allclose(q_block, q_feats[i : i + len(q_block)]) for i in range(len(q_feats)))
    (q_pids, q_cams), (g_pids, g_cams) = labels(world.query), labels(world.gallery)
    expected = evaluate_rank(result.distances, q_pids, g_pids, q_cams, g_cams)
    assert result.metrics["mAP"] == pytest.approx(expected["mAP"])
    euclidean = Evaluator(Embedding(flip=False)).evaluate(model, world, **SIZE)
    assert not torch.allclose(euclidean.distances, result.distances)


class DictHalves(Halves):
    """Eval output: a dict of the two halves (B, 1) each; pair distances read the dicts."""

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        both = super().forward(img)
        return {"left": both[:, :1], "right": both[:, 1:]}

    def pair_distances(self, query: dict, gallery: dict) -> torch.Tensor:
        return super().pair_distances(torch.cat([query["left"], query["right"]], 1),
                                      torch.cat([gallery["left"], gallery["right"]], 1))


def test_pairwise_accepts_a_dict_of_features(world):
    result = Evaluator(Pairwise(q_chunk=4, g_chunk=5)).evaluate(DictHalves(), world, **SIZE)
    expected = naive_pair_distances(features_by_hand(world.query), features_by_hand(world.gallery))
    torch.testing.assert_close(result.distances, expected)


def test_measures_reject_what_they_cannot_compare(world):
    with pytest.raises(ValueError, match="'manhattan'"):
        Embedding("manhattan")
    with pytest.raises(ValueError, match="pair_distances.*Lookup"):
        Evaluator(Pairwise()).evaluate(Lookup(TABLE), world, **SIZE)
    with pytest.raises(TypeError, match="dict"):
        Evaluator(Embedding(flip=False)).evaluate(DictHalves(), world, **SIZE)


# ------------------------------------------------------------------------------------ post-processing
@pytest.mark.parametrize("measure, square", [(Embedding(flip=False), True), (Pairwise(), False)])
def test_rerank_follows_the_measure_unless_told(world, measure, square):
    evaluator = Evaluator(measure)
    split = evaluator.split(Halves(), world, **SIZE)
    q_feats, g_feats = features_by_hand(world.query), features_by_hand(world.gallery)
    distance = naive_squared_euclidean if isinstance(measure, Embedding) else naive_pair_distances
    q_g, q_q, g_g = distance(q_feats, g_feats), distance(q_feats, q_feats), distance(g_feats, g_feats)
    settings = dict(k1=4, k2=2, lambda_value=0.3)
    expected = {s: torch.as_tensor(re_ranking(q_g, q_q, g_g, **settings, square=s)).float()
                for s in (True, False)}
    assert not torch.allclose(expected[True], expected[False], atol=1e-4)  # the choice matters here
    result = evaluator.evaluate_split(split, world, [ReRank(**settings)])
    torch.testing.assert_close(result.distances.float(), expected[square], atol=1e-5, rtol=1e-4)
    for forced in (True, False):
        told = evaluator.evaluate_split(split, world, [ReRank(**settings, square=forced)])
        torch.testing.assert_close(told.distances.float(), expected[forced], atol=1e-5, rtol=1e-4)
    (q_pids, q_cams), (g_pids, g_cams) = labels(world.query), labels(world.gallery)
    ranked = evaluate_rank(result.distances, q_pids, g_pids, q_cams, g_cams)
    assert result.metrics["mAP"] == pytest.approx(ranked["mAP"])


def times_and_cams(records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r.time for r in records]), np.array([r.camid for r in records])


LIFT = dict(tau=150, sigma=100, K=3, alpha=0.1)


@pytest.mark.parametrize("measure", [Embedding(flip=False), Pairwise()])
def test_tlift_lifts_one_minus_the_distances_and_shuffled_times_are_a_seeded_permutation(world, measure):
    evaluator = Evaluator(measure)
    split = evaluator.split(Halves(scale=4.0), world, **SIZE)
    d = split.role_distances("query", "gallery").double()
    if isinstance(measure, Embedding):
        assert d.max() > 1  # squared Euclidean distances beyond 1: min-max scaled onto [0, 1] first
        d = (d - d.min()) / (d.max() - d.min())
    else:
        assert 0 <= d.min() and d.max() < 1  # pair distances in [0, 1]: lifted as they are
    (q_times, q_cams), (g_times, g_cams) = times_and_cams(world.query), times_and_cams(world.gallery)
    expected = 1 - tlift(1 - d, q_cams, q_times, g_cams, g_times, **LIFT)
    lifted = evaluator.evaluate_split(split, world, [TLift(**LIFT)])
    torch.testing.assert_close(lifted.distances.double(), expected, atol=1e-6, rtol=1e-5)

    shuffled_times = np.random.default_rng(7).permutation(np.concatenate([q_times, g_times]))
    control = 1 - tlift(1 - d, q_cams, shuffled_times[:6], g_cams, shuffled_times[6:], **LIFT)
    shuffled = evaluator.evaluate_split(split, world, [TLift(**LIFT, shuffle_times=True, seed=7)])
    torch.testing.assert_close(shuffled.distances.double(), control, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(shuffled.distances, lifted.distances)  # the times mattered
    other_seed = evaluator.evaluate_split(split, world, [TLift(**LIFT, shuffle_times=True, seed=8)])
    assert not torch.allclose(other_seed.distances, shuffled.distances)


@pytest.mark.parametrize("low, high", [
    (0.0, 1.0), (0.0, 40.0), (-3.0, 5.0),
    (-9.0, -1.0),
])
def test_tlift_with_a_large_alpha_keeps_every_querys_ranking_whatever_the_distances_range(world, low, high):
    """(p_t + alpha) * score ranks as the score does when alpha dwarfs p_t <= 1: the map from distances to
    scores must keep their order."""
    rng = np.random.default_rng(1)
    steps = torch.as_tensor(np.stack([rng.permutation(len(world.gallery)) for _ in world.query]))
    distances = (low + (high - low) * steps / (len(world.gallery) - 1)).float()  # distinct in every row
    split = evaluators.TestSplit(Halves(), Embedding(), torch.device("cpu"), world.query, world.gallery,
                                 torch.zeros(6, 2), torch.zeros(12, 2))
    lifted = TLift(tau=150, sigma=100, K=3, alpha=1000.0).apply(distances, split)
    assert torch.equal(lifted.argsort(dim=1), distances.argsort(dim=1))


def test_tlift_names_the_images_without_times(world, table_dataset):
    untimed = [dataclasses.replace(r, time=None) for r in world.gallery[-2:]]
    without = ReIDDataset("market1501", world.root, [], world.query, [*world.gallery[:-2], *untimed])
    evaluator = Evaluator(Embedding(flip=False))
    with pytest.raises(ValueError, match="time stamp.*2 gallery images have none"):
        evaluator.evaluate(Halves(), without, **SIZE, post=[TLift()])
    with pytest.raises(ValueError, match="2 query images have none"):
        evaluator.evaluate(Lookup(TABLE), table_dataset, **SIZE, post=[TLift()])


def test_post_processing_chains_share_cached_distances(world, monkeypatch):
    calls = {"re_ranking": 0, "tlift": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(evaluators, "re_ranking", counting("re_ranking", re_ranking))
    monkeypatch.setattr(evaluators, "tlift", counting("tlift", tlift))
    model, evaluator = Halves(), Evaluator(Pairwise())
    split = evaluator.split(model, world, **SIZE)
    assert model.calls == []
    plain = evaluator.evaluate_split(split, world)
    assert len(model.calls) == 1  # query x gallery
    rerank = ReRank(k1=4, k2=2)
    reranked = evaluator.evaluate_split(split, world, [rerank])
    assert calls == {"re_ranking": 1, "tlift": 0}
    assert len(model.calls) == 3  # + query x query and gallery x gallery
    again = evaluator.evaluate_split(split, world, [ReRank(k1=4, k2=2)])
    assert len(model.calls) == 3 and calls["re_ranking"] == 1
    torch.testing.assert_close(again.distances, reranked.distances)
    both = evaluator.evaluate_split(split, world, [rerank, TLift(**LIFT)])
    control = evaluator.evaluate_split(split, world, [rerank, TLift(**LIFT, shuffle_times=True)])
    assert len(model.calls) == 3 and calls == {"re_ranking": 1, "tlift": 2}
    lifted_only = evaluator.evaluate_split(split, world, [TLift(**LIFT)])  # another chain: lifts the raw ones
    assert calls == {"re_ranking": 1, "tlift": 3} and len(model.calls) == 3
    assert not torch.allclose(lifted_only.distances, both.distances)
    assert not torch.allclose(both.distances, control.distances)
    assert not torch.allclose(plain.distances, reranked.distances)
    assert [r.description["post"] for r in (plain, reranked, both)] == [
        [], [describe(rerank)], [describe(rerank), describe(TLift(**LIFT))]]


# ---------------------------------------------------------------------------------------------- protocols
def test_vehicleid_scores_trials_over_the_pooled_test_set_and_rejects_post_processing(world):
    evaluator = Evaluator(Embedding(flip=False), VehicleID(trials=3, seed=2))
    split = evaluator.split(Halves(), world, **SIZE)
    result = evaluator.evaluate_split(split, world)
    assert result.distances is None
    everything = torch.cat([features_by_hand(world.query), features_by_hand(world.gallery)])
    pids = np.concatenate([labels(world.query)[0], labels(world.gallery)[0]])
    expected = evaluate_vehicleid_trials(naive_squared_euclidean(everything, everything), pids, num_trials=3,
                                         seed=2)
    assert "trials" not in result.metrics
    assert result.metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    np.testing.assert_allclose(result.metrics["cmc"], expected["cmc"], atol=1e-6)
    with pytest.raises(ValueError, match="post-processing does not apply to the VehicleID protocol"):
        evaluator.evaluate_split(split, world, [ReRank(k1=4, k2=2)])


def test_regdb_ranks_every_gallery_image(world):
    evaluator = Evaluator(Embedding(flip=False), RegDB())
    result = evaluator.evaluate(Halves(), world, **SIZE)
    expected = evaluate_regdb(result.distances, labels(world.query)[0], labels(world.gallery)[0])
    assert result.metrics["mAP"] == pytest.approx(expected["mAP"])
    assert result.metrics["rank1"] == pytest.approx(expected["cmc"][0])


def named(name: str) -> ReIDDataset:
    return ReIDDataset(name, "/nowhere", [], [], [])


@pytest.mark.parametrize("name, protocol", [
    ("sysumm01", SYSU()), ("sysu", SYSU()), ("regdb", RegDB()), ("vehicleid", VehicleID()),
    ("market1501", Standard()), ("dukemtmcreid", Standard()), ("veri776", Standard()), ("msmt17", Standard()),
])
def test_auto_picks_the_protocol_by_dataset_name(name, protocol):
    assert protocol_for(named(name)) == protocol
    assert Evaluator().resolve(named(name)) == protocol
    assert Evaluator(protocol=RegDB()).resolve(named(name)) == RegDB()  # a given protocol wins


def test_a_protocol_must_be_auto_or_an_object():
    with pytest.raises(ValueError, match="'market'"):
        Evaluator(protocol="market").resolve(named("market1501"))


# ---------------------------------------------------------------------------------------------- describe
def other_value(name: str, value):
    alternatives = {"metric": "cosine", "mode": "indoor"}
    if name in alternatives:
        return alternatives[name]
    if value is None or isinstance(value, bool):
        return not value
    return value + 1 if isinstance(value, int) else value * 2 + 0.5


PIECES = [Embedding(), Pairwise(), Standard(), SYSU(), VehicleID(), ReRank(), TLift()]


@pytest.mark.parametrize("piece", PIECES, ids=lambda piece: type(piece).__name__)
def test_describe_changes_with_every_setting(piece):
    description = describe(piece)
    assert description["kind"] == type(piece).__name__
    fields = dataclasses.fields(piece)
    assert fields  # every piece has settings
    for field in fields:
        value = other_value(field.name, getattr(piece, field.name))
        changed = dataclasses.replace(piece, **{field.name: value})
        assert describe(changed) != description, field.name
        assert describe(changed)[field.name] == getattr(changed, field.name)


def test_an_evaluators_description_covers_measure_protocol_and_post_processing():
    market = named("market1501")
    base = Evaluator().describe(market)
    assert base == Evaluator(Embedding(), Standard()).describe(market)  # "auto" is described as resolved
    assert base == {"measure": describe(Embedding()), "protocol": describe(Standard()), "post": []}
    assert Evaluator().describe(named("sysu"))["protocol"] == describe(SYSU())
    variants = [Evaluator(Embedding("cosine")).describe(market), Evaluator(Pairwise()).describe(market),
                Evaluator(protocol=Standard(max_rank=10)).describe(market),
                *[Evaluator().describe(market, post) for post in
                  ([ReRank()], [TLift()], [ReRank(), TLift()], [TLift(), ReRank()])]]
    assert len({repr(v) for v in [base, *variants]}) == len(variants) + 1
