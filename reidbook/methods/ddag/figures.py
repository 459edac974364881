"""Chapter 5's figures and measurements for DDAG: visible and infrared pictures of the same people and what
a colour cue keeps of them, the batch graph and the part attention of one real batch, how peaked the part
attention gets, the dynamic weight of Eq. 11 per epoch, IWPA's part weights and attention maps, Grad-CAM
per modality, the cross-modality protocols (SYSU-MM01 modes and shots, RegDB directions), label-noise
curves, and the cost of each model."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ... import experiment, viz
from ...data import INFRARED, VISIBLE, Record, ReIDDataset
from ...evaluation.evaluators import SYSU, Evaluator
from ...evaluation.ranking import evaluate_rank
from ...models.color_histogram import ColorHistogramMatcher
from ...models.ddag import INFRARED as INFRARED_CODE
from ...models.ddag import VISIBLE as VISIBLE_CODE
from ...models.ddag import (
    DDAGNet,
    DynamicDualAggregation,
    graph_adjacency,
    instance_loss_mean,
    region_pool_parts,
)
from ...report import mean_spread
from ...results import Run

SYSU_SETTINGS = (("all", 1), ("all", 10), ("indoor", 1), ("indoor", 10))
ONE_HOT = 0.99  # a part-attention column whose largest weight exceeds this is called one-hot


# ------------------------------------------------------------------------------------------- the problem
def identities_in_both(records: Sequence[Record], count: int) -> dict[int, dict[str, list[int]]]:
    """Identities with at least ``count`` visible and ``count`` infrared images among ``records``: pid ->
    {modality: indices of its images}, identities in increasing pid order."""
    found: dict[int, dict[str, list[int]]] = {}
    for index, record in enumerate(records):
        found.setdefault(record.pid, {VISIBLE: [], INFRARED: []})[record.modality].append(index)
    return {pid: images for pid, images in sorted(found.items())
            if min(len(images[VISIBLE]), len(images[INFRARED])) >= count}


def test_identity_records(dataset: ReIDDataset, count: int,
                          seed: int) -> tuple[int, list[Record], list[Record]]:
    """One test identity (drawn with ``seed``) seen in both modalities: its pid and ``count`` of its visible
    and ``count`` of its infrared test images (query and gallery pooled).

    Raises:
        ValueError: if no test identity has ``count`` images in each modality.
    """
    records = list(dataset.query) + list(dataset.gallery)
    both = identities_in_both(records, count)
    if not both:
        raise ValueError(f"no test identity of {dataset.name} has {count} visible and {count} infrared "
                         "images")
    pid = list(both)[int(np.random.default_rng(seed).integers(len(both)))]
    return pid, *([records[i] for i in both[pid][m][:count]] for m in (VISIBLE, INFRARED))


def plot_modalities(records: Sequence[Record], identities: int, per_modality: int, seed: int) -> Figure:
    """``per_modality`` visible then ``per_modality`` infrared images of ``identities`` people (drawn with
    ``seed`` among those seen in both modalities), one row per person."""
    both = identities_in_both(records, per_modality)
    if not both:
        raise ValueError(f"no identity has {per_modality} images in each modality")
    rng = np.random.default_rng(seed)
    pids = sorted(rng.choice(list(both), size=min(identities, len(both)), replace=False).tolist())
    pictures, titles = [], []
    for pid in pids:
        for modality in (VISIBLE, INFRARED):
            for index in both[pid][modality][:per_modality]:
                pictures.append(records[index])
                titles.append(f"id {pid}, {modality[:3]}. cam {records[index].camid + 1}")
    fig = viz.image_grid(pictures, titles=titles, ncols=2 * per_modality, height=1.9)
    fig.suptitle("the same people in visible (left) and infrared (right) cameras", y=1.02)
    return fig


def colour_cue_table(dataset: ReIDDataset) -> pd.DataFrame:
    """What a colour cue keeps across modalities: the colour-histogram matcher (no learning) on the test
    images, visible -> visible and infrared -> infrared (other cameras, as the standard protocol) against
    infrared -> visible, with the images of an identity and camera removed from its own ranking."""
    records = list(dataset.query) + list(dataset.gallery)
    matcher = ColorHistogramMatcher()
    features = matcher.features([r.path for r in records])
    by_modality = {m: np.array([i for i, r in enumerate(records) if r.modality == m])
                   for m in (VISIBLE, INFRARED)}
    searches = {"visible -> visible": (VISIBLE, VISIBLE), "infrared -> infrared": (INFRARED, INFRARED),
                "infrared -> visible": (INFRARED, VISIBLE)}
    rows = []
    for name, (q, g) in searches.items():
        qi, gi = by_modality[q], by_modality[g]
        distances = matcher.distance(features[qi], features[gi])
        labels = [(np.array([records[i].pid for i in idx]), np.array([records[i].camid for i in idx]))
                  for idx in (qi, gi)]
        result = evaluate_rank(distances, labels[0][0], labels[1][0], labels[0][1], labels[1][1], max_rank=1)
        rows.append({"search": name, "queries": int(result["num_valid_queries"]), "gallery": len(gi),
                     "rank-1 (%)": round(100 * float(result["cmc"][0]), 1),
                     "mAP (%)": round(100 * float(result["mAP"]), 1)})
    return pd.DataFrame(rows).set_index("search")


# ----------------------------------------------------------------------------------- one batch, by hand
def _batch_maps(model: DDAGNet, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch graph, the first head's graph attention and every image's part attention."""
    if model.iwpa is None or model.graph is None:
        raise ValueError("the batch figure needs a DDAG with IWPA and the graph (parts > 0, graph=True)")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        fmap = model.two_stream(batch["img"], batch["modality"])  # (K, C, h, w)
        adjacency = graph_adjacency(batch["pid"])  # (K, K), Eq. 6
        graph = model.graph.hidden.attention(fmap.mean(dim=(2, 3)), adjacency)  # (L, K, K), Eq. 7
        parts = model.iwpa.part_attention(fmap)  # (K, p, p), Eqs. 2-3
    model.train(was_training)
    return {"adjacency": adjacency, "graph": graph, "parts": parts}


