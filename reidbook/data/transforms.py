"""Image transforms of the strong baseline (Luo et al. 2019, Sec. 3): resize, random horizontal flip,
zero-pad and random crop, ImageNet normalisation and random erasing (Zhong et al. 2020), or QAConv's
Random Block (Liao & Shao 2020, Section 5.1).

The transforms work on uint8 image tensors (3, H, W) -- the form in which :class:`ImageDataset`
caches decoded images -- with :mod:`torchvision.transforms.v2`, and return float tensors (3, h, w).
Their randomness is drawn from torch's global random generator: seeding it at the start of an
epoch (the engine does) makes the augmentation of that epoch reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms import v2

from .augment import RandomBlock

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Tensor], Tensor]


def build_transforms(
    height: int,
    width: int,
    train: bool,
    *,
    flip: bool = True,
    pad: int = 10,
    random_erasing: float = 0.5,
    random_block: float = 0.0,
    normalize: bool = True,
) -> Transform:
    """The baseline's transform for training (``train=True``) or testing (resize + normalise only).

    Args:
        height, width: output size.
        flip: random horizontal flip with probability 0.5 (training only).
        pad: zero padding on each side before a random ``height x width`` crop; 0 disables it.
        random_erasing: probability of erasing a random rectangle (2%-33% of the area, aspect ratio
            0.3-3.3) with the ImageNet mean colour; 0 disables it.
        random_block: probability of pasting a white square of side up to 0.8 x width at a random
            position (QAConv's Random Block); 0 disables it.
        normalize: subtract the ImageNet mean and divide by its standard deviation.

    Returns a callable mapping a uint8 image tensor (3, H, W) to a float32 tensor (3, height, width).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing}")
    if not 0.0 <= random_block <= 1.0:
        raise ValueError(f"random_block is a probability in [0, 1], got {random_block}")
    steps: list[Transform] = [v2.Resize((height, width), antialias=True)]
    if train and flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if train and pad > 0:
        steps.append(v2.RandomCrop((height, width), padding=pad, fill=0))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train and random_block > 0:
        steps.append(RandomBlock(max_frac=0.8, p=random_block))  # white = 1.0 before normalisation
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    if train and random_erasing > 0:
        mean_colour = 0.0 if normalize else list(IMAGENET_MEAN)  # the mean is 0 once normalised
        steps.append(
            v2.RandomErasing(random_erasing, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=mean_colour)
        )
    return v2.Compose(steps)
