"""QAConv: query-adaptive convolution with a class memory (Liao & Shao, ECCV 2020, Sections 3.1-3.4).

An image is described by a feature map, not a vector: backbone stage 3 -> a 128-channel neck ->
per-location l2 normalisation (:class:`QAConvNet`). Two maps are matched by :class:`QueryAdaptiveConv`:
every query location becomes a 1x1 kernel convolved over the gallery map (Section 3.1, kernel size
s = 1), which with normalised channels gives the cosine similarity of every pair of locations; the best
match of each location, taken from both sides, forms a 2hw vector that a BN -> FC(2hw -> 1) -> BN
block turns into one logit, and a sigmoid into a matching probability (Section 3.2). Training matches
the mini-batch against a :class:`ClassMemory` holding the newest feature map of every class (Section
3.3) with a focal-weighted binary cross-entropy (Section 3.4, Eqs. 1-2, :class:`QAConvCriterion`).

Choices where the paper leaves room, following the authors' released code (ShengcaiLiao/QAConv):

* the neck is a 3x3 convolution (bias-free) + BatchNorm, no ReLU; the paper's text says 1x1
  (``neck_kernel=1``);
* both "one-dimensional" BN layers are ``BatchNorm1d(1)``: the first normalises all 2hw similarity
  values of all pairs with one mean and variance (and one affine pair), the second the logits;
* the pair's logit is not rescaled in training; at test time :meth:`QAConvNet.pair_distances` gives
  ``1 - sigmoid(logit / 10)`` as the authors' evaluation code does (re-ranking and TLift work on these),
  which ranks as the logits do;
* the class memory starts at zero and a class enters the loss once a sample of it has been seen.
  Unlike the authors' code, classes not seen yet are left out of the matching altogether (not only
  masked in the loss), so their all-zero maps do not enter the first BN's batch statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import binary_focal_loss
from .backbones import Backbone, build_backbone, make_stride_one
from .baseline import param_groups

FEATURE_STAGE = 2  # index of backbone stage 3 ("layer3" of a ResNet)
SCORE_SCALE = 10.0  # the authors' evaluation scores are sigmoid(logit / 10)


class FeatureMapNeck(nn.Module):
    """Channel reduction + l2 normalisation over channels: (B, C_in, h, w) -> (B, channels, h, w).

    ``kernel_size=3`` is the authors' code (3x3 convolution + BN, no ReLU); ``kernel_size=1`` is the
    paper's text (Section 5.1: "a 1x1 convolution with 128 channels").
    """

    def __init__(self, in_channels: int, channels: int = 128, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"neck kernel_size must be 1 (paper) or 3 (authors' code), got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.bn(self.conv(x)), dim=1)  # (B, channels, h, w), unit norm per location


class Correspondences(NamedTuple):
    """For each query location (h, w): the best-matching gallery location and its cosine similarity."""

    rows: Tensor  # (h, w) long, row of the best gallery location
    cols: Tensor  # (h, w) long, column of the best gallery location
    similarity: Tensor  # (h, w) float, cosine similarity of the match


class QueryAdaptiveConv(nn.Module):
    """Query-adaptive convolutional matching (Section 3.1, s = 1) and its BN-FC-BN head (Section 3.2).

    For a query map q and a gallery map g, both (d, h, w) and l2-normalised over d, the convolution of g
    with the hw kernels [hw, d, 1, 1] cut from q gives ``S[i, j] = <q_i, g_j>``, the cosine similarity of
    query location i and gallery location j (an (hw, hw) matrix, computed here as a matrix product).
    Global max pooling from both sides gives the 2hw vector ``[max_j S[i, j] for i] ++ [max_i S[i, j]
    for j]`` (query-indexed half first), which BN -> FC(2hw -> 1) -> BN maps to a logit.

    All methods compare every query with every gallery map; the (hw, hw) similarities are materialised
    for at most ``pairs_per_chunk`` pairs at a time, which bounds memory without changing the result.

    Args:
        map_size: (h, w) of the feature maps (fixes the FC's 2hw inputs).
        pairs_per_chunk: pairs whose (hw, hw) similarities are held at once.
    """

    def __init__(self, map_size: tuple[int, int], pairs_per_chunk: int = 2048) -> None:
        super().__init__()
        if pairs_per_chunk < 1:
            raise ValueError(f"pairs_per_chunk must be positive, got {pairs_per_chunk}")
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.pairs_per_chunk = pairs_per_chunk
        hw = self.map_size[0] * self.map_size[1]
        self.bn = nn.BatchNorm1d(1)
        self.fc = nn.Linear(2 * hw, 1)
        self.logit_bn = nn.BatchNorm1d(1)

    def _check_maps(self, name: str, maps: Tensor) -> None:
        if maps.ndim != 4 or tuple(maps.shape[2:]) != self.map_size:
            raise ValueError(
                f"{name} must be feature maps (N, d, {self.map_size[0]}, {self.map_size[1]}), "
                f"got shape {tuple(maps.shape)}"
            )

    def similarity_vectors(self, query: Tensor, gallery: Tensor) -> Tensor:
        """Max-pooled local similarities of every pair: (q, d, h, w), (g, d, h, w) -> (q, g, 2hw)."""
        self._check_maps("query", query)
        self._check_maps("gallery", gallery)
        if query.shape[1] != gallery.shape[1]:
            raise ValueError(f"query has {query.shape[1]} channels but gallery has {gallery.shape[1]}")
        if len(query) == 0 or len(gallery) == 0:
            raise ValueError(
                f"need at least one query and one gallery map, got {len(query)} and {len(gallery)}"
            )
        q_step = min(len(query), self.pairs_per_chunk)
        g_step = max(1, self.pairs_per_chunk // q_step)
        rows = []
        for qs in range(0, len(query), q_step):
            blocks = [
                self._pooled_block(query[qs : qs + q_step], gallery[gs : gs + g_step])
                for gs in range(0, len(gallery), g_step)
            ]
            rows.append(torch.cat(blocks, dim=1))
        return torch.cat(rows, dim=0)

    @staticmethod
    def _pooled_block(query: Tensor, gallery: Tensor) -> Tensor:
        """(q, d, h, w), (g, d, h, w) -> (q, g, 2hw) for one chunk of pairs."""
        q, d = query.shape[:2]
        g = gallery.shape[0]
        kernels = query.flatten(2).transpose(1, 2).reshape(-1, d)  # (q*hw, d): one 1x1 kernel per location
        sims = kernels @ gallery.flatten(2).transpose(0, 1).reshape(d, -1)  # (q*hw, g*hw) cosine similarities
        sims = sims.view(q, -1, g, sims.shape[1] // g)  # (q, hw_q, g, hw_g)
        best_for_query = sims.max(dim=3).values.transpose(1, 2)  # (q, g, hw_q): GMP over gallery locations
        best_for_gallery = sims.max(dim=1).values  # (q, g, hw_g): GMP over query locations
        return torch.cat([best_for_query, best_for_gallery], dim=2)  # (q, g, 2hw)

    def head(self, vectors: Tensor) -> Tensor:
        """BN -> FC -> BN of Section 3.2: (..., 2hw) similarity vectors -> (...) logits."""
        lead = vectors.shape[:-1]
        x = self.bn(vectors.reshape(-1, 1, vectors.shape[-1]))  # (N, 1, 2hw): one BN over all values
        logits = self.logit_bn(self.fc(x.squeeze(1)))  # (N, 1)
        return logits.view(lead)

    def logits(self, query: Tensor, gallery: Tensor) -> Tensor:
        """Matching logits of every (query, gallery) pair, (q, g). Use these for ranking: the sigmoid of
        large logits rounds to 1.0 in float32 and would tie."""
        return self.head(self.similarity_vectors(query, gallery))

    def score(self, query: Tensor, gallery: Tensor) -> Tensor:
        """Matching probabilities sigmoid(logit) in [0, 1], (q, g): the paper's similarity output (and the
        score TLift expects). Fits :func:`reidbook.evaluation.pairwise_distance_matrix` as ``score_fn``."""
        return torch.sigmoid(self.logits(query, gallery))

    @torch.no_grad()
    def correspondences(self, query_map: Tensor, gallery_map: Tensor) -> Correspondences:
        """For one pair of maps (d, h, w): each query location's best gallery location (the argmax of the
        global max pooling, Fig. 2) and its cosine similarity."""
        if query_map.ndim != 3 or query_map.shape != gallery_map.shape:
            raise ValueError(
                "query_map and gallery_map must be single feature maps (d, h, w) of the same shape, got "
                f"{tuple(query_map.shape)} and {tuple(gallery_map.shape)}"
            )
        h, w = query_map.shape[1:]
        sims = query_map.flatten(1).t() @ gallery_map.flatten(1)  # (hw_q, hw_g)
        best, index = sims.max(dim=1)  # (hw_q,), (hw_q,)
        return Correspondences(
            rows=(index // w).view(h, w), cols=(index % w).view(h, w), similarity=best.view(h, w)
        )


@torch.no_grad()
def replace_by_newest(memory: Tensor, seen: Tensor, values: Tensor, pids: Tensor) -> None:
    """Direct-assignment update (Section 3.3): ``memory[c] = values[last i with pids[i] == c]`` for every
    class c in ``pids``, and ``seen[c] = True``. memory (C, ...), seen (C,), values (B, ...), pids (B,)."""
    last = torch.full((len(memory),), -1, dtype=torch.long, device=pids.device)
    last.scatter_reduce_(0, pids, torch.arange(len(pids), device=pids.device), reduce="amax")  # (C,)
    classes = pids.unique()
    memory[classes] = values[last[classes]].detach().to(memory.dtype)
    seen[classes] = True


class ClassMemory(nn.Module):
    """The class memory of Section 3.3: a [classes, d, h, w] buffer of the newest feature map of each class.

    :meth:`update` replaces the entry of every class present in the mini-batch by that class's last
    sample in the batch (direct assignment, no moving average, no gradient); ``seen`` marks the classes
    written at least once.
    """

    maps: Tensor
    seen: Tensor

    def __init__(self, num_classes: int, channels: int, map_size: tuple[int, int]) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.register_buffer("maps", torch.zeros(num_classes, channels, *map_size))  # (C, d, h, w)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))  # (C,)

    @torch.no_grad()
    def update(self, maps: Tensor, pids: Tensor) -> None:
        """Write ``maps`` (B, d, h, w) into the rows ``pids`` (B,); a class occurring twice keeps its last."""
        if maps.shape[1:] != self.maps.shape[1:] or pids.shape != maps.shape[:1]:
            raise ValueError(
                f"update needs maps (B, {', '.join(map(str, self.maps.shape[1:]))}) and pids (B,), got "
                f"{tuple(maps.shape)} and {tuple(pids.shape)}"
            )
        if pids.numel() and (pids.min() < 0 or pids.max() >= self.num_classes):
            raise ValueError(f"pids must lie in 0..{self.num_classes - 1}, got {pids.min()}..{pids.max()}")
        replace_by_newest(self.maps, self.seen, maps, pids)

    @torch.no_grad()
    def reset(self) -> None:
        self.maps.zero_()
        self.seen.zero_()


class QAConvNet(nn.Module):
    """Backbone stages 1-3 -> :class:`FeatureMapNeck` -> normalised maps, with the QAConv matcher and the
    class memory as submodules (so the optimizer trains the matcher's BN-FC-BN and checkpoints keep the
    memory).

    ``forward`` returns ``{"fmap": (B, channels, h, w)}`` in training mode and the maps themselves in eval
    mode; compare them with ``model.matcher.score`` (or ``logits``). Train with :class:`QAConvCriterion`.

    Args:
        num_classes: training identities (rows of the class memory).
        backbone: a registered backbone name or a :class:`Backbone` (only its stem and stages 1-3 are kept).
        image_size: (H, W) of the input images; fixes the map size h x w (e.g. 24 x 8 for 384 x 128).
        map_stride: 16 keeps stage 3 as it is (the paper); 8 removes stage 3's downsampling, which doubles
            the map's height and width (8 x 4 maps from 64 x 32 images, the book's CPU setting).
        channels: neck channels (128 in the paper).
        neck_kernel: 3 (authors' code, default) or 1 (paper text).
        pretrained: ImageNet weights for a backbone given by name.
        pairs_per_chunk: memory bound of the matcher (see :class:`QueryAdaptiveConv`).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | Backbone = "resnet50",
        *,
        image_size: tuple[int, int] = (384, 128),
        channels: int = 128,
        neck_kernel: int = 3,
        map_stride: int = 16,
        pretrained: bool = False,
        pairs_per_chunk: int = 2048,
    ) -> None:
        super().__init__()
        if map_stride not in (8, 16):
            raise ValueError(f"map_stride must be 16 (stage 3 as is) or 8 (stage 3 at stride 1), "
                             f"got {map_stride}")
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained)
        if map_stride == 8:
            make_stride_one(backbone.stages[FEATURE_STAGE])
        self.backbone = nn.Sequential(backbone.stem, *backbone.stages[: FEATURE_STAGE + 1])
        self.neck = FeatureMapNeck(backbone.out_channels[FEATURE_STAGE], channels, neck_kernel)
        self.map_size = self._probe_map_size(image_size)
        self.matcher = QueryAdaptiveConv(self.map_size, pairs_per_chunk)
        self.memory = ClassMemory(num_classes, channels, self.map_size)

    @torch.no_grad()
    def _probe_map_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            fmap = self.backbone(torch.zeros(1, 3, *image_size))
        finally:
            self.backbone.train(was_training)
        return int(fmap.shape[2]), int(fmap.shape[3])

    def forward(self, img: Tensor) -> dict[str, Tensor] | Tensor:
        fmap = self.neck(self.backbone(img))  # (B, channels, h, w), unit norm over channels
        if tuple(fmap.shape[2:]) != self.map_size:
            raise ValueError(
                f"images of size {tuple(img.shape[2:])} give {tuple(fmap.shape[2:])} maps, but the model was "
                f"built for {self.map_size} maps; pass image_size= matching the data"
            )
        return {"fmap": fmap} if self.training else fmap

    def match(self, query: Tensor, gallery: Tensor) -> Tensor:
        """(q, g) matching logits of two sets of maps."""
        return self.matcher.logits(query, gallery)

    def pair_distances(self, query: Tensor, gallery: Tensor) -> Tensor:
        """(q, g) distances ``1 - sigmoid(logit / 10)`` of two sets of maps: the authors' evaluation scores
        (their code divides the logit by 10 to make the scores "visually more recognizable"), which rank as
        the logits do; computed as ``sigmoid(-logit / 10)`` so that no precision is lost near 0. The
        pair-scoring path of :class:`reidbook.evaluation.evaluators.Pairwise`."""
        return torch.sigmoid(-self.matcher.logits(query, gallery) / SCORE_SCALE)

    def param_groups(self, base_lr: float, backbone_lr_mult: float = 0.1) -> list[dict]:
        """The paper's learning rates (Section 5.1): backbone at 0.1x the new layers' rate."""
        return param_groups(self, base_lr, {"backbone": backbone_lr_mult})


