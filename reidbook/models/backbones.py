"""Backbones: torchvision classification networks cut into a stem and four stages.

Every backbone is a :class:`Backbone` whose four stages end at strides 4, 8, 16 and 32 (16 with
``last_stride=1``, the strong baseline's trick of Luo et al. that doubles the final map's resolution).
Methods that plug blocks between stages (IANet after stages 2 and 3) or read an intermediate map
(QAConv reads stage 3) use ``backbone.stem`` / ``backbone.stages`` or :meth:`Backbone.forward_stages`.

ImageNet weights come from torchvision's weights API, but only from the local torch hub cache: this
package never downloads. When a checkpoint is not cached, a :class:`PretrainedWeightsMissingWarning`
names the file it looked for and the URL to fetch it from, and the backbone starts from random weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import Tensor, nn

BackboneFactory = Callable[[bool, int], "Backbone"]
_BACKBONES: dict[str, BackboneFactory] = {}


class PretrainedWeightsMissingWarning(UserWarning):
    """ImageNet weights were asked for but are not in the local torch hub cache."""


class Backbone(nn.Module):
    """A feature extractor made of a ``stem`` followed by four ``stages``.

    Args:
        stem: module applied to the image before the first stage.
        stages: the four stages, in order.
        out_channels: channels of each stage's output map.
        strides: total stride of each stage's output map with respect to the image.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        out_channels: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        super().__init__()
        if len(stages) != 4 or len(out_channels) != 4 or len(strides) != 4:
            raise ValueError(
                f"a Backbone needs 4 stages, 4 out_channels and 4 strides, got {len(stages)}, "
                f"{len(out_channels)} and {len(strides)}"
            )
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(out_channels)
        self.strides = list(strides)

    @property
    def feature_dim(self) -> int:
        """Channels of the last feature map."""
        return self.out_channels[-1]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The four stages' output maps, ``[(B, C_i, H/s_i, W/s_i) for i in 1..4]``."""
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """The last feature map, (B, C_4, H/s_4, W/s_4)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory(pretrained: bool, last_stride: int) -> Backbone`` under ``name``."""

    def wrap(factory: BackboneFactory) -> BackboneFactory:
        _BACKBONES[name.lower()] = factory
        return factory

    return wrap


def available_backbones() -> list[str]:
    return sorted(_BACKBONES)


