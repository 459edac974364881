"""IPAD: "Instance and Pair-Aware Dynamic Networks for Re-identification" (Section III).

Three branches read one backbone map ``X`` (B, C_o, h, w) (ResNet-50 with last stride 1: 2048 x 16 x 8 for a
256 x 128 person image):

* Global branch (III-B, Eq. 1): GAP -> BN -> classifier, trained with label-smoothed cross-entropy and a
  batch-hard triplet loss: the strong baseline (:class:`~reidbook.models.baseline.Baseline`, whose backbone,
  BN-neck and classifier :class:`IPAD` inherits).
* Self-guided dynamic branch (III-C, Fig. 3): a :class:`ChannelCompression` (C_o -> 512) gives ``F0``; a
  :class:`Controller` (Eq. 2) turns ``X`` into a 512 x 512 1x1 kernel ``K`` (L2-normalised) made for this
  image, and :func:`dynamic_conv` gives ``F1 = K * F0`` (:class:`SelfGuidedDynamicConv`). GAP -> BN ->
  classifier, the same two losses.
* Mutual-guided dynamic branch (III-D, Fig. 5): the same structure at 128 channels
  (:class:`MutualGuidedDynamicConv`); for a pair (i, j) each image's kernel filters the other image's
  features, ``d_ij = ||K_i f_j - K_j f_i||`` (Eq. 3), trained with the triplet loss only over every pair of
  the P x K batch, and used as is at test time.
* Test (IV-A): features of the image and its mirror image are averaged, then the three branches' distances
  are fused (:meth:`IPAD.pair_distances`, :func:`fuse_distances`).
* Attention alternatives (IV-C): :class:`SelfAttention` in place of the self-guided dynamic convolution,
  :class:`CoAttention` in place of the mutual-guided one, at the same widths.

What we assumed where the paper is silent or the extracted text ambiguous:

* The controller works per location. Eq. 2 maps R^{C_o} -> R^{C_o/d} -> R^{C_o/d} -> R^{C_t}, and "the output
  size of the controller has been set to 2048 x 16 x 8" (self, person) so that 2048 * 16 * 8 = 512 * 512:
  Eq. 2 is three 1x1 convolutions over the 16 x 8 map ``X``, with ``C_t = c^2 / (h w)`` for a c x c kernel
  (self 2048, mutual 128 on 16 x 8 maps; vehicles at 256 x 256: 1024 and 256 on 16 x 16 maps). The
  (C_t, h, w) output, flattened in that order, is read row by row as the (c, c) kernel (row = output
  channel).
* On other maps (the book's 64 x 32 images give 4 x 2 maps, 128 x 64 give 8 x 4) ``C_t`` follows the map:
  ``c^2 / (h w)`` (2048 for c = 128 on a 4 x 2 map), so at 256 x 128 the paper's shapes come out unchanged.
  ``controller_grid=(gh, gw)`` instead average-pools ``X`` adaptively to a fixed grid first (for maps whose
  h w does not divide c^2, or to decouple C_t from the input size). Grids larger than the map are refused:
  pooling up repeats cells, so whole groups of kernel columns would repeat and the kernel's rank would drop.
* Eq. 2 is read literally, ``pi(X) = sigma(W X + beta)``: a ReLU follows each of the three layers, the last
  one included, so kernels are non-negative; ``final_relu=False`` makes the last layer linear (signed
  kernels). The squeezing rate d is not given: 16 (as in squeeze-and-excitation blocks).
* "F2 normalization over the generated kernels": every output filter (a row of K, a c-vector) gets unit L2
  norm (``kernel_norm="filter"``); ``"matrix"`` divides the whole kernel by its Frobenius norm.
* Channel compression, "three layers of convolution inserted with ReLU and batch normalization": three
  bias-free 1x1 convolutions C_o -> c -> c -> c, each followed by BN and ReLU.
* What is shared (Fig. 5: "the Extractor and Controller shown above shared parameters"): within the mutual
  branch, both images of a pair go through the same compression and controller (a siamese pair). The two
  dynamic branches do not share layers with each other (their widths, 512 and 128, differ).
* Each branch's feature is the global average of its map, as in the global branch. A 1x1 convolution is
  linear at each location, so ``GAP(K f) = K GAP(f)``: the mutual branch compares pairs through the pooled
  vectors, ``d_ij = ||K_i g_j - K_j g_i||`` with ``g = GAP(f)``, and an image's test features are
  ``(K, g)``, a batched matrix product per pair and no per-pair feature map. The self branch keeps its
  ``F1`` map (Fig. 4 heatmaps) and pools it.
* The self branch has the global branch's heads (BN-neck, bias-free classifier): triplet loss on the pooled
  ``F1``, cross-entropy on its BN version, which is also its test embedding. The mutual triplet loss mines
  the hardest positive and negative of each anchor in the (B, B) matrix of Eq. 3 distances.
* Fusion at test time (the paper "fuses the distance matrices from three branches"; Fig. 6 shows
  "normalized" distances): ``d = sum_b w_b d_b / s_b`` over the branches, ``d_b`` the Euclidean (not
  squared) distance of branch b, ``w_b = 1`` by default (``fusion_weights``) and ``s_b`` the mean distance
  of branch b between different images of the training batches, a running mean kept in the model like BN
  statistics (momentum 0.1, set by the first batch; 1 before any training). So each branch weighs about
  the same, the fused distance of a pair needs nothing but the pair (it is computed block by block, and a
  query's ranking does not depend on who else is in the gallery), and the scales travel with the weights.
* Flip averaging: all test features of an image (global and self embeddings; the mutual kernel and pooled
  vector, or the co-attention map) are averaged with those of its mirror image; the averaged kernel is not
  normalised again.
* Self-attention (IV-C): scaled dot-product attention over the positions of ``F0`` with 1x1 query, key and
  value projections (c -> c), whose output replaces ``F1`` (no residual, like the dynamic layer it stands
  for). Co-attention: image i's positions query image j's,
  ``a(i, j) = mean_p sum_q softmax_q(<Q_i[p], K_j[q]> / sqrt(c)) V_j[q]``, with projections shared by both
  images, and ``d_ij = ||a(i, j) - a(j, i)||``, the counterpart of Eq. 3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..evaluation.pairwise import pairwise_distance_matrix
from ..losses import batch_hard_mining, pairwise_euclidean
from .backbones import Backbone
from .baseline import Baseline, BaselineCriterion
from .heads import BNNeck, IdentityClassifier

SELF_LAYERS = ("dynamic", "attention")
MUTUAL_LAYERS = ("dynamic", "coattention")
KERNEL_NORMS = ("filter", "matrix")
BRANCHES = ("global", "self", "mutual")
# Table III rows (plus the IV-C attention version): (self_branch, mutual_branch).
IPAD_VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "global": (None, None),
    "v1": (None, "dynamic"),
    "v2": ("dynamic", None),
    "ipad": ("dynamic", "dynamic"),
    "attention": ("attention", "coattention"),
}


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")


def _check_choice(name: str, value: str | None, choices: Sequence[str | None]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _euclidean_norm(diff: Tensor) -> Tensor:
    """||diff|| over the last dim, square clamped at 1e-12 so the gradient of a zero distance stays finite."""
    return diff.pow(2).sum(-1).clamp(min=1e-12).sqrt()


# --------------------------------------------------------------------------------------------- components


class ChannelCompression(nn.Sequential):
    """The "C.C." module of Sections III-C/D: three 1x1 convolutions C_o -> c -> c -> c, each followed by BN
    and ReLU. (B, C_o, h, w) -> (B, c, h, w)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        _check_positive("in_channels", in_channels)
        _check_positive("channels", channels)
        layers: list[nn.Module] = []
        for c_in in (in_channels, channels, channels):
            conv = nn.Conv2d(c_in, channels, 1, bias=False)
            layers += [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Controller(nn.Module):
    """The controller pi(X) = sigma(W X + beta) of Eq. 2, applied at every location of the global map.

    Three 1x1 convolutions C_o -> C_o/d -> C_o/d -> C_t with ReLUs; ``C_t = c^2 / (gh gw)`` so that the
    (C_t, gh, gw) output holds exactly one c x c kernel (:meth:`kernel`).

    Args:
        in_channels: C_o, channels of the backbone map.
        kernel_channels: c, the dynamic convolution's input and output channels.
        grid: (gh, gw), the grid the controller runs on.
        pool: average-pool the map adaptively to ``grid`` first; otherwise the map must be ``grid`` already.
        squeeze: the squeezing rate d.
        final_relu: ReLU after the last layer (Eq. 2 as written) or not (signed kernels).
        kernel_norm: ``"filter"`` (unit L2 norm per output filter) or ``"matrix"`` (unit Frobenius norm).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_channels: int,
        grid: tuple[int, int],
        *,
        pool: bool = False,
        squeeze: int = 16,
        final_relu: bool = True,
        kernel_norm: str = "filter",
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("kernel_channels", kernel_channels)
        _check_positive("squeeze", squeeze)
        _check_choice("kernel_norm", kernel_norm, KERNEL_NORMS)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be (height, width) of positive ints, got {grid!r}")
        cells = grid[0] * grid[1]
        if kernel_channels**2 % cells:
            raise ValueError(
                f"a {kernel_channels} x {kernel_channels} kernel cannot be spread over a "
                f"{grid[0]} x {grid[1]} grid ({kernel_channels}^2 is not a multiple of {cells}); pass a "
                f"controller_grid whose cell count divides {kernel_channels ** 2}, e.g. (16, 8)"
            )
        hidden = in_channels // squeeze
        if hidden < 1:
            raise ValueError(f"squeeze must be at most in_channels={in_channels}, got {squeeze}")
        self.kernel_channels = kernel_channels
        self.grid = (int(grid[0]), int(grid[1]))
        self.pool = pool
        self.kernel_norm = kernel_norm
        self.out_channels = kernel_channels**2 // cells  # C_t
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, self.out_channels, 1),
        ]
        if final_relu:
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Eq. 2: (B, C_o, h, w) -> (B, C_t, gh, gw)."""
        if self.pool:
            x = F.adaptive_avg_pool2d(x, self.grid)  # (B, C_o, gh, gw)
        elif tuple(x.shape[2:]) != self.grid:
            raise ValueError(
                f"the controller was built for {self.grid[0]} x {self.grid[1]} maps, got "
                f"{x.shape[2]} x {x.shape[3]}; build the model with the image_size of the data, or pass "
                "controller_grid= to pool maps to a fixed grid"
            )
        return self.net(x)

    def kernel(self, x: Tensor) -> Tensor:
        """The L2-normalised dynamic kernels of ``x`` (B, C_o, h, w): (B, c, c), row = output filter."""
        return controller_to_kernel(self(x), self.kernel_channels, self.kernel_norm)


def controller_to_kernel(output: Tensor, channels: int, norm: str = "filter") -> Tensor:
    """Read the controller's (B, C_t, gh, gw) output, flattened in that order, as (B, c, c) kernels and
    L2-normalise them (Section III-C): each row (``"filter"``) or the whole kernel (``"matrix"``)."""
    _check_choice("norm", norm, KERNEL_NORMS)
    if output[0].numel() != channels**2:
        raise ValueError(
            f"a controller output of shape {tuple(output.shape[1:])} holds {output[0].numel()} values per "
            f"image, a {channels} x {channels} kernel needs {channels ** 2}"
        )
    kernel = output.reshape(len(output), channels, channels)  # (B, c, c)
    if norm == "filter":
        return F.normalize(kernel, dim=2)
    return kernel / kernel.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]


