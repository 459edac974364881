"""Chapter 3 (Pyramid): the recipe's wiring, Table 4's rows, and the figure and analysis helpers of
``reidbook.methods.pyramid.figures``, checked against naive transcriptions on tiny inputs."""

from __future__ import annotations

import csv
import math
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from reidbook import methods, viz
from reidbook.data import ReIDDataset
from reidbook.data.records import Record
from reidbook.data.sampler import SwitchingBatchSampler
from reidbook.data.synthetic import MANIFEST
from reidbook.engine import CheckpointDir
from reidbook.methods.pyramid import figures, tables
from reidbook.models.backbones import Backbone
from reidbook.models.pyramid import BALANCED_STREAM, RANDOM_STREAM, DynamicTraining, PyramidNet
from reidbook.paper_numbers import PYRAMID_TABLE4
from reidbook.profiles import get_profile

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
    matplotlib.pyplot.close("all")


# ------------------------------------------------------------------------------------------- the recipe
def test_recipe_hooks_follow_the_options():
    recipe, profile = methods.get("pyramid"), get_profile("smoke")
    (paper,) = recipe.build_hooks(profile, recipe.resolve_options({}))
    assert isinstance(paper, DynamicTraining)
    assert (paper.weighting, paper.sampling, paper.triplet_term) == ("focal", "dynamic", "triplet")
    assert paper.delta == 0.16
    options = recipe.resolve_options({"triplet": False, "sampling": "balanced"})
    (no_triplet,) = recipe.build_hooks(profile, options)
    assert (no_triplet.sampling, no_triplet.triplet_term) == ("alternate", None)  # Table 4, "No triplet loss"
    (fixed,) = recipe.build_hooks(profile, recipe.resolve_options({"weighting": "fixed"}))
    assert fixed.weighting == "fixed" and fixed.fixed_weights == {"id": 1.0, "triplet": 1.0}


@pytest.mark.parametrize("changes, branches, terms", [({}, 21, {"id", "triplet"}),
                                                     ({"triplet": False, "levels": "100000"}, 6, {"id"})])
