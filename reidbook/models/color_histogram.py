"""A colour-histogram matcher: the no-learning baseline that calibrates the synthetic world.

Each image is cut into horizontal stripes; each stripe is described by an HSV histogram (hue x
saturation x value bins for coloured pixels, value bins for greyish ones), normalised to sum to one.
Two images are compared with the Bhattacharyya distance per stripe,
``d(p, q) = sqrt(1 - sum_b sqrt(p_b q_b))``, averaged over stripes
(or with the L1 distance ``0.5 * sum_b |p_b - q_b|``). Both lie in [0, 1].

It sees colour and coarse layout only, so camera colour casts, misaligned or truncated boxes,
occluders and look-alike people defeat it — which is what the world's nuisances are tuned to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.records import ReIDDataset

METRICS = ("bhattacharyya", "l1")


def stripe_histograms(
    image: np.ndarray,
    stripes: int = 6,
    hue_bins: int = 8,
    grey_bins: int = 4,
    centre_sigma: float = 0.25,
    min_saturation: float = 0.2,
) -> np.ndarray:
    """Per-stripe colour histograms of an RGB uint8 image (H, W, 3) -> (stripes, num_bins), rows sum to 1.

    Chromatic pixels (saturation >= ``min_saturation``) vote in hue x 2 saturation x 3 value bins;
    greyish pixels, whose hue is meaningless, vote in ``grey_bins`` value bins. Votes are weighted by a
    Gaussian of the column's distance to the image's vertical axis (std ``centre_sigma`` x width), which
    favours the person over the background, as kernel-weighted histograms in classic ReID do.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    height, width = image.shape[:2]
    if height < stripes:
        raise ValueError(f"image height {height} is smaller than stripes={stripes}")
    hsv = np.asarray(Image.fromarray(image.astype(np.uint8)).convert("HSV"), dtype=np.int64)  # (H, W, 3)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    chromatic = s >= min_saturation * 255
    colour_index = ((h * hue_bins // 256) * 2 + (s >= 150)) * 3 + np.minimum(v * 3 // 256, 2)
    grey_index = hue_bins * 6 + np.minimum(v * grey_bins // 256, grey_bins - 1)
    index = np.where(chromatic, colour_index, grey_index)  # (H, W)
    x = (np.arange(width) - (width - 1) / 2) / (centre_sigma * width)
    weight = np.broadcast_to(np.exp(-0.5 * x**2), (height, width))  # (H, W)
    size = hue_bins * 6 + grey_bins
    rows = np.array_split(np.arange(height), stripes)
    hist = np.stack([np.bincount(index[r].ravel(), weights=weight[r].ravel(), minlength=size) for r in rows])
    return hist / hist.sum(axis=1, keepdims=True)


def histogram_distance(query: np.ndarray, gallery: np.ndarray, metric: str = "bhattacharyya") -> np.ndarray:
    """Distances between stripe histograms: (Q, S, B) x (G, S, B) -> (Q, G), averaged over stripes S."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if query.shape[1:] != gallery.shape[1:]:
        raise ValueError(f"query features {query.shape[1:]} and gallery features {gallery.shape[1:]} differ")
    stripes = query.shape[1]
    dist = np.zeros((len(query), len(gallery)))
    for s in range(stripes):
        q, g = query[:, s], gallery[:, s]  # (Q, B), (G, B)
        if metric == "bhattacharyya":
            coefficient = np.sqrt(q) @ np.sqrt(g).T  # (Q, G)
            dist += np.sqrt(np.clip(1.0 - coefficient, 0.0, None))
        else:
            dist += 0.5 * np.abs(q[:, None, :] - g[None, :, :]).sum(-1)
    return dist / stripes


class ColorHistogramMatcher:
    """Stripe HSV histograms compared with a histogram distance: images in, (Q x G) distances out."""

    def __init__(
        self,
        stripes: int = 6,
        hue_bins: int = 8,
        grey_bins: int = 4,
        centre_sigma: float = 0.25,
        metric: str = "bhattacharyya",
    ):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.stripes, self.hue_bins, self.grey_bins, self.metric = stripes, hue_bins, grey_bins, metric
        self.centre_sigma = centre_sigma

    def features(self, images: Iterable[str | Path | Image.Image | np.ndarray]) -> np.ndarray:
        """(N, stripes, num_bins) histograms of images given as paths, PIL images or RGB arrays."""
        return np.stack(
            [
                stripe_histograms(_as_rgb(im), self.stripes, self.hue_bins, self.grey_bins, self.centre_sigma)
                for im in images
            ]
        )

    def distance(self, query_features: np.ndarray, gallery_features: np.ndarray) -> np.ndarray:
        return histogram_distance(query_features, gallery_features, self.metric)

    def distance_matrix(self, query: Sequence, gallery: Sequence) -> np.ndarray:
        """(len(query), len(gallery)) distances between two lists of images."""
        return self.distance(self.features(query), self.features(gallery))


def histogram_scores(dataset: ReIDDataset, matcher: ColorHistogramMatcher | None = None) -> dict[str, float]:
    """Rank-1, mAP and mINP of the colour-histogram matcher (no learning) on ``dataset``'s test split,
    under the standard protocol."""
    from ..evaluation.ranking import evaluate_rank

    matcher = matcher or ColorHistogramMatcher()
    dist = matcher.distance_matrix([r.path for r in dataset.query], [r.path for r in dataset.gallery])
    result = evaluate_rank(dist, [r.pid for r in dataset.query], [r.pid for r in dataset.gallery],
                           [r.camid for r in dataset.query], [r.camid for r in dataset.gallery])
    return {"rank1": float(result["cmc"][0]), "mAP": result["mAP"], "mINP": result["mINP"]}


def _as_rgb(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)
