"""IANet: Hou et al., "Interaction-and-Aggregation Network for Person Re-identification" (CVPR 2019).

An IA block refines a feature map ``F`` (C x H x W, reshaped to C x M with M = H*W) in two steps,
each an *interaction* (a relation map between features) followed by an *aggregation* (a weighted sum
of the features along that map):

* SIA, Section 3.1: spatial positions. Appearance relations compare K x K patches around two positions
  (Eq. 1) for several K and fuse them (Eq. 2); location relations are a 2-D Gaussian of the positions'
  distance (Eqs. 3-4); the semantic relation fuses both (Eq. 5); ``E_S = F S^T`` (Eq. 6).
* CIA, Section 3.2: channels. ``C = softmax(F F^T)`` (Eq. 7), ``E_C = C F`` (Eq. 8).
* Blocks, Section 3.3: ``Y = BN(E) + F`` (Eq. 9) with the BN initialised to zero, so that an inserted
  block starts as the identity; the IA block is the SIA block followed by the CIA block.
* IANet, Section 3.4: ResNet-50 with last stride 1, IA blocks after stages 2 and 3, global average
  pooling and an identity classifier trained with cross-entropy only; cosine distance at test.

What we assumed where the extracted text is garbled or silent:

* Eq. 1 is a softmax over the second index: row ``i`` of ``S^A_K`` is normalised over all positions
  ``j`` ("normalising across all spatial positions"), so every row sums to 1 and ``E_S = F S^T`` makes
  each output position a convex combination of the input features.
* The K x K patch around a position covers offsets ``-((K-1)//2) .. K//2`` along each axis: centred for
  odd K, anchored at the position and extending right/down for even K (K = 2 covers the position and
  its right, lower and lower-right neighbours). Patch cells outside the map are zero (zero padding), so
  a border position accumulates fewer products. The accumulated dot-products are sums of shifted copies
  of the K = 1 dot-product map, as the paper notes ("no extra multiplying operation").
* Eqs. 2 and 5 are read literally: the fusion F (element-wise product by default, maximum or sum for
  Table 4b) combines maps that are already row-normalised and a second softmax follows. A single
  appearance context (Table 4a) is used without fusion or second softmax. The same fusion F serves Eqs. 2
  and 5. The second softmax keeps the ordering of each row but flattens it: with the product, entry
  ``(i, j)`` of ``F(S^A, S^L)`` lies in ``[0, S^L_ij]``, so every row of the semantic map ``S`` has
  ``max / min <= exp(max_j S^L_ij) <= exp(max S^L)`` whatever the features (1.0038 for the paper's
  stage-2 map, 32 x 16 cells, 1.015 for its stage-3 map, 16 x 8), and every row of a fused ``S^A`` has
  ``max / min <= e``.
* The authors' released code (``formulation="authors"``) is not the paper's Eq. 2: it has no multi-context
  step. Its SIA takes one context (K = 1), divides the dot-products by sqrt(C), applies a softmax, takes
  the element-wise product with ``S^L`` and one more softmax: ``S = softmax(softmax(F^T F / sqrt(C)) *
  S^L)``, i.e. Eq. 5's double softmax on a single-context ``S^A``. The bound above holds for it too.
  ``formulation="paper"`` (the default) follows the paper, dot-products unscaled unless
  ``scale_dot_products=True``.
* Precision: the relation maps and the aggregations (Eqs. 1-8) are computed in float32 even under
  ``torch.autocast`` (autocast is switched off inside the SIA and CIA modules and their input cast to
  float32). In float16 or bfloat16 each nearly uniform row of ``S`` would round to a single value, and
  ``F F^T`` summed over many positions can overflow float16. Under autocast ``E_S`` and ``E_C`` stay
  float32 (the next convolution casts again); without it they take the input's dtype.
* Eq. 3: ``sigma1`` acts on the horizontal coordinate x (columns), ``sigma2`` on the vertical one y
  (rows); the paper uses (10, 20) after stage 2 and (5, 10) after stage 3 of a 256 x 128 input, i.e. on
  32 x 16 and 16 x 8 maps (the released code names them alpha_x, alpha_y). Both equal
  (0.3125 H, 0.625 H) for a map H rows high: we scale them by ``H / H_paper`` for other input sizes and
  extrapolate the same ratio to stages 1 and 4. The Gaussian's constant cancels in Eq. 4.
* Dot-products are not scaled (the paper); ``scale_dot_products=True`` divides the appearance
  dot-products by sqrt(C) as the authors' released code does (part of ``formulation="authors"``).
* "The parameters of BN are initialised to zeros": both weight (gamma) and bias (beta).
* The "parallel" arrangement of Table 4d adds both residuals to the input: ``Y = F + BN(E_S) + BN(E_C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..losses import CrossEntropyLabelSmooth
from .backbones import Backbone, build_backbone
from .baseline import Baseline, param_groups

FUSIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "product": torch.mul,
    "max": torch.maximum,
    "sum": torch.add,
}
RELATIONS = ("appearance", "location", "semantic")
ARRANGEMENTS = ("sia-cia", "cia-sia", "parallel", "sia", "cia")
PLACEMENTS = ("bottleneck", "every_block")
PAPER_CONTEXTS = (1, 2, 3)
FORMULATIONS = ("paper", "authors")
# What formulation="authors" fixes (the released code's SIA): one K = 1 context, dot-products / sqrt(C),
# the product with S^L and a softmax.
AUTHORS_SIA = {"contexts": (1,), "fusion": "product", "relation": "semantic", "scale_dot_products": True}
# (sigma1, sigma2) in cells, and the map height they refer to (256 x 128 input, last stride 1). Stages 2
# and 3 are the paper's (Section 4.1); stages 1 and 4 extrapolate the same sigma / height ratio.
PAPER_SIGMAS: dict[int, tuple[tuple[float, float], int]] = {
    1: ((20.0, 40.0), 64),
    2: ((10.0, 20.0), 32),
    3: ((5.0, 10.0), 16),
    4: ((5.0, 10.0), 16),
}


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def resolve_formulation(
    formulation: str,
    contexts: Sequence[int] | None,
    fusion: str,
    relation: str,
    scale_dot_products: bool | None,
) -> tuple[tuple[int, ...], bool]:
    """``(contexts, scale_dot_products)`` of a formulation; ``None`` means the formulation's value.

    ``"paper"``: contexts (1, 2, 3) and unscaled dot-products unless given. ``"authors"``: the released
    code's SIA, :data:`AUTHORS_SIA`; an argument given with another value than it fixes is an error.
    """
    _check_choice("formulation", formulation, FORMULATIONS)
    if formulation == "paper":
        return tuple(PAPER_CONTEXTS if contexts is None else contexts), bool(scale_dot_products)
    given = {
        "contexts": None if contexts is None else tuple(contexts),
        "fusion": fusion,
        "relation": relation,
        "scale_dot_products": scale_dot_products,
    }
    for name, value in given.items():
        if value is not None and value != AUTHORS_SIA[name]:
            raise ValueError(
                f"formulation='authors' fixes {name} to {AUTHORS_SIA[name]!r} (the released code), "
                f"got {value!r}"
            )
    return AUTHORS_SIA["contexts"], AUTHORS_SIA["scale_dot_products"]


def _autocast_on(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _full_precision(features: Tensor) -> Tensor:
    """float16 / bfloat16 features cast to float32; float32 and float64 ones unchanged."""
    return features if features.dtype in (torch.float32, torch.float64) else features.float()


def _float32_context(device_type: str) -> AbstractContextManager:
    """Autocast switched off, so that float32 inputs give float32 results (no-op where it is absent)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


