"""Chapter 3's figures and measurements for Pyramid: fixed stripes under misaligned boxes, the pyramid's
branches over a feature map, Eq. 1 on a toy map, Algorithm 1 on a scripted loss sequence and on a run's
own log, Fig. 5's queries with imprecise boxes, Grad-CAM per pyramid level, labelled stress curves and the
cost table."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ... import experiment, viz
from ...data import ReIDDataset
from ...data.sampler import IdentityBalancedBatches, RandomBatches, SwitchingBatchSampler
from ...data.synthetic import MANIFEST, Identity, Rendered
from ...data.transforms import build_transforms
from ...evaluation.ranking import evaluate_rank
from ...models.pyramid import (
    BALANCED_STREAM,
    RANDOM_STREAM,
    DynamicTraining,
    Pyramid,
    PyramidBranch,
    PyramidNet,
    part_rows,
)
from ...results import Run

PARTS = ("head", "torso", "legs", "shoes")
#: Boxes of one person, from aligned to badly framed; each setting lies within what the built-in world
#: draws at misalignment strength 3 (window shift up to 0.2 of its height, zoom 0.75-1.35, truncations of
#: 0.2-0.45 at the bottom and 0.12-0.3 at the top).
MISALIGNED_BOXES: dict[str, dict[str, float]] = {
    "aligned": {},
    "box moved down 0.08": {"win_dy": 0.08},
    "box moved down 0.16": {"win_dy": 0.16},
    "loose (zoom 1.3)": {"win_zoom": 1.3},
    "tight (zoom 0.8)": {"win_zoom": 0.8},
    "cut at the bottom 0.25": {"cut_bottom": 0.25},
    "cut at the bottom 0.4": {"cut_bottom": 0.4},
    "cut at the top 0.25": {"cut_top": 0.25},
}
STREAM_COLORS = {RANDOM_STREAM: "tab:blue", BALANCED_STREAM: "tab:orange"}


# ------------------------------------------------------------------------------------- the problem
def stripe_of(y: float, height: float, num_parts: int = 6) -> int:
    """The 1-based horizontal stripe (of ``num_parts`` equal ones) holding image row ``y``."""
    if not 0 <= y < height:
        raise ValueError(f"y must lie in [0, {height}), got {y}")
    return min(int(y / height * num_parts), num_parts - 1) + 1


def plot_stripes_under_misalignment(person: Identity, seed: int,
                                    boxes: Mapping[str, Mapping[str, float]] = MISALIGNED_BOXES,
                                    num_parts: int = 6) -> tuple[Figure, pd.DataFrame]:
    """One person in each box of ``boxes`` with the ``num_parts`` fixed stripes drawn over it and the body
    parts marked; and the stripe holding each part per box ("-": cut out of the box)."""
    shots = {name: viz.plain_render(person, seed, **dict(box)) for name, box in boxes.items()}
    fig, axes = plt.subplots(1, len(shots), figsize=(1.45 * len(shots), 3.4), layout="constrained",
                             squeeze=False)
    colors = dict(zip(PARTS, ("tab:red", "tab:green", "tab:blue", "tab:purple")))
    table = {}
    for ax, (name, shot) in zip(axes[0], shots.items()):
        picture = np.asarray(shot.image)
        height = picture.shape[0]
        ax.imshow(picture)
        for j in range(1, num_parts):
            ax.axhline(j * height / num_parts - 0.5, color="white", lw=1.0, ls="--")
        for part in PARTS:
            if part in shot.parts:
                ax.plot(*shot.parts[part], "o", color=colors[part], markersize=6, markeredgecolor="white",
                        label=part)
        table[name] = {part: stripe_of(shot.parts[part][1], height, num_parts) if part in shot.parts else "-"
                       for part in PARTS}
        ax.set_title(name, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=p) for p, c in colors.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(PARTS), fontsize=8)
    return fig, pd.DataFrame(table).rename_axis(f"stripe (1-{num_parts}) holding the part")


# --------------------------------------------------------------------------------------- the method
def as_input(rendered: Rendered, height: int, width: int) -> Tensor:
    """A rendered picture as the model's normalised test input (3, height, width)."""
    to_tensor = build_transforms(height, width, train=False)
    return to_tensor(torch.from_numpy(np.array(rendered.image)).permute(2, 0, 1))


