"""DDAG: Ye et al., "Dynamic Dual-Attentive Aggregation Learning for Visible-Infrared Person
Re-Identification" (ECCV 2020).

Visible-infrared ReID matches infrared queries against a visible gallery (or the reverse). DDAG builds on
a two-stream network and adds two attentions, joined by a loss weight that changes every epoch:

* Baseline, Section 3.1 (:class:`TwoStreamBackbone`, :class:`DDAGNet`): a modality-specific first block
  (the ResNet stem: conv1, bn1, relu, maxpool) per modality, the four residual stages shared, last stride
  1, global average pooling ``x^o``, a shared BN-neck and one bias-free identity classifier; ``L_b = L_id
  + L_tri`` (Eq. 1), the triplet loss with batch-hard mining over the whole batch (both modalities).
* IWPA, Section 3.2 (:class:`IWPA`): the last feature map is cut into p horizontal parts
  (:func:`region_pool_parts`); a part non-local attention (:class:`PartNonLocalAttention`, Eqs. 2-4)
  relates the p parts of one image through a p x p map; :class:`WeightedPartAggregation` (Eq. 5) adds a
  residual BatchNorm of ``x^o`` to a learnable weighted sum of the refined parts: ``x*``, the test-time
  representation.
* CGSA, Section 3.3 (:class:`CrossModalityGraphAttention`): the batch is a graph whose edges join images
  of one identity, in either modality (:func:`graph_adjacency`, Eq. 6); L graph-attention heads
  (:class:`GraphAttentionLayer`, Eqs. 7-8) attend over each node's neighbours, their concatenation goes
  through an ELU, and a one-head output layer gives class scores trained with the NLL loss ``L_g``
  (Eq. 9). Training only: the graph needs the batch's labels, test features do not use it.
* Dynamic dual aggregation, Section 3.4: ``L_P = L_b + L_wp`` (Eq. 10), ``L_wp`` the identity loss of
  ``x*`` through the same classifier; ``L^t = L_P^t + L_g^t / (1 + E[L_P^{t-1}])`` (Eq. 11), the hook
  :class:`DynamicDualAggregation`. :class:`DDAGCriterion` returns the named terms.

The identity-balanced sampler of Section 3.3 (n identities x m visible + m infrared images) is
:class:`reidbook.data.sampler.CrossModalityIdentitySampler`.

What we assumed where the text is garbled or silent:

* Eq. 2 normalises over the first index, ``alpha_ij = f(x_i, x_j) / sum_i f(x_i, x_j)``, so each column
  of ``A^p`` sums to 1. Eq. 4 ("the inner product of the embedded part features and the attention") is
  read as the matrix product ``[x̄_1 .. x̄_p] = [z(x_1) .. z(x_p)] A^p``, i.e. ``x̄_j = sum_i alpha_ij
  z(x_i)``, a convex combination of the embedded parts.
* ``u`` and ``v`` (1x1 convolutions on a C x 1 part feature, i.e. linear maps) have no bias, as
  ``u(x) = W_u x`` reads, and output ``inter_channels`` (default C; the text gives no size); ``z`` must
  output C for the sum of Eq. 5.
* "p non-overlapping parts by region pooling": the rows of the map are split into p consecutive stripes
  whose heights differ by at most one (the first ``H mod p`` stripes get the extra row) and each stripe
  is average-pooled.
* The BN of Eq. 5 is IWPA's own ``BatchNorm1d`` (affine) on ``x^o``; the learnable part weights start at
  1/p (``part_weights="learnable"``), ``"average"`` keeps them fixed at 1/p (Table 2's "avg"), and
  ``iwpa_residual`` = ``"identity"`` / ``"none"`` gives Table 2's general residual / no residual. Table 2's
  "concat" (a p*C feature) is not offered.
* Eq. 7: LeakyReLU with slope 0.2 (as in GAT, Velickovic et al., which the text follows); ``h^l`` is a
  bias-free linear map C -> d and ``w^{l,g}`` a 2d-vector per head, Xavier-uniform initialised with gain
  1.414. The sum in Eq. 8 runs over the neighbours ``j`` with ``A^g(i, j) > 0`` (the text writes k).
* The output layer (one head) maps the L*d features to ``num_classes`` scores ``x^{g'}``; Eq. 9's
  softmax is over the classes and its sum over the batch is averaged here (the NLL loss's mean), like
  the other terms.
* Eq. 6 calls ``A^g = A_0^g + I_K`` normalised; only ``A^g > 0`` matters (it masks Eq. 7), and
  :func:`graph_adjacency` returns ``A_0 + I`` itself (2 on the diagonal).
* Eq. 11: ``E[L_P^{t-1}]`` is the mean over the previous epoch's steps of the L_P terms, each times its
  engine loss weight (1 unless changed); in the first epoch the graph weight is 0, as in the authors'
  code (the text leaves t = 0 undefined).
* ``L_id`` is the plain cross-entropy of the BN-neck feature's logits (``label_smoothing=0``) and
  ``L_tri`` the batch-hard triplet loss with margin 0.3 on ``x^o``, as in the authors' code.

Where the authors' released code (mangye16/DDAG) differs from the text, the text is the default; each
option below gives the code's choice:

* IWPA attention: the code takes a row softmax ``softmax_j(u_i^T v_j)`` and ``x̄_i = sum_j alpha_ij
  z(x_j)`` (the non-local block's form). That is our Eqs. 2-4 with the roles of ``u`` and ``v`` exchanged,
  so the two define the same family of functions (see the tests).
* IWPA's ``u``, ``v``, ``z`` in the code are C -> C convolutions with a bias. The code's parts come from
  adaptive average pooling to (p, 1), whose bins overlap when p does not divide H.
* Residual: the code adds the *shared* BN-neck feature (``iwpa_residual="neck"``) and applies a further
  BatchNorm (frozen zero bias) to the sum (``iwpa_output_bn=True``); its part weights are the softmax of a
  learnable vector initialised to 1/p (``part_weights="softmax"``). It also builds a zero-initialised
  conv + BN that its forward never uses (not reproduced).
* Graph: the code uses d = 512 (``graph_dim``; the text says 256), dropout 0.2 on the graph's input, on
  the attention coefficients and between the two layers (``graph_dropout``), and an ELU on the output
  layer before the log-softmax (``graph_output_elu=True``).
* The code evaluates both the l2-normalised BN-neck feature and ``x*``; we return ``x*`` (the text's test
  representation; ``eval_feature`` picks the other), unnormalised: use the cosine metric to match the
  code's ranking.

So the authors' code corresponds to ``DDAGNet(..., iwpa_residual="neck", iwpa_output_bn=True,
part_weights="softmax", graph_dim=512, graph_dropout=0.2, graph_output_elu=True)``.

Table 1's rows from one class: B = ``parts=0, graph=False``; B+P = ``graph=False``; B+G = ``parts=0``;
B+P+G = the defaults. A graph model's forward needs the batch's labels in training mode:
``fit(..., feed=ddag_feed)`` (and ``extract_features(..., feed=ddag_feed)`` for test features).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import CrossEntropyLabelSmooth, TripletLoss
from .backbones import Backbone, build_backbone
from .baseline import param_groups
from .heads import BNNeck, IdentityClassifier

VISIBLE, INFRARED = 0, 1  # the batches' "modality" codes
IWPA_RESIDUALS = ("bn", "neck", "identity", "none")
PART_WEIGHTS = ("learnable", "average", "softmax")
EVAL_FEATURES = ("auto", "part_feat", "bn_feat")
INSTANCE_TERMS = ("id", "triplet", "part_id")  # L_P of Eq. 10, as named by DDAGCriterion


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------- two-stream baseline (3.1)


def check_modality(modality: Tensor, batch: int) -> None:
    """Raise unless ``modality`` is an integer tensor (batch,) of codes 0 (visible) / 1 (infrared)."""
    if not isinstance(modality, Tensor):
        raise TypeError(f"modality must be a (B,) long tensor of 0/1 codes, got {type(modality).__name__}")
    if modality.shape != (batch,) or modality.dtype.is_floating_point or modality.dtype == torch.bool:
        raise ValueError(
            f"modality must be an integer tensor of shape ({batch},), got {modality.dtype} of shape "
            f"{tuple(modality.shape)}"
        )
    unknown = sorted(set(modality.unique().tolist()) - {VISIBLE, INFRARED})
    if unknown:
        raise ValueError(f"modality codes must be 0 (visible) or 1 (infrared), got {unknown}")


class TwoStreamBackbone(nn.Module):
    """A modality-specific first block per modality and shared deeper stages (Section 3.1).

    ``stems[0]`` is the backbone's own stem (visible), ``stems[1]`` a deep copy of it (infrared, starting
    from the same weights); ``stages`` are the backbone's four stages, shared by both modalities.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.stems = nn.ModuleList([backbone.stem, copy.deepcopy(backbone.stem)])  # indexed by modality
        self.stages = backbone.stages
        self.out_channels = list(backbone.out_channels)

    @property
    def feature_dim(self) -> int:
        return self.out_channels[-1]

    def forward_stems(self, img: Tensor, modality: Tensor) -> Tensor:
        """Each image through its own modality's stem: (B, 3, H, W), (B,) -> (B, C_0, H/4, W/4).

        A stem's BatchNorm sees only the images of its modality, as if the two streams ran separately.
        """
        check_modality(modality, img.shape[0])
        outputs, positions = [], []
        for code, stem in enumerate(self.stems):
            index = (modality == code).nonzero().squeeze(1)  # (B_code,)
            if index.numel():
                outputs.append(stem(img[index]))
                positions.append(index)
        stacked = torch.cat(outputs)  # (B, C_0, h, w), grouped by modality
        order = torch.cat(positions)
        return torch.empty_like(stacked).index_copy(0, order, stacked)  # back to the batch's order

    def forward(self, img: Tensor, modality: Tensor) -> Tensor:
        """The last shared stage's map, (B, C, H/16, W/16) with last stride 1."""
        x = self.forward_stems(img, modality)
        for stage in self.stages:
            x = stage(x)
        return x


