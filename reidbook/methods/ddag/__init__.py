"""DDAG (Ye et al., "Dynamic Dual-Attentive Aggregation Learning for Visible-Infrared Person
Re-Identification", ECCV 2020): a two-stream network (a stem per modality, shared stages) with
intra-modality weighted-part aggregation (IWPA) and cross-modality graph structured attention (CGSA),
joined by the dynamic loss weight of Eq. 11 (:mod:`reidbook.models.ddag`).

Two recipes share this module:

* ``"two-stream"``: the paper's baseline B, the two-stream network trained by ``L_b = L_id + L_tri``
  (Eq. 1) alone;
* ``"ddag"``: B + P + G by default; its options reach Table 1's other rows (``parts=0``: no IWPA,
  ``graph=False``: no graph), Table 2's part-attention designs (``part_weights``, ``iwpa_residual``) and
  Table 3's ``graph_images`` (N_g).

Both train on identity-balanced cross-modality batches (Section 3.3): ``profile.batch_p`` identities x
``profile.batch_k / 2`` visible + ``profile.batch_k / 2`` infrared images each, so a batch holds
``profile.batch_size`` images as in every other chapter; augmented by pad-and-crop and flips (no random
erasing, as the paper). Test features are the flip-averaged embeddings (``x*`` with IWPA, else the
BN-neck feature) compared by the cosine distance (the authors' code ranks l2-normalised features; the
text does not say), under the dataset's own protocol (SYSU-MM01 or RegDB).

What we chose where the paper and the authors' code leave room:

* The whole network is fine-tuned at the profile's learning rate, as the book's strong baseline is; the
  authors' code trains the backbone at 0.1x the rate of the new layers (the text says nothing of it).
* Table 3's N_g, "the number of images selected for graph construction", is read as the size of the
  graph neighbourhoods: with ``graph_images = N_g`` every image is joined in the graph to N_g - 1 other
  images of its identity in the batch (N_g / 2 visible and N_g / 2 infrared ones, in batch order; N_g = 1
  leaves each image alone with itself), so the batches, and every other loss, stay the same across the
  table's rows. ``None`` joins all of an identity's ``batch_k`` images (the paper's N_g = 8 with its
  batches of 4 + 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ...data import Record, build_transforms
from ...data.loader import MODALITY_CODES, ImageDataset
from ...data.sampler import CrossModalityIdentitySampler
from ...evaluation.evaluators import Embedding, Evaluator
from ...models.backbones import Backbone
from ...models.ddag import DDAGCriterion, DDAGNet, DynamicDualAggregation, ddag_feed
from ...paper_numbers import DDAG_TABLES
from ...profiles import Profile
from ..recipe import Headline, Options, Recipe
from ..registry import register

#: The paper's training (Section 4.1) for real data on a GPU: ResNet-50 at 288 x 144, SGD (momentum 0.9)
#: at 0.1 with a warm-up (10 epochs in the authors' code), x0.1 at epoch 30 and x0.01 at epoch 50, 80
#: epochs, batches of 8 identities x (4 visible + 4 infrared) images.
PAPER_PROFILE = {"backbone": "resnet50", "init": "imagenet", "last_stride": 1, "height": 288, "width": 144,
                 "epochs": 80, "optimizer": "sgd", "lr": 0.1, "warmup_epochs": 10, "milestones": (30, 50),
                 "gamma": 0.1, "batch_p": 8, "batch_k": 8}
MODEL_OPTIONS = ("parts", "graph", "iwpa_residual", "part_weights", "iwpa_output_bn", "graph_heads",
                 "graph_dim", "graph_dropout", "graph_output_elu")
#: The paper's DDAG (Sections 3.2-3.4): p = 3 parts, residual BN, learnable part weights, L = 4 heads of
#: d = 256, no dropout; graph neighbourhoods over all of an identity's images in the batch.
PAPER_DDAG = {"parts": 3, "graph": True, "iwpa_residual": "bn", "part_weights": "learnable",
              "iwpa_output_bn": False, "graph_heads": 4, "graph_dim": 256, "graph_dropout": 0.0,
              "graph_output_elu": False, "graph_images": None, "label_smoothing": 0.0, "triplet_margin": 0.3}


def check_graph_images(graph_images: int) -> None:
    """Raise unless ``graph_images`` (N_g) is 1 or a positive even int."""
    if isinstance(graph_images, bool) or not isinstance(graph_images, int) or graph_images < 1 or (
            graph_images > 1 and graph_images % 2):
        raise ValueError(f"graph_images (N_g) must be 1 or a positive even int, got {graph_images!r}")


def graph_groups(pids: Tensor, modality: Tensor, graph_images: int) -> Tensor:
    """Graph labels that cut each identity's images into neighbourhoods of ``graph_images`` (N_g) images.

    Images are ranked within their (identity, modality) in batch order; rank r joins neighbourhood
    ``r // (N_g / 2)`` of its identity (one visible and one infrared half), and N_g = 1 gives every image
    its own label. pids (B,), modality (B,) -> (B,) long labels, equal iff two images share a
    neighbourhood.

    Raises:
        ValueError: if ``graph_images`` is neither 1 nor a positive even number.
    """
    check_graph_images(graph_images)
    same = (pids[:, None] == pids[None, :]) & (modality[:, None] == modality[None, :])  # (B, B)
    rank = torch.tril(same, diagonal=-1).sum(dim=1)  # (B,): earlier images of the same identity and modality
    group = rank * 2 + modality if graph_images == 1 else rank // (graph_images // 2)  # (B,)
    keys = torch.stack([pids, group], dim=1)  # (B, 2)
    return torch.unique(keys, dim=0, return_inverse=True)[1]


class GraphNeighbourhoodDDAG(DDAGNet):
    """:class:`DDAGNet` whose graph joins each image to the ``graph_images`` (N_g) images of its
    neighbourhood (:func:`graph_groups`) instead of every image of its identity in the batch (Table 3)."""

    def __init__(self, num_classes: int, backbone: Backbone, *, graph_images: int, **options: object) -> None:
        super().__init__(num_classes, backbone, **options)
        check_graph_images(graph_images)
        self.graph_images = graph_images

    def forward(self, img: Tensor, modality: Tensor,
                pids: Tensor | None = None) -> dict[str, Tensor] | Tensor:
        if self.training and pids is not None:
            pids = graph_groups(pids, modality, self.graph_images)  # only the graph reads them
        return super().forward(img, modality, pids)


def instances_per_modality(profile: Profile) -> int:
    """m, the images per identity and modality in a batch: half of ``profile.batch_k``.

    Raises:
        ValueError: if ``batch_k`` is odd (a batch holds as many visible as infrared images).
    """
    if profile.batch_k % 2:
        raise ValueError(f"DDAG's batches hold batch_k / 2 visible and batch_k / 2 infrared images per "
                         f"identity: batch_k must be even, got {profile.batch_k}")
    return profile.batch_k // 2


def cross_modality_batches(records: Sequence[Record], profile: Profile, seed: int, augment: Options,
                           options: Options) -> DataLoader:
    """``batch_p`` identities x (m visible + m infrared) images, m = ``batch_k / 2`` (seeded, resumable)."""
    sampler = CrossModalityIdentitySampler(
        [r.pid for r in records], [MODALITY_CODES[r.modality] for r in records], num_pids=profile.batch_p,
        num_instances=instances_per_modality(profile), seed=seed)
    transform = build_transforms(profile.height, profile.width, train=True, **dict(augment))
    dataset = ImageDataset(records, transform, cache=True, cache_size=(profile.height, profile.width))
    return DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=True,
                      num_workers=profile.num_workers, persistent_workers=profile.num_workers > 0)


def build_model(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
    settings = {name: options[name] for name in MODEL_OPTIONS}
    if options["graph_images"] is None:
        return DDAGNet(num_classes, backbone, **settings)
    if not options["graph"]:
        raise ValueError(f"graph_images={options['graph_images']!r} needs the graph (graph=True)")
    if options["graph_images"] > profile.batch_k:
        raise ValueError(f"graph_images (N_g) can be at most the batch's {profile.batch_k} images per "
                         f"identity (batch_k), got {options['graph_images']}")
    return GraphNeighbourhoodDDAG(num_classes, backbone, graph_images=options["graph_images"], **settings)


def build_two_stream(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
    return DDAGNet(num_classes, backbone, parts=0, graph=False)


def build_criterion(model: nn.Module, num_classes: int, options: Options) -> nn.Module:
    return DDAGCriterion(num_classes, label_smoothing=options["label_smoothing"],
                         triplet_margin=options["triplet_margin"])


def build_hooks(profile: Profile, options: Options) -> list:
    return [DynamicDualAggregation()] if options["graph"] else []


SHARED = dict(
    module=__name__,
    build_criterion=build_criterion,
    evaluator=Evaluator(Embedding("cosine")),
    loader=cross_modality_batches,
    feed=ddag_feed,
    augment={"random_erasing": 0.0},
    profiles={"paper": PAPER_PROFILE},
    paper={"tables": DDAG_TABLES},
)

DDAG = register(Recipe(
    name="ddag",
    title="DDAG (Ye et al., ECCV 2020)",
    build_model=build_model,
    hooks=build_hooks,
    options=dict(PAPER_DDAG),
    headline=Headline("IWPA and the cross-modality graph, joined by the dynamic weight (B+P+G), raise "
                      "infrared-to-visible mAP over the two-stream baseline B (Table 1)",
                      dataset="synthetic-sysu", reference="two-stream"),
    **SHARED,
))

TWO_STREAM = register(Recipe(
    name="two-stream",
    title="two-stream baseline B of DDAG (Ye et al., ECCV 2020)",
    build_model=build_two_stream,
    options={"label_smoothing": 0.0, "triplet_margin": 0.3},
    **SHARED,
))
