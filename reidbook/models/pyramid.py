"""Pyramid: Zheng et al., "Pyramidal Person Re-IDentification via Multi-Loss Dynamic Training" (CVPR 2019).

The model (Section 3.1) cuts the backbone's last feature map ``M`` (C x H x W) along its height into n
basic parts and builds a coarse-to-fine pyramid of sub-maps over them; the training (Section 3.2)
switches between two losses and two samplers as the losses evolve:

* Pyramidal branches, Section 3.1.1: branch ``P{l, k}`` is the k-th sub-map of level l, the l
  consecutive basic parts k .. k+l-1 (Eq. 1), for l = 1..n and k = 1..n-l+1: n(n+1)/2 branches (21 for
  n = 6), from n PCB-like stripes (level 1) up to ``M`` itself (level n). :func:`pyramid_branches`
  lists them for a map height, :class:`Pyramid` cuts a map into them.
* Basic operations, Section 3.1.2 and Fig. 3: per branch, global max pooling + global average pooling
  (added), a 1x1 convolution to D channels, BN and ReLU give ``x(l, k) = BO(P{l, k})``; a fully
  connected classifier per branch reads it (:class:`BasicOperations`). The embedding ``x`` concatenates
  the branch features (21 x 128 = 2,688 values at n = 6, D = 128) (:class:`PyramidNet`).
* Two tasks, Section 3.2.1: the ID loss (Eq. 2), softmax cross-entropy of every branch's classifier,
  summed over the branches; the triplet loss (Eq. 3) on ``x`` with batch-hard mining and margin 1.4
  (:class:`PyramidCriterion`, terms ``"id"`` and ``"triplet"``).
* Dynamic training, Section 3.2.2 and Algorithm 1: per task an exponential moving average of its loss
  (Eq. 4), the likelihood of a loss reduction (Eq. 5) and a focal weight (Eq. 6)
  (:class:`DynamicWeighting`); while ``FL(p_tp) / FL(p_id) < delta`` a random mini-batch and the ID loss
  alone, otherwise an ID-balanced 8 x 8 batch and Eq. 7, ``sum_t FL(p_t) L_t`` (:class:`DynamicTraining`,
  an engine hook, with the switching loader of :func:`build_dynamic_train_loader`).
* Table 4's sub-models: ``levels`` (``"Pyramid-000001"`` ... ``"Pyramid-111111"``, the left digit the
  finest level of n stripes, the right digit the global branch), ``feature_dim`` (64, 128, 256),
  ``PyramidCriterion(triplet=False)``; "No triplet loss" also alternates the samplers
  (``DynamicTraining(sampling="alternate", triplet_term=None)``).

What we assumed where the paper is ambiguous or silent:

* Stripe boundaries. Eq. 1 supposes that n divides H; the book's inputs give H = 4 (64 x 32, last stride
  1), 8 (128 x 64) and the paper's 24 (384 x 128). Basic part j covers the fractional rows
  ``[(j-1) H/n, j H/n)``, rounded outward (``partition="cover"``, the default): rows
  ``floor((j-1) H/n) .. ceil(j H/n) - 1``, every row the interval touches. Every part has at least one
  row even when H < n, neighbouring parts share the row that a boundary cuts, and n | H gives Eq. 1
  exactly. At H = 4, n = 6 the six parts are rows {0}, {0,1}, {1}, {2}, {2,3}, {3}; some branches then
  cover the same rows (a 4-row map has only 10 distinct row ranges for 21 branches) but keep their own
  weights. ``partition="round"`` gives each row to the part that holds the row's centre: a true
  partition into parts of floor or ceil(H/n) rows, which needs H >= n. A branch covers the rows of its
  parts, from the first row of part k to the last row of part k+l-1.
* Pooling. GMP and GAP are taken on the same sub-map and added, so their order does not matter; both
  come before the 1x1 convolution, which therefore acts on a 1x1 map (paper and authors' code).
  ``pooling="avg"`` or ``"max"`` keeps one of them.
* The convolution has no bias since a BN follows (the authors' code has one, which the BN cancels).
* The classifier reads ``x(l, k)`` after the ReLU (Fig. 3 and the authors' code), and so does the
  embedding; ``relu=False`` drops the ReLU, so that both read the BN output. The classifier has no
  bias (Eq. 2 has weights ``W_c^{kl}`` only) and starts from N(0, 0.001^2) as in the authors' code,
  which also puts a dropout (p = 0.2) before it: ``dropout=0.2``.
* Test-time embedding: ``x``, the concatenation of the branch features (Section 3.1.2's ``f(I)``),
  compared with the Euclidean distance.
* Eq. 2 is plain softmax cross-entropy (no label smoothing), averaged over the images, summed over the
  branches. Eq. 3 uses Euclidean (not squared) distances on ``x`` and batch-hard mining ("the largest
  intra-class distance and the smallest inter-class distance"); ``triplet_per_branch=True`` sums one
  triplet loss per branch feature instead, as the authors' code does.
* Eqs. 4-5 are updated every step for both tasks with that step's losses, whatever sampler drew the
  batch; on a random batch an anchor without a positive uses itself (distance 0) as positive.
  ``k_{-1} = L_0`` gives ``k_0 = L_0`` and ``p_0 = 1``; when ``k_{tau-1} = 0``, ``p_tau = 1``.
* A step's weights must be set before its forward pass (the engine weighs the terms it returns), while
  ``p_tau`` needs ``L_tau``: the sampler and the weights of step tau follow from ``p_{tau-1}``, and
  Algorithm 1's ``p_id = 0, p_tp = 1`` decide step 0 (a random batch, ID loss alone). The authors' code
  decides after the forward pass, from the current batch's losses.
* The ratio ``FL(p_tp) / FL(p_id)`` reads 0/0 as 0 (the ID loss alone, where Algorithm 1 starts) and
  x/0 as infinite for x > 0.
* Eq. 7's weights are constants (no gradient flows through ``FL``) used as they are (paper,
  ``weighting="focal"``); for p near 1, ``FL(p, 2) ~ (1 - p)^3`` is small, so joint steps move the
  weights much less than ID steps. ``weighting="sum"`` is the authors' code: the ID loss alone, or ID +
  triplet with weight 1 each. ``weighting="fixed"`` uses constant weights at every step (no dynamic
  weighting; the phase then only picks the sampler).
* Samplers: ``sampling="dynamic"`` is Algorithm 1; ``"balanced"`` keeps the 8 x 8 batches (the authors'
  code never switches); ``"random"`` keeps random batches; ``"alternate"`` takes random batches at even
  and balanced ones at odd global steps (Table 4, "No triplet loss"). A random batch has as many images
  as a balanced one (64), and an epoch has ``len(records) // 64`` steps, one pass of random batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.loader import ImageDataset
from ..data.records import Record
from ..data.sampler import IdentityBalancedBatches, RandomBatches, SwitchingBatchSampler
from ..data.transforms import build_transforms
from ..losses import CrossEntropyLabelSmooth, TripletLoss, focal_weight
from .backbones import Backbone, build_backbone
from .baseline import param_groups
from .heads import IdentityClassifier

PARTITIONS = ("cover", "round")
POOLINGS = ("max+avg", "avg", "max")
WEIGHTINGS = ("focal", "sum", "fixed")
SAMPLINGS = ("dynamic", "balanced", "random", "alternate")
RANDOM_STREAM = "random"
BALANCED_STREAM = "balanced"
PHASE_ID, PHASE_JOINT = "id", "joint"


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# ------------------------------------------------------------------------------- pyramidal branches (Eq. 1)


class PyramidBranch(NamedTuple):
    """Branch ``P{level, index}`` (both 1-based, as in Eq. 1) and the rows of the map it covers."""

    level: int  # l: number of consecutive basic parts
    index: int  # k: first basic part
    rows: slice  # rows of the feature map, 0-based, end excluded


def parse_levels(levels: str | Sequence[int | bool], num_parts: int = 6) -> tuple[bool, ...]:
    """Table 4's level code (``"111111"``, ``"Pyramid-100000"`` or a sequence of 0/1) as one flag per
    level, the finest level (n stripes) first and the global branch last."""
    if isinstance(levels, str):
        code = levels.removeprefix("Pyramid-")
        if len(code) != num_parts or set(code) - {"0", "1"}:
            raise ValueError(
                f"levels must be a code of {num_parts} digits 0/1 such as {'1' * num_parts!r} (optionally "
                f"prefixed 'Pyramid-'), got {levels!r}"
            )
        flags = tuple(c == "1" for c in code)
    else:
        flags = tuple(bool(v) for v in levels)
        if len(flags) != num_parts or any(v not in (0, 1) for v in levels):
            raise ValueError(f"levels must hold {num_parts} values 0/1, got {list(levels)!r}")
    if not any(flags):
        raise ValueError(f"levels must use at least one level, got {levels!r}")
    return flags


def part_rows(height: int, num_parts: int = 6, partition: str = "cover") -> list[slice]:
    """The rows of the n basic parts of a map ``height`` rows high (see the module docstring).

    ``"cover"``: part j (1-based) covers rows ``floor((j-1) H/n) .. ceil(j H/n) - 1``; ``"round"``: the rows
    whose centre ``r + 1/2`` lies in ``[(j-1) H/n, j H/n)``, which needs ``height >= num_parts``.
    """
    if height < 1 or num_parts < 1:
        raise ValueError(f"height and num_parts must be >= 1, got height={height}, num_parts={num_parts}")
    _check_choice("partition", partition, PARTITIONS)
    if partition == "round" and height < num_parts:
        raise ValueError(
            f"partition='round' needs a map at least num_parts={num_parts} rows high, got height={height}; "
            "use partition='cover'"
        )
    parts = []
    for j in range(num_parts):
        if partition == "cover":
            start, stop = j * height // num_parts, -(-(j + 1) * height // num_parts)  # floor, ceil
        else:  # rows r with r + 1/2 < x: ceil(x - 1/2) = ceil((2xn - n) / 2n) in integers
            start = -((num_parts - 2 * j * height) // (2 * num_parts))
            stop = -((num_parts - 2 * (j + 1) * height) // (2 * num_parts))
        parts.append(slice(start, stop))
    return parts


@lru_cache(maxsize=64)
def _branches(
    height: int, num_parts: int, levels: tuple[bool, ...], partition: str
) -> tuple[PyramidBranch, ...]:
    parts = part_rows(height, num_parts, partition)
    return tuple(
        PyramidBranch(level, index, slice(parts[index - 1].start, parts[index + level - 2].stop))
        for level in range(1, num_parts + 1)
        if levels[level - 1]
        for index in range(1, num_parts - level + 2)
    )


def pyramid_branches(
    height: int,
    num_parts: int = 6,
    levels: str | Sequence[int | bool] = "111111",
    partition: str = "cover",
) -> list[PyramidBranch]:
    """The pyramid's branches ``P{l, k}`` on a map ``height`` rows high (Eq. 1), level by level from the
    finest (l = 1) to the global branch (l = n), k increasing within a level; ``levels`` selects levels.

    Each branch covers the rows from the first row of basic part k to the last row of part k+l-1
    (:func:`part_rows`); with ``num_parts`` dividing ``height`` that is Eq. 1's ``st .. ed``.
    """
    return list(_branches(height, num_parts, parse_levels(levels, num_parts), partition))


class Pyramid(nn.Module):
    """The coarse-to-fine pyramid P (Section 3.1.1): cuts a map (B, C, H, W) into its branches' sub-maps
    ``[(B, C, rows of P{l, k}, W)]``, in the order of :func:`pyramid_branches`. No parameters."""

    def __init__(
        self, num_parts: int = 6, levels: str | Sequence[int | bool] = "111111", partition: str = "cover"
    ) -> None:
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        _check_choice("partition", partition, PARTITIONS)
        self.num_parts = num_parts
        self.levels = parse_levels(levels, num_parts)
        self.partition = partition

    @property
    def num_branches(self) -> int:
        """Branches of the used levels: level l has n - l + 1."""
        n = self.num_parts
        return sum(n - level + 1 for level in range(1, n + 1) if self.levels[level - 1])

    def branches(self, height: int) -> list[PyramidBranch]:
        return list(_branches(height, self.num_parts, self.levels, self.partition))

    def forward(self, fmap: Tensor) -> list[Tensor]:
        return [fmap[:, :, branch.rows, :] for branch in self.branches(fmap.shape[2])]  # [(B, C, h_lk, W)]


# ------------------------------------------------------------------------------ basic operations (Fig. 3)


class BasicOperations(nn.Module):
    """The basic operations BO of one branch (Section 3.1.2, Fig. 3).

    ``forward``: sub-map (B, C, h, W) -> GMP + GAP -> 1x1 conv (C -> D, no bias) -> BN -> ReLU ->
    ``x(l, k)`` (B, D). ``classify``: (dropout) -> fully connected layer -> identity logits (B, N).
    """

    def __init__(
        self,
        in_channels: int,
        feature_dim: int,
        num_classes: int,
        *,
        pooling: str = "max+avg",
        relu: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_choice("pooling", pooling, POOLINGS)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.pooling = pooling
        self.conv = nn.Conv2d(in_channels, feature_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(feature_dim)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = IdentityClassifier(feature_dim, num_classes)

    def pool(self, sub_map: Tensor) -> Tensor:
        """(B, C, h, W) -> (B, C, 1, 1): GMP + GAP (or one of them)."""
        if self.pooling == "max":
            return sub_map.amax(dim=(2, 3), keepdim=True)
        if self.pooling == "avg":
            return sub_map.mean(dim=(2, 3), keepdim=True)
        return sub_map.amax(dim=(2, 3), keepdim=True) + sub_map.mean(dim=(2, 3), keepdim=True)

    def forward(self, sub_map: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv(self.pool(sub_map))))  # (B, D, 1, 1)
        return x.flatten(1)  # (B, D)

    def classify(self, feature: Tensor) -> Tensor:
        return self.classifier(self.dropout(feature))  # (B, num_classes)


class PyramidNet(nn.Module):
    """Backbone -> pyramid P -> one :class:`BasicOperations` per branch -> concatenated embedding.

    In training mode ``forward`` returns ``{"branch_feats": (B, nb, D), "feat": (B, nb * D), "logits":
    [(B, num_classes)] * nb}`` with nb branches in the order of :func:`pyramid_branches`; in eval mode it
    returns ``feat``, the embedding.

    Args:
        num_classes: training identities.
        backbone: a registered backbone name or a :class:`Backbone`.
        pretrained, last_stride: for :func:`build_backbone` (the paper: ImageNet ResNet, last stride 1).
        num_parts: n, the basic parts (6).
        levels: Table 4's level code, see :func:`parse_levels`.
        feature_dim: D, the size of each branch feature (128; Table 4: 64, 256).
        partition: ``"cover"`` or ``"round"``, see :func:`part_rows`.
        pooling: ``"max+avg"`` (the paper), ``"avg"`` or ``"max"``.
        relu: the ReLU after the BN (the paper); ``False`` uses the BN output.
        dropout: before each classifier (0; the authors' code: 0.2).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | Backbone = "resnet18",
        *,
        pretrained: bool = False,
        last_stride: int = 1,
        num_parts: int = 6,
        levels: str | Sequence[int | bool] = "111111",
        feature_dim: int = 128,
        partition: str = "cover",
        pooling: str = "max+avg",
        relu: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
        elif not isinstance(backbone, Backbone):
            raise TypeError(f"backbone must be a backbone name or a Backbone, got {type(backbone).__name__}")
        self.backbone = backbone
        self.pyramid = Pyramid(num_parts, levels, partition)
        self.feature_dim = feature_dim
        self.basic_operations = nn.ModuleList(
            BasicOperations(
                backbone.feature_dim, feature_dim, num_classes, pooling=pooling, relu=relu, dropout=dropout
            )
            for _ in range(self.pyramid.num_branches)
        )

    @property
    def num_branches(self) -> int:
        return self.pyramid.num_branches

    @property
    def embedding_dim(self) -> int:
        """nb x D: 2,688 with all 21 branches at D = 128."""
        return self.num_branches * self.feature_dim

    def branches(self, height: int) -> list[PyramidBranch]:
        """The branches on a backbone map ``height`` rows high, in the order of the outputs."""
        return self.pyramid.branches(height)

    def forward(self, img: Tensor) -> dict[str, Any] | Tensor:
        fmap = self.backbone(img)  # (B, C, H, W)
        sub_maps = self.pyramid(fmap)  # nb x (B, C, h_lk, W)
        feats = [bo(sub_map) for bo, sub_map in zip(self.basic_operations, sub_maps)]  # nb x (B, D)
        branch_feats = torch.stack(feats, dim=1)  # (B, nb, D)
        feat = branch_feats.flatten(1)  # (B, nb * D): x = (x(1,1)^T, ..., x(n,1)^T)^T
        if not self.training:
            return feat
        logits = [bo.classify(f) for bo, f in zip(self.basic_operations, feats)]  # nb x (B, N)
        return {"branch_feats": branch_feats, "feat": feat, "logits": logits}

    def param_groups(self, base_lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
        """Optimizer groups: the backbone at ``base_lr * backbone_lr_mult``, the branches at ``base_lr``."""
        return param_groups(self, base_lr, {"backbone": backbone_lr_mult})


# ----------------------------------------------------------------------------- two tasks (Eqs. 2 and 3)


class PyramidCriterion(nn.Module):
    """``{"id": Eq. 2, "triplet": Eq. 3}``.

    ``id``: the softmax cross-entropy of every branch's logits, averaged over the images and summed over
    the branches (``label_smoothing`` > 0 smooths the targets; the paper: 0). ``triplet``: the batch-hard
    triplet loss with ``margin`` on the concatenated ``feat`` (the paper) or, with
    ``triplet_per_branch=True``, summed over the branch features (the authors' code); left out when
    ``triplet=False`` (Table 4, "No triplet loss").
    """

    def __init__(
        self,
        num_classes: int,
        triplet: bool = True,
        triplet_per_branch: bool = False,
        margin: float = 1.4,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if triplet_per_branch and not triplet:
            raise ValueError("triplet_per_branch=True needs triplet=True")
        self.cross_entropy = CrossEntropyLabelSmooth(num_classes, label_smoothing)
        self.triplet = TripletLoss(margin) if triplet else None
        self.triplet_per_branch = triplet_per_branch

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pids = batch["pid"]  # (B,)
        terms = {"id": torch.stack([self.cross_entropy(logits, pids) for logits in outputs["logits"]]).sum()}
        if self.triplet is not None:
            if self.triplet_per_branch:
                branch_feats = outputs["branch_feats"]  # (B, nb, D)
                terms["triplet"] = torch.stack(
                    [self.triplet(branch_feats[:, b], pids) for b in range(branch_feats.shape[1])]
                ).sum()
            else:
                terms["triplet"] = self.triplet(outputs["feat"], pids)
        return terms


# ------------------------------------------------------------------------ dynamic weighting (Eqs. 4-7)


def moving_average(loss: float, k_previous: float, alpha: float) -> float:
    """Eq. 4: ``k_tau = alpha L_tau + (1 - alpha) k_{tau-1}``."""
    return alpha * loss + (1.0 - alpha) * k_previous


def reduction_likelihood(k: float, k_previous: float) -> float:
    """Eq. 5: ``p_tau = min(k_tau, k_{tau-1}) / k_{tau-1}`` (1 when ``k_{tau-1} = 0``)."""
    return 1.0 if k_previous == 0 else min(k, k_previous) / k_previous


def task_focal_weight(p: float, gamma: float) -> float:
    """Eq. 6: ``FL(p, gamma) = -(1 - p)^gamma log p`` (infinite at p = 0, 0 at p = 1)."""
    if p <= 0:
        return math.inf
    return float(focal_weight(torch.tensor(p, dtype=torch.float64), gamma)) * -math.log(p)


def task_ratio(fl_tp: float, fl_id: float) -> float:
    """``FL(p_tp) / FL(p_id)``, Algorithm 1's switching quantity; 0/0 reads 0, x/0 infinite for x > 0."""
    if fl_id == 0:
        return 0.0 if fl_tp == 0 else math.inf
    return fl_tp / fl_id


class DynamicWeighting:
    """The likelihood of a loss reduction of the ID and triplet tasks (Section 3.2.2, Eqs. 4-6).

    ``update({"id": L_id, "tp": L_tp})`` after each step advances ``k`` (Eq. 4, ``k_{-1} = L_0``) and ``p``
    (Eq. 5) of the tasks given (a task never updated keeps its initial p); ``focal(task)`` is Eq. 6 and
    ``ratio()`` ``FL(p_tp) / FL(p_id)``. Starts from Algorithm 1's ``p_id = 0, p_tp = 1``.
    """

    TASKS = ("id", "tp")

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, initial_p: Mapping[str, float] | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma = alpha, gamma
        self.k: dict[str, float | None] = dict.fromkeys(self.TASKS)
        self.p: dict[str, float] = {"id": 0.0, "tp": 1.0, **(initial_p or {})}

    def update(self, losses: Mapping[str, float]) -> None:
        for task, loss in losses.items():
            if task not in self.TASKS:
                raise ValueError(f"unknown task {task!r}; expected one of {self.TASKS}")
            k_previous = loss if self.k[task] is None else self.k[task]  # k_{-1} = L_0
            self.k[task] = moving_average(loss, k_previous, self.alpha)  # Eq. 4
            self.p[task] = reduction_likelihood(self.k[task], k_previous)  # Eq. 5

    def focal(self, task: str) -> float:
        return task_focal_weight(self.p[task], self.gamma)  # Eq. 6

    def ratio(self) -> float:
        return task_ratio(self.focal("tp"), self.focal("id"))

    def state_dict(self) -> dict[str, Any]:
        return {"k": dict(self.k), "p": dict(self.p)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.k, self.p = dict(state["k"]), dict(state["p"])


# ------------------------------------------------------------------------- dynamic training (Algorithm 1)


class DynamicTraining:
    """Algorithm 1 as a hook of :func:`reidbook.engine.fit`: per step, the sampler of the batch and the
    weights of the loss terms (``state.loss_weights``), from :class:`DynamicWeighting`.

    Before step tau: with ``ratio = FL(p_tp) / FL(p_id)`` from ``p_{tau-1}``, the step is an *ID step*
    (``ratio < delta``: a random batch, ID loss alone, Eq. 2) or a *joint step* (an ID-balanced batch and
    Eq. 7). After it, the step's losses update Eqs. 4-5. The loader must come from
    :func:`build_dynamic_train_loader` when the sampler switches: the hook tells its
    :class:`~reidbook.data.sampler.SwitchingBatchSampler` which stream the next batch comes from (and,
    after a mid-epoch resume, which streams the replayed batches came from).

    ``log`` holds one row per step (``frame()`` as a DataFrame): epoch, step, global_step, phase,
    sampler, p_id, p_tp, fl_id, fl_tp, ratio, delta (the decision's inputs), w_id, w_tp (the weights
    used), loss_id, loss_tp (the step's losses). It is part of ``state_dict``, saved in checkpoints.

    Args:
        alpha, gamma, delta: Eq. 4's discount, Eq. 6's focusing, the switching threshold (0.25, 2, 0.16).
        weighting: ``"focal"`` (Eq. 7), ``"sum"`` (the authors' code: weight 1 in joint steps) or
            ``"fixed"`` (``fixed_weights`` at every step).
        sampling: ``"dynamic"`` (Algorithm 1), ``"balanced"``, ``"random"`` or ``"alternate"``.
        fixed_weights: the weights of ``weighting="fixed"`` by term name (default 1 each).
        id_term, triplet_term: the criterion's term names; ``triplet_term=None`` when there is no triplet
            loss (p_tp then stays 1: every step is an ID step).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.25,
        gamma: float = 2.0,
        delta: float = 0.16,
        weighting: str = "focal",
        sampling: str = "dynamic",
        fixed_weights: Mapping[str, float] | None = None,
        id_term: str = "id",
        triplet_term: str | None = "triplet",
    ) -> None:
        _check_choice("weighting", weighting, WEIGHTINGS)
        _check_choice("sampling", sampling, SAMPLINGS)
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        self.weighting_state = DynamicWeighting(alpha, gamma)
        self.delta = delta
        self.weighting = weighting
        self.sampling = sampling
        self.id_term = id_term
        self.triplet_term = triplet_term
        self.terms = [t for t in (id_term, triplet_term) if t is not None]
        self.fixed_weights = dict.fromkeys(self.terms, 1.0) if fixed_weights is None else dict(fixed_weights)
        unknown = set(self.fixed_weights) - set(self.terms)
        if unknown:
            raise ValueError(f"fixed_weights names {sorted(unknown)}, not one of the terms {self.terms}")
        self.log: list[dict[str, Any]] = []
        self.pending: dict[str, Any] | None = None  # the decision of the next step
        self.sampler: SwitchingBatchSampler | None = None

    # -- decisions
    def decide(self, global_step: int) -> dict[str, Any]:
        """Algorithm 1's choice for step ``global_step`` from the current p (i.e. ``p_{tau-1}``)."""
        dw = self.weighting_state
        fl_id, fl_tp, ratio = dw.focal("id"), dw.focal("tp"), dw.ratio()
        phase = PHASE_ID if ratio < self.delta else PHASE_JOINT
        if self.sampling == "dynamic":
            sampler = RANDOM_STREAM if phase == PHASE_ID else BALANCED_STREAM
        elif self.sampling == "alternate":
            sampler = RANDOM_STREAM if global_step % 2 == 0 else BALANCED_STREAM
        else:
            sampler = self.sampling
        if self.weighting == "fixed":
            weights = dict(self.fixed_weights)
        elif phase == PHASE_ID:
            weights = {self.id_term: 1.0, **({self.triplet_term: 0.0} if self.triplet_term else {})}
        elif self.weighting == "focal":  # Eq. 7
            weights = {self.id_term: fl_id, **({self.triplet_term: fl_tp} if self.triplet_term else {})}
        else:
            weights = dict.fromkeys(self.terms, 1.0)
        return {
            "phase": phase,
            "sampler": sampler,
            "p_id": dw.p["id"],
            "p_tp": dw.p["tp"],
            "fl_id": fl_id,
            "fl_tp": fl_tp,
            "ratio": ratio,
            "delta": self.delta,
            "weights": weights,
        }

    def stream_for(self, epoch: int, index: int) -> str:
        """The stream of batch ``index`` of ``epoch``: the logged one for a step already trained (a
        replay after a resume), else the pending decision's."""
        for row in reversed(self.log):
            if (row["epoch"], row["step"]) < (epoch, index):
                break
            if (row["epoch"], row["step"]) == (epoch, index):
                return row["sampler"]
        if self.pending is None:
            raise RuntimeError("DynamicTraining has not decided yet: fit() calls on_train_start first")
        return self.pending["sampler"]

    # -- engine events
    def on_train_start(self, state: Any) -> None:
        batch_sampler = getattr(state.train_loader, "batch_sampler", None)
        if isinstance(batch_sampler, SwitchingBatchSampler):
            missing = {RANDOM_STREAM, BALANCED_STREAM} - set(batch_sampler.streams)
            if missing:
                raise ValueError(f"the loader's SwitchingBatchSampler lacks the streams {sorted(missing)}")
            self.sampler = batch_sampler
            batch_sampler.set_chooser(self.stream_for)
        elif self.sampling in ("dynamic", "alternate"):
            raise ValueError(
                f"sampling={self.sampling!r} switches samplers and needs a loader from "
                f"build_dynamic_train_loader, got a loader whose batch sampler is "
                f"{type(batch_sampler).__name__}"
            )
        if self.pending is None:
            self.pending = self.decide(state.global_step)

    def on_step_start(self, state: Any) -> None:
        if self.sampler is not None:
            drawn = self.sampler.drawn
            if len(drawn) != state.step + 1 or drawn[-1] != self.pending["sampler"]:
                raise RuntimeError(
                    f"step {state.step} of epoch {state.epoch} should train on a {self.pending['sampler']!r} "
                    f"batch, but the loader has drawn {drawn}: the switching sampler must be asked for one "
                    "batch at a time (a DataLoader with num_workers=0, as build_dynamic_train_loader builds)"
                )
        state.loss_weights.update(self.pending["weights"])

    def on_step_end(self, state: Any) -> None:
        losses = {"id": self._loss(state, self.id_term)}
        if self.triplet_term is not None:
            losses["tp"] = self._loss(state, self.triplet_term)
        decision = self.pending
        self.log.append(
            {
                "epoch": state.epoch,
                "step": state.step - 1,  # the engine has already counted the step
                "global_step": state.global_step - 1,
                **{k: v for k, v in decision.items() if k != "weights"},
                "w_id": decision["weights"][self.id_term],
                "w_tp": decision["weights"][self.triplet_term] if self.triplet_term else math.nan,
                "loss_id": losses["id"],
                "loss_tp": losses.get("tp", math.nan),
            }
        )
        self.weighting_state.update(losses)  # Eqs. 4-5 with L_tau
        self.pending = self.decide(state.global_step)

    def _loss(self, state: Any, term: str) -> float:
        if term not in state.losses:
            raise ValueError(
                f"DynamicTraining reads the loss term {term!r}, but the criterion returned "
                f"{sorted(state.losses)}; set id_term / triplet_term (None without a triplet loss)"
            )
        return float(state.losses[term])

    # -- checkpoints and reports
    def state_dict(self) -> dict[str, Any]:
        return {
            "weighting": self.weighting_state.state_dict(),
            "pending": self.pending,
            "log": [dict(row) for row in self.log],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weighting_state.load_state_dict(state["weighting"])
        self.pending = state["pending"]
        self.log = [dict(row) for row in state["log"]]

    def frame(self) -> pd.DataFrame:
        """The per-step log as a DataFrame."""
        return pd.DataFrame(self.log)


def build_dynamic_train_loader(
    records: Sequence[Record],
    *,
    height: int,
    width: int,
    seed: int,
    num_identities: int = 8,
    num_instances: int = 8,
    steps_per_epoch: int | None = None,
    cache: bool = True,
    **augment: Any,
) -> DataLoader:
    """The training loader of Algorithm 1: batches of ``num_identities * num_instances`` augmented images
    from a :class:`~reidbook.data.sampler.SwitchingBatchSampler` (``loader.batch_sampler``) with two
    streams, ``"random"`` (:class:`~reidbook.data.sampler.RandomBatches`) and ``"balanced"``
    (:class:`~reidbook.data.sampler.IdentityBalancedBatches`: identities with fewer than
    ``num_instances`` images are skipped), that :class:`DynamicTraining` switches per step.

    ``steps_per_epoch`` defaults to ``len(records) // batch size``; ``augment`` goes to
    :func:`~reidbook.data.transforms.build_transforms`. Batches are drawn one at a time in the main
    process (``num_workers=0``), so that each one comes from the stream chosen just before it.
    """
    batch_size = num_identities * num_instances
    steps = len(records) // batch_size if steps_per_epoch is None else steps_per_epoch
    if steps < 1:
        raise ValueError(
            f"steps_per_epoch must be >= 1, got {steps} ({len(records)} records, batches of {batch_size})"
        )
    streams = {
        RANDOM_STREAM: RandomBatches(len(records), batch_size),
        BALANCED_STREAM: IdentityBalancedBatches([r.pid for r in records], num_identities, num_instances),
    }
    transform = build_transforms(height, width, train=True, **augment)
    dataset = ImageDataset(records, transform, cache=cache, cache_size=(height, width))
    sampler = SwitchingBatchSampler(streams, steps, default=RANDOM_STREAM, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=0)