def dynamic_conv(kernel: Tensor, fmap: Tensor) -> Tensor:
    """Each image's own 1x1 convolution: kernel (B, c, c) applied to fmap (B, c, h, w) -> (B, c, h, w)."""
    b, c, h, w = fmap.shape
    return torch.bmm(kernel, fmap.reshape(b, c, h * w)).view(b, -1, h, w)


class SelfGuidedDynamicConv(nn.Module):
    """The S.D. convolution of Section III-C (Fig. 3): ``F1 = K(X) * F0`` with the image's own kernel.

    ``forward(f0 (B, c, h, w), x (B, C_o, h, w)) -> F1 (B, c, h, w)``; ``controller_kwargs`` go to
    :class:`Controller`.
    """

    def __init__(self, in_channels: int, channels: int, grid: tuple[int, int], **controller_kwargs) -> None:
        super().__init__()
        self.controller = Controller(in_channels, channels, grid, **controller_kwargs)

    def forward(self, f0: Tensor, x: Tensor) -> Tensor:
        return dynamic_conv(self.controller.kernel(x), f0)  # (B, c, h, w)


def scaled_dot_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``out[p] = sum_q softmax_q(<query[p], key[q]> / sqrt(c)) value[q]``:
    (B, P, c), (B, Q, c), (B, Q, c) -> (B, P, c)."""
    weights = torch.softmax(query @ key.transpose(1, 2) / math.sqrt(query.shape[-1]), dim=2)  # (B, P, Q)
    return weights @ value


class _Projections(nn.Module):
    """1x1 query, key and value projections c -> c, returned as (B, h*w, c) sequences."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        _check_positive("channels", channels)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(proj(fmap).flatten(2).transpose(1, 2) for proj in (self.query, self.key, self.value))


