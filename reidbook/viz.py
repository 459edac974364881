"""The book's figures and tables: image grids, training curves, CMC curves, ranked lists, distance
histograms, Grad-CAM for embeddings, QAConv correspondence maps, and paper-vs-ours tables.

Every plotting function builds a new :class:`matplotlib.figure.Figure` and returns it (it never calls
``plt.show``), so a notebook displays it and a test can inspect and close it. Nothing here is random: the
same inputs draw the same figure.

Images may be given in any of the forms the package handles (see :func:`to_image_array`): PIL images,
numpy arrays, image tensors (ImageNet-normalised float or uint8), file paths or :class:`Record` objects.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import Tensor, nn

from .data.readers.images import read_image
from .data.records import Record
from .data.synthetic import Identity, Nuisances, Rendered, render_person, sample_identity
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .report import spread as spread_of

ImageLike = Image.Image | np.ndarray | Tensor | str | os.PathLike | Record
ArrayLike = np.ndarray | Tensor

QUERY_COLOR = "black"
MATCH_COLOR = "tab:green"
WRONG_COLOR = "tab:red"
FRAME_WIDTH = 4.0
POSITIVE_COLOR = "tab:green"
NEGATIVE_COLOR = "tab:red"

# Columns of the engine's History that are neither loss terms nor metrics.
_HISTORY_BOOKKEEPING = {"epoch", "step", "global_step", "steps", "total", "time", "eval_time"}
_SIMILARITY_MEASURES = ("cosine", "projection")


# ------------------------------------------------------------------------------------------------ images
def to_image_array(image: ImageLike, *, normalized: bool = True) -> np.ndarray:
    """Any supported image as an (H, W, 3) float array in [0, 1], ready for ``imshow``.

    Accepted: a PIL image; a numpy array (H, W, 3) or (H, W), uint8 or float in [0, 1]; a tensor (3, H, W),
    uint8, or float normalised with the ImageNet mean/std (``normalized=True``, undone here) or in [0, 1]
    (``normalized=False``); a file path; a :class:`Record` (its ``path`` is read).
    """
    if isinstance(image, Record):
        image = image.path
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, Tensor):
        return _tensor_to_array(image, normalized)
    if isinstance(image, np.ndarray):
        return _numpy_to_array(image)
    raise TypeError(
        "an image must be a PIL image, numpy array, tensor (3, H, W), file path or Record, "
        f"got {type(image).__name__}"
    )


def _tensor_to_array(image: Tensor, normalized: bool) -> np.ndarray:
    if image.dim() != 3 or image.size(0) != 3:
        raise ValueError(f"an image tensor must have shape (3, H, W), got {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image.permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    image = image.float()
    if normalized:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        image = image * std + mean
    return image.clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)


def _numpy_to_array(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an image array must have shape (H, W, 3) or (H, W), got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _show_image(
    ax: Axes, image: np.ndarray, extent: tuple[float, float, float, float] | None = None
) -> None:
    """Draw ``image`` without ticks (spines are kept so that a frame can be coloured); ``extent`` as
    ``imshow``'s (default: pixel i centred on i)."""
    ax.imshow(image, interpolation="bilinear", extent=extent)
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax: Axes, color: str, width: float = FRAME_WIDTH) -> None:
    """Draw a coloured frame around an image axes (its four spines)."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def _no_frame(ax: Axes) -> None:
    for spine in ax.spines.values():
        spine.set_visible(False)


def _aspect(image: np.ndarray) -> float:
    """Width over height."""
    return image.shape[1] / image.shape[0]


def image_grid(
    images_or_records: Sequence[ImageLike] | Tensor,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    height: float = 1.6,
    *,
    normalized: bool = True,
) -> Figure:
    """Images in a grid of ``ncols`` columns, each row ``height`` inches tall, with optional titles.

    ``images_or_records`` is a sequence of images in any form :func:`to_image_array` accepts, or a batch
    tensor (B, 3, H, W). The figure has one axes per image.
    """
    images = [to_image_array(item, normalized=normalized) for item in images_or_records]
    if not images:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    title_room = 0.3 if titles is not None else 0.0
    cell_width = height * _aspect(images[0])
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * cell_width + 0.2, nrows * (height + title_room) + 0.2),
        squeeze=False,
        layout="constrained",
    )
    flat_axes = axes.ravel()
    for index, (ax, image) in enumerate(zip(flat_axes, images)):
        _show_image(ax, image)
        _no_frame(ax)
        if titles is not None:
            ax.set_title(titles[index], fontsize=8)
    for ax in flat_axes[len(images) :]:
        fig.delaxes(ax)
    return fig


# ---------------------------------------------------------------------------------------- training curves
def _loss_terms(steps: pd.DataFrame) -> list[str]:
    """The loss terms of a History's step frame: the columns ``c`` that have a ``c_weight`` column, then
    ``total`` when there are several terms."""
    terms = [c for c in steps.columns if f"{c}_weight" in steps.columns]
    if len(terms) > 1 and "total" in steps.columns:
        terms.append("total")
    return terms


def _lr_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c == "lr" or c.startswith("lr_")]


def _fractional_epochs(steps: pd.DataFrame) -> tuple[np.ndarray, str]:
    """x coordinates of the step rows: ``epoch + step / steps_in_epoch`` when the frame has both columns (so
    a metric evaluated after epoch ``e`` sits at ``e + 1``), else the row number."""
    if {"epoch", "step"} <= set(steps.columns):
        per_epoch = steps.groupby("epoch")["step"].transform("count")
        return (steps["epoch"] + steps["step"] / per_epoch).to_numpy(dtype=float), "epoch"
    return np.arange(len(steps), dtype=float), "step"


def _metric_columns(epochs: pd.DataFrame, steps: pd.DataFrame) -> list[str]:
    """Numeric columns of a History's epoch frame that are evaluation metrics: not bookkeeping and not a
    column of the step frame (loss terms, weights, lr)."""
    skip = _HISTORY_BOOKKEEPING | set(steps.columns)
    return [
        c
        for c in epochs.columns
        if c not in skip and pd.api.types.is_numeric_dtype(epochs[c]) and epochs[c].notna().any()
    ]


def _is_fraction(values: ArrayLike | pd.Series | Sequence[float]) -> bool:
    """True when every finite value lies in [0, 1] (metrics stored as fractions rather than percent)."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    return array.size > 0 and bool(((array >= 0) & (array <= 1)).all())


