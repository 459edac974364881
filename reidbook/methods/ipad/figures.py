"""Chapter 4's figures and measurements for IPAD: confusable twins (the problem), the kernels' shapes and
Eq. 3 on a toy set (the sanity check), each branch ranked on its own, Grad-CAM of the global and the
self-guided branch (Fig. 4), each gallery image's distance before and after the dynamic modules (Fig. 6),
queries the global branch gets wrong (Fig. 7), and what pair distances cost against embedding distances.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from ... import viz
from ...data import Record, ReIDDataset
from ...data.synthetic import Identity, Nuisances, render_person, sample_identities
from ...data.transforms import build_transforms
from ...evaluation.evaluators import Pairwise, TestSplit
from ...evaluation.pairwise import pairwise_distance_matrix
from ...evaluation.ranking import evaluate_rank
from ...models.ipad import IPAD

#: Market-1501's test split: 3,368 queries, 15,913 gallery images.
MARKET_QUERY, MARKET_GALLERY = 3368, 15913
#: The paper's test features per person image (ResNet-50): global 2048, self 512, mutual kernel and vector.
PAPER_LAYOUT: dict[str, tuple[int, ...]] = {"global": (2048,), "self": (512,), "mutual_kernel": (128, 128),
                                            "mutual_vec": (128,)}
SHIFT_COLORS = {True: "tab:red", False: "tab:blue"}
SHIFT_MARKERS = {"mutual": "o", "self": "^"}


# ----------------------------------------------------------------------------------------------- the problem
def twin_pairs(count: int, seed: int, pool: int = 200) -> list[tuple[Identity, Identity]]:
    """The first ``count`` (identity, twin) pairs among ``pool`` identities of the world's generator."""
    people = sample_identities(pool, seed=seed)
    by_pid = {person.pid: person for person in people}
    pairs = [(by_pid[person.twin_of], person) for person in people if person.twin_of is not None]
    if len(pairs) < count:
        raise ValueError(f"only {len(pairs)} twin pairs among {pool} identities, asked for {count}")
    return pairs[:count]


def _picture(person: Identity, seed: int, view: str) -> np.ndarray:
    rendered = render_person(person, nuisances=Nuisances.off(), seed=seed, view=view)
    return np.asarray(rendered.image, dtype=float)


def plot_twins(pairs: Sequence[tuple[Identity, Identity]], seed: int,
               views: Sequence[str] = ("front", "back")) -> Figure:
    """Each twin pair in the same shot (every nuisance off), with the pixels in which the two differ."""
    fig, axes = plt.subplots(len(pairs), 3 * len(views), figsize=(1.3 * 3 * len(views), 2.6 * len(pairs)),
                             layout="constrained", squeeze=False)
    for r, (original, twin) in enumerate(pairs):
        for v, view in enumerate(views):
            a, b = _picture(original, seed, view), _picture(twin, seed, view)
            difference = np.abs(a - b).sum(axis=2)
            panels = ((a / 255, f"id {original.pid}"), (b / 255, f"id {twin.pid}"),
                      (difference, "difference"))
            for c, (image, title) in enumerate(panels):
                ax = axes[r, 3 * v + c]
                ax.imshow(image, cmap="magma" if image.ndim == 2 else None)
                ax.set_title(f"{title}, {view}" if c < 2 else title, fontsize=8)
                ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(f"cue: {twin.twin_cue}")
    return fig


def twin_inputs(pair: tuple[Identity, Identity], seed: int, height: int,
                width: int) -> tuple[Tensor, list[str]]:
    """A toy set for the sanity check: an identity from the front, its twin in the same shot, and the
    identity from behind, as normalised model inputs (3, 3, height, width), with their names."""
    original, twin = pair
    pictures = [_picture(person, seed, view)
                for person, view in ((original, "front"), (twin, "front"), (original, "back"))]
    transform = build_transforms(height, width, train=False)
    images = torch.stack([transform(torch.from_numpy(p.astype(np.uint8)).permute(2, 0, 1)) for p in pictures])
    return images, [f"id {original.pid} front", f"twin {twin.pid} front", f"id {original.pid} back"]