def feature_energy(model: PyramidNet, image: Tensor) -> np.ndarray:
    """The L2 norm over channels of the backbone's last map M for ``image`` (3, H, W): (h, w)."""
    model.eval()
    with torch.no_grad():
        fmap = model.backbone(image[None])  # (1, C, h, w)
    return fmap[0].norm(dim=0).numpy()


def plot_branches(picture: np.ndarray, branches: Sequence[PyramidBranch], rows: int,
                  energy: np.ndarray | None = None) -> Figure:
    """The pyramid over a map of ``rows`` rows: the picture (with the map's ``energy`` when given) in the
    first panel, then one panel per level with a bar per branch P{l, k} spanning the map rows it pools
    (map rows drawn as dashed lines)."""
    height, width = picture.shape[:2]
    levels = sorted({b.level for b in branches})
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(1.6 * (len(levels) + 1), 3.6),
                             layout="constrained", squeeze=False)
    if energy is not None:
        if energy.shape[0] != rows:
            raise ValueError(f"energy has {energy.shape[0]} rows, expected rows={rows}")
        viz.heat_overlay(axes[0, 0], picture, energy)
        axes[0, 0].set_title(f"map M: {rows}×{energy.shape[1]} (energy)", fontsize=8)
    else:
        axes[0, 0].imshow(picture)
        axes[0, 0].set_title(f"map M: {rows} rows", fontsize=8)
        axes[0, 0].set_xticks([]), axes[0, 0].set_yticks([])
    for ax, level in zip(axes[0, 1:], levels):
        ax.imshow(picture, alpha=0.45, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        for r in range(1, rows):
            ax.axhline(r * height / rows - 0.5, color="grey", lw=0.6, ls="--")
        members = [b for b in branches if b.level == level]
        step = width / (len(members) + 1)
        for i, branch in enumerate(members):
            top, bottom = branch.rows.start * height / rows, branch.rows.stop * height / rows
            color = plt.cm.tab10(i % 10)
            ax.plot([(i + 1) * step - 0.5] * 2, [top, bottom - 1], color=color, lw=4, solid_capstyle="butt")
        ax.set_xlim(-0.5, width - 0.5), ax.set_ylim(height - 0.5, -0.5)
        ax.set_title(f"level {level}: {len(members)} branch{'es' if len(members) > 1 else ''}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{len(branches)} branches; each bar spans the map rows one branch pools", fontsize=9)
    return fig


def toy_branch_check(height: int, num_parts: int = 6, partition: str = "cover") -> pd.DataFrame:
    """Eq. 1 on a toy map whose row r holds the value r: the rows each branch of :class:`Pyramid` cuts out,
    beside Eq. 1's ``st .. ed`` (0-based here) where n divides H, and the fractional interval of rows
    ``[(k-1) H/n, (k-1+l) H/n)`` that the stated partition rounds outward otherwise."""
    pyramid = Pyramid(num_parts, partition=partition)
    toy = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)  # (1, 1, H, 1)
    rows = []
    for branch, sub_map in zip(pyramid.branches(height), pyramid(toy)):
        cut = [int(v) for v in sub_map.flatten().tolist()]
        level, k = branch.level, branch.index
        row = {"branch": f"P{{{level},{k}}}", "rows cut": f"{cut[0]}..{cut[-1]}",
               "interval (rows)": f"[{_fraction((k - 1) * height, num_parts)}, "
                                  f"{_fraction((k - 1 + level) * height, num_parts)})"}
        if height % num_parts == 0:
            part = height // num_parts
            start, end = (k - 1) * part + 1, (k - 1) * part + level * part  # Eq. 1, 1-based inclusive
            row["Eq. 1 st..ed (0-based)"] = f"{start - 1}..{end - 1}"
            row["same"] = cut == list(range(start - 1, end))
        rows.append(row)
    return pd.DataFrame(rows).set_index("branch")


def _fraction(numerator: int, denominator: int) -> str:
    whole, rest = divmod(numerator, denominator)
    if rest == 0:
        return str(whole)
    divisor = math.gcd(rest, denominator)
    return f"{numerator // divisor}/{denominator // divisor}"


def basic_parts_table(heights: Sequence[int], num_parts: int = 6, partition: str = "cover") -> pd.DataFrame:
    """The rows of each basic part for map heights ``heights`` (0-based, inclusive)."""
    return pd.DataFrame({f"H = {h}": [f"{p.start}..{p.stop - 1}" for p in part_rows(h, num_parts, partition)]
                         for h in heights}, index=[f"part {j}" for j in range(1, num_parts + 1)])