def plot_history(
    history_or_frame: Any,
    terms: Sequence[str] | None = None,
    smooth: float = 0.6,
) -> Figure:
    """Training curves of an engine :class:`~reidbook.engine.History` (or of its ``steps`` DataFrame).

    Panels, left to right: the loss terms per step (raw values faint, an exponential moving average with
    weight ``smooth`` on the previous value drawn over them; ``smooth=0`` draws the raw values only), the
    learning rate(s), and, when the history holds evaluations, the metrics per evaluated epoch (in percent
    when stored as fractions).

    Args:
        terms: loss columns to draw; default: every term (columns with a ``<term>_weight`` column) and
            ``total`` when there are several terms.
    """
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    if isinstance(history_or_frame, pd.DataFrame):
        steps, epochs = history_or_frame, pd.DataFrame()
    elif hasattr(history_or_frame, "steps") and hasattr(history_or_frame, "epochs"):
        steps, epochs = history_or_frame.steps, history_or_frame.epochs
    else:
        raise TypeError(
            f"plot_history needs a History or a DataFrame of steps, got {type(history_or_frame).__name__}"
        )
    terms = list(terms) if terms is not None else _loss_terms(steps)
    missing = [t for t in terms if t not in steps.columns]
    if not terms or missing:
        raise ValueError(
            f"loss terms {missing or terms} not found among the step columns {list(steps.columns)}"
        )
    lr_columns = _lr_columns(steps)
    metrics = _metric_columns(epochs, steps) if not epochs.empty else []
    panels = 1 + bool(lr_columns) + bool(metrics)
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.2), squeeze=False, layout="constrained")
    x, x_label = _fractional_epochs(steps)
    _plot_losses(axes[0, 0], x, x_label, steps, terms, smooth)
    if lr_columns:
        _plot_learning_rates(axes[0, 1], x, x_label, steps, lr_columns)
    if metrics:
        _plot_metrics(axes[0, -1], epochs, metrics)
    return fig