def twin_table(pairs: Sequence[tuple[Identity, Identity]]) -> pd.DataFrame:
    """The cue of each twin pair and the attributes in which the two differ."""
    return pd.DataFrame({"identity": [o.pid for o, _ in pairs], "twin": [t.pid for _, t in pairs],
                         "cue": [t.twin_cue for _, t in pairs],
                         "attributes that differ": [", ".join(sorted(t.differing_fields(o)))
                                                    for o, t in pairs]})


# ------------------------------------------------------------------------------------------ sanity checks
@torch.no_grad()
def branch_maps(model: IPAD, images: Tensor) -> dict[str, Tensor]:
    """The intermediate maps of ``images`` (B, 3, H, W) in eval mode: the backbone map ``x``, the self
    branch's ``f0``, its kernels and ``f1``, the mutual branch's compressed map ``f`` and kernels."""
    was_training = model.training
    model.eval()
    try:
        x = model.backbone(images)  # (B, C_o, h, w)
        maps = {"x": x}
        if model.self_branch is not None and hasattr(model.self_branch.layer, "controller"):
            f0 = model.self_branch.compression(x)  # (B, c, h, w)
            controller = model.self_branch.layer.controller
            maps.update(self_f0=f0, self_controller=controller(x), self_kernel=controller.kernel(x),
                        self_f1=model.self_branch.layer(f0, x))
        if model.mutual_branch is not None and hasattr(model.mutual_branch.layer, "controller"):
            controller = model.mutual_branch.layer.controller
            maps.update(mutual_f=model.mutual_branch.compression(x), mutual_controller=controller(x),
                        mutual_kernel=controller.kernel(x))
    finally:
        model.train(was_training)
    return maps


def kernel_shapes(model: IPAD, images: Tensor) -> pd.DataFrame:
    """Per dynamic branch: the backbone map, the controller's output (Eq. 2), the kernel it is read as, the
    map the kernel filters, the range of the kernels' row norms (1 after the F2 normalisation, 0 for a row
    that Eq. 2's final ReLU zeroed entirely), the share of such all-zero rows, and the smallest entry
    (>= 0 after that ReLU)."""
    maps = branch_maps(model, images)
    rows = {}
    for branch, filtered in (("self", "self_f0"), ("mutual", "mutual_f")):
        if f"{branch}_kernel" not in maps:
            continue
        kernel = maps[f"{branch}_kernel"]  # (B, c, c)
        norms = kernel.norm(dim=2)  # (B, c)
        rows[f"{branch}-guided"] = {
            "backbone map X": tuple(maps["x"].shape[1:]),
            "controller output (C_t, h, w)": tuple(maps[f"{branch}_controller"].shape[1:]),
            "kernel (c, c)": tuple(kernel.shape[1:]),
            "filtered map (c, h, w)": tuple(maps[filtered].shape[1:]),
            "row norms (min, max)": (round(float(norms.min()), 4), round(float(norms.max()), 4)),
            "all-zero rows (share)": round(float((norms == 0).float().mean()), 4),
            "smallest kernel entry": round(float(kernel.min()), 4),
        }
    return pd.DataFrame(rows).T.rename_axis("branch")


def naive_eq3(kernel_i: Tensor, map_i: Tensor, kernel_j: Tensor, map_j: Tensor) -> float:
    """Eq. 3 for one pair the long way: image j's full map convolved with image i's kernel as a 1x1
    ``conv2d`` and pooled, the same the other way round, then the Euclidean distance, channel by channel."""
    k_i_f_j = F.conv2d(map_j[None], kernel_i[:, :, None, None]).mean(dim=(2, 3))[0]  # (c,)
    k_j_f_i = F.conv2d(map_i[None], kernel_j[:, :, None, None]).mean(dim=(2, 3))[0]
    return float(sum((k_i_f_j[c] - k_j_f_i[c]) ** 2 for c in range(len(k_i_f_j))) ** 0.5)