def memory_matching_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0) -> Tensor:
    """Eq. 1: ``-(1/b) sum_i sum_j (1 - p^_ij)^gamma log p^_ij`` with p^ of Eq. 2.

    logits (b, c) of the pairs (sample i, memory class j), targets (b, c) in {0, 1}.
    """
    return binary_focal_loss(logits, targets, gamma=gamma, reduction="none").sum(dim=1).mean()


class QAConvCriterion(nn.Module):
    """Class-memory loss of Sections 3.3-3.4 for :class:`QAConvNet`: ``{"focal_bce": Eq. 1}``.

    Each call matches the batch's maps (as queries: their gradient flows) against the memory's seen
    classes (no gradient), computes Eq. 1 over those classes only, then writes the batch into the memory.
    Before any class is seen the loss is a zero connected to the graph.
    """

    def __init__(self, model: QAConvNet, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.matcher = model.matcher
        self.memory = model.memory
        self.gamma = gamma

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        fmap, pids = outputs["fmap"], batch["pid"]  # (B, d, h, w), (B,)
        seen = self.memory.seen.nonzero().squeeze(1)  # (S,) classes present in the memory
        if seen.numel() == 0:
            loss = fmap.sum() * 0.0
        else:
            logits = self.matcher.logits(fmap, self.memory.maps[seen].to(fmap.dtype))  # (B, S)
            targets = (pids.unsqueeze(1) == seen.unsqueeze(0)).to(logits.dtype)  # (B, S)
            loss = memory_matching_loss(logits, targets, self.gamma)
        self.memory.update(fmap, pids)
        return {"focal_bce": loss}