# --------------------------------------------------------------------------- appearance relations (Eqs. 1-2)


def patch_offsets(k: int) -> range:
    """Offsets of a K x K patch's cells from its position along one axis: ``-((K-1)//2) .. K//2``."""
    if k < 1:
        raise ValueError(f"the context patch size K must be >= 1, got {k}")
    return range(-((k - 1) // 2), k // 2 + 1)


def _overlap(size: int, offset: int) -> tuple[slice, slice]:
    """Slices ``(dst, src)`` with ``src = dst + offset``, both inside ``0..size-1``."""
    if offset >= 0:
        return slice(0, size - offset), slice(offset, size)
    return slice(-offset, size), slice(0, size + offset)


def accumulate_patch_dot_products(dots: Tensor, height: int, width: int, k: int) -> Tensor:
    """Accumulated dot-products of K x K patches, the exponent of Eq. 1, from the K = 1 map.

    ``dots[b, i, j] = f_i^T f_j`` for positions ``i, j`` of an ``height x width`` map. The patch value
    is ``sum_o dots[i + o, j + o]`` over the K x K offsets ``o`` (:func:`patch_offsets`), where a term
    whose ``i + o`` or ``j + o`` falls outside the map is zero (zero-padded features). Only additions
    of shifted copies of ``dots``: no multiplication beyond K = 1.

    dots: (B, M, M) with M = height * width -> (B, M, M).
    """
    if k == 1:
        return dots
    batch = dots.shape[0]
    grid = dots.view(batch, height, width, height, width)  # (B, H, W, H, W): (y_i, x_i, y_j, x_j)
    accumulated = torch.zeros_like(grid)
    for dy in patch_offsets(k):
        dst_y, src_y = _overlap(height, dy)
        for dx in patch_offsets(k):
            dst_x, src_x = _overlap(width, dx)
            accumulated[:, dst_y, dst_x, dst_y, dst_x] += grid[:, src_y, src_x, src_y, src_x]
    return accumulated.view(batch, height * width, height * width)


def position_dot_products(features: Tensor, scale: bool = False) -> Tensor:
    """``f_i^T f_j`` for every pair of positions, optionally divided by sqrt(C).

    features: (B, C, H, W) -> (B, M, M) with M = H * W.
    """
    flat = features.flatten(2)  # (B, C, M)
    dots = flat.transpose(1, 2) @ flat  # (B, M, M)
    return dots / math.sqrt(features.shape[1]) if scale else dots


def single_context_appearance_relation(features: Tensor, k: int, scale: bool = False) -> Tensor:
    """Single-context appearance relation map ``S^A_K`` (Eq. 1), each row softmax-normalised.

    features: (B, C, H, W) -> (B, M, M). Any K works here (Fig. 4 shows K = 1, 2, 3, 5).
    """
    height, width = features.shape[-2:]
    dots = position_dot_products(features, scale)  # (B, M, M)
    return accumulate_patch_dot_products(dots, height, width, k).softmax(dim=-1)


def fuse(maps: Sequence[Tensor], fusion: str) -> Tensor:
    """The fusion function F of Eqs. 2 and 5: element-wise ``"product"``, ``"max"`` or ``"sum"``."""
    _check_choice("fusion", fusion, tuple(FUSIONS))
    if not maps:
        raise ValueError("fuse needs at least one map")
    return reduce(FUSIONS[fusion], maps)


class MultiContextAppearanceRelation(nn.Module):
    """Multi-context appearance relation ``S^A = softmax(F(S^A_K1, ..., S^A_KN))`` (Eqs. 1-2).

    The K = 1 dot-products are computed once (one batched matrix product); the other contexts add
    shifted copies of them. With a single context the map is ``S^A_K`` itself (Table 4a).

    Args:
        contexts: the patch sizes K, the paper's (1, 2, 3).
        fusion: ``"product"`` (the paper), ``"max"`` or ``"sum"`` (Table 4b).
        scale_dot_products: divide dot-products by sqrt(C) (the authors' code; not in the paper).
    """

    def __init__(
        self,
        contexts: Sequence[int] = PAPER_CONTEXTS,
        fusion: str = "product",
        scale_dot_products: bool = False,
    ) -> None:
        super().__init__()
        if not contexts:
            raise ValueError("contexts must name at least one patch size K")
        for k in contexts:
            patch_offsets(k)  # validates K
        _check_choice("fusion", fusion, tuple(FUSIONS))
        self.contexts = tuple(contexts)
        self.fusion = fusion
        self.scale_dot_products = scale_dot_products

    def single_context_maps(self, features: Tensor) -> dict[int, Tensor]:
        """``{K: S^A_K}`` (Eq. 1) for every context. features (B, C, H, W) -> maps (B, M, M)."""
        height, width = features.shape[-2:]
        dots = position_dot_products(features, self.scale_dot_products)  # (B, M, M), computed once
        return {
            k: accumulate_patch_dot_products(dots, height, width, k).softmax(dim=-1) for k in self.contexts
        }

    @staticmethod
    def fuse_contexts(maps: Sequence[Tensor], fusion: str) -> Tensor:
        """Eq. 2: softmax of the fused single-context maps; a single map is returned unchanged."""
        if len(maps) == 1:
            return maps[0]
        return fuse(maps, fusion).softmax(dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        """features (B, C, H, W) -> S^A (B, M, M)."""
        return self.fuse_contexts(list(self.single_context_maps(features).values()), self.fusion)

    def extra_repr(self) -> str:
        return (
            f"contexts={self.contexts}, fusion={self.fusion!r}, scale_dot_products={self.scale_dot_products}"
        )


# --------------------------------------------------------------------------- location relations (Eqs. 3-4)


def location_relation(
    height: int,
    width: int,
    sigma: tuple[float, float],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Spatial location relation map ``S^L`` (Eqs. 3-4): a 2-D Gaussian of the distance between two
    positions, ``sigma = (sigma1, sigma2)`` in cells along x (columns) and y (rows), each row
    normalised to sum to 1 (the Gaussian's constant ``1 / (2 pi sigma1 sigma2)`` cancels).

    -> (M, M) with M = height * width, row-major positions (index ``y * width + x``).
    """
    sigma_x, sigma_y = sigma
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    xs, ys = xs.flatten(), ys.flatten()  # (M,), (M,)
    exponent = -0.5 * (
        (xs[None, :] - xs[:, None]) ** 2 / sigma_x**2 + (ys[None, :] - ys[:, None]) ** 2 / sigma_y**2
    )  # (M, M)
    return exponent.softmax(dim=-1)  # = l_ij / sum_t l_it


class LocationRelation(nn.Module):
    """``S^L`` (Eqs. 3-4) for whatever map size arrives.

    Args:
        sigma: (sigma1, sigma2) in cells (x, y) of a map ``reference_height`` rows high.
        reference_height: rows of the map ``sigma`` refers to; a map of H rows uses
            ``sigma * H / reference_height``. ``None`` uses ``sigma`` as given for every size.
    """

    def __init__(self, sigma: tuple[float, float] = (5.0, 10.0), reference_height: int | None = 16) -> None:
        super().__init__()
        if min(sigma) <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if reference_height is not None and reference_height < 1:
            raise ValueError(f"reference_height must be a positive number of rows, got {reference_height}")
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.reference_height = reference_height

    def sigma_for(self, height: int) -> tuple[float, float]:
        """(sigma1, sigma2) in cells for a map ``height`` rows high."""
        if self.reference_height is None:
            return self.sigma
        factor = height / self.reference_height
        return self.sigma[0] * factor, self.sigma[1] * factor

    def forward(self, features: Tensor) -> Tensor:
        """features (B, C, H, W) -> S^L (M, M), shared by the batch."""
        height, width = features.shape[-2:]
        return location_relation(height, width, self.sigma_for(height), features.device, features.dtype)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, reference_height={self.reference_height}"


def paper_location_relation(stage: int, sigma_scale: float = 1.0) -> LocationRelation:
    """The paper's location relation for an IA block after ``stage`` (1-4), sigma multiplied by
    ``sigma_scale`` (Fig. 7 varies sigma1 with sigma2 = 2 sigma1)."""
    if stage not in PAPER_SIGMAS:
        raise ValueError(f"stage must be one of {sorted(PAPER_SIGMAS)}, got {stage!r}")
    (sigma_x, sigma_y), reference_height = PAPER_SIGMAS[stage]
    return LocationRelation((sigma_x * sigma_scale, sigma_y * sigma_scale), reference_height)


# --------------------------------------------------------------------------- SIA and CIA modules


class SpatialInteractionAggregation(nn.Module):
    """SIA module (Section 3.1, Fig. 2): relation map ``S`` between positions, then ``E_S = F S^T``.

    ``relation`` picks the map used for aggregation (Table 4c): ``"appearance"`` (``S^A``, Eqs. 1-2),
    ``"location"`` (``S^L``, Eqs. 3-4) or ``"semantic"`` (``S = softmax(F(S^A, S^L))``, Eq. 5).
    ``formulation="authors"`` is the released code's SIA, ``softmax(softmax(F^T F / sqrt(C)) * S^L)``:
    it fixes ``contexts=(1,)``, ``fusion="product"``, ``relation="semantic"`` and
    ``scale_dot_products=True`` (:func:`resolve_formulation`). ``contexts=None`` and
    ``scale_dot_products=None`` take the formulation's values (paper: (1, 2, 3) and False).
    Maps and aggregation are computed in float32, autocast or not (module docstring).
    With ``store_relations`` set, every forward keeps (detached) ``last_relation`` (B, M, M), the map
    used, and ``last_relations``, every map computed on the way (``"appearance_k1"``, ...,
    ``"appearance"``, ``"location"``, ``"semantic"``).
    """

    def __init__(
        self,
        contexts: Sequence[int] | None = None,
        fusion: str = "product",
        relation: str = "semantic",
        location: LocationRelation | None = None,
        scale_dot_products: bool | None = None,
        store_relations: bool = False,
        formulation: str = "paper",
    ) -> None:
        super().__init__()
        _check_choice("relation", relation, RELATIONS)
        contexts, scale_dot_products = resolve_formulation(
            formulation, contexts, fusion, relation, scale_dot_products
        )
        self.formulation = formulation
        self.relation = relation
        self.fusion = fusion
        self.appearance = MultiContextAppearanceRelation(contexts, fusion, scale_dot_products)
        self.location = location if location is not None else LocationRelation()
        self.store_relations = store_relations
        self.last_relation: Tensor | None = None
        self.last_relations: dict[str, Tensor] = {}

    def relation_maps(self, features: Tensor) -> dict[str, Tensor]:
        """Every map the chosen relation needs, keyed by name; ``"spatial"`` is the one aggregated with.

        features (B, C, H, W) -> maps (B, M, M) (``"location"``: (M, M)), float32 for float16, bfloat16
        or float32 features (float64 for float64), with or without autocast.
        """
        with _float32_context(features.device.type):
            features = _full_precision(features)
            maps: dict[str, Tensor] = {}
            if self.relation in ("appearance", "semantic"):
                single = self.appearance.single_context_maps(features)
                maps.update({f"appearance_k{k}": s for k, s in single.items()})
                maps["appearance"] = self.appearance.fuse_contexts(list(single.values()), self.fusion)
            if self.relation in ("location", "semantic"):
                maps["location"] = self.location(features)  # (M, M)
            if self.relation == "semantic":
                maps["semantic"] = fuse([maps["appearance"], maps["location"]], self.fusion).softmax(dim=-1)
        spatial = maps[self.relation]
        maps["spatial"] = spatial.expand(features.shape[0], *spatial.shape[-2:])  # (B, M, M)
        return maps

    def forward(self, features: Tensor) -> Tensor:
        """features F (B, C, H, W) -> E_S (B, C, H, W), Eq. 6; float32 under autocast, else F's dtype."""
        full = _full_precision(features)  # (B, C, H, W)
        out_dtype = full.dtype if _autocast_on(features.device.type) else features.dtype
        maps = self.relation_maps(full)
        relation = maps["spatial"]  # (B, M, M) float32, rows sum to 1
        if self.store_relations:
            self.last_relation = relation.detach()
            self.last_relations = {name: m.detach() for name, m in maps.items() if name != "spatial"}
        with _float32_context(features.device.type):
            aggregated = full.flatten(2) @ relation.transpose(1, 2)  # (B, C, M): E_S = F S^T
        return aggregated.view_as(features).to(out_dtype)

    def extra_repr(self) -> str:
        return f"formulation={self.formulation!r}, relation={self.relation!r}, fusion={self.fusion!r}"


class ChannelInteractionAggregation(nn.Module):
    """CIA module (Section 3.2, Fig. 5): ``C = softmax(F F^T)`` (Eq. 7), ``E_C = C F`` (Eq. 8).

    Computed in float32, autocast or not (module docstring). With ``store_relations`` set, every forward
    keeps (detached) ``last_relation`` (B, C, C).
    """

    def __init__(self, store_relations: bool = False) -> None:
        super().__init__()
        self.store_relations = store_relations
        self.last_relation: Tensor | None = None

    @staticmethod
    def channel_relation(features: Tensor) -> Tensor:
        """Eq. 7: features (B, C, H, W) -> C (B, C, C), rows softmax-normalised; float32 at least."""
        with _float32_context(features.device.type):
            flat = _full_precision(features).flatten(2)  # (B, C, M)
            return (flat @ flat.transpose(1, 2)).softmax(dim=-1)  # (B, C, C)

    def forward(self, features: Tensor) -> Tensor:
        """features F (B, C, H, W) -> E_C (B, C, H, W), Eq. 8; float32 under autocast, else F's dtype."""
        full = _full_precision(features)  # (B, C, H, W)
        out_dtype = full.dtype if _autocast_on(features.device.type) else features.dtype
        relation = self.channel_relation(full)  # (B, C, C) float32
        if self.store_relations:
            self.last_relation = relation.detach()
        with _float32_context(features.device.type):
            aggregated = relation @ full.flatten(2)  # (B, C, M): E_C = C F
        return aggregated.view_as(features).to(out_dtype)


# --------------------------------------------------------------------------- blocks (Eq. 9, Section 3.3)


class _ResidualInteractionBlock(nn.Module):
    """``Y = BN(E) + F`` (Eq. 9) around an interaction-aggregation module; BN starts at zero."""

    def __init__(
        self, module: SpatialInteractionAggregation | ChannelInteractionAggregation, channels: int
    ) -> None:
        super().__init__()
        self.module = module
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)  # gamma = 0: the block starts as the identity
        nn.init.zeros_(self.bn.bias)

    @property
    def last_relation(self) -> Tensor | None:
        """The relation map of the last forward when relations are stored, else ``None``."""
        return self.module.last_relation

    def residual(self, features: Tensor) -> Tensor:
        """BN(E), (B, C, H, W)."""
        return self.bn(self.module(features))

    def forward(self, features: Tensor) -> Tensor:
        """F (B, C, H, W) -> Y (B, C, H, W)."""
        return features + self.residual(features)


class SIABlock(_ResidualInteractionBlock):
    """SIA block (Eq. 9 with E = E_S of Eq. 6). Keyword arguments go to
    :class:`SpatialInteractionAggregation`."""

    def __init__(self, channels: int, **sia_kwargs) -> None:
        super().__init__(SpatialInteractionAggregation(**sia_kwargs), channels)

    @property
    def last_relations(self) -> dict[str, Tensor]:
        return self.module.last_relations


class CIABlock(_ResidualInteractionBlock):
    """CIA block (Eq. 9 with E = E_C of Eq. 8)."""

    def __init__(self, channels: int, store_relations: bool = False) -> None:
        super().__init__(ChannelInteractionAggregation(store_relations), channels)


class IABlock(nn.Module):
    """IA block (Fig. 6a): the SIA block followed by the CIA block, or another arrangement of Table 4d:
    ``"sia-cia"`` (the paper), ``"cia-sia"``, ``"parallel"`` (``F + BN(E_S) + BN(E_C)``), ``"sia"`` or
    ``"cia"`` alone. ``sia`` / ``cia`` are the blocks (``None`` when left out); ``sia_kwargs`` go to
    :class:`SpatialInteractionAggregation`.
    """

    def __init__(
        self, channels: int, arrangement: str = "sia-cia", store_relations: bool = False, **sia_kwargs
    ) -> None:
        super().__init__()
        _check_choice("arrangement", arrangement, ARRANGEMENTS)
        self.arrangement = arrangement
        uses_sia = arrangement != "cia"
        uses_cia = arrangement != "sia"
        self.sia = SIABlock(channels, store_relations=store_relations, **sia_kwargs) if uses_sia else None
        self.cia = CIABlock(channels, store_relations) if uses_cia else None

    def set_store_relations(self, store: bool) -> None:
        for block in (self.sia, self.cia):
            if block is not None:
                block.module.store_relations = store

    def forward(self, features: Tensor) -> Tensor:
        """F (B, C, H, W) -> (B, C, H, W)."""
        if self.arrangement == "parallel":
            return features + self.sia.residual(features) + self.cia.residual(features)
        order = (self.cia, self.sia) if self.arrangement == "cia-sia" else (self.sia, self.cia)
        for block in order:
            if block is not None:
                features = block(features)
        return features


# --------------------------------------------------------------------------- IANet (Section 3.4)


def _is_resnet_stage(stage: nn.Module) -> bool:
    return isinstance(stage, nn.Sequential) and all(
        isinstance(block, (BasicBlock, Bottleneck)) for block in stage.children()
    )


def insert_ia_blocks(
    backbone: Backbone,
    stages: Sequence[int],
    placement: str,
    make_block: Callable[[int, int], IABlock],
) -> Backbone:
    """A backbone with IA blocks inserted; ``make_block(stage, channels)`` builds each block.

    ``placement="bottleneck"`` puts one block after each chosen stage (1-based; the paper's stage23);
    ``"every_block"`` one after every residual block of each chosen ResNet stage (stage23-c, Table 4f).
    The backbone's modules are reused, so pretrained weights carry over.
    """
    _check_choice("placement", placement, PLACEMENTS)
    if not stages or any(s not in (1, 2, 3, 4) for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"stages must be distinct stage numbers among 1-4, got {tuple(stages)}")
    new_stages = []
    for number, (stage, channels) in enumerate(zip(backbone.stages, backbone.out_channels), start=1):
        if number not in stages:
            new_stages.append(stage)
        elif placement == "bottleneck":
            new_stages.append(nn.Sequential(stage, make_block(number, channels)))
        elif _is_resnet_stage(stage):
            layers = [m for block in stage.children() for m in (block, make_block(number, channels))]
            new_stages.append(nn.Sequential(*layers))
        else:
            raise ValueError(
                f"placement='every_block' needs ResNet stages (of residual blocks); stage {number} of this "
                f"backbone is a {type(stage).__name__}. Use placement='bottleneck' for other backbones."
            )
    return Backbone(backbone.stem, new_stages, backbone.out_channels, backbone.strides)


class IANet(Baseline):
    """IANet (Section 3.4, Fig. 6b): backbone with IA blocks -> GAP -> BN-neck -> identity classifier.

    Same outputs as :class:`~reidbook.models.baseline.Baseline`: in training mode
    ``{"feat", "bn_feat", "logits"}``, in eval mode the embedding (B, D). The paper trains with
    cross-entropy only (:class:`IANetCriterion`) and matches with the cosine distance.

    Args:
        num_classes: training identities.
        backbone: a registered backbone name or a :class:`Backbone`.
        pretrained, last_stride: for :func:`build_backbone` (the paper: ImageNet weights, last stride 1).
        stages: stages (1-4) that receive IA blocks; the paper's (2, 3).
        placement: ``"bottleneck"`` (after the stage) or ``"every_block"`` (after every residual block
            of the stage, ResNets only), Table 4f.
        arrangement: see :class:`IABlock` (Table 4d).
        contexts, fusion, relation, scale_dot_products: see :class:`SpatialInteractionAggregation`.
        formulation: ``"paper"`` (Eqs. 1-5 as written) or ``"authors"`` (the released code's SIA, which
            fixes contexts, fusion, relation and scale_dot_products; see :func:`resolve_formulation`).
        sigma_scale: multiplies the paper's location sigmas (Fig. 7).
        store_relations: keep each block's relation maps (``model.blocks[i].sia.last_relation``).
        eval_feature: ``"bn_feat"`` or ``"feat"``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | Backbone = "resnet50",
        *,
        pretrained: bool = False,
        last_stride: int = 1,
        stages: Sequence[int] = (2, 3),
        placement: str = "bottleneck",
        arrangement: str = "sia-cia",
        contexts: Sequence[int] | None = None,
        fusion: str = "product",
        relation: str = "semantic",
        scale_dot_products: bool | None = None,
        formulation: str = "paper",
        sigma_scale: float = 1.0,
        store_relations: bool = False,
        eval_feature: str = "bn_feat",
    ) -> None:
        resolve_formulation(formulation, contexts, fusion, relation, scale_dot_products)  # fail early
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)

        def make_block(stage: int, channels: int) -> IABlock:
            return IABlock(
                channels,
                arrangement,
                store_relations,
                contexts=contexts,
                fusion=fusion,
                relation=relation,
                location=paper_location_relation(stage, sigma_scale),
                scale_dot_products=scale_dot_products,
                formulation=formulation,
            )

        super().__init__(
            num_classes, insert_ia_blocks(backbone, stages, placement, make_block), eval_feature=eval_feature
        )

    @property
    def blocks(self) -> list[IABlock]:
        """The IA blocks, from the input side to the output side."""
        return [m for m in self.modules() if isinstance(m, IABlock)]

    def set_store_relations(self, store: bool) -> None:
        for block in self.blocks:
            block.set_store_relations(store)

    @torch.no_grad()
    def relation_maps(self, img: Tensor) -> list[dict[str, Tensor]]:
        """Run ``img`` (B, 3, H, W) through the model (in its current mode) and return, per IA block,
        ``"features"`` (the SIA input, (B, C, h, w)), the SIA maps (``"appearance_k1"``, ...,
        ``"spatial"``: (B, M, M)) and ``"channel"`` (B, C, C), whichever the arrangement has."""
        captured: list[dict[str, Tensor]] = [{} for _ in self.blocks]
        handles = []
        for record, block in zip(captured, self.blocks):
            if block.sia is not None:
                handles.append(block.sia.register_forward_pre_hook(_capture_input(record)))
        self.set_store_relations(True)
        try:
            self(img)
        finally:
            self.set_store_relations(False)
            for handle in handles:
                handle.remove()
        for record, block in zip(captured, self.blocks):
            if block.sia is not None:
                record.update(block.sia.last_relations)
                record["spatial"] = block.sia.last_relation
            if block.cia is not None:
                record["channel"] = block.cia.last_relation
        return captured

    def param_groups(self, base_lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
        """Like :meth:`Baseline.param_groups`, the IA blocks counted with the heads (at ``base_lr``)."""
        block_names = [name for name, m in self.named_modules() if isinstance(m, IABlock)]
        return param_groups(self, base_lr, {**dict.fromkeys(block_names, 1.0), "backbone": backbone_lr_mult})


def _capture_input(record: dict[str, Tensor]) -> Callable:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        record["features"] = inputs[0].detach()

    return hook


def relation_of_point(relation: Tensor, height: int, width: int, y: int, x: int) -> Tensor:
    """Row of position ``(y, x)`` of a spatial relation map, as an image: (B, M, M) -> (B, H, W)."""
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"point (y={y}, x={x}) lies outside a {height} x {width} map")
    if relation.shape[-1] != height * width:
        raise ValueError(f"relation map has {relation.shape[-1]} positions, expected {height} x {width}")
    return relation[..., y * width + x, :].reshape(*relation.shape[:-2], height, width)


class IANetCriterion(nn.Module):
    """The paper's only loss (Section 3.4): identity cross-entropy, ``{"ce": ...}``; ``label_smoothing``
    > 0 gives the strong baseline's smoothed version."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.cross_entropy = CrossEntropyLabelSmooth(num_classes, label_smoothing)

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"ce": self.cross_entropy(outputs["logits"], batch["pid"])}


# --------------------------------------------------------------------------- memory of the relation maps

RESNET50_CHANNELS = (256, 512, 1024, 2048)
RESNET_STRIDES = (4, 8, 16, 16)  # last stride 1


@dataclass(frozen=True)
class RelationMemory:
    """Bytes that autograd keeps for backward in one IA block: the spatial relation maps of SIA
    ((B, M, M) maps and the (M, M) location map), the channel relation map of CIA (B, C, C) and the rest
    (the block's input and intermediate feature maps, BN statistics)."""

    spatial_bytes: int
    channel_bytes: int
    other_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.spatial_bytes + self.channel_bytes + self.other_bytes

    def __str__(self) -> str:
        parts = {
            "spatial maps": self.spatial_bytes,
            "channel maps": self.channel_bytes,
            "other": self.other_bytes,
            "total": self.total_bytes,
        }
        return ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in parts.items())


class _SavedTensorCounter:
    """Distinct storages saved for backward, each labelled with the relation module (``"spatial"`` /
    ``"channel"``) that saved it, or ``"other"``; a module's own input counts as ``"other"``."""

    def __init__(self) -> None:
        self.storages: dict[int, tuple[str, int]] = {}  # storage id -> (label, bytes)
        self.keep_alive: list[Tensor] = []  # storage ids stay unique while their tensors live
        self.label = "other"
        self.module_input = -1

    @staticmethod
    def storage_id(tensor: Tensor) -> int:
        return tensor.untyped_storage()._cdata

    def watch(self, module: nn.Module, label: str) -> None:
        def enter(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            self.label, self.module_input = label, self.storage_id(inputs[0])

        def leave(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.label, self.module_input = "other", -1

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)

    def pack(self, saved: Tensor) -> Tensor:
        key = self.storage_id(saved)
        label = "other" if key == self.module_input else self.label
        self.storages.setdefault(key, (label, saved.untyped_storage().nbytes()))
        self.keep_alive.append(saved)
        return saved

    def bytes_of(self, label: str) -> int:
        return sum(size for kind, size in self.storages.values() if kind == label)


def relation_memory(
    batch: int,
    height: int,
    width: int,
    stage: int,
    *,
    channels: int | None = None,
    stride: int | None = None,
    dtype: torch.dtype = torch.float32,
    **block_kwargs,
) -> RelationMemory:
    """Memory autograd keeps for one IA block after ``stage`` during training on ``batch`` images of
    ``height x width`` pixels, counted by running the block on the ``meta`` device (nothing is
    allocated) and adding up the distinct storages it saves for backward.

    ``channels`` and ``stride`` default to ResNet-50's with last stride 1; ``block_kwargs`` go to
    :class:`IABlock` (``arrangement``, ``contexts``, ``fusion``, ``relation``, ...).
    """
    if stage not in (1, 2, 3, 4):
        raise ValueError(f"stage must be 1-4, got {stage!r}")
    channels = channels or RESNET50_CHANNELS[stage - 1]
    stride = stride or RESNET_STRIDES[stage - 1]
    rows, cols = -(-height // stride), -(-width // stride)  # ceil, as ResNet's padded convolutions
    block_kwargs.setdefault("location", paper_location_relation(stage))
    block = IABlock(channels, **block_kwargs).to(device="meta", dtype=dtype)
    counter = _SavedTensorCounter()
    for part, label in ((block.sia, "spatial"), (block.cia, "channel")):
        if part is not None:
            counter.watch(part.module, label)
    features = torch.empty(batch, channels, rows, cols, device="meta", dtype=dtype, requires_grad=True)
    with saved_tensors_hooks(counter.pack, lambda saved: saved):
        block(features)
    return RelationMemory(counter.bytes_of("spatial"), counter.bytes_of("channel"), counter.bytes_of("other"))