def build_backbone(
    name: str, *, pretrained: bool = False, last_stride: int = 1, stem_pool: bool = True
) -> Backbone:
    """Build backbone ``name`` (see :func:`available_backbones`).

    Args:
        pretrained: load ImageNet weights from the local torch hub cache (warns and uses random
            weights when they are not cached; never downloads).
        last_stride: stride of the last stage, 2 as in the classification network or 1 as in the
            strong baseline (Luo et al.), which keeps a twice larger last feature map.
        stem_pool: ``False`` replaces the stem's max-pooling by the identity, so every stage's map is
            twice as high and wide (at four times the stages' cost); the weights are unchanged.
    """
    factory = _BACKBONES.get(name.lower())
    if factory is None:
        raise KeyError(f"Unknown backbone {name!r}. Known backbones: {', '.join(available_backbones())}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    backbone = factory(pretrained, last_stride)
    if not stem_pool:
        drop_stem_pool(backbone, name)
    return backbone


def drop_stem_pool(backbone: Backbone, name: str = "backbone") -> None:
    """Replace the last max-pooling of ``backbone.stem`` by the identity and halve the stages' strides."""
    pools = [(parent, child) for parent in backbone.stem.modules()
             for child, module in parent.named_children() if isinstance(module, nn.MaxPool2d)]
    if not pools:
        raise ValueError(f"the stem of {name} has no max-pooling to drop (stem_pool=False)")
    parent, child = pools[-1]
    setattr(parent, child, nn.Identity())
    backbone.strides = [stride // 2 for stride in backbone.strides]


# --------------------------------------------------------------------------- ImageNet weights, offline


def cached_weights(arch: str, pretrained: bool) -> tvm.WeightsEnum | None:
    """torchvision's default ImageNet weights of ``arch`` if asked for and cached locally, else ``None``.

    The checkpoint is looked for in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``),
    the folder torchvision itself downloads into; nothing is downloaded here.
    """
    if not pretrained:
        return None
    weights = tvm.get_model_weights(arch).DEFAULT
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if checkpoint.is_file():
        return weights
    warnings.warn(
        f"ImageNet weights for {arch} are not cached: looked for {checkpoint}. Continuing from random "
        f"initialisation. To use them, download {weights.url} into {checkpoint.parent} "
        "(or point $TORCH_HOME to a folder whose hub/checkpoints holds it).",
        PretrainedWeightsMissingWarning,
        stacklevel=3,
    )
    return None


def make_stride_one(block: nn.Module) -> None:
    """Set every stride-2 convolution or pooling in ``block`` to stride 1 (the last-stride trick)."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
        elif isinstance(module, nn.MaxPool2d) and module.stride in (2, (2, 2)):
            module.stride = 1


def _strides(last_stride: int) -> list[int]:
    return [4, 8, 16, 16 * last_stride]


# --------------------------------------------------------------------------- ResNets


def _resnet(arch: str, pretrained: bool, last_stride: int) -> Backbone:
    net = getattr(tvm, arch)(weights=cached_weights(arch, pretrained))
    if last_stride == 1:
        make_stride_one(net.layer4[0])
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)  # stride 4
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    top = net.fc.in_features  # 512 (BasicBlock) or 2048 (Bottleneck); channels double at each stage
    return Backbone(stem, stages, [top // 8, top // 4, top // 2, top], _strides(last_stride))


@register_backbone("resnet18")
def resnet18(pretrained: bool = False, last_stride: int = 1) -> Backbone:
    return _resnet("resnet18", pretrained, last_stride)


@register_backbone("resnet34")
def resnet34(pretrained: bool = False, last_stride: int = 1) -> Backbone:
    return _resnet("resnet34", pretrained, last_stride)


@register_backbone("resnet50")
def resnet50(pretrained: bool = False, last_stride: int = 1) -> Backbone:
    return _resnet("resnet50", pretrained, last_stride)


@register_backbone("resnet101")
def resnet101(pretrained: bool = False, last_stride: int = 1) -> Backbone:
    return _resnet("resnet101", pretrained, last_stride)


# --------------------------------------------------------------------------- VGG19-bn (IPAD)


@register_backbone("vgg19_bn")
def vgg19_bn(pretrained: bool = False, last_stride: int = 1) -> Backbone:
    """VGG19 with batch norm, cut after each max-pooling: the stem ends at stride 2, the stages at
    4/8/16/32 with 128/256/512/512 channels. ``last_stride=1`` removes the fifth pooling."""
    features = tvm.vgg19_bn(weights=cached_weights("vgg19_bn", pretrained)).features
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]  # 5 poolings
    bounds = [0, *(p + 1 for p in pools)]
    blocks = [features[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if last_stride == 1:
        blocks[-1][-1] = nn.Identity()
    return Backbone(blocks[0], blocks[1:], [128, 256, 512, 512], _strides(last_stride))


# --------------------------------------------------------------------------- MobileNetV2 (IPAD)


@register_backbone("mobilenet_v2")
def mobilenet_v2(pretrained: bool = False, last_stride: int = 1) -> Backbone:
    """MobileNetV2's features cut where the resolution halves: the stem (stride 2) holds the first
    convolution and inverted residual, the stages end at strides 4/8/16/32 with 24/32/96/1280 channels."""
    features = tvm.mobilenet_v2(weights=cached_weights("mobilenet_v2", pretrained)).features
    if last_stride == 1:
        make_stride_one(features[14])
    stem = features[0:2]
    stages = [features[2:4], features[4:7], features[7:14], features[14:19]]
    return Backbone(stem, stages, [24, 32, 96, 1280], _strides(last_stride))


# --------------------------------------------------------------------------- GoogLeNet (IANet)


class GoogLeNetInputTransform(nn.Module):
    """Map an ImageNet-normalised image to the ``(x - 0.5) / 0.5`` normalisation that torchvision's
    pretrained GoogLeNet (ported from TensorFlow) expects."""

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.register_buffer("scale", std / 0.5, persistent=False)
        self.register_buffer("shift", (mean - 0.5) / 0.5, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


@register_backbone("googlenet")
def googlenet(pretrained: bool = False, last_stride: int = 1) -> Backbone:
    """GoogLeNet (Inception v1): stem = conv1 + pool (stride 4); stages end after conv3 (192 ch, stride 4),
    inception 3b (480, 8), 4e (832, 16) and 5b (1024, 32). ``last_stride=1`` removes the fourth pooling."""
    weights = cached_weights("googlenet", pretrained)
    if weights is None:
        net = tvm.googlenet(weights=None, aux_logits=False, init_weights=True)
    else:
        net = tvm.googlenet(weights=weights)  # loads the auxiliary heads, then drops them
    input_transform = GoogLeNetInputTransform() if net.transform_input else nn.Identity()
    stem = nn.Sequential(input_transform, net.conv1, net.maxpool1)
    stages = [
        nn.Sequential(net.conv2, net.conv3),
        nn.Sequential(net.maxpool2, net.inception3a, net.inception3b),
        nn.Sequential(
            net.maxpool3, net.inception4a, net.inception4b, net.inception4c, net.inception4d, net.inception4e
        ),
        nn.Sequential(nn.Identity() if last_stride == 1 else net.maxpool4, net.inception5a, net.inception5b),
    ]
    return Backbone(stem, stages, [192, 480, 832, 1024], _strides(last_stride))