def test_recipe_builds_a_pyramid_whose_criterion_gives_named_scalar_terms(changes, branches, terms):
    recipe, profile = methods.get("pyramid"), get_profile("smoke")
    options = recipe.resolve_options(changes)
    model = recipe.build_model(tiny_backbone(), 3, profile, options)
    assert isinstance(model, PyramidNet) and model.num_branches == branches
    outputs = model.train()(torch.randn(6, 3, 48, 16))
    losses = recipe.build_criterion(model, 3, options)(outputs, {"pid": torch.tensor([0, 0, 1, 1, 2, 2])})
    assert set(losses) == terms and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_recipe_loader_switches_between_profile_sized_batches():
    recipe, profile = methods.get("pyramid"), get_profile("smoke")
    records = [Record(f"img{i}.jpg", i // 4, i % 2) for i in range(40)]  # 10 identities x 4 images
    loader = recipe.loader(records, profile, 0, recipe.augment, recipe.resolve_options({}))
    sampler = loader.batch_sampler
    assert isinstance(sampler, SwitchingBatchSampler)
    assert set(sampler.streams) == {RANDOM_STREAM, BALANCED_STREAM}
    assert len(sampler) == 40 // profile.batch_size
    sampler.set_chooser(lambda epoch, index: BALANCED_STREAM)
    batch = next(iter(sampler))
    pids = [records[i].pid for i in batch]
    assert len(batch) == profile.batch_size and len(set(pids)) == profile.batch_p
    assert all(pids.count(p) == profile.batch_k for p in set(pids))


def test_paper_profile_is_the_papers_training():
    profile = methods.get("pyramid").profile_for(get_profile("paper"))
    assert (profile.height, profile.width, profile.epochs) == (384, 128, 120)
    assert (profile.optimizer, profile.lr, profile.gamma) == ("sgd", 0.01, 0.5)
    assert profile.milestones == (60, 70, 80, 90)
    assert (profile.batch_p, profile.batch_k) == (8, 8)
    assert methods.get("pyramid").profile_for(get_profile("cpu")) == get_profile("cpu")  # cpu unchanged


# ---------------------------------------------------------------------------------------- Table 4 rows
def test_paper_rows_cover_table4_once_and_are_valid_options():
    recipe = methods.get("pyramid")
    rows = [r for group in tables.paper_rows().values() for r in group]
    with_numbers = {r.label: r.paper for r in rows if r.paper}  # Pyramid-ours is in every group
    expected = {label: numbers for label, numbers in PYRAMID_TABLE4.items() if label != "PCB+RPP"}
    assert with_numbers == {**expected, tables.PCB_RPP.label: PYRAMID_TABLE4["PCB+RPP"]}
    for row in rows:
        if row.options is not None:
            recipe.resolve_options(row.options)  # raises on an unknown option
        assert bool(row.paper) != row.label.endswith(tables.NOT_IN_PAPER)
    assert tables.PCB_RPP.options is None  # another method: never trained as a pyramid
    by_label = {r.label: r.options for r in rows}
    assert by_label["Pyramid-100000"] == {"levels": "100000"}
    assert by_label["Feature-64"] == {"feature_dim": 64}
    assert by_label["No triplet loss"] == {"triplet": False} and by_label["Pyramid-ours"] == {}


def test_budget_and_smoke_rows():
    budget = {r.label: r.options for group in tables.budget_rows().values() for r in group
              if r.options is not None}
    codes = {o.get("levels", "111111") for o in budget.values()}
    assert codes == {"000001", "100000", "110000", "111111"}
    assert {"weighting": "fixed"} in budget.values()
    assert {"sampling": "balanced"} not in budget.values()  # the sampler switch row is the paper profile's
    assert tables.rows_for("cpu") == tables.budget_rows() and tables.rows_for("paper") == tables.paper_rows()
    smoke = [r.options for group in tables.rows_for("smoke").values() for r in group]
    assert sorted(map(str, smoke)) == sorted(map(str, [{}, {}, {"levels": "100000"}, None]))


# ------------------------------------------------------------------------------------------ the problem
def test_stripe_of_matches_a_naive_partition():
    for y in np.linspace(0, 127.9, 50):
        naive = next(j for j in range(1, 7) if y < j * 128 / 6)
        assert figures.stripe_of(float(y), 128) == naive
    with pytest.raises(ValueError, match=r"y must lie in \[0, 128\)"):
        figures.stripe_of(128.0, 128)


def test_stripes_table_reads_the_rendered_parts():
    person = viz.person_showing(0, figures.PARTS)
    boxes = {"aligned": {}, "cut": {"cut_bottom": 0.45}}
    fig, table = figures.plot_stripes_under_misalignment(person, 0, boxes)
    aligned = viz.plain_render(person, 0)
    for part in figures.PARTS:
        assert table.loc[part, "aligned"] == 1 + min(int(aligned.parts[part][1] / 128 * 6), 5)
    assert table.loc["shoes", "cut"] == "-"  # cut out of the box
    assert len(fig.axes) == 2


# ------------------------------------------------------------------------------------------- the method
def naive_cover(height: int, n: int, level: int, k: int) -> list[int]:
    lo, hi = Fraction((k - 1) * height, n), Fraction((k - 1 + level) * height, n)
    return [r for r in range(height) if r < hi and r + 1 > lo]


@pytest.mark.parametrize("height", [4, 8, 24])
def test_toy_branch_check_cuts_the_rows_of_eq1(height):
    table = figures.toy_branch_check(height)
    assert len(table) == 21
    for name, row in table.iterrows():
        level, k = (int(v) for v in name.strip("P{}").split(","))
        rows = naive_cover(height, 6, level, k)
        assert row["rows cut"] == f"{rows[0]}..{rows[-1]}"
    if height % 6 == 0:
        assert table["same"].all()
        assert table.loc["P{2,3}", "Eq. 1 st..ed (0-based)"] == f"{2 * height // 6}..{4 * height // 6 - 1}"
    else:
        assert "same" not in table


def test_basic_parts_table():
    table = figures.basic_parts_table([4, 24])
    assert list(table["H = 24"]) == [f"{4 * j}..{4 * j + 3}" for j in range(6)]
    assert list(table["H = 4"]) == ["0..0", "0..1", "1..1", "2..2", "2..3", "3..3"]


def tiny_backbone() -> Backbone:
    stages = [nn.Sequential(nn.Conv2d(8, 8, 3, stride=s, padding=1), nn.ReLU()) for s in (2, 2, 2, 1)]
    return Backbone(nn.Conv2d(3, 8, 3, padding=1), stages, [8] * 4, [2, 4, 8, 8])


def tiny_pyramid(levels: str = "111111") -> PyramidNet:
    torch.manual_seed(0)
    return PyramidNet(5, tiny_backbone(), levels=levels, feature_dim=4).eval()


def test_feature_energy_and_branch_drawing():
    model = tiny_pyramid()
    image = torch.randn(3, 48, 16)
    energy = figures.feature_energy(model, image)
    with torch.no_grad():
        fmap = model.backbone(image[None])[0]
    naive = np.array([[math.sqrt(sum(float(fmap[c, y, x]) ** 2 for c in range(8))) for x in range(2)]
                      for y in range(6)])
    np.testing.assert_allclose(energy, naive, rtol=1e-5)
    picture = np.zeros((120, 40, 3), dtype=np.uint8)
    branches = model.branches(6)
    fig = figures.plot_branches(picture, branches, 6, energy)
    for level, ax in enumerate(fig.axes[1:], start=1):
        bars = [line for line in ax.lines if line.get_linewidth() == 4]
        members = [b for b in branches if b.level == level]
        assert len(bars) == 7 - level
        for bar, branch in zip(bars, members):
            top, bottom = bar.get_ydata()
            assert (top, bottom) == (branch.rows.start * 20, branch.rows.stop * 20 - 1)
    with pytest.raises(ValueError, match="energy has 6 rows, expected rows=24"):
        figures.plot_branches(picture, branches, 24, energy)


# ------------------------------------------------------------------------------ Algorithm 1, scripted
def naive_algorithm1(id_losses, tp_losses, alpha=0.25, gamma=2.0, delta=0.16, weighting="focal"):
    """Algorithm 1 transcribed: step tau decides from p_{tau-1} (p_id = 0, p_tp = 1 at the start)."""
    def fl(p):
        return math.inf if p == 0 else -((1 - p) ** gamma) * math.log(p)

    p, k, out = {"id": 0.0, "tp": 1.0}, {"id": None, "tp": None}, []
    for l_id, l_tp in zip(id_losses, tp_losses):
        f_id, f_tp = fl(p["id"]), fl(p["tp"])
        ratio = (0.0 if f_tp == 0 else math.inf) if f_id == 0 else f_tp / f_id
        joint = ratio >= delta
        weights = ((f_id, f_tp) if weighting == "focal" else (1.0, 1.0)) if joint else (1.0, 0.0)
        out.append(("balanced" if joint else "random", ratio, weights))
        for task, loss in (("id", l_id), ("tp", l_tp)):
            previous = loss if k[task] is None else k[task]
            k[task] = alpha * loss + (1 - alpha) * previous
            p[task] = min(k[task], previous) / previous
    return out


@pytest.mark.parametrize("weighting", ["focal", "sum"])
def test_scripted_dynamic_training_is_algorithm_1(weighting):
    id_losses, tp_losses = figures.scripted_losses(steps=80, seed=1)
    log = figures.scripted_dynamic_training(id_losses, tp_losses, weighting=weighting)
    expected = naive_algorithm1(id_losses, tp_losses, weighting=weighting)
    assert list(log["sampler"]) == [e[0] for e in expected]
    assert {"random", "balanced"} == set(log["sampler"])  # the script makes both kinds of step
    np.testing.assert_allclose(log["ratio"], [e[1] for e in expected], rtol=1e-9)
    np.testing.assert_allclose(log[["w_id", "w_tp"]].to_numpy(), [e[2] for e in expected], rtol=1e-9)
    np.testing.assert_allclose(log["loss_id"], id_losses)


def test_scripted_losses_and_errors():
    id_losses, tp_losses = figures.scripted_losses(steps=100, seed=0)
    assert len(id_losses) == len(tp_losses) == 100 and min(tp_losses) >= 0
    assert np.mean(id_losses[:10]) > 3 * np.mean(id_losses[-10:])  # falls fast, then levels off
    assert figures.scripted_losses(steps=100, seed=0) == (id_losses, tp_losses)
    with pytest.raises(ValueError, match="steps must be >= 2, got 1"):
        figures.scripted_losses(steps=1)
    with pytest.raises(ValueError, match="of one length, got 3 and 2"):
        figures.scripted_dynamic_training([1.0, 2.0, 3.0], [1.0, 2.0])


def small_log() -> pd.DataFrame:
    return pd.DataFrame({
        "global_step": range(6), "phase": ["id", "id", "joint", "id", "joint", "joint"],
        "sampler": ["random", "random", "balanced", "random", "balanced", "random"],
        "ratio": [0.0, 0.01, math.inf, 0.1, 2.0, 0.5], "delta": 0.16,
        "w_id": [1, 1, 1e-6, 1, 3e-6, 2e-6], "w_tp": [0, 0, 1e-3, 0, 2e-3, 4e-3],
        "loss_id": [5, 4, 3, 3, 3, 3], "loss_tp": [1.0] * 6})


def test_trace_summary_counts_and_medians():
    summary = figures.trace_summary({"a": small_log()})
    row = summary.loc["a"]
    assert row["steps"] == 6 and row["joint steps (%)"] == 50.0
    assert row["balanced batches (%)"] == round(200 / 6, 1)
    assert row["first joint step"] == 2
    assert row["median w_id in joint steps"] == pytest.approx(2e-6)
    assert row["median w_tp in joint steps"] == pytest.approx(2e-3)


def test_dynamic_trace_draws_infinite_ratios_at_the_top():
    fig = figures.plot_dynamic_trace(small_log(), "t")
    ratio_ax = fig.axes[1]  # losses, ratio, weights, sampler, then the losses' twin axis
    markers = [line for line in ratio_ax.lines if line.get_marker() == "^"]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [2]
    assert markers[0].get_ydata()[0] == pytest.approx(100 * 2.0)


def test_dynamic_log_reads_the_last_checkpoint(tmp_path):
    run = SimpleNamespace(name="pyramid", key="k", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="kept no DynamicTraining hook state"):
        figures.dynamic_log(run)
    checkpoints = CheckpointDir(tmp_path)
    checkpoints.save({"global_step": 1, "hooks": [None, {"log": [{"global_step": 0}], "pending": None}]})
    checkpoints.save({"global_step": 2, "hooks": [None, {"log": [{"global_step": 0}, {"global_step": 1}],
                                                         "pending": None}]})
    assert list(figures.dynamic_log(run)["global_step"]) == [0, 1]
    checkpoints.save({"global_step": 3, "hooks": [None]})
    with pytest.raises(ValueError, match="kept no DynamicTraining hook state"):
        figures.dynamic_log(run)


# ------------------------------------------------------------------------------ Fig. 5: imprecise boxes
def tiny_world(tmp_path: Path, manifest: bool = True) -> ReIDDataset:
    """Queries: pid 1 (cam 0, truncated), pid 2 (cam 0), pid 3 (cam 1, truncated, no match elsewhere)."""
    cuts = {"query/a.jpg": (0.0, 0.3), "query/b.jpg": (0.0, 0.0), "query/c.jpg": (0.2, 0.0)}
    query = [Record(str(tmp_path / "query/a.jpg"), 1, 0), Record(str(tmp_path / "query/b.jpg"), 2, 0),
             Record(str(tmp_path / "query/c.jpg"), 3, 1)]
    gallery = [Record(str(tmp_path / f"bounding_box_test/{i}.jpg"), pid, cam)
               for i, (pid, cam) in enumerate([(1, 1), (2, 2), (3, 1), (1, 0), (9, 3)])]
    if manifest:
        with open(tmp_path / MANIFEST, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "split", "pid", "cut_top", "cut_bottom"])
            for name, (top, bottom) in cuts.items():
                writer.writerow([name, "query", 0, f"{top:.2f}", f"{bottom:.2f}"])
    return ReIDDataset("tiny", str(tmp_path), [], query, gallery)


def test_truncated_queries_and_fig5_choice(tmp_path):
    world = tiny_world(tmp_path)
    assert list(figures.truncated_queries(world)) == [True, False, True]
    shown, rule = figures.imprecise_box_queries(world, 3, seed=0)
    assert shown == [0] and "1 of 1 truncated boxes" in rule  # query 2 has no match in another camera
    (tmp_path / "real").mkdir()
    plain = tiny_world(tmp_path / "real", manifest=False)
    with pytest.raises(FileNotFoundError, match="has no synthetic_images.csv"):
        figures.truncated_queries(plain)
    shown, rule = figures.imprecise_box_queries(plain, 5, seed=0)
    assert shown == [0, 1] and rule.startswith("2 of 2 random queries")
    world.query.append(Record(str(tmp_path / "query/d.jpg"), 4, 0))
    with pytest.raises(ValueError, match="1 query images are not in the manifest"):
        figures.truncated_queries(world)


def naive_scores(dist, query, gallery, mask):
    aps, firsts = [], []
    for q in np.flatnonzero(mask):
        keep = [g for g in range(len(gallery))
                if not (gallery[g].pid == query[q].pid and gallery[g].camid == query[q].camid)]
        ranked = sorted(keep, key=lambda g: (dist[q, g], g))
        hits = [gallery[g].pid == query[q].pid for g in ranked]
        if not any(hits):
            continue
        found, precisions = 0, []
        for rank, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / rank)
        aps.append(np.mean(precisions))
        firsts.append(hits[0])
    return 100 * np.mean(firsts), 100 * np.mean(aps), len(aps)