def batch_checks(model: DDAGNet, batch: Mapping[str, Tensor]) -> pd.DataFrame:
    """What must hold on one batch, measured: Eq. 6's graph joins exactly the images of one identity (2 on
    the diagonal), the graph attention's rows are distributions over those neighbours only (Eq. 7), and
    every column of a part attention map sums to 1 (Eq. 2 normalises over i)."""
    maps = _batch_maps(model, batch)
    pids, adjacency, graph, parts = batch["pid"], maps["adjacency"], maps["graph"], maps["parts"]
    same = pids[:, None] == pids[None, :]
    expected = same.float() + torch.eye(len(pids))
    rows = [
        ("graph: A^g = same identity + I (Eq. 6)", bool(torch.equal(adjacency, expected)), ""),
        ("graph: neighbours per image (own identity, both modalities, itself included)",
         True, f"{int(same.sum(1).min())}-{int(same.sum(1).max())}"),
        ("graph attention: rows sum to 1 (Eq. 7)",
         bool(torch.allclose(graph.sum(-1), torch.ones(1), atol=1e-5)),
         f"max |sum - 1| = {float((graph.sum(-1) - 1).abs().max()):.1e}"),
        ("graph attention: nothing across identities", bool(graph[:, ~same].abs().max() == 0),
         f"largest = {float(graph[:, ~same].abs().max()):.1e}"),
        ("part attention: columns sum to 1 (Eq. 2)",
         bool(torch.allclose(parts.sum(1), torch.ones(1), atol=1e-5)),
         f"max |sum - 1| = {float((parts.sum(1) - 1).abs().max()):.1e}"),
    ]
    return pd.DataFrame(rows, columns=["check", "holds", "measured"]).set_index("check")