# ------------------------------------------------------------------------------ Algorithm 1, scripted
def scripted_losses(steps: int = 240, seed: int = 0) -> tuple[list[float], list[float]]:
    """A synthetic loss sequence: an ID loss that falls fast and then levels off, a triplet loss that falls
    slowly, both with a little noise (nothing is trained)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    rng = np.random.default_rng(seed)
    tau = np.arange(steps)
    id_loss = 60.0 * np.exp(-tau / 25.0) + 8.0 + rng.normal(0, 0.15, steps)
    tp_loss = 1.2 * np.exp(-tau / 150.0) + 0.4 + rng.normal(0, 0.02, steps)
    return id_loss.tolist(), np.clip(tp_loss, 0.0, None).tolist()


def scripted_dynamic_training(id_losses: Sequence[float], tp_losses: Sequence[float],
                              **hook_options: float | str) -> pd.DataFrame:
    """Run the package's :class:`DynamicTraining` hook through the engine's events on a scripted loss
    sequence (its own switching sampler draws index batches; no model): its per-step log."""
    if len(id_losses) != len(tp_losses) or not id_losses:
        raise ValueError(f"id_losses and tp_losses must be non-empty and of one length, got "
                         f"{len(id_losses)} and {len(tp_losses)}")
    hook = DynamicTraining(**hook_options)
    pids = [i // 2 for i in range(16)]  # 8 identities x 2 images
    sampler = SwitchingBatchSampler({RANDOM_STREAM: RandomBatches(16, 4),
                                     BALANCED_STREAM: IdentityBalancedBatches(pids, 2, 2)},
                                    len(id_losses), default=RANDOM_STREAM)
    state = SimpleNamespace(train_loader=SimpleNamespace(batch_sampler=sampler), loss_weights={}, epoch=0,
                            step=0, global_step=0, losses={})
    hook.on_train_start(state)
    for _batch, loss_id, loss_tp in zip(sampler, id_losses, tp_losses):
        hook.on_step_start(state)
        state.losses = {"id": float(loss_id), "triplet": float(loss_tp)}
        state.step += 1
        state.global_step += 1
        hook.on_step_end(state)
    return hook.frame()


def _positive(values: pd.Series) -> np.ndarray:
    """Values for a log axis: zeros, negatives and infinities become gaps."""
    array = values.to_numpy(dtype=float)
    return np.where(np.isfinite(array) & (array > 0), array, np.nan)


def plot_dynamic_trace(log: pd.DataFrame, title: str) -> Figure:
    """Algorithm 1 step by step, from a :class:`DynamicTraining` log: the two losses, the switching ratio
    ``FL(p_tp) / FL(p_id)`` against delta, the weights the engine used (log scale; a weight of 0 leaves a
    gap), and the sampler of every batch."""
    steps = log["global_step"].to_numpy()
    fig, axes = plt.subplots(4, 1, figsize=(8, 6.4), sharex=True, layout="constrained",
                             height_ratios=(1, 1, 1, 0.3))
    ax = axes[0]
    lines = ax.plot(steps, log["loss_id"], color="tab:blue", lw=1, label="$L_{id}$ (Eq. 2)")
    ax.set_ylabel("ID loss")
    twin = ax.twinx()
    lines += twin.plot(steps, log["loss_tp"], color="tab:red", lw=1, label="$L_{tp}$ (Eq. 3)")
    twin.set_ylabel("triplet loss")
    ax.legend(handles=lines, fontsize=7, loc="upper right")
    ratio, delta = log["ratio"].to_numpy(dtype=float), float(log["delta"].iloc[0])
    finite = _positive(log["ratio"])
    axes[1].semilogy(steps, finite, ".", color="black", markersize=3, label="ratio")
    if np.isinf(ratio).any():  # FL(p_id) = 0 (the ID loss did not fall): drawn at the top
        top = 100 * max(np.nanmax(finite) if np.isfinite(finite).any() else delta, delta)
        axes[1].semilogy(steps[np.isinf(ratio)], np.full(int(np.isinf(ratio).sum()), top), "^", color="grey",
                         markersize=3, label=r"$\infty$: $FL(p_{id}) = 0$")
    axes[1].axhline(delta, color="tab:green", lw=1, label=r"$\delta$")
    axes[1].set_ylabel(r"$FL(p_{tp})/FL(p_{id})$")
    axes[1].legend(fontsize=7, loc="best")
    axes[2].semilogy(steps, _positive(log["w_id"]), ".", color="tab:blue", markersize=3, label="$w_{id}$")
    axes[2].semilogy(steps, _positive(log["w_tp"]), ".", color="tab:red", markersize=3, label="$w_{tp}$")
    axes[2].set_ylabel("loss weight")
    axes[2].legend(fontsize=7, loc="lower right")
    for stream, color in STREAM_COLORS.items():
        chosen = steps[(log["sampler"] == stream).to_numpy()]
        axes[3].vlines(chosen, 0, 1, color=color, lw=1, label=stream)
    axes[3].set_yticks([]), axes[3].set_xlabel("step")
    axes[3].legend(fontsize=7, ncols=2, loc="upper right", bbox_to_anchor=(1, -0.6))
    axes[0].set_title(title, fontsize=10)
    return fig


def trace_summary(logs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per log: steps, the share of joint steps and of balanced batches, the first joint step, and the
    median weights the joint steps used (what Eq. 7 makes of the two losses)."""
    rows = []
    for log in logs.values():
        joint = log[log["phase"] == "joint"]
        rows.append({
            "steps": len(log),
            "joint steps (%)": round(100 * len(joint) / max(len(log), 1), 1),
            "balanced batches (%)": round(100 * float((log["sampler"] == BALANCED_STREAM).mean()), 1),
            "first joint step": int(joint["global_step"].iloc[0]) if len(joint) else None,
            "median w_id in joint steps": float(joint["w_id"].median()) if len(joint) else None,
            "median w_tp in joint steps": float(joint["w_tp"].median()) if len(joint) else None,
        })
    return pd.DataFrame(rows, index=list(logs))