# --------------------------------------------------------------------------- IWPA (3.2, Eqs. 2-5)


def region_pool_parts(fmap: Tensor, parts: int) -> Tensor:
    """p non-overlapping horizontal stripes, each average-pooled: (B, C, H, W) -> (B, p, C).

    The H rows are split into p consecutive stripes whose heights differ by at most one (the first
    ``H mod p`` stripes are one row taller).
    """
    _check_positive("parts", parts)
    if fmap.shape[2] < parts:
        raise ValueError(
            f"cannot cut a map of {fmap.shape[2]} rows into parts={parts} non-overlapping stripes"
        )
    stripes = torch.tensor_split(fmap, parts, dim=2)
    return torch.stack([stripe.mean(dim=(2, 3)) for stripe in stripes], dim=1)  # (B, p, C)


class PartNonLocalAttention(nn.Module):
    """Intra-modality part non-local attention (Eqs. 2-4).

    ``alpha_ij = exp(u(x_i)^T v(x_j)) / sum_i exp(u(x_i)^T v(x_j))`` (Eqs. 2-3: a softmax over the first
    index, each column sums to 1) and ``x̄_j = sum_i alpha_ij z(x_i)`` (Eq. 4 as the product ``Z A^p``).
    ``u``, ``v``: C -> ``inter_channels``, ``z``: C -> C, all bias-free (1x1 convolutions of a C x 1 part).
    """

    def __init__(self, in_channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        inter_channels = in_channels if inter_channels is None else inter_channels
        _check_positive("inter_channels", inter_channels)
        self.u = nn.Linear(in_channels, inter_channels, bias=False)
        self.v = nn.Linear(in_channels, inter_channels, bias=False)
        self.z = nn.Linear(in_channels, in_channels, bias=False)

    def attention(self, parts: Tensor) -> Tensor:
        """The part attention map ``A^p`` (Eqs. 2-3): (B, p, C) -> (B, p, p), ``[b, i, j] = alpha_ij``."""
        similarity = self.u(parts) @ self.v(parts).transpose(1, 2)  # (B, p, p): u(x_i)^T v(x_j)
        return similarity.softmax(dim=1)  # normalised over i (Eq. 2)

    def forward(self, parts: Tensor) -> Tensor:
        """Attention-enhanced parts ``x̄`` (Eq. 4): (B, p, C) -> (B, p, C), row j = x̄_j."""
        alpha = self.attention(parts)  # (B, p, p)
        return alpha.transpose(1, 2) @ self.z(parts)  # (B, p, C): x̄_j = sum_i alpha_ij z(x_i)


class WeightedPartAggregation(nn.Module):
    """Residual BatchNorm weighted-part aggregation (Eq. 5): ``x* = BN(x^o) + sum_i w_i x̄_i``.

    Args:
        residual: ``"bn"`` (Eq. 5: IWPA's own BatchNorm of ``x^o``), ``"neck"`` (the shared BN-neck's
            feature, passed to ``forward``: the authors' code), ``"identity"`` (``x^o``) or ``"none"``.
        part_weights: ``"learnable"`` (``w``, initialised to 1/p), ``"average"`` (fixed 1/p) or
            ``"softmax"`` (``softmax(w)`` with ``w`` initialised to 1/p: the authors' code).
        output_bn: a further BatchNorm on ``x*`` with a frozen zero bias (the authors' code).
    """

    def __init__(
        self,
        channels: int,
        parts: int,
        residual: str = "bn",
        part_weights: str = "learnable",
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("parts", parts)
        _check_choice("iwpa_residual", residual, IWPA_RESIDUALS)
        _check_choice("part_weights", part_weights, PART_WEIGHTS)
        self.residual = residual
        self.part_weights = part_weights
        self.residual_bn = nn.BatchNorm1d(channels) if residual == "bn" else None
        initial = torch.full((parts,), 1.0 / parts)
        if part_weights == "average":
            self.register_buffer("weight", initial)
        else:
            self.weight = nn.Parameter(initial)
        self.output_bn = BNNeck(channels) if output_bn else None

    def part_weight_vector(self) -> Tensor:
        """The weights ``w^p`` applied to the parts, (p,)."""
        return self.weight.softmax(dim=0) if self.part_weights == "softmax" else self.weight

    def forward(self, refined: Tensor, pooled: Tensor, neck_feature: Tensor | None = None) -> Tensor:
        """Refined parts (B, p, C), ``x^o`` (B, C), BN-neck feature (B, C) for ``"neck"`` -> ``x*`` (B, C)."""
        x_star = torch.einsum("p,bpc->bc", self.part_weight_vector(), refined)  # sum_i w_i x̄_i
        if self.residual == "bn":
            x_star = x_star + self.residual_bn(pooled)
        elif self.residual == "identity":
            x_star = x_star + pooled
        elif self.residual == "neck":
            if neck_feature is None:
                raise ValueError("iwpa_residual='neck' needs the BN-neck feature: pass neck_feature")
            x_star = x_star + neck_feature
        return x_star if self.output_bn is None else self.output_bn(x_star)


class IWPA(nn.Module):
    """Intra-modality weighted-part aggregation (Section 3.2, Fig. 3): feature map -> ``x*``.

    Region pooling into p parts, :class:`PartNonLocalAttention` (Eqs. 2-4), then
    :class:`WeightedPartAggregation` (Eq. 5) with the globally pooled map ``x^o``.
    """

    def __init__(
        self,
        in_channels: int,
        parts: int = 3,
        *,
        inter_channels: int | None = None,
        residual: str = "bn",
        part_weights: str = "learnable",
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("parts", parts)
        self.parts = parts
        self.attention = PartNonLocalAttention(in_channels, inter_channels)
        self.aggregation = WeightedPartAggregation(in_channels, parts, residual, part_weights, output_bn)

    def part_attention(self, fmap: Tensor) -> Tensor:
        """The p x p part attention of every image, (B, C, H, W) -> (B, p, p) (for figures)."""
        return self.attention.attention(region_pool_parts(fmap, self.parts))

    def forward(self, fmap: Tensor, neck_feature: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> ``x*`` (B, C)."""
        parts = region_pool_parts(fmap, self.parts)  # (B, p, C): x_i^p
        refined = self.attention(parts)  # (B, p, C): x̄_i^p
        pooled = fmap.mean(dim=(2, 3))  # (B, C): x^o
        return self.aggregation(refined, pooled, neck_feature)


# --------------------------------------------------------------------------- CGSA (3.3, Eqs. 6-9)


def graph_adjacency(pids: Tensor) -> Tensor:
    """The batch graph ``A^g = A_0^g + I_K`` (Eq. 6), ``A_0^g(i, j) = l_i^T l_j`` of one-hot labels.

    pids (K,) -> (K, K) float: 2 on the diagonal, 1 between two images of one identity (whatever their
    modalities), 0 elsewhere.
    """
    if not isinstance(pids, Tensor) or pids.dim() != 1:
        raise ValueError(f"pids must be a 1-D tensor of identity labels, got {pids!r}")
    same = (pids.unsqueeze(0) == pids.unsqueeze(1)).float()  # (K, K): one-hot labels' inner products
    return same + torch.eye(len(pids), device=pids.device)


class GraphAttentionLayer(nn.Module):
    """L graph-attention heads (Eqs. 7-8, Velickovic et al.'s GAT layer) over a batch graph.

    Head l projects the nodes, ``h^l(x) = x W^l`` (C -> d, no bias), and scores the edge (i, j) by
    ``e_ij = LeakyReLU([h^l(x_i), h^l(x_j)] . w^{l,g})``; ``alpha_ij = softmax_j(e_ij)`` over the
    neighbours ``j`` with ``A(i, j) > 0`` (Eq. 7) and the head's output is ``sum_j alpha_ij h^l(x_j)``
    (inside Eq. 8). ``dropout`` drops attention coefficients in training (the authors' code).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        heads: int = 1,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive("in_features", in_features)
        _check_positive("out_features", out_features)
        _check_positive("heads", heads)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"graph dropout must lie in [0, 1), got {dropout!r}")
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.projection = nn.Parameter(torch.empty(heads, in_features, out_features))  # W^l
        self.score = nn.Parameter(torch.empty(heads, 2 * out_features, 1))  # w^{l,g}
        with torch.no_grad():
            for head in range(heads):
                nn.init.xavier_uniform_(self.projection[head], gain=1.414)
                nn.init.xavier_uniform_(self.score[head], gain=1.414)

    @property
    def heads(self) -> int:
        return self.projection.shape[0]

    def _project_and_attend(self, x: Tensor, adjacency: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or adjacency.shape != (x.shape[0], x.shape[0]):
            raise ValueError(
                f"need node features (K, C) and an adjacency (K, K), got {tuple(x.shape)} and "
                f"{tuple(adjacency.shape)}"
            )
        d = self.projection.shape[2]
        h = torch.einsum("kc,lcd->lkd", x, self.projection)  # (L, K, d): h^l(x_k)
        source = h @ self.score[:, :d]  # (L, K, 1): h(x_i) . w[:d]
        target = h @ self.score[:, d:]  # (L, K, 1): h(x_j) . w[d:]
        e = F.leaky_relu(source + target.transpose(1, 2), self.negative_slope)  # (L, K, K)
        e = e.masked_fill(adjacency.unsqueeze(0) <= 0, float("-inf"))  # neighbours only
        return h, e.softmax(dim=2)  # alpha (L, K, K), rows sum to 1 over the neighbours

    def attention(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """The attention coefficients ``alpha^{g,l}`` (Eq. 7): (K, C), (K, K) -> (L, K, K)."""
        return self._project_and_attend(x, adjacency)[1]

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """(K, C), (K, K) -> (L, K, d): ``sum_j alpha_ij^l h^l(x_j)`` per head."""
        h, alpha = self._project_and_attend(x, adjacency)
        alpha = F.dropout(alpha, self.dropout, self.training)
        return alpha @ h  # (L, K, d)


class CrossModalityGraphAttention(nn.Module):
    """Cross-modality graph structured attention (Section 3.3): pooled features -> class log-probabilities.

    ``x^g_i = ELU([sum_j alpha^{g,l}_ij h^l(x^o_j)]_{l=1..L})`` (Eq. 8, L heads of dimension d
    concatenated), then a one-head :class:`GraphAttentionLayer` to ``num_classes`` scores ``x^{g'}`` and
    their log-softmax, the input of the NLL loss ``L_g`` (Eq. 9).

    Args:
        dropout: dropout on the input, the attention coefficients and the hidden features (0 in the text,
            0.2 in the authors' code).
        output_elu: an ELU on ``x^{g'}`` before the log-softmax (the authors' code).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        heads: int = 4,
        dim: int = 256,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        output_elu: bool = False,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.output_elu = output_elu
        self.hidden = GraphAttentionLayer(in_features, dim, heads, negative_slope, dropout)
        self.output = GraphAttentionLayer(heads * dim, num_classes, 1, negative_slope, dropout)

    def node_features(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """``x^g`` (Eq. 8): (K, C), (K, K) -> (K, L*d), heads concatenated in order."""
        x = F.dropout(x, self.dropout, self.training)
        per_head = self.hidden(x, adjacency)  # (L, K, d)
        return F.elu(per_head.transpose(0, 1).flatten(1))  # (K, L*d)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """(K, C), (K, K) -> (K, num_classes) log-probabilities ``log softmax(x^{g'})``."""
        hidden = F.dropout(self.node_features(x, adjacency), self.dropout, self.training)
        scores = self.output(hidden, adjacency)[0]  # (K, num_classes): x^{g'}
        if self.output_elu:
            scores = F.elu(scores)
        return scores.log_softmax(dim=1)


# --------------------------------------------------------------------------- the network


class DDAGNet(nn.Module):
    """Two-stream baseline + IWPA + CGSA; Table 1's B, B+P, B+G and B+P+G from one class.

    ``forward(img (B, 3, H, W), modality (B,) long, pids (B,) long | None)``. In training mode it returns
    ``{"feat": x^o (B, C), "bn_feat": BN-neck (B, C), "logits": (B, N)}`` plus, with IWPA,
    ``"part_feat": x* (B, C)`` and ``"part_logits"`` (the same classifier) and, with the graph,
    ``"graph_log_probs": (B, N)`` (then ``pids`` is required: the graph joins same-identity images). In
    eval mode it returns the retrieval embedding (B, C): ``x*`` with IWPA, else the BN-neck feature
    (``eval_feature`` chooses explicitly).

    Args:
        num_classes: training identities.
        backbone: a registered backbone name or a :class:`Backbone` (its stem becomes the visible stem).
        parts: IWPA's p; 0 turns IWPA off.
        graph: add CGSA.
        iwpa_residual, part_weights, iwpa_output_bn, iwpa_inter_channels: see :class:`IWPA`.
        graph_heads, graph_dim, graph_dropout, graph_output_elu, graph_negative_slope: see
            :class:`CrossModalityGraphAttention` (L = 4, d = 256 in the text).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | Backbone = "resnet18",
        *,
        pretrained: bool = False,
        last_stride: int = 1,
        parts: int = 3,
        graph: bool = True,
        iwpa_residual: str = "bn",
        part_weights: str = "learnable",
        iwpa_output_bn: bool = False,
        iwpa_inter_channels: int | None = None,
        graph_heads: int = 4,
        graph_dim: int = 256,
        graph_dropout: float = 0.0,
        graph_output_elu: bool = False,
        graph_negative_slope: float = 0.2,
        eval_feature: str = "auto",
    ) -> None:
        super().__init__()
        _check_positive("num_classes", num_classes)
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 0:
            raise ValueError(f"parts must be an int >= 0 (0 turns IWPA off), got {parts!r}")
        _check_choice("eval_feature", eval_feature, EVAL_FEATURES)
        if eval_feature == "part_feat" and parts == 0:
            raise ValueError("eval_feature='part_feat' needs IWPA (parts > 0), got parts=0")
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
        self.two_stream = TwoStreamBackbone(backbone)
        dim = self.two_stream.feature_dim
        self.neck = BNNeck(dim)
        self.classifier = IdentityClassifier(dim, num_classes)
        self.iwpa = (
            IWPA(
                dim,
                parts,
                inter_channels=iwpa_inter_channels,
                residual=iwpa_residual,
                part_weights=part_weights,
                output_bn=iwpa_output_bn,
            )
            if parts
            else None
        )
        self.graph = (
            CrossModalityGraphAttention(
                dim,
                num_classes,
                heads=graph_heads,
                dim=graph_dim,
                negative_slope=graph_negative_slope,
                dropout=graph_dropout,
                output_elu=graph_output_elu,
            )
            if graph
            else None
        )
        self.eval_feature = ("part_feat" if parts else "bn_feat") if eval_feature == "auto" else eval_feature

    @property
    def feature_dim(self) -> int:
        return self.two_stream.feature_dim

    @property
    def backbone(self) -> TwoStreamBackbone:
        """The two-stream backbone (modality-specific stems, shared ``stages``), under the name other models
        give their backbone (for figures such as Grad-CAM, which read ``backbone.stages``)."""
        return self.two_stream

    def forward(
        self, img: Tensor, modality: Tensor, pids: Tensor | None = None
    ) -> dict[str, Tensor] | Tensor:
        fmap = self.two_stream(img, modality)  # (B, C, h, w)
        feat = fmap.mean(dim=(2, 3))  # (B, C): x^o, adaptive (global average) pooling
        bn_feat = self.neck(feat)  # (B, C): the shared BN
        part_feat = self.iwpa(fmap, bn_feat) if self.iwpa is not None else None  # (B, C): x*
        if not self.training:
            return part_feat if self.eval_feature == "part_feat" else bn_feat
        outputs = {"feat": feat, "bn_feat": bn_feat, "logits": self.classifier(bn_feat)}
        if part_feat is not None:
            outputs.update(part_feat=part_feat, part_logits=self.classifier(part_feat))
        if self.graph is not None:
            if pids is None:
                raise ValueError(
                    "the graph attention needs the batch's identity labels in training: call "
                    "model(img, modality, pids) (fit(..., feed=ddag_feed))"
                )
            outputs["graph_log_probs"] = self.graph(feat, graph_adjacency(pids))  # (B, N)
        return outputs

    def param_groups(self, base_lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
        """Optimizer groups: stems and shared stages at ``base_lr * backbone_lr_mult`` (0.1 in the authors'
        code), the neck, classifier, IWPA and graph at ``base_lr``."""
        return param_groups(self, base_lr, {"two_stream": backbone_lr_mult})


def ddag_feed(model: nn.Module, batch: Mapping[str, Any]) -> Any:
    """The engine's ``feed`` for DDAG (training and feature extraction): images, their modalities and
    their labels (used by the graph in training only)."""
    return model(batch["img"], batch["modality"], batch["pid"])


# --------------------------------------------------------------------------- losses (Eqs. 1, 9, 10)


class DDAGCriterion(nn.Module):
    """DDAG's loss terms, by name:

    * ``"id"``: ``L_id``, cross-entropy of the BN-neck feature's logits (Eq. 1);
    * ``"triplet"``: ``L_tri``, batch-hard triplet loss on ``x^o`` over the whole batch, both modalities
      (Eq. 1);
    * ``"part_id"``: ``L_wp``, cross-entropy of ``x*``'s logits through the same classifier (Eq. 10), when
      the outputs hold ``part_logits`` (IWPA on);
    * ``"graph"``: ``L_g``, the NLL of the graph's log-probabilities, averaged over the batch (Eq. 9), when
      the outputs hold ``graph_log_probs``. Its weight of Eq. 11 is set by :class:`DynamicDualAggregation`.
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, triplet_margin: float = 0.3) -> None:
        super().__init__()
        self.cross_entropy = CrossEntropyLabelSmooth(num_classes, label_smoothing)
        self.triplet = TripletLoss(triplet_margin)

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pids = batch["pid"]  # (B,)
        terms = {
            "id": self.cross_entropy(outputs["logits"], pids),
            "triplet": self.triplet(outputs["feat"], pids),
        }
        if "part_logits" in outputs:
            terms["part_id"] = self.cross_entropy(outputs["part_logits"], pids)
        if "graph_log_probs" in outputs:
            terms["graph"] = F.nll_loss(outputs["graph_log_probs"], pids)
        return terms


# --------------------------------------------------------------------------- dynamic dual aggregation (3.4)


def instance_loss_mean(history: Any, epoch: int, terms: Sequence[str] = INSTANCE_TERMS) -> float:
    """``E[L_P]`` over epoch ``epoch``: the mean over its steps of ``sum_t weight_t * term_t`` for the
    ``terms`` present, read from an engine :class:`~reidbook.engine.History`'s step rows."""
    rows = [row for row in history.step_rows if row["epoch"] == epoch]
    if not rows:
        raise ValueError(f"the history has no step of epoch {epoch}")
    present = [t for t in terms if t in rows[0]]
    if not present:
        raise ValueError(f"none of the terms {tuple(terms)} is in the history; it has {sorted(rows[0])}")
    totals = [sum(row[t] * row.get(f"{t}_weight", 1.0) for t in present) for row in rows]
    return sum(totals) / len(totals)


class DynamicDualAggregation:
    """Engine hook for Eq. 11: the graph term weighs ``1 / (1 + E[L_P^{t-1}])`` in epoch t, 0 in the first.

    At each epoch's start it sets ``state.loss_weights[graph_term]`` from the previous epoch's mean of the
    L_P terms (:func:`instance_loss_mean` of the engine's history); at each epoch's end it records that
    epoch's mean. Both records are its state (saved in checkpoints); :meth:`table` lists them per epoch.
    """

    def __init__(self, graph_term: str = "graph", instance_terms: Sequence[str] = INSTANCE_TERMS) -> None:
        if not instance_terms:
            raise ValueError("instance_terms must name at least one loss term of L_P")
        self.graph_term = graph_term
        self.instance_terms = tuple(instance_terms)
        self.weights: dict[int, float] = {}
        self.instance_losses: dict[int, float] = {}

    def weight_for(self, history: Any, epoch: int) -> float:
        """The graph weight of epoch ``epoch`` (Eq. 11)."""
        if epoch == 0:
            return 0.0
        return 1.0 / (1.0 + instance_loss_mean(history, epoch - 1, self.instance_terms))

    def on_epoch_start(self, state: Any) -> None:
        weight = self.weight_for(state.history, state.epoch)
        state.loss_weights[self.graph_term] = weight
        self.weights[state.epoch] = weight

    def on_epoch_end(self, state: Any) -> None:
        mean = instance_loss_mean(state.history, state.epoch, self.instance_terms)
        self.instance_losses[state.epoch] = mean

    def state_dict(self) -> dict[str, dict[int, float]]:
        return {"weights": dict(self.weights), "instance_losses": dict(self.instance_losses)}

    def load_state_dict(self, state: Mapping[str, Mapping[int, float]]) -> None:
        self.weights = dict(state["weights"])
        self.instance_losses = dict(state["instance_losses"])

    def table(self) -> pd.DataFrame:
        """Per epoch: the graph weight used and the mean L_P reached (NaN where not recorded yet)."""
        epochs = sorted(set(self.weights) | set(self.instance_losses))
        return pd.DataFrame(
            {
                "epoch": epochs,
                "graph_weight": [self.weights.get(e, math.nan) for e in epochs],
                "instance_loss": [self.instance_losses.get(e, math.nan) for e in epochs],
            }
        )
