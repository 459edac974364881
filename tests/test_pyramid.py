"""Pyramid (Zheng et al. 2019): branches (Eq. 1), basic operations (Fig. 3), losses (Eqs. 2-3), dynamic
weighting (Eqs. 4-7), Algorithm 1's sampler switch as an engine hook, and exact resumption."""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from reidbook.data.records import Record
from reidbook.data.sampler import IdentityBalancedBatches, RandomBatches, SwitchingBatchSampler
from reidbook.engine import fit
from reidbook.models.backbones import Backbone
from reidbook.models.pyramid import (
    BALANCED_STREAM,
    RANDOM_STREAM,
    DynamicTraining,
    DynamicWeighting,
    PyramidCriterion,
    PyramidNet,
    build_dynamic_train_loader,
    parse_levels,
    part_rows,
    pyramid_branches,
    task_focal_weight,
)


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- Eq. 1 branches
def naive_eq1(height: int, n: int) -> list[tuple[int, int, list[int]]]:
    """Eq. 1 transcribed (1-based, inclusive): st = (k-1) H/n + 1, ed = (k-1) H/n + l H/n; needs n | H."""
    return [
        (l, k, list(range((k - 1) * height // n + 1 - 1, (k - 1) * height // n + l * height // n)))
        for l in range(1, n + 1)
        for k in range(1, n - l + 2)
    ]


def naive_fractional(height: int, n: int, partition: str) -> list[tuple[int, int, list[int]]]:
    """Rows of P{l, k} from the fractional interval [(k-1) H/n, (k-1+l) H/n): rows it touches ("cover"),
    or rows whose centre lies in it ("round")."""
    out = []
    for l in range(1, n + 1):
        for k in range(1, n - l + 2):
            lo, hi = Fraction((k - 1) * height, n), Fraction((k - 1 + l) * height, n)
            if partition == "cover":
                rows = [r for r in range(height) if r < hi and r + 1 > lo]
            else:
                rows = [r for r in range(height) if lo <= r + Fraction(1, 2) < hi]
            out.append((l, k, rows))
    return out


def listed(branches) -> list[tuple[int, int, list[int]]]:
    return [(b.level, b.index, list(range(b.rows.start, b.rows.stop))) for b in branches]


@pytest.mark.parametrize("n", range(1, 7))
def test_branches_follow_eq1_for_every_n_and_height(n):
    for height in range(1, 26):
        cover = listed(pyramid_branches(height, n, "1" * n))
        assert len(cover) == n * (n + 1) // 2
        assert cover == naive_fractional(height, n, "cover")
        assert all(rows for _, _, rows in cover)  # every branch has a row, also when height < n
        if height >= n:
            rounded = listed(pyramid_branches(height, n, "1" * n, "round"))
            assert rounded == naive_fractional(height, n, "round")
        if height % n == 0:
            assert cover == naive_eq1(height, n)
            assert listed(pyramid_branches(height, n, "1" * n, "round")) == naive_eq1(height, n)


def test_book_map_heights():
    assert part_rows(4) == [slice(0, 1), slice(0, 2), slice(1, 2), slice(2, 3), slice(2, 4), slice(3, 4)]
    rounded = [(0, 1), (1, 3), (3, 4), (4, 5), (5, 7), (7, 8)]
    assert part_rows(8, partition="round") == [slice(a, b) for a, b in rounded]
    assert [(p.start, p.stop) for p in part_rows(24)] == [(4 * j, 4 * j + 4) for j in range(6)]
    top = pyramid_branches(4)[-1]
    assert (top.level, top.index, top.rows) == (6, 1, slice(0, 4))
    with pytest.raises(ValueError, match="partition='round' needs a map at least num_parts=6 rows high"):
        part_rows(4, 6, "round")
    with pytest.raises(ValueError, match="partition must be one of"):
        part_rows(8, 6, "floor")


# ------------------------------------------------------------------------------------------- level codes
def test_level_codes_parse_and_select_branches():
    assert parse_levels("Pyramid-100000") == (True, False, False, False, False, False)
    assert parse_levels([0, 0, 0, 0, 0, 1]) == (False,) * 5 + (True,)
    pcb = pyramid_branches(24, levels="100000")
    assert [(b.level, b.index) for b in pcb] == [(1, k) for k in range(1, 7)]  # the six stripes alone
    assert [(b.level, b.rows) for b in pyramid_branches(24, levels="000001")] == [(6, slice(0, 24))]
    chosen = pyramid_branches(24, levels="Pyramid-110011")
    assert [b.level for b in chosen] == [1] * 6 + [2] * 5 + [5] * 2 + [6]
    every = pyramid_branches(24)
    assert chosen == [b for b in every if b.level in (1, 2, 5, 6)]
    for bad in ("11111", "Pyramid-1111112", "12111a", "000000", "pyramid-111111"):
        with pytest.raises(ValueError, match="levels must"):
            parse_levels(bad)
    with pytest.raises(ValueError, match="levels must hold 6 values"):
        parse_levels([1, 2, 0, 0, 0, 0])


def identity_backbone(channels: int) -> Backbone:
    """A 'backbone' that returns its input: the test feeds the feature map itself."""
    return Backbone(nn.Identity(), [nn.Identity() for _ in range(4)], [channels] * 4, [1] * 4)


@pytest.mark.parametrize("levels, branches", [("111111", 21), ("100000", 6), ("000001", 1), ("001111", 10)])
@pytest.mark.parametrize("dim", [64, 128, 256])
def test_embedding_size_is_branches_times_feature_dim(levels, branches, dim):
    model = PyramidNet(5, identity_backbone(8), levels=levels, feature_dim=dim)
    assert model.num_branches == branches and model.embedding_dim == branches * dim
    fmap = torch.randn(3, 8, 4, 2)
    out = model(fmap)
    assert out["branch_feats"].shape == (3, branches, dim)
    assert out["feat"].shape == (3, branches * dim)
    assert len(out["logits"]) == branches and all(lg.shape == (3, 5) for lg in out["logits"])
    model.eval()
    assert model(fmap).shape == (3, branches * dim)


def test_resnet18_at_book_size_gives_21_branches_of_128():
    model = PyramidNet(7, "resnet18", last_stride=1).eval()
    with torch.no_grad():
        embedding = model(torch.randn(2, 3, 64, 32))
    assert embedding.shape == (2, 2688)
    assert model.backbone(torch.randn(1, 3, 64, 32)).shape[2] == 4
    assert len(model.branches(4)) == 21


def test_bad_model_arguments_are_named():
    with pytest.raises(ValueError, match="feature_dim must be >= 1, got 0"):
        PyramidNet(5, identity_backbone(4), feature_dim=0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        PyramidNet(5, identity_backbone(4), pooling="sum")
    with pytest.raises(TypeError, match="backbone must be a backbone name or a Backbone"):
        PyramidNet(5, nn.Identity())
    with pytest.raises(ValueError, match="dropout must lie in"):
        PyramidNet(5, identity_backbone(4), dropout=1.0)


# ----------------------------------------------------------------------------------- Fig. 3, naive loops
def naive_branch_features(model: PyramidNet, fmap: torch.Tensor, pooling: str, relu: bool, train: bool):
    """GMP + GAP over the branch's rows, 1x1 conv, BN, ReLU, by loops over the elements."""
    batch, channels, height, width = fmap.shape
    per_branch = []
    for bo, (_, _, rows) in zip(model.basic_operations, naive_fractional(height, 6, "cover")):
        pooled = torch.zeros(batch, channels, dtype=torch.float64)
        for b in range(batch):
            for c in range(channels):
                values = [float(fmap[b, c, r, x]) for r in rows for x in range(width)]
                total = 0.0
                if "max" in pooling:
                    total += max(values)
                if "avg" in pooling:
                    total += sum(values) / len(values)
                pooled[b, c] = total
        weight = bo.conv.weight.detach().double()[:, :, 0, 0]  # (D, C)
        conv = torch.zeros(batch, weight.shape[0], dtype=torch.float64)
        for b in range(batch):
            for d in range(weight.shape[0]):
                conv[b, d] = sum(weight[d, c] * pooled[b, c] for c in range(channels))
        if train:
            mean, var = conv.mean(0), conv.var(0, unbiased=False)
        else:
            mean, var = bo.bn.running_mean.double(), bo.bn.running_var.double()
        y = (conv - mean) / torch.sqrt(var + bo.bn.eps) * bo.bn.weight.double() + bo.bn.bias.double()
        per_branch.append(y.clamp(min=0) if relu else y)
    return torch.stack(per_branch, dim=1)  # (B, nb, D)


@pytest.mark.parametrize("pooling, relu", [("max+avg", True), ("avg", True), ("max", False)])
def test_basic_operations_match_naive_loops(pooling, relu):
    torch.manual_seed(0)
    model = PyramidNet(3, identity_backbone(5), feature_dim=4, pooling=pooling, relu=relu)
    for bo in model.basic_operations:  # non-trivial BN statistics and affine parameters
        bo.bn.running_mean.uniform_(-0.5, 0.5)
        bo.bn.running_var.uniform_(0.5, 2.0)
        bo.bn.weight.data.uniform_(0.5, 1.5)
        bo.bn.bias.data.uniform_(-0.5, 0.5)
    fmap = torch.randn(3, 5, 5, 3)  # height 5: not divisible by 6, smaller than 6
    out = model(fmap)
    expected = naive_branch_features(model, fmap, pooling, relu, train=True)
    torch.testing.assert_close(out["branch_feats"].double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["feat"], out["branch_feats"].flatten(1))
    for bo, feats, logits in zip(model.basic_operations, out["branch_feats"].unbind(1), out["logits"]):
        torch.testing.assert_close(logits, feats @ bo.classifier.weight.t())
    model.eval()
    expected = naive_branch_features(model, fmap, pooling, relu, train=False)
    torch.testing.assert_close(model(fmap).double(), expected.flatten(1), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- Eqs. 2 and 3
def naive_triplet(feat: torch.Tensor, pids: torch.Tensor, margin: float) -> float:
    losses = []
    for a in range(len(pids)):
        dist = [math.sqrt(sum((float(feat[a, d]) - float(feat[j, d])) ** 2 for d in range(feat.shape[1])))
                for j in range(len(pids))]
        hardest_positive = max(dist[j] for j in range(len(pids)) if pids[j] == pids[a])
        hardest_negative = min(dist[j] for j in range(len(pids)) if pids[j] != pids[a])
        losses.append(max(hardest_positive - hardest_negative + margin, 0.0))
    return sum(losses) / len(losses)


def naive_id_loss(logits_per_branch: list[torch.Tensor], pids: torch.Tensor) -> float:
    total = 0.0
    for logits in logits_per_branch:
        per_image = []
        for i, c in enumerate(pids.tolist()):
            row = [float(v) for v in logits[i]]
            per_image.append(-math.log(math.exp(row[c]) / sum(math.exp(v) for v in row)))
        total += sum(per_image) / len(per_image)
    return total


def test_criterion_matches_eq2_and_eq3():
    torch.manual_seed(1)
    nb, dim = 3, 4
    outputs = {"branch_feats": torch.randn(6, nb, dim), "logits": [torch.randn(6, 5) for _ in range(nb)]}
    outputs["feat"] = outputs["branch_feats"].flatten(1)
    batch = {"pid": torch.tensor([0, 0, 1, 1, 4, 4])}
    terms = PyramidCriterion(5)(outputs, batch)
    assert set(terms) == {"id", "triplet"}
    assert terms["id"].item() == pytest.approx(naive_id_loss(outputs["logits"], batch["pid"]), rel=1e-5)
    expected = naive_triplet(outputs["feat"], batch["pid"], 1.4)
    assert terms["triplet"].item() == pytest.approx(expected, rel=1e-5)
    per_branch = PyramidCriterion(5, triplet_per_branch=True, margin=0.5)(outputs, batch)["triplet"]
    expected = sum(naive_triplet(outputs["branch_feats"][:, b], batch["pid"], 0.5) for b in range(nb))
    assert per_branch.item() == pytest.approx(expected, rel=1e-5)
    assert set(PyramidCriterion(5, triplet=False)(outputs, batch)) == {"id"}
    with pytest.raises(ValueError, match="triplet_per_branch=True needs triplet=True"):
        PyramidCriterion(5, triplet=False, triplet_per_branch=True)


# --------------------------------------------------------------------------------------- Eqs. 4-7
def fl(p: float, gamma: float = 2.0) -> float:
    """Eq. 6 transcribed."""
    return -((1 - p) ** gamma) * math.log(p)


def test_dynamic_weighting_matches_a_hand_computation():
    # alpha = 0.25, k_{-1} = L_0. ID losses 4, 3, 2.5, 2.6:
    #   k = 4, 3.75, 3.4375, 3.228125;  p = 1, 3.75/4, 3.4375/3.75, 3.228125/3.4375
    # triplet losses 1, 0.9, 2.0, 0.5:
    #   k = 1, 0.975, 1.23125, 1.0484375;  p = 1, 0.975, 1 (the EMA rose), 1.0484375/1.23125
    expected_k = {"id": [4, 3.75, 3.4375, 3.228125], "tp": [1, 0.975, 1.23125, 1.0484375]}
    expected_p = {
        "id": [1, 3.75 / 4, 3.4375 / 3.75, 3.228125 / 3.4375],
        "tp": [1, 0.975, 1, 1.0484375 / 1.23125],
    }
    dw = DynamicWeighting(alpha=0.25, gamma=2.0)
    assert (dw.p["id"], dw.p["tp"]) == (0.0, 1.0)  # Algorithm 1's start
    assert dw.focal("id") == math.inf and dw.focal("tp") == 0.0 and dw.ratio() == 0.0
    for tau, (l_id, l_tp) in enumerate(zip([4, 3, 2.5, 2.6], [1, 0.9, 2.0, 0.5])):
        dw.update({"id": l_id, "tp": l_tp})
        for task in ("id", "tp"):
            assert dw.k[task] == pytest.approx(expected_k[task][tau])
            assert dw.p[task] == pytest.approx(expected_p[task][tau])
            p = expected_p[task][tau]
            assert dw.focal(task) == pytest.approx(fl(p) if p < 1 else 0.0)
    assert dw.ratio() == pytest.approx(fl(1.0484375 / 1.23125) / fl(3.228125 / 3.4375))
    assert task_focal_weight(0.5, 3.0) == pytest.approx(0.125 * math.log(2))


# ------------------------------------------------------------------------------ samplers (Algorithm 1)
def test_identity_balanced_batches_skip_small_identities_and_say_so(capsys):
    counts = {0: 8, 1: 10, 2: 3, 3: 8, 4: 7, 5: 9}
    pids = [pid for pid, n in counts.items() for _ in range(n)]
    stream = IdentityBalancedBatches(pids, num_identities=2, num_instances=8)
    assert stream.skipped_pids == [2, 4] and stream.num_skipped == 2
    assert "2 of 6 identities skipped" in repr(stream)
    assert "2 of 6 identities skipped" in capsys.readouterr().out
    batches = stream.batches(np.random.default_rng(0))
    seen = Counter()
    for batch in itertools.islice(batches, 20):
        assert len(batch) == 16 and len(set(batch)) == 16  # distinct images
        ids = [pids[i] for i in batch]
        assert sorted(Counter(ids).values()) == [8, 8]  # 2 identities x 8 images
        seen.update(ids)
    assert set(seen) == {0, 1, 3, 5}  # never a skipped identity
    quiet = IdentityBalancedBatches(pids, 2, 3)
    assert quiet.num_skipped == 0 and capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="only 4 of the 6 identities have that many"):
        IdentityBalancedBatches(pids, num_identities=5, num_instances=8)


def test_random_batches_cover_the_data_once_per_pass():
    stream = RandomBatches(10, 3).batches(np.random.default_rng(0))
    first_pass = [next(stream) for _ in range(3)]
    assert all(len(b) == 3 for b in first_pass)
    assert len(set(itertools.chain(*first_pass))) == 9  # one index left over, dropped
    with pytest.raises(ValueError, match="a batch of 11 needs as many samples"):
        RandomBatches(10, 11)


def test_switching_sampler_advances_only_the_chosen_stream():
    streams = {"a": RandomBatches(20, 4), "b": IdentityBalancedBatches([i // 4 for i in range(20)], 2, 2)}
    sampler = SwitchingBatchSampler(streams, num_batches=5, default="a", seed=3)
    pattern = ["a", "b", "b", "a", "b"]
    sampler.set_chooser(lambda epoch, index: pattern[index])
    sampler.set_epoch(2)
    drawn = list(sampler)
    assert sampler.drawn == pattern
    alone = {name: list(itertools.islice(s.batches(np.random.default_rng([3, 2, i])), 3))
             for i, (name, s) in enumerate(streams.items())}
    assert drawn == [alone["a"][0], alone["b"][0], alone["b"][1], alone["a"][1], alone["b"][2]]
    sampler.set_epoch(2)
    assert list(sampler) == drawn  # same seed and epoch, same batches
    sampler.set_chooser(lambda epoch, index: "c")
    with pytest.raises(ValueError, match="the chooser named stream 'c' for batch 0 of epoch 3"):
        next(iter(sampler))


# -------------------------------------------------------------- Algorithm 1 on scripted losses (no model)
SCRIPT_ID = [10, 8, 6, 5, 5, 5, 5, 5, 5, 4.9, 4.9, 4.9]
SCRIPT_TP = [1.0, 1.0, 1.0, 0.5, 0.3, 0.2, 0.2, 0.25, 0.1, 0.1, 0.1, 0.1]
STEPS = 4  # per epoch; 3 epochs


def switching_sampler(seed: int = 5) -> SwitchingBatchSampler:
    pids = [i // 3 for i in range(24)]  # 8 identities x 3 images
    streams = {RANDOM_STREAM: RandomBatches(24, 4), BALANCED_STREAM: IdentityBalancedBatches(pids, 2, 2)}
    return SwitchingBatchSampler(streams, STEPS, default=RANDOM_STREAM, seed=seed)


def simulate(hook, sampler, start=(0, 0), stop=(3, 0), weights_seen=None, hook_state=None):
    """Mimic engine.fit: hooks in its order, lazily drawn batches, a mid-epoch resume replays `step`
    batches of the epoch. Returns the batches trained on, by (epoch, step)."""
    epoch, step = start
    state = SimpleNamespace(train_loader=SimpleNamespace(batch_sampler=sampler), loss_weights={},
                            epoch=epoch, step=step, global_step=epoch * STEPS + step, losses={})
    if hook_state is not None:
        hook.load_state_dict(hook_state)
    hook.on_train_start(state)
    trained = {}
    while (state.epoch, state.step) < stop:
        sampler.set_epoch(state.epoch)
        batches = iter(sampler)
        for _ in itertools.islice(batches, state.step):  # replay
            pass
        for batch in batches:
            if (state.epoch, state.step) >= stop:
                return trained
            hook.on_step_start(state)
            if weights_seen is not None:
                weights_seen.append(dict(state.loss_weights))
            trained[state.epoch, state.step] = batch
            state.losses = {"id": SCRIPT_ID[state.global_step], "triplet": SCRIPT_TP[state.global_step]}
            state.step += 1
            state.global_step += 1
            hook.on_step_end(state)
        state.epoch, state.step = state.epoch + 1, 0
    return trained


def naive_algorithm1(alpha=0.25, delta=0.16):
    """Algorithm 1 transcribed: the decision of step tau from p_{tau-1} (p_id = 0, p_tp = 1 at the start)."""
    p = {"id": 0.0, "tp": 1.0}
    k = {"id": None, "tp": None}
    out = []
    for l_id, l_tp in zip(SCRIPT_ID, SCRIPT_TP):
        fl_id = math.inf if p["id"] == 0 else fl(p["id"])
        fl_tp = fl(p["tp"]) if p["tp"] < 1 else 0.0
        ratio = 0.0 if fl_tp == 0 else fl_tp / fl_id
        joint = ratio >= delta
        weights = (fl_id, fl_tp) if joint else (1.0, 0.0)
        out.append((BALANCED_STREAM if joint else RANDOM_STREAM, ratio, weights))
        for task, loss in (("id", l_id), ("tp", l_tp)):
            previous = loss if k[task] is None else k[task]
            k[task] = alpha * loss + (1 - alpha) * previous
            p[task] = min(k[task], previous) / previous
    return out


def test_sampler_switch_follows_algorithm_1_on_scripted_losses():
    hook, sampler, weights = DynamicTraining(), switching_sampler(), []
    trained = simulate(hook, sampler, weights_seen=weights)
    expected = naive_algorithm1()
    log = hook.frame()
    assert list(log["sampler"]) == [e[0] for e in expected]
    assert {RANDOM_STREAM, BALANCED_STREAM} == set(log["sampler"])  # the script switches both ways
    np.testing.assert_allclose(log["ratio"], [e[1] for e in expected])
    np.testing.assert_allclose(log[["w_id", "w_tp"]].to_numpy(), [e[2] for e in expected])
    assert [(w["id"], w["triplet"]) for w in weights] == [tuple(e[2]) for e in expected]
    assert (log["phase"] == np.where(log["ratio"] < 0.16, "id", "joint")).all()
    assert list(log["loss_id"]) == SCRIPT_ID and list(log["global_step"]) == list(range(12))
    # every batch comes from its stream: redraw each epoch's streams in the logged order
    for epoch in range(3):
        fresh = {name: s.batches(np.random.default_rng([5, epoch, i]))
                 for i, (name, s) in enumerate(sampler.streams.items())}
        for step in range(STEPS):
            assert trained[epoch, step] == next(fresh[log["sampler"][epoch * STEPS + step]])


@pytest.mark.parametrize("interrupt", [(1, 2), (2, 1), (1, 0)])
def test_sampler_switch_resumes_exactly_mid_epoch(interrupt):
    reference_hook = DynamicTraining()
    reference = simulate(reference_hook, switching_sampler())
    hook = DynamicTraining()
    first = simulate(hook, switching_sampler(), stop=interrupt)
    saved = copy.deepcopy(hook.state_dict())  # what a checkpoint keeps
    resumed_hook = DynamicTraining()  # a new process: new hook, new sampler
    second = simulate(resumed_hook, switching_sampler(), start=interrupt, hook_state=saved)
    assert {**first, **second} == reference
    pd.testing.assert_frame_equal(resumed_hook.frame(), reference_hook.frame())


def test_options_no_switch_alternate_fixed_and_sum():
    balanced = DynamicTraining(sampling="balanced", weighting="sum")
    simulate(balanced, switching_sampler())
    log = balanced.frame()
    assert set(log["sampler"]) == {BALANCED_STREAM}
    assert set(log["phase"]) == {"id", "joint"}
    assert (log.loc[log["phase"] == "joint", ["w_id", "w_tp"]] == 1.0).all().all()
    assert (log.loc[log["phase"] == "id", "w_tp"] == 0.0).all()
    alternate = DynamicTraining(sampling="alternate", triplet_term=None)
    trained = simulate(alternate, switching_sampler())
    log = alternate.frame()
    assert list(log["sampler"]) == [RANDOM_STREAM, BALANCED_STREAM] * 6
    assert set(log["phase"]) == {"id"} and log["w_tp"].isna().all()  # no triplet: ID steps only
    assert len(trained) == 12
    fixed = DynamicTraining(weighting="fixed", fixed_weights={"id": 1.0, "triplet": 0.3})
    simulate(fixed, switching_sampler())
    assert (fixed.frame()[["w_id", "w_tp"]] == [1.0, 0.3]).all().all()


def test_hook_errors_are_clear():
    with pytest.raises(ValueError, match="sampling must be one of"):
        DynamicTraining(sampling="hard")
    with pytest.raises(ValueError, match=r"fixed_weights names \['ce'\]"):
        DynamicTraining(weighting="fixed", fixed_weights={"ce": 1.0})
    state = SimpleNamespace(train_loader=[], global_step=0)
    with pytest.raises(ValueError, match="sampling='dynamic' switches samplers and needs a loader"):
        DynamicTraining().on_train_start(state)
    hook, sampler = DynamicTraining(), switching_sampler()
    state = SimpleNamespace(train_loader=SimpleNamespace(batch_sampler=sampler), loss_weights={},
                            epoch=0, step=0, global_step=0, losses={"ce": 1.0})
    hook.on_train_start(state)
    batches = iter(sampler)
    next(batches), next(batches)  # a prefetching loader draws ahead
    with pytest.raises(RuntimeError, match="must be asked for one batch at a time"):
        hook.on_step_start(state)
    state.step = 1
    with pytest.raises(ValueError, match=r"reads the loss term 'id', but the criterion returned \['ce'\]"):
        hook.on_step_end(state)


# ----------------------------------------------------------------------------- with the engine: fit
@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory) -> list[Record]:
    """Eight identities on disk (64 x 32 PNGs); two have fewer than 4 images (skipped by 2 x 4 batches)."""
    root = tmp_path_factory.mktemp("pyramid_world")
    rng = np.random.default_rng(0)
    records = []
    for pid, count in enumerate([5, 6, 5, 4, 5, 6, 2, 3]):
        colour = rng.integers(0, 255, 3)
        for i in range(count):
            pixels = np.clip(colour + rng.normal(0, 25, (64, 32, 3)), 0, 255).astype(np.uint8)
            path = Path(root) / f"{pid:04d}_c{i % 2}_{i}.png"
            Image.fromarray(pixels).save(path)
            records.append(Record(str(path), pid, i % 2))
    return records


class InterruptAt:
    def __init__(self, global_step: int) -> None:
        self.at = global_step

    def on_step_start(self, state) -> None:
        if state.global_step == self.at:
            raise KeyboardInterrupt


def train(records, checkpoint_dir=None, extra_hooks=(), **fit_args):
    torch.manual_seed(0)
    model = PyramidNet(8, "resnet18", feature_dim=16)
    hook = DynamicTraining(delta=0.05)
    loader = build_dynamic_train_loader(records, height=64, width=32, seed=0, num_identities=2,
                                        num_instances=4, steps_per_epoch=3, pad=2)
    history = fit(model, PyramidCriterion(8), loader, epochs=2, optimizer="sgd", lr=0.01, device="cpu",
                  progress=False, seed=0, hooks=[hook, *extra_hooks], checkpoint_dir=checkpoint_dir,
                  **fit_args)
    return model, history, hook


def test_fit_with_the_hook_and_exact_resume(tiny_records, tmp_path):
    model, history, hook = train(tiny_records)
    log = hook.frame()
    assert len(log) == 6 and list(log["epoch"]) == [0, 0, 0, 1, 1, 1]
    assert log["sampler"].iloc[0] == RANDOM_STREAM  # Algorithm 1 starts with the ID loss alone
    assert set(log["sampler"]) == {RANDOM_STREAM, BALANCED_STREAM}  # this run switches
    np.testing.assert_allclose(history.steps["id_weight"], log["w_id"])
    np.testing.assert_allclose(history.steps["triplet_weight"], log["w_tp"])
    np.testing.assert_allclose(history.steps["id"], log["loss_id"], rtol=1e-6)

    with pytest.raises(KeyboardInterrupt):
        train(tiny_records, tmp_path / "run", extra_hooks=[InterruptAt(5)], checkpoint_every_steps=1)
    trained_steps = []
    count = SimpleNamespace(on_step_start=lambda state: trained_steps.append(state.global_step))
    resumed_model, resumed_history, resumed_hook = train(tiny_records, tmp_path / "run", extra_hooks=[count],
                                                         checkpoint_every_steps=1)
    assert trained_steps == [5]  # resumed at epoch 1, step 2 ...
    assert set(log["sampler"].iloc[3:5]) == {RANDOM_STREAM, BALANCED_STREAM}  # ... replaying both streams
    pd.testing.assert_frame_equal(resumed_hook.frame(), log)
    for (name, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after the resume")
    pd.testing.assert_frame_equal(
        history.steps.drop(columns="time"), resumed_history.steps.drop(columns="time")
    )