def dynamic_log(run: Run) -> pd.DataFrame:
    """The per-step log of a run's :class:`DynamicTraining` hook, as its training left it
    (:func:`reidbook.experiment.hook_states`)."""
    states = [h for h in experiment.hook_states(run) if isinstance(h, dict) and "log" in h]
    if not states:
        raise ValueError(f"run {run.name}/{run.key} kept no DynamicTraining hook state (no checkpoint, or "
                         "no such hook)")
    return pd.DataFrame(states[0]["log"])


# -------------------------------------------------------------------------- Fig. 5: imprecise boxes
def truncated_queries(dataset: ReIDDataset) -> np.ndarray:
    """For each query record, whether the built-in world's manifest says its box cuts the body (a
    truncated detection, ``cut_top`` or ``cut_bottom`` > 0); shifts and zooms are not recorded there.

    Raises:
        FileNotFoundError: when the dataset has no manifest (a real dataset records no box error).
    """
    manifest = Path(dataset.root) / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{dataset.name} has no {MANIFEST} under its root: only the built-in world "
                                "records how each box was cut")
    with open(manifest, newline="", encoding="utf-8") as f:
        cut = {row["file"]: float(row["cut_top"]) > 0 or float(row["cut_bottom"]) > 0
               for row in csv.DictReader(f)}
    paths = [Path(os.path.relpath(r.path, dataset.root)).as_posix() for r in dataset.query]
    missing = [p for p in paths if p not in cut]
    if missing:
        raise ValueError(f"{len(missing)} query images are not in the manifest {MANIFEST}, "
                         f"e.g. {missing[0]!r}")
    return np.array([cut[p] for p in paths])


def _has_true_match(dataset: ReIDDataset) -> np.ndarray:
    cameras: dict[int, set[int]] = {}
    for record in dataset.gallery:
        cameras.setdefault(record.pid, set()).add(record.camid)
    return np.array([bool(cameras.get(r.pid, set()) - {r.camid}) for r in dataset.query])


def imprecise_box_queries(dataset: ReIDDataset, count: int, seed: int) -> tuple[list[int], str]:
    """``count`` query indices for Fig. 5, drawn with ``seed`` among the queries with a true match in
    another camera: among truncated boxes where the manifest records them, else among all queries; and
    the rule that chose them, in words."""
    valid = _has_true_match(dataset)
    try:
        pool, rule = valid & truncated_queries(dataset), "truncated boxes (from the world's manifest)"
    except FileNotFoundError:
        pool, rule = valid, "random queries (this dataset records no box errors)"
    candidates = np.flatnonzero(pool)
    if len(candidates) == 0:
        raise ValueError(f"no query of {dataset.name} qualifies as {rule}")
    picked = np.random.default_rng(seed).choice(candidates, size=min(count, len(candidates)), replace=False)
    rule = f"{len(picked)} of {len(candidates)} {rule}, drawn with seed {seed}"
    return sorted(int(i) for i in picked), rule