@torch.no_grad()
def eq3_check(model: IPAD, images: Tensor, names: Sequence[str]) -> pd.DataFrame:
    """Eq. 3 between every pair of ``images`` (named by ``names``): the package's batched distance on
    packed test features beside :func:`naive_eq3` on the full maps, and the distance the other way round."""
    if len(names) != len(images):
        raise ValueError(f"got {len(names)} names for {len(images)} images")
    maps = branch_maps(model, images)
    packed = model.eval()(images)  # (B, D)
    package = model.mutual_distances(packed, packed)  # (B, B)
    rows = []
    for i in range(len(images)):
        for j in range(i, len(images)):
            rows.append({"i": names[i], "j": names[j], "d_ij (package)": float(package[i, j]),
                         "d_ij (per-pair loop)": naive_eq3(maps["mutual_kernel"][i], maps["mutual_f"][i],
                                                           maps["mutual_kernel"][j], maps["mutual_f"][j]),
                         "d_ji (package)": float(package[j, i])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- branch by branch
def _labels(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def branch_metrics(split: TestSplit) -> pd.DataFrame:
    """Rank-1 and mAP (standard protocol) of each branch of the split's IPAD ranking alone, and of the
    fused distance the model is judged by."""
    model = split.model
    (q_pids, q_cams), (g_pids, g_cams) = _labels(split.query), _labels(split.gallery)
    distances = model.distance_matrices(split.query_feats, split.gallery_feats)
    distances["fused (IPAD)"] = split.role_distances("query", "gallery")
    rows = {}
    for name, dist in distances.items():
        metrics = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=min(50, len(g_pids)))
        rows[name] = {"rank-1": 100 * float(metrics["cmc"][0]), "mAP": 100 * float(metrics["mAP"])}
    return pd.DataFrame(rows).T.round(1).rename_axis("ranked by")


# ----------------------------------------------------------------------------------- Fig. 4: Grad-CAM
class BranchFeature(nn.Module):
    """One branch's pooled feature of an IPAD, before its BN-neck: ``"global"`` (GAP of the backbone map)
    or ``"self"`` (GAP of the self-guided branch's F1), for Grad-CAM. Both maps are non-negative, so the
    Grad-CAM weights of a pooled feature's projection on itself are too; after the BN-neck (which subtracts
    the running mean) they can be negative for every channel, and Grad-CAM's ReLU then leaves nothing."""

    def __init__(self, model: IPAD, branch: str) -> None:
        super().__init__()
        branches = ["global"] + (["self"] if model.self_branch is not None else [])
        if branch not in branches:
            raise ValueError(f"branch must be one of this model's {branches}, got {branch!r}")
        self.model = model
        self.branch = branch

    def forward(self, img: Tensor) -> Tensor:
        x = self.model.backbone(img)  # (B, C_o, h, w)
        if self.branch == "global":
            return x.mean(dim=(2, 3))  # (B, C_o)
        return self.model.self_branch(x)["self_feat"]  # (B, c)


def gradcam_branches(model: IPAD, images: Tensor) -> dict[str, np.ndarray]:
    """Fig. 4: Grad-CAM of the global branch's pooled feature on the last backbone stage ("GB.") and of
    the self-guided branch's pooled feature on its F1 map ("SDB."), (B, H, W) each."""
    cams = {"GB. (global)": viz.gradcam_embeddings(BranchFeature(model, "global"), images,
                                                   model.backbone.stages[-1])}
    if model.self_branch is not None:
        cams["SDB. (self-guided)"] = viz.gradcam_embeddings(BranchFeature(model, "self"), images,
                                                            model.self_branch.layer)
    return cams


# ------------------------------------------------------------------------- Fig. 6: before / after the modules
def queries_with_matches(dataset: ReIDDataset, count: int, seed: int) -> list[int]:
    """``count`` query indices, drawn with ``seed``, whose identity has a gallery image in another camera."""
    (q_pids, q_cams), (g_pids, g_cams) = _labels(dataset.query), _labels(dataset.gallery)
    valid = [q for q in range(len(q_pids)) if ((g_pids == q_pids[q]) & (g_cams != q_cams[q])).any()]
    picked = np.random.default_rng(seed).choice(valid, size=min(count, len(valid)), replace=False)
    return sorted(int(q) for q in picked)


def shown_gallery(distances: Tensor, dataset: ReIDDataset, query: int, negatives: int) -> list[int]:
    """The gallery images of Fig. 6 for ``query``: its true matches in other cameras, then the
    ``negatives`` other identities closest by ``distances`` (a (Q, G) matrix; the global branch's, so
    that the choice favours neither dynamic branch)."""
    (q_pids, q_cams), (g_pids, g_cams) = _labels(dataset.query), _labels(dataset.gallery)
    positives = np.flatnonzero((g_pids == q_pids[query]) & (g_cams != q_cams[query]))
    others = np.flatnonzero(g_pids != q_pids[query])
    closest = others[np.argsort(np.asarray(distances[query])[others], kind="stable")[:negatives]]
    return [int(i) for i in (*positives, *closest)]


@torch.no_grad()
def distance_shift(model: IPAD, dataset: ReIDDataset, query: int, gallery: Sequence[int], height: int,
                   width: int) -> pd.DataFrame:
    """Fig. 6: for each of ``gallery``, its distance to ``query`` before and after each dynamic module
    (no flip averaging): self-guided, ||GAP(F0_q) - GAP(F0_g)|| before and ||GAP(F1_q) - GAP(F1_g)||
    after; mutual-guided, ||g_q - g_g|| (pooled compressed maps) before and Eq. 3 after. Each axis of
    each branch is divided by its mean over the shown images (the paper's "normalized" distances)."""
    images = viz.test_images([dataset.query[query], *(dataset.gallery[i] for i in gallery)],
                             range(len(gallery) + 1), height, width)
    maps = branch_maps(model, images)
    pairs: dict[str, tuple[Tensor, Tensor]] = {}
    if "self_f0" in maps:
        f0, f1 = maps["self_f0"].mean(dim=(2, 3)), maps["self_f1"].mean(dim=(2, 3))  # (1 + n, c)
        pairs["self"] = ((f0[1:] - f0[:1]).norm(dim=1), (f1[1:] - f1[:1]).norm(dim=1))
    if "mutual_f" in maps:
        g, kernel = maps["mutual_f"].mean(dim=(2, 3)), maps["mutual_kernel"]  # (1 + n, c), (1 + n, c, c)
        after = model.mutual_branch.pair_distances({"kernel": kernel[:1], "vec": g[:1]},
                                                   {"kernel": kernel[1:], "vec": g[1:]})[0]
        pairs["mutual"] = ((g[1:] - g[:1]).norm(dim=1), after)
    if not pairs:
        raise ValueError("this IPAD has no dynamic branch: nothing changes a distance")
    q_pid = dataset.query[query].pid
    rows = []
    for branch, (before, after) in pairs.items():
        for k, index in enumerate(gallery):
            rows.append({"query": query, "gallery": index, "positive": dataset.gallery[index].pid == q_pid,
                         "branch": branch, "before": float(before[k] / before.mean()),
                         "after": float(after[k] / after.mean()), "after (absolute)": float(after[k])})
    return pd.DataFrame(rows)


def plot_distance_shift(shift: pd.DataFrame, title: str = "") -> Figure:
    """Fig. 6: normalised distance before (x) against after (y) the dynamic module, circles for the mutual
    branch and triangles for the self branch, true matches in red, marker area growing with the absolute
    distance after the module."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    sizes = 15 + 60 * shift["after (absolute)"] / shift["after (absolute)"].max()
    for (branch, positive), group in shift.groupby(["branch", "positive"], sort=False):
        ax.scatter(group["before"], group["after"], s=sizes[group.index], marker=SHIFT_MARKERS[branch],
                   color=SHIFT_COLORS[bool(positive)], alpha=0.7,
                   label=f"{branch}-guided, {'true match' if positive else 'other identity'}")
    top = float(max(shift["before"].max(), shift["after"].max())) * 1.05
    ax.plot([0, top], [0, top], color="0.5", lw=1, ls="--")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="distance before the dynamic module (normalised)",
           ylabel="distance after (normalised)", title=title)
    ax.legend(fontsize=7)
    return fig


def distance_shifts(model: IPAD, dataset: ReIDDataset, queries: Sequence[int], distances: Tensor, *,
                    negatives: int, height: int, width: int) -> pd.DataFrame:
    """:func:`distance_shift` of each of ``queries`` against its :func:`shown_gallery` (chosen by
    ``distances``), in one frame."""
    return pd.concat([distance_shift(model, dataset, q, shown_gallery(distances, dataset, q, negatives),
                                     height, width) for q in queries], ignore_index=True)


def _share_closer(group: pd.DataFrame, axis: str) -> float:
    pos = group.loc[group["positive"], axis].to_numpy()
    neg = group.loc[~group["positive"], axis].to_numpy()
    return float((pos[:, None] < neg[None, :]).mean()) if len(pos) and len(neg) else np.nan


def separation(shift: pd.DataFrame) -> pd.DataFrame:
    """Per branch, before and after the module: the share of (true match, other identity) pairs of a
    query in which the true match is closer (1 = every match ranked above every shown other identity),
    averaged over the queries of ``shift``, and the mean normalised distance of each group."""
    rows = {}
    for branch, group in shift.groupby("branch", sort=False):
        positive = group["positive"].to_numpy(dtype=bool)
        for axis in ("before", "after"):
            shares = [_share_closer(one, axis) for _, one in group.groupby("query")]
            rows[branch, axis] = {"true match closer (share of pairs)": round(float(np.nanmean(shares)), 3),
                                  "mean, true matches": round(float(group[axis][positive].mean()), 3),
                                  "mean, other identities": round(float(group[axis][~positive].mean()), 3),
                                  "queries": group["query"].nunique()}
    return pd.DataFrame(rows).T.rename_axis(["branch", "distance"])


# ------------------------------------------------------------------------------ Fig. 7: global vs IPAD
def first_match_correct(distances: Tensor, dataset: ReIDDataset) -> np.ndarray:
    """(Q,) bool: whether each query's first valid gallery image (the standard protocol's removal rule)
    shows the query's identity."""
    dist = np.asarray(distances)
    correct = []
    for q, query in enumerate(dataset.query):
        first = viz.ranked_gallery(dist[q], query, dataset.gallery, 1)
        correct.append(bool(first) and dataset.gallery[first[0]].pid == query.pid)
    return np.array(correct, dtype=bool)


def rank1_changes(global_distances: Tensor, fused_distances: Tensor, dataset: ReIDDataset) -> pd.Series:
    """How many queries each ranking gets right at rank 1: both, the global branch only, IPAD only or
    neither."""
    by_global = first_match_correct(global_distances, dataset)
    by_ipad = first_match_correct(fused_distances, dataset)
    return pd.Series({"both right": int((by_global & by_ipad).sum()),
                      "global branch right, IPAD wrong": int((by_global & ~by_ipad).sum()),
                      "global branch wrong, IPAD right": int((~by_global & by_ipad).sum()),
                      "both wrong": int((~by_global & ~by_ipad).sum())}, name="queries")


def hard_queries(global_distances: Tensor, fused_distances: Tensor, dataset: ReIDDataset, count: int,
                 seed: int) -> list[int]:
    """Fig. 7's queries: ``count`` whose first match by the global branch is wrong (the paper shows
    "difficult" ones), drawn with ``seed`` among those IPAD gets right, topped up from those both get
    wrong."""
    by_global = first_match_correct(global_distances, dataset)
    by_ipad = first_match_correct(fused_distances, dataset)
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for pool in (np.flatnonzero(~by_global & by_ipad), np.flatnonzero(~by_global & ~by_ipad)):
        take = min(count - len(picked), len(pool))
        picked += sorted(int(i) for i in rng.choice(pool, size=take, replace=False))
    if not picked:
        raise ValueError("the global branch gets every query right at rank 1: no difficult query to show")
    return picked


# ---------------------------------------------------------------------------------------------------- cost
def feature_cost(layout: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """Floats per image of a packed test-feature layout and multiply-adds per pair: an embedding's length
    for each embedding, ``2 c^2`` for Eq. 3 (``K_i g_j`` and ``K_j g_i``)."""
    floats = sum(int(np.prod(shape)) for shape in layout.values())
    macs = sum(shape[0] for name, shape in layout.items() if not name.startswith("mutual_"))
    if "mutual_kernel" in layout:
        macs += 2 * int(np.prod(layout["mutual_kernel"]))
    return {"floats per image": floats, "multiply-adds per pair": macs}


def market_gib(floats_per_image: pd.Series) -> pd.Series:
    """GiB of float32 test features for Market-1501's 3,368 + 15,913 test images."""
    return (MARKET_QUERY + MARKET_GALLERY) * floats_per_image * 4 / 2**30


def _rate(pairs: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return pairs / (time.perf_counter() - start)


def pairwise_cost(ipad: TestSplit, embeddings: TestSplit, *, queries: int = 128,
                  g_chunks: Sequence[int] = (256, 1024), q_chunk: int = 64) -> pd.DataFrame:
    """Pairs per second of IPAD's fused distance (``Pairwise`` blocks of ``q_chunk`` x each of
    ``g_chunks``) and of its mutual branch alone, against the baseline's embedding distances, for
    ``queries`` queries against the whole gallery; with the largest block IPAD's Eq. 3 holds (its two
    (q, g, c) products and their difference, computed, not measured), the test features per image, and
    what each rate and size imply for this test set and for Market-1501's 3,368 x 15,913 pairs."""
    model: IPAD = ipad.model
    q_feats = ipad.query_feats[:queries]
    pairs = len(q_feats) * len(ipad.gallery_feats)
    c = model.feature_layout["mutual_vec"][0] if "mutual_vec" in model.feature_layout else 0
    ipad_floats = feature_cost(model.feature_layout)["floats per image"]
    rows = {}
    for g_chunk in g_chunks:
        measure = Pairwise(flip=True, q_chunk=q_chunk, g_chunk=g_chunk)
        rate = _rate(pairs, lambda m=measure: m.distances(model, q_feats, ipad.gallery_feats, ipad.device))
        rows[f"IPAD fused, blocks of {q_chunk} × {g_chunk}"] = {
            "pairs/s": rate, "largest block (MiB)": 3 * q_chunk * g_chunk * c * 4 / 2**20,
            "floats per image": ipad_floats}
    if c:
        rate = _rate(pairs, lambda: pairwise_distance_matrix(
            model.mutual_distances, q_feats, ipad.gallery_feats, q_chunk=q_chunk, g_chunk=max(g_chunks),
            device=ipad.device, progress=False, conversion="as_distance"))
        rows[f"IPAD mutual branch alone (Eq. 3, c = {c})"] = {
            "pairs/s": rate, "largest block (MiB)": 3 * q_chunk * max(g_chunks) * c * 4 / 2**20,
            "floats per image": ipad_floats}
    q_emb = embeddings.query_feats[:queries]
    rate = _rate(len(q_emb) * len(embeddings.gallery_feats),
                 lambda: embeddings.distances(q_emb, embeddings.gallery_feats))
    rows[f"baseline, {q_emb.shape[1]}-d embeddings"] = {
        "pairs/s": rate, "largest block (MiB)": len(q_emb) * len(embeddings.gallery_feats) * 4 / 2**20,
        "floats per image": q_emb.shape[1]}
    cost = pd.DataFrame(rows).T
    cost["seconds for this test set"] = len(ipad.query_feats) * len(ipad.gallery_feats) / cost["pairs/s"]
    cost["seconds for Market-1501 (3,368 × 15,913)"] = MARKET_QUERY * MARKET_GALLERY / cost["pairs/s"]
    cost["Market-1501 test features (GiB)"] = market_gib(cost["floats per image"])
    return cost


def paper_size_cost(layout: Mapping[str, tuple[int, ...]]) -> pd.DataFrame:
    """Floats per image and multiply-adds per pair of this model's test features beside the paper's
    ResNet-50 person model and the strong baseline's 2048-d embedding, with Market-1501's feature memory."""
    sizes = {"this run's IPAD": feature_cost(layout),
             "the paper's IPAD (ResNet-50)": feature_cost(PAPER_LAYOUT),
             "strong baseline (ResNet-50)": feature_cost({"global": (2048,)})}
    table = pd.DataFrame(sizes).T
    table["Market-1501 test features (GiB)"] = market_gib(table["floats per image"])
    return table.round(2)