class SelfAttention(nn.Module):
    """Section IV-C's alternative to :class:`SelfGuidedDynamicConv`: scaled dot-product self-attention over
    the positions of ``F0``. ``forward(f0 (B, c, h, w), x) -> (B, c, h, w)``; ``x`` (the backbone map that
    a controller would read) is not used."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.projections = _Projections(channels)

    def forward(self, f0: Tensor, x: Tensor | None = None) -> Tensor:
        b, c, h, w = f0.shape
        out = scaled_dot_attention(*self.projections(f0))  # (B, h*w, c)
        return out.transpose(1, 2).reshape(b, c, h, w)


class MutualGuidedDynamicConv(nn.Module):
    """The M.D. convolution of Section III-D (Fig. 5) and its distance, Eq. 3.

    Per image, :meth:`features` gives ``{"kernel": K (B, c, c), "vec": g = GAP(f) (B, c)}``. For every pair
    (i, j) of two sets, :meth:`pair_distances` gives ``d_ij = ||GAP(K_i f_j) - GAP(K_j f_i)||
    = ||K_i g_j - K_j g_i||`` (pooling and the 1x1 convolution commute): a batched matrix product, memory
    2 * n_a * n_b * c floats.
    """

    def __init__(self, in_channels: int, channels: int, grid: tuple[int, int], **controller_kwargs) -> None:
        super().__init__()
        self.controller = Controller(in_channels, channels, grid, **controller_kwargs)
        self.channels = channels

    def feature_shapes(self, map_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        return {"kernel": (self.channels, self.channels), "vec": (self.channels,)}

    def features(self, f: Tensor, x: Tensor) -> dict[str, Tensor]:
        return {"kernel": self.controller.kernel(x), "vec": f.mean(dim=(2, 3))}

    @staticmethod
    def pair_distances(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
        """Eq. 3 for every pair of ``a`` (n_a images) and ``b`` (n_b images): (n_a, n_b)."""
        k_a, g_a, k_b, g_b = a["kernel"], a["vec"], b["kernel"], b["vec"]  # (A, c, c), (A, c), (B, c, c), ...
        a_filters_b = torch.matmul(k_a, g_b.t()).permute(0, 2, 1)  # (A, B, c): K_i g_j
        b_filters_a = torch.matmul(k_b, g_a.t()).permute(2, 0, 1)  # (A, B, c): K_j g_i
        return _euclidean_norm(a_filters_b - b_filters_a)


class CoAttention(nn.Module):
    """Section IV-C's alternative to :class:`MutualGuidedDynamicConv`: co-attention between the two images.

    ``a(i, j) = mean_p sum_q softmax_q(<Q_i[p], K_j[q]> / sqrt(c)) V_j[q]`` (image i's positions look up
    image j's) and ``d_ij = ||a(i, j) - a(j, i)||``. Per image :meth:`features` keeps the compressed map
    ``{"map": (B, c, h, w)}``; :meth:`pair_distances` holds the (P, P) attention maps of at most
    ``pairs_per_chunk`` pairs at a time.
    """

    def __init__(self, channels: int, pairs_per_chunk: int = 4096) -> None:
        super().__init__()
        _check_positive("pairs_per_chunk", pairs_per_chunk)
        self.projections = _Projections(channels)
        self.channels = channels
        self.pairs_per_chunk = pairs_per_chunk

    def feature_shapes(self, map_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        return {"map": (self.channels, *map_size)}

    def features(self, f: Tensor, x: Tensor | None = None) -> dict[str, Tensor]:
        return {"map": f}

    @staticmethod
    def _attend(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """a(i, j) for every i of query (N, P, c) and j of key/value (M, Q, c): (N, M, c)."""
        logits = torch.einsum("npc,mqc->nmpq", query, key) / math.sqrt(query.shape[-1])  # (N, M, P, Q)
        weights = torch.softmax(logits, dim=3).mean(dim=2)  # (N, M, Q): attention averaged over p
        return torch.einsum("nmq,mqc->nmc", weights, value)

    def pair_distances(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
        """``d_ij`` for every pair of ``a`` (n_a maps) and ``b`` (n_b maps): (n_a, n_b)."""
        q_a, k_a, v_a = self.projections(a["map"])  # (A, P, c) each
        q_b, k_b, v_b = self.projections(b["map"])  # (B, P, c) each
        step = max(1, self.pairs_per_chunk // len(q_a))
        blocks = []
        for s in range(0, len(q_b), step):
            a_on_b = self._attend(q_a, k_b[s : s + step], v_b[s : s + step])  # (A, b, c): a(i, j)
            b_on_a = self._attend(q_b[s : s + step], k_a, v_a).transpose(0, 1)  # (A, b, c): a(j, i)
            blocks.append(_euclidean_norm(a_on_b - b_on_a))
        return torch.cat(blocks, dim=1)


# --------------------------------------------------------------------------------------------- branches


class SelfGuidedBranch(nn.Module):
    """The self-guided dynamic branch (Section III-C) or its self-attention version (IV-C):
    compression -> ``F1`` -> GAP -> BN-neck -> classifier.

    ``forward(x (B, C_o, h, w))`` returns ``{"self_map": F1 (B, c, h, w), "self_feat": (B, c),
    "self_bn_feat": (B, c), "self_logits": (B, num_classes)}``.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, layer: nn.Module) -> None:
        super().__init__()
        self.compression = ChannelCompression(in_channels, channels)
        self.layer = layer
        self.neck = BNNeck(channels)
        self.classifier = IdentityClassifier(channels, num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f1 = self.layer(self.compression(x), x)  # (B, c, h, w)
        feat = f1.mean(dim=(2, 3))  # (B, c)
        bn_feat = self.neck(feat)
        logits = self.classifier(bn_feat)
        return {"self_map": f1, "self_feat": feat, "self_bn_feat": bn_feat, "self_logits": logits}


class MutualGuidedBranch(nn.Module):
    """The mutual-guided dynamic branch (Section III-D) or its co-attention version (IV-C): one compression
    and one layer shared by both images of a pair. ``forward(x)`` gives the per-image features of the
    layer; ``pair_distances`` compares two sets of them."""

    def __init__(self, in_channels: int, channels: int, layer: MutualGuidedDynamicConv | CoAttention) -> None:
        super().__init__()
        self.compression = ChannelCompression(in_channels, channels)
        self.layer = layer

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.layer.features(self.compression(x), x)

    def pair_distances(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
        return self.layer.pair_distances(a, b)


# ------------------------------------------------------------------------------------------------ model


class IPAD(Baseline):
    """IPAD (Fig. 2): the global branch (the strong baseline) plus the self- and mutual-guided branches.

    Training mode returns ``{"feat", "bn_feat", "logits"}`` (global branch), plus ``{"self_map",
    "self_feat", "self_bn_feat", "self_logits"}`` with a self branch and ``{"mutual_dist": (B, B)}`` (Eq. 3
    over every pair of the batch) with a mutual branch; train with :class:`IPADCriterion`.

    Eval mode returns the image's test features packed in one (B, D) tensor (so that feature extraction and
    flip averaging treat it as an embedding): the global embedding, the self embedding, then the mutual
    features (flattened), in :attr:`feature_layout` order. :meth:`unpack` gives them back by name;
    :meth:`pair_distances` gives the fused distance of every (query, gallery) pair of packed features, a
    distance function for :func:`~reidbook.evaluation.pairwise.pairwise_distance_matrix` (block by block);
    :meth:`branch_distances`, :meth:`mutual_distances` (Eq. 3) and :meth:`distance_matrices` give the
    branches one by one. Training updates :attr:`distance_scales`, the fusion's per-branch scales.

    Args:
        num_classes: training identities.
        backbone: a registered backbone name or a :class:`Backbone`; C_o is its ``feature_dim``.
        pretrained, last_stride: for :func:`build_backbone` (the paper: ImageNet weights, last stride 1).
        image_size: (H, W) of the input images; fixes the map size and, unless ``controller_grid`` is given,
            the controllers' C_t = c^2 / (h w).
        self_branch: ``"dynamic"`` (III-C), ``"attention"`` (IV-C) or ``None``.
        mutual_branch: ``"dynamic"`` (III-D), ``"coattention"`` (IV-C) or ``None``.
        self_channels: the self branch's width (512 in the paper; 128 or 256 keep ResNet-18 runs cheap).
        mutual_channels: the mutual branch's width (128 for persons, 256 for vehicles in the paper).
        squeeze, final_relu, kernel_norm: see :class:`Controller`.
        controller_grid: pool the backbone map to this grid before the controllers (``None``: the map's own).
        eval_feature: the global embedding, ``"bn_feat"`` or ``"feat"``.
        fusion_weights: branch name (``"global"``, ``"self"``, ``"mutual"``) -> weight in the fused
            distance (default 1 each).
        scale_momentum: momentum of the running mean distances that scale the branches in the fusion.
        pairs_per_chunk: memory bound of :class:`CoAttention`.
    """

    distance_means: Tensor
    tracked_batches: Tensor

    def __init__(
        self,
        num_classes: int,
        backbone: str | Backbone = "resnet50",
        *,
        pretrained: bool = False,
        last_stride: int = 1,
        image_size: tuple[int, int] = (256, 128),
        self_branch: str | None = "dynamic",
        mutual_branch: str | None = "dynamic",
        self_channels: int = 512,
        mutual_channels: int = 128,
        squeeze: int = 16,
        final_relu: bool = True,
        kernel_norm: str = "filter",
        controller_grid: tuple[int, int] | None = None,
        eval_feature: str = "bn_feat",
        fusion_weights: Mapping[str, float] | None = None,
        scale_momentum: float = 0.1,
        pairs_per_chunk: int = 4096,
    ) -> None:
        _check_choice("self_branch", self_branch, (*SELF_LAYERS, None))
        _check_choice("mutual_branch", mutual_branch, (*MUTUAL_LAYERS, None))
        super().__init__(
            num_classes, backbone, pretrained=pretrained, last_stride=last_stride, eval_feature=eval_feature
        )
        self.map_size = self._probe_map_size(image_size)
        grid = self._controller_grid(controller_grid)
        in_channels = self.backbone.feature_dim
        controller_kwargs = {
            "pool": controller_grid is not None,
            "squeeze": squeeze,
            "final_relu": final_relu,
            "kernel_norm": kernel_norm,
        }
        self.self_branch: SelfGuidedBranch | None = None
        if self_branch is not None:
            layer: nn.Module = (
                SelfGuidedDynamicConv(in_channels, self_channels, grid, **controller_kwargs)
                if self_branch == "dynamic"
                else SelfAttention(self_channels)
            )
            self.self_branch = SelfGuidedBranch(in_channels, self_channels, num_classes, layer)
        self.mutual_branch: MutualGuidedBranch | None = None
        if mutual_branch is not None:
            pair_layer = (
                MutualGuidedDynamicConv(in_channels, mutual_channels, grid, **controller_kwargs)
                if mutual_branch == "dynamic"
                else CoAttention(mutual_channels, pairs_per_chunk)
            )
            self.mutual_branch = MutualGuidedBranch(in_channels, mutual_channels, pair_layer)
        self.fusion_weights = dict(fusion_weights or {})
        unknown = set(self.fusion_weights) - set(self._branches())
        if unknown:
            raise ValueError(
                f"fusion_weights names {sorted(unknown)}, not among this model's branches {self._branches()}"
            )
        if not 0.0 < scale_momentum <= 1.0:
            raise ValueError(f"scale_momentum must lie in (0, 1], got {scale_momentum}")
        self.scale_momentum = scale_momentum
        self.register_buffer("distance_means", torch.ones(len(BRANCHES)))  # (3,) in BRANCHES order
        self.register_buffer("tracked_batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _probe_map_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (height, width) of positive ints, got {image_size!r}")
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            fmap = self.backbone(torch.zeros(1, 3, *image_size))
        finally:
            self.backbone.train(was_training)
        return int(fmap.shape[2]), int(fmap.shape[3])

    def _controller_grid(self, controller_grid: tuple[int, int] | None) -> tuple[int, int]:
        if controller_grid is None:
            return self.map_size
        if len(controller_grid) != 2 or min(controller_grid) < 1:
            raise ValueError(
                f"controller_grid must be (height, width) of positive ints, got {controller_grid!r}"
            )
        if controller_grid[0] > self.map_size[0] or controller_grid[1] > self.map_size[1]:
            raise ValueError(
                f"controller_grid {tuple(controller_grid)} is larger than the {self.map_size[0]} x "
                f"{self.map_size[1]} backbone map: pooling up repeats cells and lowers the kernel's rank; "
                "choose a grid no larger than the map (or None for the map itself)"
            )
        return int(controller_grid[0]), int(controller_grid[1])

    # ------------------------------------------------------------------------------ features and layout
    @property
    def feature_layout(self) -> dict[str, tuple[int, ...]]:
        """Name -> per-image shape of every test feature, in the packed order of the eval output."""
        layout: dict[str, tuple[int, ...]] = {"global": (self.feature_dim,)}
        if self.self_branch is not None:
            layout["self"] = (self.self_branch.neck.num_features,)
        if self.mutual_branch is not None:
            shapes = self.mutual_branch.layer.feature_shapes(self.map_size)
            layout.update({f"mutual_{name}": shape for name, shape in shapes.items()})
        return layout

    def unpack(self, packed: Tensor) -> dict[str, Tensor]:
        """Split packed eval features (N, D) into the named features of :attr:`feature_layout`."""
        layout = self.feature_layout
        sizes = [math.prod(shape) for shape in layout.values()]
        if packed.ndim != 2 or packed.shape[1] != sum(sizes):
            raise ValueError(
                f"packed features must be (N, {sum(sizes)}) for the layout {layout}, "
                f"got {tuple(packed.shape)}"
            )
        parts = packed.split(sizes, dim=1)
        return {name: part.reshape(len(packed), *shape) for (name, shape), part in zip(layout.items(), parts)}

    def _require_mutual(self) -> MutualGuidedBranch:
        if self.mutual_branch is None:
            raise ValueError(
                "this IPAD has no mutual branch (mutual_branch=None): there are no pair distances"
            )
        return self.mutual_branch

    def forward(self, img: Tensor) -> dict[str, Tensor] | Tensor:
        x = self.backbone(img)  # (B, C_o, h, w)
        feat = x.mean(dim=(2, 3))  # (B, C_o) III-B: GAP
        bn_feat = self.neck(feat)  # (B, C_o)
        outputs = {"feat": feat, "bn_feat": bn_feat}
        if self.self_branch is not None:
            outputs.update(self.self_branch(x))
        mutual = self.mutual_branch(x) if self.mutual_branch is not None else {}  # name -> (B, ...)
        if not self.training:
            parts = [bn_feat if self.eval_feature == "bn_feat" else feat]
            if self.self_branch is not None:
                parts.append(outputs["self_bn_feat"])
            parts += [value.flatten(1) for value in mutual.values()]  # in feature_shapes order
            return torch.cat(parts, dim=1)  # (B, D) in feature_layout order
        outputs["logits"] = self.classifier(bn_feat)
        embedding = bn_feat if self.eval_feature == "bn_feat" else feat
        batch_distances = {"global": pairwise_euclidean(embedding.detach(), embedding.detach())}  # (B, B)
        if self.self_branch is not None:
            self_embedding = outputs["self_bn_feat"].detach()
            batch_distances["self"] = pairwise_euclidean(self_embedding, self_embedding)
        if self.mutual_branch is not None:
            outputs["mutual_dist"] = self.mutual_branch.pair_distances(mutual, mutual)  # (B, B) Eq. 3
            batch_distances["mutual"] = outputs["mutual_dist"].detach()
        self._track_distance_means(batch_distances)
        return outputs

    @torch.no_grad()
    def test_features(self, img: Tensor) -> dict[str, Tensor]:
        """The named test features of ``img`` (B, 3, H, W) (eval mode, no flip); the mode is restored."""
        was_training = self.training
        self.eval()
        try:
            return self.unpack(self(img))
        finally:
            self.train(was_training)

    # ---------------------------------------------------------------------------------------- distances
    @property
    def distance_scales(self) -> dict[str, float]:
        """Each present branch's running mean distance between training images (1.0 before training)."""
        present = self._branches()
        return {name: float(self.distance_means[i]) for i, name in enumerate(BRANCHES) if name in present}

    def _branches(self) -> tuple[str, ...]:
        absent = {"self": self.self_branch is None, "mutual": self.mutual_branch is None}
        return tuple(name for name in BRANCHES if not absent.get(name, False))

    @torch.no_grad()
    def _track_distance_means(self, batch_distances: Mapping[str, Tensor]) -> None:
        """Update the running mean of each branch's distances between different images of the batch (like
        BN's statistics: the first batch sets it, later ones move it by ``scale_momentum``)."""
        n = len(next(iter(batch_distances.values())))
        if n < 2:
            return
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=self.distance_means.device)
        momentum = 1.0 if int(self.tracked_batches) == 0 else self.scale_momentum
        for i, name in enumerate(BRANCHES):
            if name in batch_distances:
                mean = batch_distances[name][off_diagonal].float().mean()
                self.distance_means[i] += momentum * (mean - self.distance_means[i])
        self.tracked_batches += 1

    def branch_distances(self, query: Tensor, gallery: Tensor) -> dict[str, Tensor]:
        """Each branch's Euclidean distances between packed test features (q, D) and (g, D), all pairs at
        once (call it on blocks): ``"global"`` and ``"self"`` between embeddings, ``"mutual"`` by Eq. 3."""
        features_q, features_g = self.unpack(query), self.unpack(gallery)
        dists = {
            name: pairwise_euclidean(features_q[name], features_g[name])
            for name in ("global", "self")
            if name in features_q
        }
        if self.mutual_branch is not None:
            dists["mutual"] = self.mutual_distances(query, gallery)
        return dists

    def pair_distances(self, query: Tensor, gallery: Tensor) -> Tensor:
        """The fused distance of Section IV-A for every pair of packed test features,
        (q, D), (g, D) -> (q, g): :func:`fuse_distances` of :meth:`branch_distances` with the
        :attr:`distance_scales` and the ``fusion_weights``. Block by block it gives the same matrix as all
        at once (no statistic of the query or gallery set enters), so it fits ``pairwise_distance_matrix``
        as a distance function."""
        dists = self.branch_distances(query, gallery)
        return fuse_distances(dists, self.distance_scales, self.fusion_weights)

    def mutual_distances(self, query: Tensor, gallery: Tensor) -> Tensor:
        """Eq. 3 (or its co-attention counterpart) for every pair of packed test features:
        (q, D), (g, D) -> (q, g)."""
        branch = self._require_mutual()
        return branch.pair_distances(self._mutual_features(query), self._mutual_features(gallery))

    def _mutual_features(self, packed: Tensor) -> dict[str, Tensor]:
        prefix = "mutual_"
        return {k[len(prefix) :]: v for k, v in self.unpack(packed).items() if k.startswith(prefix)}

    @torch.no_grad()
    def distance_matrices(
        self,
        query: Tensor,
        gallery: Tensor,
        *,
        q_chunk: int = 256,
        g_chunk: int = 1024,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        """Each branch's own (Q, G) distance matrix (to rank by one branch, e.g. for Table III), on the
        model's device; the mutual one block by block, ``q_chunk`` x ``g_chunk`` pairs at a time."""
        device = next(self.parameters()).device
        features_q, features_g = self.unpack(query), self.unpack(gallery)
        dists = {
            name: pairwise_euclidean(features_q[name].to(device), features_g[name].to(device)).cpu()
            for name in ("global", "self")
            if name in features_q
        }
        if self.mutual_branch is not None:
            dists["mutual"] = pairwise_distance_matrix(
                lambda q, g: -self.mutual_distances(q, g), query, gallery, q_chunk=q_chunk, g_chunk=g_chunk,
                device=device, progress=progress,
            )
        return dists


def fuse_distances(
    distances: Mapping[str, Tensor],
    scales: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
) -> Tensor:
    """``sum_b weights[b] * distances[b] / scales[b]`` over the branches b (missing scales and weights: 1)."""
    if not distances:
        raise ValueError("distances is empty: nothing to fuse")
    scales, weights = dict(scales or {}), dict(weights or {})
    for name, given in (("scales", scales), ("weights", weights)):
        unknown = set(given) - set(distances)
        if unknown:
            raise ValueError(f"{name} names {sorted(unknown)}, not among the branches {sorted(distances)}")
    bad = {name: s for name, s in scales.items() if not s > 0}
    if bad:
        raise ValueError(f"scales must be positive, got {bad}")
    shapes = {tuple(d.shape) for d in distances.values()}
    if len(shapes) != 1:
        raise ValueError(f"the distance matrices must have one shape, got {sorted(shapes)}")
    return sum(weights.get(name, 1.0) / scales.get(name, 1.0) * dist for name, dist in distances.items())


def build_ipad(variant: str, num_classes: int, **kwargs) -> IPAD:
    """The model of one row of Table III (``"global"``, ``"v1"`` = global + mutual, ``"v2"`` = global +
    self, ``"ipad"`` = all three) or of Section IV-C (``"attention"``); ``kwargs`` go to :class:`IPAD`."""
    _check_choice("variant", variant, tuple(IPAD_VARIANTS))
    self_branch, mutual_branch = IPAD_VARIANTS[variant]
    return IPAD(num_classes, self_branch=self_branch, mutual_branch=mutual_branch, **kwargs)


def triplet_from_distances(
    dist: Tensor, pids: Tensor, margin: float = 0.3, soft_margin: bool = False
) -> Tensor:
    """Batch-hard triplet loss on a given (B, B) distance matrix (the mutual branch's Eq. 3 distances)."""
    d_ap, d_an = batch_hard_mining(dist, pids)  # (B,), (B,)
    if soft_margin:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(d_ap - d_an + margin).mean()


class IPADCriterion(nn.Module):
    """IPAD's losses as named terms: ``"ce"`` and ``"triplet"`` (global branch, Eq. 1), ``"self_ce"`` and
    ``"self_triplet"`` (self branch, when the outputs have one) and ``"mutual_triplet"`` (batch-hard triplet
    on the Eq. 3 distances, when the outputs have them). The paper adds them up with weight 1."""

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.1,
        triplet_margin: float = 0.3,
        soft_margin: bool = False,
    ) -> None:
        super().__init__()
        self.global_terms = BaselineCriterion(num_classes, label_smoothing, triplet_margin, soft_margin)
        self.triplet_margin = triplet_margin
        self.soft_margin = soft_margin

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pids = batch["pid"]  # (B,)
        terms = dict(self.global_terms(outputs, batch))
        if "self_logits" in outputs:
            self_outputs = {"logits": outputs["self_logits"], "feat": outputs["self_feat"]}
            self_terms = self.global_terms(self_outputs, batch)
            terms.update({f"self_{name}": value for name, value in self_terms.items()})
        if "mutual_dist" in outputs:
            terms["mutual_triplet"] = triplet_from_distances(
                outputs["mutual_dist"], pids, self.triplet_margin, self.soft_margin
            )
        return terms
