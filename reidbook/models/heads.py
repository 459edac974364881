"""Heads placed on top of a backbone's pooled feature: the BN-neck and the identity classifier.

Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification" (CVPRW 2019),
Section 3.4: the triplet loss is applied to the pooled feature ``f_t``; a batch-normalisation layer
turns it into ``f_i``, on which the identity classifier (and, at test time, retrieval) works. The BN
layer's bias (shift) is frozen at zero so that ``f_i`` stays centred and spreads over the hypersphere.
"""

from __future__ import annotations

from torch import nn


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d over a (B, D) feature whose bias is fixed at 0 (not trained)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class IdentityClassifier(nn.Linear):
    """Linear layer without bias mapping a (B, D) feature to (B, num_classes) identity logits.

    Initialised from N(0, 0.001^2), as in the strong baseline's code.
    """

    def __init__(self, dim: int, num_classes: int, init_std: float = 0.001) -> None:
        super().__init__(dim, num_classes, bias=False)
        nn.init.normal_(self.weight, std=init_std)
