"""A learning-free measure of how different two domains look, for calibrating the ``domain_gap`` knob.

:func:`domain_gap_proxy` compares the images a cross-domain experiment trains on (the source's training
split) with those it is tested on (the target's gallery, distractors left out), through the colour
histograms of :mod:`reidbook.models.color_histogram` — the no-learning matcher that calibrates the
world's difficulty. Two statistics:

- *separability*: a nearest-neighbour two-sample statistic (Schilling, JASA 1986). Pool ``n`` images of
  each sample; for every image find its nearest neighbour among the images of *other* identities (its
  own identity's other shots would give its sample away through the person, not the style) and count
  how often that neighbour comes from its own sample, rescaled so that 0 is the share of same-sample
  candidates (a little under 1/2) and 1 means every neighbour is from its own sample;
- *histogram shift*: the Bhattacharyya distance between the two samples' mean stripe histograms, i.e.
  how far the average colour layout moved.

Two splits of *one* domain are not indistinguishable: they hold different people (a few dozen to a few
hundred, whose clothes differ by chance) and twins stay in one split. So both statistics are also
computed for the source's training split against the source's own gallery — the same comparison without
a change of domain — and the proxy is the excess of the cross-domain value over that baseline (0 when
the target is the source). Worlds of the same seed share their camera network, so that with the same
seed the proxy isolates the style; different seeds add the difference between two camera networks.

What it does not measure: what a trained network would learn to ignore. The two domains hold different
people (a person's clothes come from the domain's palette), so there is no same-identity cross-domain
retrieval to score; the proxy ranks worlds by how different they look, it does not predict an mAP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...models.color_histogram import ColorHistogramMatcher, histogram_distance
from ..records import Record, ReIDDataset


@dataclass(frozen=True)
class DomainGap:
    """The result of :func:`domain_gap_proxy`; ``*_baseline`` fields compare the source with itself."""

    separability: float  # source train vs target gallery: 0 = as mixed as chance, 1 = fully separated
    separability_baseline: float  # source train vs source gallery
    histogram_shift: float  # Bhattacharyya distance between the samples' mean stripe histograms, in [0, 1]
    histogram_shift_baseline: float
    images: int  # images drawn from each sample

    @property
    def gap(self) -> float:
        """The excess separability over the within-domain baseline: the proxy of the domain gap."""
        return self.separability - self.separability_baseline

    @property
    def shift(self) -> float:
        """The excess histogram shift over the within-domain baseline."""
        return self.histogram_shift - self.histogram_shift_baseline


def two_sample_statistics(
    features_a: np.ndarray,
    pids_a: np.ndarray,
    features_b: np.ndarray,
    pids_b: np.ndarray,
    matcher: ColorHistogramMatcher,
) -> tuple[float, float]:
    """(separability, histogram shift) of two samples of stripe histograms (n, stripes, bins) with their
    identities; identities are compared within a sample only (the samples' pids may collide)."""
    features = np.concatenate([features_a, features_b])  # (2n, stripes, bins)
    dist = matcher.distance(features, features)  # (2n, 2n)
    sample = np.repeat([0, 1], [len(features_a), len(features_b)])
    pid = np.concatenate([pids_a, pids_b])
    same_sample = sample[:, None] == sample[None, :]
    same_identity = same_sample & (pid[:, None] == pid[None, :])  # includes the diagonal
    dist[same_identity] = np.inf
    share = float(np.mean(sample[dist.argmin(axis=1)] == sample))
    candidates = ~same_identity
    chance = float(np.mean((same_sample & candidates).sum(1) / candidates.sum(1)))
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)  # (stripes, bins)
    shift = float(histogram_distance(mean_a[None], mean_b[None], matcher.metric)[0, 0])
    return (share - chance) / (1 - chance), shift


def domain_gap_proxy(
    source: ReIDDataset,
    target: ReIDDataset,
    images: int = 300,
    seed: int = 0,
    matcher: ColorHistogramMatcher | None = None,
) -> DomainGap:
    """How different ``target``'s test images look from ``source``'s training images (see the module).

    ``images`` images are drawn (seeded by ``seed``) from ``source.train``, ``target.gallery`` and
    ``source.gallery``, galleries without their distractors (pid <= 0); fewer if a split is smaller.
    """
    pools = [source.train, [r for r in target.gallery if r.pid > 0], [r for r in source.gallery if r.pid > 0]]
    n = min(images, *(len(pool) for pool in pools))
    if n < 2:
        raise ValueError(
            f"need at least 2 images per sample, got {[len(p) for p in pools]} in {source.name}'s train, "
            f"{target.name}'s gallery and {source.name}'s gallery (pid > 0), images={images}"
        )
    matcher = matcher or ColorHistogramMatcher()

    def sample(pool: list[Record], stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, stream])
        records = [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]
        return matcher.features([r.path for r in records]), np.array([r.pid for r in records])

    # Both galleries are sampled from the same stream: a target identical to the source gives gap 0.
    train, cross, own = sample(pools[0], 0), sample(pools[1], 1), sample(pools[2], 1)
    separability, shift = two_sample_statistics(*train, *cross, matcher)
    separability_baseline, shift_baseline = two_sample_statistics(*train, *own, matcher)
    return DomainGap(separability, separability_baseline, shift, shift_baseline, n)