def plot_batch_maps(model: DDAGNet, batch: Mapping[str, Tensor], images: int = 4) -> Figure:
    """One training batch: its graph A^g (Eq. 6), the first head's graph attention on it (Eq. 7), and the
    p x p part attention (Eqs. 2-3) of ``images`` of its pictures (half visible, half infrared)."""
    maps = _batch_maps(model, batch)
    modality = batch["modality"]
    picked = (modality == VISIBLE_CODE).nonzero().flatten()[: images // 2].tolist() + \
        (modality == INFRARED_CODE).nonzero().flatten()[: images - images // 2].tolist()
    fig = plt.figure(figsize=(4.0 + 1.3 * len(picked) + 4.0, 3.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[2.0, 0.33 * len(picked) + 0.4])
    axes = left.subplots(1, 2)
    ticks = [f"{int(p)}{'v' if int(m) == VISIBLE_CODE else 'i'}" for p, m in zip(batch["pid"], modality)]
    for ax, matrix, title in ((axes[0], maps["adjacency"], "batch graph $A^g$ (Eq. 6)"),
                              (axes[1], maps["graph"][0], "graph attention, head 1 (Eq. 7)")):
        shown = ax.imshow(matrix.numpy(), cmap="viridis")
        ax.set_title(title, fontsize=9)
        step = max(1, len(ticks) // 16)
        ax.set_xticks(range(0, len(ticks), step), ticks[::step], rotation=90, fontsize=6)
        ax.set_yticks(range(0, len(ticks), step), ticks[::step], fontsize=6)
        left.colorbar(shown, ax=ax, shrink=0.7)
    cells = right.subplots(2, len(picked), squeeze=False)
    for column, index in enumerate(picked):
        cells[0, column].imshow(viz.to_image_array(batch["img"][index]))
        cells[0, column].set_title(ticks[index], fontsize=8)
        cells[0, column].axis("off")
        attention = maps["parts"][index].numpy()
        cells[1, column].imshow(attention, cmap="magma", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(attention):
            cells[1, column].text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="cyan")
        cells[1, column].set_xticks([]), cells[1, column].set_yticks([])
    cells[1, 0].set_ylabel("$A^p$: row i, column j", fontsize=7)
    right.suptitle("part attention $\\alpha_{ij}$ (Eqs. 2-3)", fontsize=9)
    return fig


# -------------------------------------------------------------------------------- how peaked is A^p?
def part_logits_and_attention(model: DDAGNet, images: Tensor, modality: Tensor) -> tuple[Tensor, Tensor]:
    """The similarities ``u(x_i)^T v(x_j)`` (Eq. 3's exponents) and the attention A^p of ``images``:
    (B, p, p) each."""
    if model.iwpa is None:
        raise ValueError("the model has no IWPA (parts=0)")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        parts = region_pool_parts(model.two_stream(images, modality), model.iwpa.parts)  # (B, p, C)
        block = model.iwpa.attention
        logits = block.u(parts) @ block.v(parts).transpose(1, 2)  # (B, p, p)
        attention = block.attention(parts)
    model.train(was_training)
    return logits, attention


def part_attention_stats(models: Mapping[str, DDAGNet], images: Tensor, modality: Tensor) -> pd.DataFrame:
    """How peaked each model's part attention is on ``images``: per column j of A^p (a distribution over
    the parts i), its largest weight (1/p: uniform, 1: one-hot), the share of one-hot columns (largest
    weight above 0.99), the entropy relative to log p, and the spread of Eq. 3's exponents in a column
    (their standard deviation): unscaled dot products of C-dimensional features grow with C."""
    rows = {}
    for name, model in models.items():
        logits, attention = part_logits_and_attention(model, images, modality)
        p = attention.shape[-1]
        top = attention.max(dim=1).values  # (B, p): the largest weight of every column
        entropy = -(attention * attention.clamp_min(1e-12).log()).sum(dim=1) / math.log(p)  # (B, p)
        rows[name] = {"channels C": model.feature_dim, "parts p": p, "uniform weight 1/p": round(1 / p, 3),
                      "mean largest weight": round(float(top.mean()), 3),
                      "one-hot columns (%)": round(100 * float((top > ONE_HOT).float().mean()), 1),
                      "entropy / log p": round(float(entropy.mean()), 3),
                      "exponent spread (std)": round(float(logits.std(dim=1).mean()), 2)}
    return pd.DataFrame(rows).T


def plot_part_attention(model: DDAGNet, images: Mapping[str, tuple[Tensor, Tensor]]) -> Figure:
    """IWPA after training: the part weights w^p of Eq. 5 (1/p dashed), and the mean part attention A^p
    over the images of each modality (``images``: name -> (images, modality codes))."""
    if model.iwpa is None:
        raise ValueError("the model has no IWPA (parts=0)")
    weights = model.iwpa.aggregation.part_weight_vector().detach().numpy()
    p = len(weights)
    fig, axes = plt.subplots(1, 1 + len(images), figsize=(3.0 * (1 + len(images)), 2.9), layout="constrained")
    axes[0].bar(range(1, p + 1), weights, color="tab:blue")
    axes[0].axhline(1 / p, color="grey", linestyle="--", linewidth=1, label="1/p (start)")
    axes[0].set(xlabel="part i (top to bottom)", ylabel="$w_i$", title="part weights $w^p$ (Eq. 5)",
                xticks=range(1, p + 1))
    axes[0].legend(fontsize=8)
    for ax, (name, (batch, modality)) in zip(axes[1:], images.items()):
        mean = part_logits_and_attention(model, batch, modality)[1].mean(dim=0).numpy()
        ax.imshow(mean, cmap="magma", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(mean):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="cyan")
        ax.set(title=f"mean $A^p$, {name} ({len(batch)} images)", xlabel="part j", ylabel="part i",
               xticks=range(p), yticks=range(p), xticklabels=range(1, p + 1), yticklabels=range(1, p + 1))
    return fig


def test_batch(dataset: ReIDDataset, modality: str, count: int, height: int, width: int,
               seed: int) -> tuple[Tensor, Tensor]:
    """``count`` test images of one ``modality`` (drawn with ``seed``) as model inputs, and their codes."""
    records = [r for r in list(dataset.query) + list(dataset.gallery) if r.modality == modality]
    picked = np.random.default_rng(seed).choice(len(records), size=min(count, len(records)), replace=False)
    code = VISIBLE_CODE if modality == VISIBLE else INFRARED_CODE
    return viz.test_images(records, picked, height, width), torch.full((len(picked),), code, dtype=torch.long)


# ------------------------------------------------------------------------------- dynamic weight (Eq. 11)
def dynamic_weight_table(run: Run) -> pd.DataFrame:
    """Per epoch of a trained DDAG: the mean instance loss E[L_P] (Eq. 10's terms, from the stored step
    losses), the mean graph loss L_g, the graph weight the run used, Eq. 11's 1 / (1 + E[L_P^{t-1}]) (0 in
    the first epoch) recomputed from the history, and the weight the hook recorded in the final
    checkpoint."""
    history = run.load_history()
    epochs = history.epochs
    if "graph_weight" not in epochs:
        raise ValueError(f"run {run.name}/{run.key} has no graph term: train it with graph=True")
    recorded = {}
    states = [state for state in experiment.hook_states(run) if state is not None and "weights" in state]
    if states:
        hook = DynamicDualAggregation()
        hook.load_state_dict(states[0])
        recorded = dict(zip(hook.table()["epoch"], hook.table()["graph_weight"]))
    means = [instance_loss_mean(history, int(e)) for e in epochs["epoch"]]
    return pd.DataFrame({
        "epoch": epochs["epoch"].astype(int) + 1,
        "E[L_P]": means,
        "L_g": epochs["graph"],
        "weight used": epochs["graph_weight"],
        "1/(1+E[L_P] of the epoch before)": [0.0] + [1 / (1 + m) for m in means[:-1]],
        "weight in the hook's state": [recorded.get(int(e), np.nan) for e in epochs["epoch"]],
    }).set_index("epoch")


def plot_dynamic_weight(table: pd.DataFrame) -> Figure:
    """The losses per epoch (L_P and L_g) beside the graph weight of Eq. 11 that each epoch used."""
    fig, (losses, weight) = plt.subplots(1, 2, figsize=(8.4, 3.0), layout="constrained")
    losses.plot(table.index, table["E[L_P]"], "o-", label="$E[L_P]$ (instance: id + triplet + part id)")
    losses.plot(table.index, table["L_g"], "s-", label="$L_g$ (graph NLL)")
    losses.set(xlabel="epoch", ylabel="mean loss", title="losses per epoch")
    losses.legend(fontsize=8), losses.grid(alpha=0.3)
    weight.bar(table.index, table["weight used"], color="tab:green", alpha=0.7, label="weight used")
    weight.plot(table.index, table["1/(1+E[L_P] of the epoch before)"], "k_", markersize=18, mew=2,
                label="$1/(1+E[L_P^{t-1}])$")
    weight.set(xlabel="epoch", ylabel="weight of $L_g$", title="dynamic dual aggregation (Eq. 11)",
               xticks=table.index)
    weight.legend(fontsize=8), weight.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------------- Grad-CAM
class ModalityBound(nn.Module):
    """A DDAG model with its modality bound, taking images alone (for Grad-CAM): ``forward(img)`` runs every
    image through the stem of ``modality`` (0 visible, 1 infrared)."""

    def __init__(self, model: DDAGNet, modality: int) -> None:
        super().__init__()
        if modality not in (VISIBLE_CODE, INFRARED_CODE):
            raise ValueError(f"modality must be {VISIBLE_CODE} (visible) or {INFRARED_CODE} (infrared), "
                             f"got {modality!r}")
        self.model = model
        self.modality = modality

    def forward(self, img: Tensor) -> Tensor:
        codes = torch.full((img.shape[0],), self.modality, dtype=torch.long, device=img.device)
        return self.model(img, codes)


def gradcam_by_modality(models: Mapping[str, nn.Module], visible: Tensor,
                        infrared: Tensor) -> dict[str, np.ndarray]:
    """Grad-CAM of each model's own embedding (:func:`reidbook.viz.gradcam_embeddings`) on the last stage's
    map, for the ``visible`` then the ``infrared`` images: name -> (V + I, H, W). A DDAG model sees each
    image through its modality's stem; a single-stream model sees the images alone."""
    cams = {}
    for name, model in models.items():
        if isinstance(model, DDAGNet):
            layer = model.two_stream.stages[-1]
            parts = [viz.gradcam_embeddings(ModalityBound(model, code), images, layer)
                     for code, images in ((VISIBLE_CODE, visible), (INFRARED_CODE, infrared))]
        else:
            parts = [viz.gradcam_embeddings(model, images) for images in (visible, infrared)]
        cams[name] = np.concatenate(parts)
    return cams


# ----------------------------------------------------------------------------------------- protocols
def sysu_protocol_frame(runs: Mapping[str, Sequence[Run]], dataset: ReIDDataset,
                        settings: Sequence[tuple[str, int]] = SYSU_SETTINGS,
                        metrics: Sequence[str] = ("rank1", "rank10", "rank20", "mAP", "mINP"),
                        ) -> pd.DataFrame:
    """Every run under SYSU-MM01's search modes and shots (``settings``: (mode, shots) pairs; 10 random
    galleries each), with the run's own measure; one test-feature extraction per run, the evaluations
    stored under it. One row per (label, seed, mode, shots)."""
    rows = []
    for label, group in runs.items():
        for run in group:
            for mode, shots in settings:
                result = sysu_metrics(dataset, mode, shots)(run)
                rows.append({"label": label, "seed": run.config["seed"], "mode": f"{mode}-search",
                             "shots": "single-shot" if shots == 1 else f"multi-shot ({shots})",
                             **{m: result[m] for m in metrics}})
    return pd.DataFrame(rows)


def sysu_metrics(dataset: ReIDDataset, mode: str, shots: int) -> Callable[[Run], dict]:
    """``run -> metrics`` of a run on ``dataset`` under SYSU-MM01's ``mode`` and ``shots``, with the run's
    own measure (a stored evaluation, reused)."""
    def metrics(run: Run) -> dict:
        measure = experiment.run_evaluator(run).measure
        return experiment.evaluate(run, dataset, Evaluator(measure, SYSU(mode=mode, shots=shots))).metrics

    return metrics


def protocol_table(frame: pd.DataFrame, metric: str = "mAP",
                   by: Sequence[str] = ("mode", "shots")) -> pd.DataFrame:
    """Mean ± spread over seeds (percent) of ``metric`` per label (rows) and protocol setting (columns)."""
    table = frame.pivot_table(index="label", columns=list(by), values=metric, aggfunc=mean_spread, sort=False)
    return table.rename_axis(columns=[*by])


def regdb_frame(runs: Mapping[str, Mapping[int, Run]], datasets: Mapping[int, Mapping[str, ReIDDataset]],
                metrics: Sequence[str] = ("rank1", "rank10", "rank20", "mAP", "mINP")) -> pd.DataFrame:
    """RegDB: every label's run of each split (``runs[label][trial]``) evaluated in both directions
    (``datasets[trial][direction]``, the same split read both ways). One row per (label, trial,
    direction)."""
    rows = []
    for label, by_trial in runs.items():
        for trial, run in by_trial.items():
            for direction, dataset in datasets[trial].items():
                result = experiment.evaluate(run, dataset)
                rows.append({"label": label, "trial": trial, "direction": direction,
                             **{m: result.metrics[m] for m in metrics}})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------- stress curves
def noise_frame(runs: Mapping[str, Mapping[float, Run]],
                metrics: Sequence[str] = ("rank1", "mAP")) -> pd.DataFrame:
    """Runs trained with a share of wrong labels (``runs[label][share]``), each judged on its own clean test
    split: rows of method, seed, strength (the share) and metrics, as a stress curve's."""
    return pd.DataFrame([{"method": label, "seed": run.config["seed"], "strength": share,
                          **{m: run.load_metrics()[m] for m in metrics}}
                         for label, by_share in runs.items() for share, run in by_share.items()])


# ------------------------------------------------------------------------------------------------ cost
TRAINING_ONLY = ("classifier", "graph")


def cost_table(runs: Mapping[str, Sequence[Run]], reference: str) -> pd.DataFrame:
    """Parameters (all, and those a test embedding uses: without the identity classifier and the graph,
    which serve training only) and training speed (images per second, mean over the runs, and relative
    to ``reference``'s), from each label's first run and its ``training.json``."""
    rows = {}
    for label, group in runs.items():
        model = experiment.load_model(group[0])
        total = sum(p.numel() for p in model.parameters())
        training_only = sum(p.numel() for name, p in model.named_parameters()
                            if name.split(".")[0] in TRAINING_ONLY)
        speed = [r.read_json("training.json")["images_per_second"] for r in group]
        minutes = [r.read_json("training.json")["seconds"] / 60 for r in group]
        rows[label] = {"parameters (M)": round(total / 1e6, 2),
                       "at test time (M)": round((total - training_only) / 1e6, 2),
                       "training img/s": round(float(np.mean(speed)), 1),
                       "minutes per run": round(float(np.mean(minutes)), 2)}
    table = pd.DataFrame(rows).T
    speed = table["training img/s"].astype(float)
    table[f"speed vs {reference}"] = (speed / speed[reference]).round(2)
    return table