def test_scores_by_box_match_a_naive_ranking(tmp_path):
    rng = np.random.default_rng(0)
    cams = [0, 1, 2]
    query = [Record(f"q{i}", i % 4, cams[i % 3]) for i in range(12)]
    gallery = [Record(f"g{i}", i % 5, cams[(i + 1) % 3]) for i in range(20)]
    world = ReIDDataset("toy", str(tmp_path), [], query, gallery)
    truncated = np.arange(12) % 3 == 0
    dists = {"a": rng.random((12, 20)), "b": torch.as_tensor(rng.random((12, 20)))}
    table = figures.scores_by_box(dists, world, truncated)
    for name, dist in dists.items():
        for group, mask in (("truncated boxes", truncated), ("other boxes", ~truncated)):
            rank1, mean_ap, count = naive_scores(np.asarray(dist), query, gallery, mask)
            assert table.loc[name, (group, "rank-1")] == round(rank1, 1)
            assert table.loc[name, (group, "mAP")] == pytest.approx(round(mean_ap, 1))
            assert table.loc[name, (group, "queries")] == count
    with pytest.raises(ValueError, match="boolean mask of the 12 queries"):
        figures.scores_by_box(dists, world, truncated[:5])


# -------------------------------------------------------------------------- Grad-CAM per pyramid level
def test_level_embedding_is_the_levels_slice_and_keeps_the_mode():
    model = tiny_pyramid()
    images = torch.randn(2, 3, 48, 16)
    full = model(images)  # (2, 21 x 4)
    start = 0
    for level in range(1, 7):
        count = 7 - level  # branches of the level, stored level by level
        part = figures.LevelEmbedding(model, level, map_height=6)
        assert not part.training
        torch.testing.assert_close(part(images), full[:, 4 * start: 4 * (start + count)])
        start += count
    with pytest.raises(ValueError, match=r"level must be one of the model's levels \[1, 6\], got 3"):
        figures.LevelEmbedding(tiny_pyramid("100001"), 3, map_height=6)