def scores_by_box(distances: Mapping[str, Tensor | np.ndarray], dataset: ReIDDataset,
                  truncated: np.ndarray) -> pd.DataFrame:
    """Rank-1 and mAP (percent) of each model on the queries with truncated boxes and on the others."""
    q_pids, q_cams = np.array([r.pid for r in dataset.query]), np.array([r.camid for r in dataset.query])
    g_pids, g_cams = np.array([r.pid for r in dataset.gallery]), np.array([r.camid for r in dataset.gallery])
    if truncated.shape != (len(dataset.query),) or truncated.dtype != bool:
        raise ValueError(f"truncated must be a boolean mask of the {len(dataset.query)} queries, got "
                         f"{truncated.dtype} of shape {truncated.shape}")
    groups = {"truncated boxes": truncated, "other boxes": ~truncated}
    rows = []
    for dist in distances.values():
        matrix = np.asarray(dist)
        row = {}
        for group, mask in groups.items():
            metrics = evaluate_rank(matrix[mask], q_pids[mask], g_pids, q_cams[mask], g_cams,
                                    max_rank=min(50, len(g_pids)))
            row[group, "rank-1"] = round(100 * float(metrics["cmc"][0]), 1)
            row[group, "mAP"] = round(100 * metrics["mAP"], 1)
            row[group, "queries"] = int(metrics["num_valid_queries"])
        rows.append(row)
    table = pd.DataFrame(rows, index=list(distances))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


# ------------------------------------------------------------------------ Grad-CAM per pyramid level
class LevelEmbedding(nn.Module):
    """The part of a :class:`PyramidNet`'s embedding that one pyramid level's branches produce."""

    def __init__(self, model: PyramidNet, level: int, map_height: int) -> None:
        super().__init__()
        levels = [b.level for b in model.branches(map_height)]
        if level not in levels:
            raise ValueError(f"level must be one of the model's levels {sorted(set(levels))}, got {level}")
        self.model, self.backbone = model, model.backbone
        d = model.feature_dim
        self.columns = [b * d + i for b, lv in enumerate(levels) if lv == level for i in range(d)]
        self.train(model.training)  # a new module starts in training mode: keep the model's mode

    def forward(self, img: Tensor) -> Tensor:
        return self.model(img)[:, self.columns]  # (B, branches of the level x D)


def level_gradcams(model: PyramidNet, images: Tensor) -> dict[str, np.ndarray]:
    """Grad-CAM (on the backbone's last stage) of each pyramid level's share of the embedding, and of the
    whole embedding: ``{name: (B, H, W)}``."""
    model.eval()
    with torch.no_grad():
        map_height = model.backbone(images[:1]).shape[2]
    layer = model.backbone.stages[-1]
    levels = sorted({b.level for b in model.branches(map_height)})
    cams = {f"level {lv}": viz.gradcam_embeddings(LevelEmbedding(model, lv, map_height), images,
                                                  target_layer=layer) for lv in levels}
    cams["all levels"] = viz.gradcam_embeddings(model, images, target_layer=layer)
    return cams


# ---------------------------------------------------------------------------------- stress and cost
def embedding_size(run: Run) -> int:
    """The length of the retrieval embedding of ``run``'s model (one forward pass of a blank image)."""
    profile = run.config["profile"]
    model = experiment.load_model(run)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, profile["height"], profile["width"]))
    return int(out.shape[1])


def cost_table(runs: Mapping[str, Run], reference: str) -> pd.DataFrame:
    """Parameters, training speed and time (``training.json``) and embedding size per run, with the ratio
    of each to ``reference``'s."""
    if reference not in runs:
        raise ValueError(f"reference must be one of {list(runs)}, got {reference!r}")
    rows = []
    for run in runs.values():
        info = run.read_json("training.json")
        rows.append({"parameters (M)": info["parameters"] / 1e6, "training img/s": info["images_per_second"],
                     "training minutes": info["seconds"] / 60, "embedding size": embedding_size(run)})
    table = pd.DataFrame(rows, index=list(runs))
    for column in ("parameters (M)", "training img/s", "embedding size"):
        table[f"{column.split(' (')[0]} ×{reference}"] = table[column] / table.loc[reference, column]
    return table.round(2)