def _plot_losses(
    ax: Axes, x: np.ndarray, x_label: str, steps: pd.DataFrame, terms: Sequence[str], smooth: float
) -> None:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, term in enumerate(terms):
        color = colors[index % len(colors)]
        values = steps[term].astype(float)
        if smooth > 0:
            ax.plot(x, values, color=color, alpha=0.25, linewidth=0.8)
            values = values.ewm(alpha=1 - smooth).mean()
        ax.plot(x, values, color=color, linewidth=1.6, label=term)
    ax.set(title="loss terms per step", xlabel=x_label, ylabel="loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_learning_rates(
    ax: Axes, x: np.ndarray, x_label: str, steps: pd.DataFrame, columns: Sequence[str]
) -> None:
    for column in columns:
        ax.plot(x, steps[column], linewidth=1.6, label=column)
    ax.set(title="learning rate", xlabel=x_label, ylabel="lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if len(columns) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_metrics(ax: Axes, epochs: pd.DataFrame, metrics: Sequence[str]) -> None:
    evaluated = epochs.dropna(subset=list(metrics), how="all")
    x = evaluated["epoch"] + 1 if "epoch" in evaluated.columns else np.arange(1, len(evaluated) + 1)
    percent = all(_is_fraction(evaluated[m]) for m in metrics)
    for metric in metrics:
        values = evaluated[metric] * (100 if percent else 1)
        ax.plot(x, values, marker="o", linewidth=1.6, label=metric)
    ax.set(title="evaluation", xlabel="epoch", ylabel="%" if percent else "value")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------------------------------------------- CMC
def plot_cmc(curves: Mapping[str, ArrayLike], max_rank: int = 20) -> Figure:
    """CMC curves (matching rate at rank k, k = 1..``max_rank``), one labelled line per entry of ``curves``.

    Curves stored as fractions are drawn in percent; the legend gives each curve's rank-1.
    """
    if not curves:
        raise ValueError("plot_cmc needs at least one curve")
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    for name, curve in curves.items():
        values = np.asarray(curve.cpu() if isinstance(curve, Tensor) else curve, dtype=float).ravel()
        if values.size == 0:
            raise ValueError(f"CMC curve {name!r} is empty")
        values = values[:max_rank] * (100 if _is_fraction(values) else 1)
        ranks = np.arange(1, values.size + 1)
        ax.plot(
            ranks, values, marker="o", markersize=3, linewidth=1.6, label=f"{name} (rank-1 {values[0]:.1f}%)"
        )
    ax.set(title="CMC", xlabel="rank", ylabel="matching rate (%)", xlim=(0.5, max_rank + 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------------- ranked lists
def _as_numpy(values: ArrayLike | Sequence[float], name: str, ndim: int) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    return array


def ranked_gallery(
    distances: np.ndarray,
    query: Record,
    gallery_records: Sequence[Record],
    topk: int,
    remove_same_camera: bool = True,
) -> list[int]:
    """Gallery indices of the ``topk`` nearest valid gallery images of one query, in rank order.

    ``distances`` is the query's row of the distance matrix (G,). Ties are broken by gallery index (a
    stable sort, as in :func:`reidbook.evaluation.ranking.evaluate_rank`); with ``remove_same_camera``,
    gallery images of the query's identity seen by the query's camera are skipped (the standard protocol).
    """
    ranked: list[int] = []
    for index in np.argsort(distances, kind="stable"):
        candidate = gallery_records[index]
        if remove_same_camera and candidate.pid == query.pid and candidate.camid == query.camid:
            continue
        ranked.append(int(index))
        if len(ranked) == topk:
            break
    return ranked


def ranked_list(
    distmat: ArrayLike,
    query_records: Sequence[Record],
    gallery_records: Sequence[Record],
    query_indices: Sequence[int],
    topk: int = 10,
    *,
    remove_same_camera: bool = True,
    height: float = 1.6,
) -> Figure:
    """The ranked-results grid (torchreid's visualisation): one row per query of ``query_indices``, the query
    on the left in a black frame, then its ``topk`` nearest gallery images in rank order, framed in green
    for a true match (same identity) and red for a wrong one, with the rank and distance under each.

    Gallery images of the query's identity and camera are skipped, as the standard protocol does; pass
    ``remove_same_camera=False`` for protocols that keep them (cross-modality RegDB, VehicleID). Each row
    has ``topk + 1`` axes; slots left empty when fewer valid gallery images exist are blank.
    """
    distances = _as_numpy(distmat, "distmat", 2)
    if distances.shape != (len(query_records), len(gallery_records)):
        raise ValueError(
            f"distmat has shape {distances.shape} but there are {len(query_records)} query and "
            f"{len(gallery_records)} gallery records"
        )
    query_indices = [int(q) for q in query_indices]
    if not query_indices:
        raise ValueError("query_indices is empty: pick at least one query to show")
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    bad = [q for q in query_indices if not 0 <= q < len(query_records)]
    if bad:
        raise ValueError(f"query_indices {bad} are out of range for {len(query_records)} queries")
    first = to_image_array(query_records[query_indices[0]])
    cell_width = height * _aspect(first)
    fig, axes = plt.subplots(
        len(query_indices),
        topk + 1,
        figsize=((topk + 1) * (cell_width + 0.15) + 0.3, len(query_indices) * (height + 0.65)),
        squeeze=False,
        layout="constrained",
    )
    for row, query_index in enumerate(query_indices):
        query = query_records[query_index]
        _draw_query(axes[row, 0], query)
        ranked = ranked_gallery(distances[query_index], query, gallery_records, topk, remove_same_camera)
        for rank, gallery_index in enumerate(ranked, start=1):
            candidate = gallery_records[gallery_index]
            ax = axes[row, rank]
            _show_image(ax, to_image_array(candidate))
            _frame(ax, MATCH_COLOR if candidate.pid == query.pid else WRONG_COLOR)
            ax.set_xlabel(f"#{rank}\n{distances[query_index, gallery_index]:.3g}", fontsize=8)
        for ax in axes[row, len(ranked) + 1 :]:
            ax.axis("off")
    return fig


def _draw_query(ax: Axes, query: Record) -> None:
    _show_image(ax, to_image_array(query))
    _frame(ax, QUERY_COLOR)
    ax.set_xlabel(f"query\npid {query.pid}, cam {query.camid}", fontsize=8)


# ------------------------------------------------------------------------------------ distance histograms
def pair_distances(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike | None = None,
    g_camids: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances of the positive (same identity) and negative (different identities) query-gallery pairs.

    With camera ids, positive pairs seen by the same camera are left out (the standard protocol never
    ranks them).
    """
    distances = _as_numpy(distmat, "distmat", 2).astype(float)
    q_pids, g_pids = _as_numpy(q_pids, "q_pids", 1), _as_numpy(g_pids, "g_pids", 1)
    if distances.shape != (q_pids.size, g_pids.size):
        raise ValueError(
            f"distmat has shape {distances.shape} but there are {q_pids.size} query and {g_pids.size} "
            "gallery pids"
        )
    same_pid = q_pids[:, None] == g_pids[None, :]  # (Q, G)
    positive = same_pid
    if (q_camids is None) != (g_camids is None):
        raise ValueError("give both q_camids and g_camids, or neither")
    if q_camids is not None:
        q_cams, g_cams = _as_numpy(q_camids, "q_camids", 1), _as_numpy(g_camids, "g_camids", 1)
        positive = same_pid & (q_cams[:, None] != g_cams[None, :])
    return distances[positive], distances[~same_pid]


def distance_histograms(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike | None = None,
    g_camids: ArrayLike | None = None,
    bins: int = 60,
) -> Figure:
    """Density-normalised histograms of positive and negative query-gallery pair distances, overlaid
    semi-transparently on shared bins (see :func:`pair_distances` for which pairs count)."""
    positive, negative = pair_distances(distmat, q_pids, g_pids, q_camids, g_camids)
    if positive.size == 0 or negative.size == 0:
        raise ValueError(
            f"need both positive and negative pairs, got {positive.size} positive and {negative.size} "
            "negative ones"
        )
    edges = np.histogram_bin_edges(np.concatenate([positive, negative]), bins=bins)
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    ax.hist(
        positive,
        bins=edges,
        density=True,
        alpha=0.5,
        color=POSITIVE_COLOR,
        label=f"same identity ({positive.size} pairs)",
    )
    ax.hist(
        negative,
        bins=edges,
        density=True,
        alpha=0.5,
        color=NEGATIVE_COLOR,
        label=f"different identities ({negative.size} pairs)",
    )
    note = " (same-camera positives excluded)" if q_camids is not None else ""
    ax.set(title=f"query-gallery distances{note}", xlabel="distance", ylabel="density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# ----------------------------------------------------------------------------------------------- Grad-CAM
class EmbeddingSimilarity:
    """A Grad-CAM target (``pytorch_grad_cam``) for an embedding model: the similarity of the model's
    output for one image, f (D,), to a fixed reference embedding r (D,).

    ``measure="cosine"``: cos(f, r) = <f, r> / (|f| |r|). It is scale-invariant, so its gradient is
    orthogonal to f and vanishes at f = r: use it to explain what makes an image similar to *another*
    image's embedding (e.g. a gallery image to its query).

    ``measure="projection"``: <f, r> / |r|^2, the length of f along r relative to |r|. Its gradient r / |r|^2
    does not vanish at f = r, so it explains an image's *own* embedding (r computed beforehand from the
    same image). Both measures equal 1 at f = r.
    """

    def __init__(self, reference_embedding: Tensor, measure: str = "cosine") -> None:
        if measure not in _SIMILARITY_MEASURES:
            raise ValueError(f"measure must be one of {_SIMILARITY_MEASURES}, got {measure!r}")
        self.reference = reference_embedding.detach().float().flatten()  # (D,)
        self.measure = measure

    def __call__(self, model_output: Tensor) -> Tensor:
        output = model_output.float().flatten()  # (D,)
        if output.shape != self.reference.shape:
            raise ValueError(
                f"the model output has {output.numel()} values but the reference embedding has "
                f"{self.reference.numel()}"
            )
        reference = self.reference.to(output.device)
        if self.measure == "cosine":
            return F.cosine_similarity(output, reference, dim=0)
        return output @ reference / (reference @ reference).clamp_min(1e-12)


def _default_target_layer(model: nn.Module) -> nn.Module:
    stages = getattr(getattr(model, "backbone", None), "stages", None)
    if stages is None or len(stages) == 0:
        raise ValueError(
            f"{type(model).__name__} has no backbone.stages: pass target_layer= (the module whose output "
            "map Grad-CAM weighs)"
        )
    return stages[-1]


def gradcam_embeddings(
    model: nn.Module,
    images: Tensor,
    target_layer: nn.Module | None = None,
    *,
    references: Tensor | None = None,
    measure: str = "projection",
) -> np.ndarray:
    """Grad-CAM maps (Selvaraju et al. 2017) of an embedding model, one per image: (B, H, W) in [0, 1].

    The target of image i is :class:`EmbeddingSimilarity` between its embedding and ``references[i]``;
    by default the reference is the image's own embedding, computed first with the model in eval mode, and
    the measure is ``"projection"`` (cosine similarity has a zero gradient there, see the class). Pass
    other references (e.g. each gallery image's query embedding, with ``measure="cosine"``) to show what
    makes the images similar to them.

    Args:
        model: returns a (B, D) embedding in eval mode. It is run in eval mode and its previous mode and
            parameters' ``requires_grad`` flags are restored afterwards (parameter gradients are cleared).
        images: (B, 3, H, W) normalised as the model expects.
        target_layer: the module whose output map is weighed; default ``model.backbone.stages[-1]``.
    """
    from pytorch_grad_cam import GradCAM  # the ``grad-cam`` package, in the ``book`` extra

    if images.dim() != 4 or images.size(1) != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    layer = target_layer if target_layer is not None else _default_target_layer(model)
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    device = next(model.parameters()).device
    model.eval()
    try:
        inputs = images.detach().to(device)  # (B, 3, H, W)
        targets = _similarity_targets(model, inputs, references, measure)
        for param in model.parameters():
            param.requires_grad_(False)  # gradients flow to the input only: no weight gradients computed
        cam = GradCAM(model=model, target_layers=[layer])
        try:
            maps = cam(input_tensor=inputs.clone().requires_grad_(True), targets=targets)  # (B, H, W)
        finally:
            cam.activations_and_grads.release()
    finally:
        for param, flag in zip(model.parameters(), requires_grad):
            param.requires_grad_(flag)
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def _similarity_targets(
    model: nn.Module, inputs: Tensor, references: Tensor | None, measure: str
) -> list[EmbeddingSimilarity]:
    if references is None:
        with torch.no_grad():
            references = model(inputs)  # (B, D)
        if not isinstance(references, Tensor):
            raise ValueError(
                "the model must return an embedding tensor (B, D) in eval mode, got "
                f"{type(references).__name__}"
            )
    if references.size(0) != inputs.size(0):
        raise ValueError(f"got {references.size(0)} reference embeddings for {inputs.size(0)} images")
    return [EmbeddingSimilarity(reference, measure) for reference in references]


def plot_gradcam(
    images: Sequence[ImageLike] | Tensor,
    cams_by_model: Mapping[str, np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    height: float = 1.8,
) -> Figure:
    """Grad-CAM overlays side by side: one row per image, the input first, then one heatmap overlay per
    model (``cams_by_model[name]`` of shape (B, H, W) in [0, 1], e.g. from :func:`gradcam_embeddings`).
    ``titles`` label the rows."""
    arrays = [to_image_array(image) for image in images]
    if not arrays:
        raise ValueError("plot_gradcam needs at least one image")
    if titles is not None and len(titles) != len(arrays):
        raise ValueError(f"got {len(titles)} titles for {len(arrays)} images")
    for name, cams in cams_by_model.items():
        if np.ndim(cams) != 3 or len(cams) != len(arrays):
            raise ValueError(
                f"cams_by_model[{name!r}] must have shape ({len(arrays)}, H, W), got {np.shape(cams)}"
            )
    columns = ["input", *cams_by_model]
    cell_width = height * _aspect(arrays[0])
    fig, axes = plt.subplots(
        len(arrays),
        len(columns),
        figsize=(len(columns) * (cell_width + 0.2) + 0.4, len(arrays) * (height + 0.1) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for row, image in enumerate(arrays):
        _show_image(axes[row, 0], image)
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row], fontsize=8)
        for column, cams in enumerate(cams_by_model.values(), start=1):
            _overlay(axes[row, column], image, np.asarray(cams[row]), alpha)
    for column, name in enumerate(columns):
        axes[0, column].set_title(name, fontsize=9)
    for ax in axes.ravel():
        _no_frame(ax)
    return fig


def _overlay(ax: Axes, image: np.ndarray, cam: np.ndarray, alpha: float) -> None:
    """The image with ``cam`` drawn over it (jet colour map), stretched to the image's extent."""
    _show_image(ax, image)
    height, width = image.shape[:2]
    ax.imshow(
        cam,
        cmap="jet",
        alpha=alpha,
        vmin=0,
        vmax=1,
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),
        interpolation="bilinear",
    )


# --------------------------------------------------------------------------------- QAConv correspondences
PAIRS_PER_ROW = 4
PAIR_HEIGHT = 2.4  # inches per row of pairs
PAIR_GAP_FRACTION = 1 / 16  # the white gap between query and gallery, as a fraction of the image height
CORRESPONDENCE_LINE_WIDTH = 1.2
CORRESPONDENCE_LABEL = "cosine similarity of the matched locations"
_MIN_SIMILARITY_SPAN = 0.1  # the colour scale's width when the similarities leave it empty


class CorrespondencesLike(Protocol):
    """What :func:`plot_correspondences` reads, e.g. :class:`reidbook.models.qaconv.Correspondences`: for
    each query map location (h, w), the best gallery location ``(rows, cols)`` and its ``similarity``."""

    @property
    def rows(self) -> ArrayLike: ...

    @property
    def cols(self) -> ArrayLike: ...

    @property
    def similarity(self) -> ArrayLike: ...


def _correspondence_arrays(
    correspondences: CorrespondencesLike, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rows, cols (integer, (h, w)) and similarity (float, (h, w)) of pair ``index``, validated."""
    names = ("rows", "cols", "similarity")
    missing = [name for name in names if not hasattr(correspondences, name)]
    if missing:
        raise TypeError(
            f"pair {index}: correspondences need attributes rows, cols and similarity, "
            f"{type(correspondences).__name__} lacks {missing}"
        )
    rows, cols, similarity = (
        np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value)
        for value in (getattr(correspondences, name) for name in names)
    )
    if rows.ndim != 2 or rows.size == 0 or cols.shape != rows.shape or similarity.shape != rows.shape:
        raise ValueError(
            f"pair {index}: rows, cols and similarity must be non-empty (h, w) maps of one shape, got "
            f"shapes {rows.shape}, {cols.shape} and {similarity.shape}"
        )
    if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
        raise ValueError(
            f"pair {index}: rows and cols must hold integer map locations, got {rows.dtype} and {cols.dtype}"
        )
    h, w = rows.shape
    if rows.min() < 0 or rows.max() >= h or cols.min() < 0 or cols.max() >= w:
        raise ValueError(
            f"pair {index}: gallery locations must lie on the {h} x {w} map, got rows in "
            f"[{rows.min()}, {rows.max()}] and cols in [{cols.min()}, {cols.max()}]"
        )
    similarity = similarity.astype(float)
    if not np.isfinite(similarity).all():
        raise ValueError(f"pair {index}: similarity holds non-finite values")
    return rows, cols, similarity


def _resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
    """``image`` (H, W, 3) resized (bilinear, antialiased) to ``height`` rows, keeping its aspect ratio."""
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    resized = F.interpolate(
        tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0].permute(1, 2, 0).clamp(0, 1).numpy()


def _pair_canvas(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, int]:
    """The query and the gallery image (resized to the query's height) side by side with a white gap
    between them, and the gallery's x offset in the canvas."""
    height, query_width = query.shape[:2]
    if gallery.shape[0] != height:
        gallery = _resize_to_height(gallery, height)
    offset = query_width + max(1, round(height * PAIR_GAP_FRACTION))
    canvas = np.ones((height, offset + gallery.shape[1], 3), dtype=np.float32)
    canvas[:, :query_width] = query
    canvas[:, offset:] = gallery
    return canvas, offset


def _correspondence_segments(
    rows: np.ndarray, cols: np.ndarray, height: int, query_width: int, gallery_width: int, offset: int
) -> np.ndarray:
    """(h * w, 2, 2) segments [(x, y) start, (x, y) end], one per query cell in row-major order: from the
    cell's centre in the query to its matched cell's centre in the gallery (shifted by ``offset``)."""
    h, w = rows.shape
    r, c = np.indices((h, w))
    start = np.stack([(c + 0.5) * query_width / w, (r + 0.5) * height / h], axis=-1)  # (h, w, 2)
    end = np.stack([offset + (cols + 0.5) * gallery_width / w, (rows + 0.5) * height / h], axis=-1)
    return np.stack([start, end], axis=-2).reshape(h * w, 2, 2).astype(float)


def _similarity_norm(similarities: np.ndarray, vmin: float | None, vmax: float | None) -> Normalize:
    """The colour scale: ``[vmin, vmax]``, each bound defaulting to the extreme of ``similarities``."""
    if vmin is not None and vmax is not None and vmin >= vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin} and vmax={vmax}")
    low = float(similarities.min()) if vmin is None else float(vmin)
    high = float(similarities.max()) if vmax is None else float(vmax)
    if low >= high:  # one similarity value only, or every value beyond the one bound given
        if vmin is None:
            low = high - _MIN_SIMILARITY_SPAN
        else:
            high = low + _MIN_SIMILARITY_SPAN
    return Normalize(vmin=low, vmax=high)


def plot_correspondences(
    pairs: Sequence[tuple[ImageLike, ImageLike, CorrespondencesLike]],
    *,
    titles: Sequence[str] | None = None,
    matches: Sequence[bool] | None = None,
    top: int | None = None,
    normalized: bool = True,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """QAConv's correspondence maps (Liao & Shao 2020, Fig. 2): one axes per (query, gallery,
    correspondences) pair, at most :data:`PAIRS_PER_ROW` per row.

    Each axes shows the query and the gallery image side by side (the gallery resized to the query's
    height, a white gap between) and, for each query map location, a line from the centre of its cell in
    the query to the centre of its best gallery cell, coloured by the match's cosine similarity on a scale
    shared by all pairs (one colorbar); stronger lines are drawn on top. A map cell (r, c) of an h x w map
    (the shape of ``rows``) is centred at pixel ((c + 0.5) W / w, (r + 0.5) H / h) of an H x W image.

    Args:
        pairs: correspondences are any object with ``rows``, ``cols`` (integer) and ``similarity`` (h, w)
            arrays or tensors, e.g. from :meth:`~reidbook.models.qaconv.QueryAdaptiveConv.correspondences`.
        matches: frame each pair green (True: same identity) or red (False).
        top: draw only each pair's ``top`` most similar correspondences (default: all).
        normalized: tensor images are ImageNet-normalised (see :func:`to_image_array`).
        vmin, vmax: the colour scale; default: the least and greatest similarity drawn.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("plot_correspondences needs at least one (query, gallery, correspondences) pair")
    for name, labels in (("titles", titles), ("matches", matches)):
        if labels is not None and len(labels) != len(pairs):
            raise ValueError(f"got {len(labels)} {name} for {len(pairs)} pairs")
    if top is not None and top < 1:
        raise ValueError(f"top must be at least 1 (or None for every location), got {top}")
    drawn = []  # (canvas, segments, similarities) per pair, segments from weakest to strongest
    for index, pair in enumerate(pairs):
        if len(pair) != 3:
            raise ValueError(f"pair {index} must be (query, gallery, correspondences), got {len(pair)} items")
        query, gallery, correspondences = pair
        rows, cols, similarity = _correspondence_arrays(correspondences, index)
        query_image = to_image_array(query, normalized=normalized)
        canvas, offset = _pair_canvas(query_image, to_image_array(gallery, normalized=normalized))
        height, width = canvas.shape[:2]
        segments = _correspondence_segments(rows, cols, height, query_image.shape[1], width - offset, offset)
        order = np.argsort(-similarity.ravel(), kind="stable")[:top][::-1]  # the strongest last, on top
        drawn.append((canvas, segments[order], similarity.ravel()[order]))
    mappable = ScalarMappable(_similarity_norm(np.concatenate([s for *_, s in drawn]), vmin, vmax), cmap)
    ncols = min(len(drawn), PAIRS_PER_ROW)
    nrows = math.ceil(len(drawn) / ncols)
    title_room = 0.3 if titles is not None else 0.0
    cell_width = PAIR_HEIGHT * _aspect(drawn[0][0])
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * (cell_width + 0.2) + 1.2, nrows * (PAIR_HEIGHT + title_room) + 0.2),
        squeeze=False,
        layout="constrained",
    )
    flat_axes = axes.ravel()
    for index, (ax, (canvas, segments, similarities)) in enumerate(zip(flat_axes, drawn)):
        height, width = canvas.shape[:2]
        _show_image(ax, canvas, extent=(0, width, height, 0))
        lines = LineCollection(
            segments, colors=mappable.to_rgba(similarities), linewidths=CORRESPONDENCE_LINE_WIDTH
        )
        ax.add_collection(lines)
        ax.set(xlim=(0, width), ylim=(height, 0))
        if matches is None:
            _no_frame(ax)
        else:
            _frame(ax, MATCH_COLOR if matches[index] else WRONG_COLOR)
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
    for ax in flat_axes[len(drawn) :]:
        fig.delaxes(ax)
    fig.colorbar(mappable, ax=list(flat_axes[: len(drawn)]), label=CORRESPONDENCE_LABEL, shrink=0.9)
    return fig


# -------------------------------------------------------------------------------------- tables and bars
DEFAULT_ROW = "result"


def _metric_label(name: str) -> str:
    """``rank1`` / ``rank_1`` / ``Rank-1`` -> ``rank-1``; other names are kept."""
    match = re.fullmatch(r"rank[-_ ]?(\d+)", str(name), flags=re.IGNORECASE)
    return f"rank-{match.group(1)}" if match else str(name)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.size == 1
    if isinstance(value, Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, str, np.number)) or value is None


def _scalar_items(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar entries of ``metrics`` (one-element arrays and tensors unwrapped)."""
    return {
        name: value.item() if isinstance(value, (Tensor, np.ndarray)) else value
        for name, value in metrics.items()
        if _is_scalar(value)
    }


def _results_frame(source: pd.DataFrame | Mapping[str, Any], name: str) -> pd.DataFrame:
    """Rows = methods, columns = metrics. A flat dict ``{metric: value}`` is one row named ``"result"``;
    a nested dict ``{row: {metric: value}}`` gives one row per key. Non-scalar entries (a CMC array) are
    dropped."""
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    elif isinstance(source, Mapping):
        if source and all(isinstance(v, Mapping) for v in source.values()):
            rows = {row: _scalar_items(metrics) for row, metrics in source.items()}
            frame = pd.DataFrame.from_dict(rows, orient="index")
        else:
            frame = pd.DataFrame([_scalar_items(source)], index=[DEFAULT_ROW])
    else:
        raise TypeError(f"{name} must be a DataFrame or a dict, got {type(source).__name__}")
    if frame.empty:
        raise ValueError(f"{name} holds no scalar metric")
    return frame.rename(columns=_metric_label)


def _in_percent(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns stored as fractions (every value in [0, 1]) times 100; numeric columns rounded to one
    decimal; other columns unchanged."""
    frame = frame.copy()
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            continue
        frame[column] = (values * 100 if _is_fraction(values) else values).astype(float).round(1)
    return frame


def results_table(
    ours: pd.DataFrame | Mapping[str, Any],
    paper: pd.DataFrame | Mapping[str, Any],
    *,
    ours_label: str,
    paper_label: str,
) -> pd.DataFrame:
    """The paper's numbers beside this run's, under a two-level column header ``(source, metric)``.

    Sources are DataFrames (rows = methods, columns = metrics) or dicts (``{metric: value}`` for one row,
    ``{method: {metric: value}}`` for several). Metric names ``rank1``/``rank_1`` become ``rank-1``; columns
    stored as fractions are shown in percent, every number with one decimal. Rows are the union of both
    sources' rows (the paper's first); a metric one source lacks for a row is NaN.

    Label the sources fully, e.g. ``paper_label="paper: Market-1501, ResNet-50, GPU"`` and
    ``ours_label="ours: built-in world, cpu profile, CPU"``.
    """
    if ours_label == paper_label:
        raise ValueError(f"ours_label and paper_label must differ, both are {ours_label!r}")
    paper_frame = _in_percent(_results_frame(paper, "paper"))
    ours_frame = _in_percent(_results_frame(ours, "ours"))
    table = pd.concat({paper_label: paper_frame, ours_label: ours_frame}, axis=1, sort=False)
    table.columns.names = ["source", "metric"]
    return table


def plot_bar_compare(
    df: pd.DataFrame,
    metric: str,
    *,
    by: str = "method",
    spread: str = "half-range",
    percent: bool | str = "auto",
    title: str | None = None,
) -> Figure:
    """Bars of the mean of ``metric`` per group ``by`` (one row of ``df`` per run, e.g. per seed), with error
    bars of ``spread`` (see :func:`reidbook.report.spread`) and each run drawn as a dot. Groups keep their
    order of appearance in ``df``."""
    for column in (metric, by):
        if column not in df.columns:
            raise ValueError(f"column {column!r} not found in the DataFrame (columns: {list(df.columns)})")
    values = df[metric].to_numpy(dtype=float)
    scale = (100.0 if _is_fraction(values) else 1.0) if percent == "auto" else (100.0 if percent else 1.0)
    groups = list(dict.fromkeys(df[by]))
    runs = [df.loc[df[by] == group, metric].to_numpy(dtype=float) * scale for group in groups]
    means = [values.mean() for values in runs]
    errors = [spread_of(values, spread) for values in runs]
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) + 2.0, 3.4), layout="constrained")
    positions = np.arange(len(groups))
    ax.bar(positions, means, yerr=errors, capsize=5, color="tab:blue", alpha=0.6)
    for position, values in zip(positions, runs):
        offsets = np.linspace(-0.15, 0.15, values.size) if values.size > 1 else np.zeros(1)
        ax.plot(position + offsets, values, "o", color="black", markersize=4)
    ax.set_xticks(positions, [str(g) for g in groups])
    ylabel = f"{_metric_label(metric)} (%)" if scale == 100 else _metric_label(metric)
    ax.set(ylabel=ylabel, title=title or f"{_metric_label(metric)}: mean ± {spread} over runs")
    ax.grid(axis="y", alpha=0.3)
    return fig


# ------------------------------------------------------------------------------ helpers shared by chapters
def plain_render(person: Identity, seed: int, **shot: float | str) -> Rendered:
    """A frontal picture of ``person`` on a cluttered background with every other nuisance off (``shot``:
    :func:`~reidbook.data.synthetic.render_person`'s pose, scale and box arguments)."""
    nuisances = dataclasses.replace(Nuisances.off(), clutter=1.0)
    return render_person(person, nuisances=nuisances, seed=seed, view="front", **shot)


def person_showing(seed: int, parts: Sequence[str], tries: int = 500) -> Identity:
    """The first identity of the world's generator (seeded) whose :func:`plain_render` shows all ``parts``."""
    rng = np.random.default_rng(seed)
    for pid in range(tries):
        person = sample_identity(pid, rng)
        if set(parts) <= set(plain_render(person, seed).parts):
            return person
    raise RuntimeError(f"no identity among {tries} draws shows every one of {list(parts)}")


def test_images(records: Sequence[Record], indices: Sequence[int], height: int, width: int) -> Tensor:
    """The test-time inputs (resized, ImageNet-normalised) of ``records[i]`` for ``i`` in ``indices``,
    stacked as (N, 3, height, width)."""
    from .data import build_transforms
    from .data.loader import load_uint8

    transform = build_transforms(height, width, train=False)
    return torch.stack([transform(load_uint8(records[int(i)].path)) for i in indices])


def heat_overlay(ax: Axes, picture: np.ndarray, heat: np.ndarray, threshold: float | None = None) -> None:
    """Draw ``heat`` (any (h, w) map, min-max scaled) over ``picture`` (H, W, 3) on ``ax``, stretched to the
    picture's size; with ``threshold`` (a fraction of the range) lower values are hidden."""
    ax.imshow(picture)
    scaled = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    if threshold is not None:
        scaled = np.ma.masked_less(scaled, threshold)
    ax.imshow(scaled, cmap="jet", alpha=0.55, vmin=0, vmax=1, interpolation="nearest",
              extent=(-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5))
    ax.set_xticks([]), ax.set_yticks([])


def receptive_fields(model: nn.Module, image: Tensor, cells: Sequence[tuple[int, int]],
                     layer: nn.Module) -> np.ndarray:
    """Valid receptive fields: for each (row, column) cell of ``layer``'s output map, ``|d ||f_cell|| /
    d input|`` summed over colours, (P, H, W). One copy of ``image`` (3, H, W) per cell in one batch, the
    model in eval mode so that the copies do not interact; the model's parameters get no gradient."""
    captured: dict[str, Tensor] = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(map=output))
    was_training = model.training
    model.eval()
    pixels = image[None].repeat(len(cells), 1, 1, 1).requires_grad_(True)  # (P, 3, H, W)
    try:
        with torch.enable_grad():
            model(pixels)
            fmap = captured["map"]  # (P, C, h, w)
            torch.stack([fmap[i, :, y, x].norm() for i, (y, x) in enumerate(cells)]).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return pixels.grad.abs().sum(1).numpy()


def plot_stress(curve: pd.DataFrame, metric: str = "mAP", *, xlabel: str = "nuisance strength",
                title: str | None = None) -> Figure:
    """A stress curve (rows of method, seed, strength and metrics): the mean over seeds per method, with a
    band spanning the seeds."""
    stats = curve.groupby(["method", "strength"], sort=False)[metric].agg(["mean", "min", "max"]) * 100
    fig, ax = plt.subplots(figsize=(5.2, 3.4), layout="constrained")
    for method, group in stats.groupby(level="method", sort=False):
        strengths = group.index.get_level_values("strength")
        ax.plot(strengths, group["mean"], "o-", label=method)
        ax.fill_between(strengths, group["min"], group["max"], alpha=0.2)
    label = _metric_label(metric)
    ax.set(xlabel=xlabel, ylabel=f"{label} (%)", title=title or f"{label} under stress")
    ax.legend(), ax.grid(alpha=0.3)
    return fig


def plot_fingerprint(table: pd.DataFrame, *, title: str = "mAP points lost from strength 0 to 3") -> Figure:
    """A methods x nuisances heatmap with each cell's value written in it (seaborn): red = more lost, blue =
    gained (a nuisance removed can also make a world harder for a model trained with it)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.0 * table.shape[1] + 2.5, 0.5 * table.shape[0] + 1.8),
                           layout="constrained")
    sns.heatmap(table.astype(float), annot=True, fmt=".1f", cmap="RdBu_r", center=0.0,
                cbar_kws={"label": "points lost"}, ax=ax)
    ax.set(title=title, xlabel="nuisance", ylabel="")
    return fig