def test_level_gradcams_cover_every_level():
    model = tiny_pyramid("110001")
    cams = figures.level_gradcams(model, torch.randn(2, 3, 48, 16))
    assert list(cams) == ["level 1", "level 2", "level 6", "all levels"]
    assert all(c.shape == (2, 48, 16) and c.min() >= 0 and c.max() <= 1 for c in cams.values())
    assert not model.training


# ------------------------------------------------------------------------------------- stress and cost
def test_cost_table_ratios(monkeypatch):
    def fake_run(parameters, speed, seconds, dim):
        info = {"parameters": parameters, "images_per_second": speed, "seconds": seconds}
        return SimpleNamespace(read_json=lambda name: info, config={"profile": {"height": 8, "width": 4}},
                               dim=dim)

    monkeypatch.setattr(figures.experiment, "load_model",
                        lambda run: nn.Sequential(nn.Flatten(), nn.Linear(96, run.dim)).eval())
    runs = {"baseline": fake_run(2e6, 100.0, 60.0, 16), "Pyramid": fake_run(3e6, 80.0, 90.0, 64)}
    table = figures.cost_table(runs, reference="baseline")
    pyramid = table.loc["Pyramid"]
    assert pyramid["embedding size"] == 64 and pyramid["embedding size ×baseline"] == 4
    assert pyramid["parameters ×baseline"] == 1.5 and pyramid["training img/s ×baseline"] == 0.8
    assert pyramid["training minutes"] == 1.5
    with pytest.raises(ValueError, match="reference must be one of"):
        figures.cost_table(runs, reference="ianet")
