"""Chapter 5 (DDAG): the recipes (cross-modality batches, Table 3's graph neighbourhoods against a naive
grouping, model and hook choices), the ablation rows, the figure helpers against naive computations
(batch checks, part-attention statistics, the dynamic-weight table, Grad-CAM's modality binding, the
colour cue), label noise in the training records, and the built-in world's modality-gap knob."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from reidbook import experiment, methods
from reidbook.data import INFRARED, VISIBLE, Record, ReIDDataset
from reidbook.data.records import with_label_noise
from reidbook.data.sampler import CrossModalityIdentitySampler
from reidbook.data.synthetic import make_cameras, render_shot, sample_identities, world_path
from reidbook.data.synthetic.presets import GENERATOR_VERSION, resolve_spec
from reidbook.data.synthetic.render import Nuisances, infrared_with_gap, sample_shot
from reidbook.data.synthetic.writers import PLANNERS
from reidbook.engine import CheckpointDir, History
from reidbook.evaluation.evaluators import SYSU
from reidbook.methods.ddag import (
    GraphNeighbourhoodDDAG,
    build_hooks,
    build_model,
    cross_modality_batches,
    figures,
    graph_groups,
    instances_per_modality,
    tables,
)
from reidbook.models.backbones import build_backbone
from reidbook.models.ddag import DDAGNet, DynamicDualAggregation
from reidbook.profiles import get_profile

SMOKE = get_profile("smoke")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_ddag(num_classes: int = 4, **options) -> DDAGNet:
    return DDAGNet(num_classes, build_backbone("resnet18"), graph_dim=8, **options)


def scripted_batch(pids: list[int], modality: list[int]) -> dict[str, torch.Tensor]:
    return {"img": torch.randn(len(pids), 3, 64, 32), "pid": torch.tensor(pids),
            "modality": torch.tensor(modality)}


# ------------------------------------------------------------------------------ Table 3's neighbourhoods
def naive_groups(pids: list[int], modality: list[int], n_g: int) -> list[tuple]:
    """The neighbourhood of every image by a loop: its rank among the earlier images of its identity and
    modality, then N_g / 2 ranks per neighbourhood (N_g = 1: the image alone)."""
    keys = []
    for i, (pid, mod) in enumerate(zip(pids, modality)):
        rank = sum(1 for j in range(i) if pids[j] == pid and modality[j] == mod)
        keys.append((pid, mod, rank) if n_g == 1 else (pid, rank // (n_g // 2)))
    return keys


@pytest.mark.parametrize("n_g", [1, 2, 4, 8])
def test_graph_groups_match_a_naive_grouping(n_g):
    pids = [3, 3, 3, 3, 5, 5, 5, 5, 3, 3, 3, 3, 5, 5, 5, 5]  # 2 ids x (4 visible, then 4 infrared)
    modality = [0] * 8 + [1] * 8
    labels = graph_groups(torch.tensor(pids), torch.tensor(modality), n_g).tolist()
    keys = naive_groups(pids, modality, n_g)
    for i in range(16):
        for j in range(16):
            assert (labels[i] == labels[j]) == (keys[i] == keys[j]), (i, j)
    sizes = pd.Series(labels).value_counts()
    assert (sizes == n_g).all(), "every neighbourhood holds N_g images"


def test_graph_groups_pair_visible_and_infrared_images():
    labels = graph_groups(torch.tensor([7, 7, 7, 7]), torch.tensor([0, 0, 1, 1]), 2).tolist()
    assert labels[0] == labels[2] and labels[1] == labels[3] and labels[0] != labels[1]


@pytest.mark.parametrize("bad", [0, 3, -2, True, 2.0])
def test_graph_groups_reject_bad_sizes(bad):
    with pytest.raises(ValueError, match="graph_images"):
        graph_groups(torch.tensor([0]), torch.tensor([0]), bad)


def test_neighbourhood_model_feeds_the_graph_the_grouped_labels():
    pids, modality = [0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]
    batch = scripted_batch(pids, modality)
    grouped = GraphNeighbourhoodDDAG(2, build_backbone("resnet18"), graph_images=2, graph_dim=8).train()
    plain = tiny_ddag(2).train()
    plain.load_state_dict(grouped.state_dict())
    torch.manual_seed(1)
    out = grouped(batch["img"], batch["modality"], batch["pid"])
    torch.manual_seed(1)
    labels = graph_groups(batch["pid"], batch["modality"], 2)
    reference = plain(batch["img"], batch["modality"], labels)
    assert torch.allclose(out["graph_log_probs"], reference["graph_log_probs"], atol=1e-5)
    assert torch.allclose(out["logits"], reference["logits"], atol=1e-5), "only the graph sees the groups"
    whole = plain(batch["img"], batch["modality"], batch["pid"])
    assert not torch.allclose(out["graph_log_probs"], whole["graph_log_probs"], atol=1e-4)


# -------------------------------------------------------------------------------------------- recipes
def test_recipes_are_registered_with_the_papers_defaults():
    ddag, two_stream = methods.get("ddag"), methods.get("two-stream")
    assert ddag.options["parts"] == 3 and ddag.options["graph"] and ddag.options["graph_heads"] == 4
    assert ddag.options["graph_dim"] == 256 and ddag.options["graph_images"] is None
    assert ddag.augment == {"random_erasing": 0.0} and ddag.evaluator.measure.metric == "cosine"
    assert ddag.profiles["paper"]["milestones"] == (30, 50) and ddag.profiles["paper"]["batch_k"] == 8
    model = two_stream.build_model(build_backbone("resnet18"), 5, SMOKE, two_stream.options)
    assert model.iwpa is None and model.graph is None
    assert [type(h) for h in build_hooks(SMOKE, ddag.options)] == [DynamicDualAggregation]
    assert build_hooks(SMOKE, {**ddag.options, "graph": False}) == []


def test_build_model_checks_graph_images():
    ddag = methods.get("ddag")
    options = ddag.resolve_options({"parts": 0, "graph_images": 2})
    profile = SMOKE.replace(batch_k=4)
    assert isinstance(build_model(build_backbone("resnet18"), 3, profile, options), GraphNeighbourhoodDDAG)
    assert type(build_model(build_backbone("resnet18"), 3, profile, ddag.options)) is DDAGNet
    with pytest.raises(ValueError, match="at most the batch's 4 images"):
        build_model(build_backbone("resnet18"), 3, profile, {**options, "graph_images": 8})
    with pytest.raises(ValueError, match="needs the graph"):
        build_model(build_backbone("resnet18"), 3, profile, {**options, "graph": False})


def test_cross_modality_batches_hold_half_visible_half_infrared_per_identity():
    pairs = [(pid, m) for pid in range(6) for m in (VISIBLE, INFRARED) for _ in range(3)]
    records = [Record(f"x{i}.jpg", pid, 0 if m == VISIBLE else 2, m) for i, (pid, m) in enumerate(pairs)]
    profile = SMOKE.replace(batch_p=3, batch_k=4)
    loader = cross_modality_batches(records, profile, 0, {}, {})
    sampler = loader.sampler
    assert isinstance(sampler, CrossModalityIdentitySampler) and loader.batch_size == profile.batch_size == 12
    indices = list(iter(sampler))[:12]
    counts = pd.Series([(records[i].pid, records[i].modality) for i in indices]).value_counts()
    assert len({pid for pid, _ in counts.index}) == 3 and (counts == 2).all()
    with pytest.raises(ValueError, match="batch_k must be even"):
        instances_per_modality(SMOKE.replace(batch_k=3))


# ---------------------------------------------------------------------------------------- table rows
def test_rows_share_runs_by_configuration():
    t1, t2 = {r.label: r for r in tables.table1_rows()}, {r.label: r for r in tables.table2_rows()}
    assert t1["B+P"].key() == t2["weight, RBN"].key() and t1["B"].key() == t2["B (no parts)"].key()
    assert t1["B+P"].key() != t2["weight, Res"].key()
    with pytest.raises(ValueError, match="not offer"):
        t2["concat, Res"].key()
    kept = tables.trainable(tables.table2_rows() + tables.table3_rows(4), within=tables.table1_rows())
    assert [r.label for r in kept] == ["B (no parts)", "weight, RBN", "N_g=4"]
    assert len(tables.trainable(tables.table3_rows(4))) == 4  # N_g = 4 and 8 are one run at batch_k = 4


def test_table3_rows_follow_the_batch():
    eight = {r.label: r.options for r in tables.table3_rows(8)}
    assert eight == {"N_g=0 (B)": {}, "N_g=1": {"parts": 0, "graph_images": 1},
                     "N_g=2": {"parts": 0, "graph_images": 2}, "N_g=4": {"parts": 0, "graph_images": 4},
                     "N_g=8": {"parts": 0}}
    assert [r.label for r in tables.table3_rows(4)][-1] == "N_g=8 (ours: all 4)"


def fake_run(method: str, seed: int, metrics: dict, **options) -> SimpleNamespace:
    resolved = methods.get(method).resolve_options(options)
    return SimpleNamespace(config={"method": method, "options": resolved, "seed": seed,
                                   "profile": get_profile("cpu").to_dict()},
                           load_metrics=lambda: metrics)


def test_ours_averages_the_runs_of_a_rows_configuration_whatever_their_label():
    names = ("rank1", "mAP")
    runs = {"anything": [fake_run("ddag", 0, {"rank1": 0.2, "mAP": 0.1}, graph=False),
                         fake_run("ddag", 1, {"rank1": 0.4, "mAP": 0.3}, graph=False)],
            "B": [fake_run("two-stream", 0, {"rank1": 0.5, "mAP": 0.5})]}
    ours = tables.ours(tables.table2_rows(), runs, lambda run: run.load_metrics(), names=names)
    assert ours == {"B (no parts)": {"rank1": 0.5, "mAP": 0.5},
                    "weight, RBN": pytest.approx({"rank1": 0.3, "mAP": 0.2})}
    assert set(tables.paper(tables.table2_rows(), "2")) == {"B (no parts)", "avg, Res", "concat, Res",
                                                           "weight, Res", "weight, RBN"}


# -------------------------------------------------------------------------------------- figure helpers
def test_batch_checks_hold_on_a_scripted_batch():
    batch = scripted_batch([0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1])
    checks = figures.batch_checks(tiny_ddag(2), batch)
    assert checks["holds"].all()
    assert checks.loc[checks.index.str.startswith("graph: neighbours"), "measured"].item() == "4-4"


def test_part_attention_stats_against_naive_columns():
    model = tiny_ddag(2).eval()
    images, modality = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 0, 1])
    stats = figures.part_attention_stats({"m": model}, images, modality).loc["m"]
    logits, attention = figures.part_logits_and_attention(model, images, modality)
    tops, entropies, spreads = [], [], []
    for b in range(4):
        fmap = model.two_stream(images[b:b + 1], modality[b:b + 1])
        assert torch.allclose(attention[b], model.iwpa.part_attention(fmap)[0], atol=1e-5)
        for j in range(3):
            column = [float(attention[b, i, j]) for i in range(3)]
            tops.append(max(column))
            entropies.append(-sum(a * np.log(a) for a in column) / np.log(3))
            spreads.append(float(np.std([float(logits[b, i, j]) for i in range(3)], ddof=1)))
    assert stats["mean largest weight"] == pytest.approx(np.mean(tops), abs=1e-3)
    assert stats["one-hot columns (%)"] == pytest.approx(100 * np.mean(np.array(tops) > 0.99), abs=0.1)
    assert stats["entropy / log p"] == pytest.approx(np.mean(entropies), abs=1e-3)
    assert stats["exponent spread (std)"] == pytest.approx(np.mean(spreads), abs=1e-2)


def test_modality_bound_runs_every_image_through_one_stem():
    model = tiny_ddag(2).eval()
    images = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        model.two_stream.stems[1][0].weight.mul_(0.5)  # the infrared stem starts as a copy: make it differ
        bound = figures.ModalityBound(model, 1)(images)
        assert torch.allclose(bound, model(images, torch.ones(3, dtype=torch.long)))
        assert not torch.allclose(bound, model(images, torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="modality must be"):
        figures.ModalityBound(model, 2)


def scripted_history(losses: list[list[tuple[float, float, float, float]]]) -> tuple[History, list[float]]:
    """Step rows (id, triplet, part_id, graph) per epoch, with the weights Eq. 11 gives."""
    history, weights = History(), []
    for epoch, steps in enumerate(losses):
        previous = [sum(s[:3]) for s in losses[epoch - 1]] if epoch else None
        weight = 0.0 if previous is None else 1 / (1 + np.mean(previous))
        weights.append(weight)
        for step, (a, b, c, g) in enumerate(steps):
            history.step_rows.append({"epoch": epoch, "step": step, "id": a, "triplet": b, "part_id": c,
                                      "graph": g, "id_weight": 1.0, "triplet_weight": 1.0,
                                      "part_id_weight": 1.0, "graph_weight": weight})
        history.epoch_rows.append({"epoch": epoch, "graph": np.mean([s[3] for s in steps]),
                                   "graph_weight": weight})
    return history, weights


def test_dynamic_weight_table_recomputes_eq_11_and_reads_the_hooks_state(tmp_path):
    losses = [[(5.0, 1.0, 5.0, 6.0), (4.0, 1.0, 4.0, 5.0)], [(3.0, 0.5, 3.0, 4.0), (2.0, 0.5, 2.0, 3.0)],
              [(1.0, 0.2, 1.0, 2.0), (1.0, 0.2, 1.0, 2.0)]]
    history, weights = scripted_history(losses)
    hook = DynamicDualAggregation()
    hook.load_state_dict({"weights": dict(enumerate(weights)), "instance_losses": {}})
    CheckpointDir(tmp_path).save({"global_step": 6, "hooks": [hook.state_dict()]})
    run = SimpleNamespace(name="ddag", key="k", load_history=lambda: history, checkpoint_dir=tmp_path)
    table = figures.dynamic_weight_table(run)
    assert table.index.tolist() == [1, 2, 3]
    assert table["E[L_P]"].tolist() == pytest.approx([10.0, 5.5, 2.2])
    assert table["1/(1+E[L_P] of the epoch before)"].tolist() == pytest.approx([0.0, 1 / 11, 1 / 6.5])
    assert table["weight used"].tolist() == pytest.approx(weights)
    assert table["weight in the hook's state"].tolist() == pytest.approx(weights)
    assert table["L_g"].tolist() == pytest.approx([5.5, 3.5, 2.0])


def test_identities_in_both_and_the_test_identity():
    records = [Record("a", 1, 0, VISIBLE), Record("b", 1, 2, INFRARED), Record("c", 2, 0, VISIBLE),
               Record("d", 1, 1, VISIBLE), Record("e", 1, 5, INFRARED), Record("f", 2, 0, VISIBLE)]
    assert figures.identities_in_both(records, 2) == {1: {VISIBLE: [0, 3], INFRARED: [1, 4]}}
    assert figures.identities_in_both(records, 3) == {}
    query = [records[1], records[4]]
    data = ReIDDataset("sysu", "/nowhere", [], query, [r for r in records if r not in query])
    pid, visible, infrared = figures.test_identity_records(data, 2, seed=0)
    assert pid == 1 and {r.path for r in visible} == {"a", "d"} and {r.path for r in infrared} == {"b", "e"}


def test_colour_cue_table_on_solid_colours(tmp_path: Path):
    colours = {0: (200, 30, 30), 1: (30, 30, 200)}
    records = []
    for pid, colour in colours.items():
        for cam, grey in ((0, False), (1, False), (2, True), (5, True)):
            value = (120, 120, 120) if grey else colour  # both people look alike in infrared
            path = tmp_path / f"{pid}_{cam}.png"
            Image.new("RGB", (32, 64), value).save(path)
            records.append(Record(str(path), pid, cam, INFRARED if grey else VISIBLE))
    data = ReIDDataset("sysu", str(tmp_path), [], [r for r in records if r.modality == INFRARED],
                       [r for r in records if r.modality == VISIBLE])
    table = figures.colour_cue_table(data)
    assert table.loc["visible -> visible", "rank-1 (%)"] == 100.0
    assert table.loc["visible -> visible", "queries"] == 4
    assert table.loc["infrared -> visible", "mAP (%)"] < 100.0


def test_sysu_metrics_use_the_runs_own_measure(monkeypatch):
    seen = []
    monkeypatch.setattr(experiment, "evaluate", lambda run, dataset, evaluator: seen.append(evaluator)
                        or SimpleNamespace(metrics={"mAP": 0.5}))
    run = fake_run("two-stream", 0, {})
    assert figures.sysu_metrics("data", "indoor", 10)(run) == {"mAP": 0.5}
    assert seen[0].protocol == SYSU(mode="indoor", shots=10) and seen[0].measure.metric == "cosine"
    assert seen[0].measure.flip is False  # the cpu profile's test_flip


def test_noise_frame_reads_each_runs_own_metrics():
    noise = figures.noise_frame({"B": {0.0: fake_run("two-stream", 0, {"rank1": 0.3, "mAP": 0.2}),
                                       0.2: fake_run("two-stream", 0, {"rank1": 0.1, "mAP": 0.1})}})
    assert noise[["method", "strength", "mAP"]].values.tolist() == [["B", 0.0, 0.2], ["B", 0.2, 0.1]]


# -------------------------------------------------------------------------------------------- label noise
def noisy_world() -> ReIDDataset:
    train = [Record(f"{pid}-{m}-{k}", pid, 0 if m == VISIBLE else 2, m)
             for pid in range(5) for m in (VISIBLE, INFRARED) for k in range(4)]
    test = [Record("q", 9, 2, INFRARED)]
    return ReIDDataset("sysumm01-all", "/nowhere", train, test, list(test), {"built_in": {"world": {}}})


def test_label_noise_relabels_the_asked_share_and_keeps_every_identity_and_modality():
    clean = noisy_world()
    noisy = with_label_noise(clean, 0.3, seed=4)
    changed = [(a, b) for a, b in zip(clean.train, noisy.train) if a.pid != b.pid]
    assert len(changed) == round(0.3 * 40)
    assert all(a.path == b.path and a.modality == b.modality for a, b in zip(clean.train, noisy.train))
    kept = {(a.pid, a.modality) for a, b in zip(clean.train, noisy.train) if a.pid == b.pid}
    assert kept == {(r.pid, r.modality) for r in clean.train}, "one image of every (identity, modality) keeps"
    assert noisy.num_train_pids == clean.num_train_pids and noisy.query == clean.query
    assert noisy.meta["variant"] == {"label_noise": 0.3, "seed": 4} and "variant" not in clean.meta
    assert experiment.dataset_identity(noisy)["variant"] == {"label_noise": 0.3, "seed": 4}
    assert [r.pid for r in with_label_noise(clean, 0.3, seed=4).train] == [r.pid for r in noisy.train]
    assert [r.pid for r in with_label_noise(clean, 0.3, seed=5).train] != [r.pid for r in noisy.train]
    assert with_label_noise(clean, 0.0) is clean


@pytest.mark.parametrize("share", [-0.1, 1.0, True, "0.2", 0.9])
def test_label_noise_rejects_bad_shares(share):
    with pytest.raises(ValueError, match="share"):
        with_label_noise(noisy_world(), share)


def test_label_noise_is_not_applied_twice():
    with pytest.raises(ValueError, match="already has label noise"):
        with_label_noise(with_label_noise(noisy_world(), 0.1), 0.1)


# ------------------------------------------------------------------------------------ the modality gap
def test_modality_gap_is_a_cross_modality_knob():
    assert world_path("data", "sysu", 0, modality_gap=1.0) == world_path("data", "sysu", 0)
    changed = world_path("data", "regdb", 0, modality_gap=0.5)
    assert changed.name.startswith(f"regdb-s0-v{GENERATOR_VERSION}-k")
    with pytest.raises(ValueError, match="modality_gap.*does not apply to preset 'market'"):
        world_path("data", "market", 0, modality_gap=0.5)
    with pytest.raises(ValueError, match="modality_gap must be in"):
        world_path("data", "sysu", 0, modality_gap=2.5)


def test_infrared_with_gap_blends_the_visible_and_thermal_renderings():
    person = sample_identities(1, seed=3)[0]
    camera = make_cameras(6, "market", 0, infrared=(3, 6))[2]
    shot = sample_shot(np.random.default_rng(0), Nuisances(), camera, camera.style)
    thermal = np.asarray(render_shot(person, shot, camera).image, dtype=float)
    visible = np.asarray(render_shot(person, shot, replace(camera, infrared=False)).image, dtype=float)
    at = {g: np.asarray(infrared_with_gap(person, shot, camera, g).image, dtype=float)
          for g in (0.0, 0.5, 1.0, 2.0)}
    assert np.array_equal(at[1.0], thermal) and np.array_equal(at[0.0], visible)
    assert np.abs(at[0.5] - (visible + thermal) / 2).max() <= 1.0
    luma = visible @ np.array([0.299, 0.587, 0.114])
    assert np.abs(at[2.0] - np.clip(2 * thermal - luma[..., None], 0, 255)).max() <= 1.0
    assert (at[2.0] == at[2.0][..., :1]).all(), "beyond 1 the image stays grey"
    visible_camera = make_cameras(6, "market", 0)[0]
    assert np.array_equal(np.asarray(infrared_with_gap(person, shot, visible_camera, 0.0).image),
                          np.asarray(render_shot(person, shot, visible_camera).image))


def test_world_plans_carry_the_gap_to_infrared_jobs_only():
    spec = resolve_spec("sysu", {"world_size": "small", "modality_gap": 0.0})
    jobs = PLANNERS["sysu"](spec, 0).jobs
    default = PLANNERS["sysu"](resolve_spec("sysu", {"world_size": "small"}), 0).jobs
    assert {j.modality_gap for j in jobs} == {0.0} and {j.modality_gap for j in default} == {1.0}
    infrared = next(j for j in jobs if j.camera.infrared)
    twin = next(j for j in default if j.relpath == infrared.relpath)
    visible_twin = render_shot(twin.person, twin.shot, replace(twin.camera, infrared=False))
    assert np.array_equal(np.asarray(infrared.render()), np.asarray(visible_twin.image))
    thermal = render_shot(twin.person, twin.shot, twin.camera)
    assert np.array_equal(np.asarray(twin.render()), np.asarray(thermal.image))
