"""Backbones, the BN-neck and the strong baseline: shapes, stages, train/eval outputs, weights loading."""

import warnings

import pytest
import torch
import torchvision

from reidbook.models import (
    Backbone,
    Baseline,
    BaselineCriterion,
    PretrainedWeightsMissingWarning,
    available_backbones,
    build_backbone,
    param_groups,
    register_backbone,
)

ALL_BACKBONES = ["googlenet", "mobilenet_v2", "resnet101", "resnet18", "resnet34", "resnet50", "vgg19_bn"]
EXPECTED_CHANNELS = {
    "resnet18": [64, 128, 256, 512],
    "resnet34": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "resnet101": [256, 512, 1024, 2048],
    "vgg19_bn": [128, 256, 512, 512],
    "mobilenet_v2": [24, 32, 96, 1280],
    "googlenet": [192, 480, 832, 1024],
}


@pytest.fixture
def empty_hub(tmp_path):
    """Point torch hub at an empty folder (so no ImageNet checkpoint is cached) for one test."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(previous)


def test_registry_lists_every_backbone():
    assert set(ALL_BACKBONES) <= set(available_backbones())
    with pytest.raises(KeyError, match="resnet50"):
        build_backbone("resnet5O")


@pytest.mark.parametrize("name", ALL_BACKBONES)
@pytest.mark.parametrize("last_stride", [1, 2])
def test_backbone_stage_shapes(name, last_stride):
    backbone = build_backbone(name, last_stride=last_stride).eval()
    x = torch.randn(1, 3, 64, 32)  # small input keeps ResNet-101 / VGG cheap
    with torch.no_grad():
        maps = backbone.forward_stages(x)
        last = backbone(x)
    assert backbone.out_channels == EXPECTED_CHANNELS[name]
    assert backbone.strides == [4, 8, 16, 16 * last_stride]
    for fmap, channels, stride in zip(maps, backbone.out_channels, backbone.strides):
        assert fmap.shape == (1, channels, 64 // stride, 32 // stride)
    assert torch.equal(last, maps[-1])


def test_stem_and_stages_compose_to_forward():
    """Methods that insert blocks between stages (IANet) run stem and stages themselves."""
    backbone = build_backbone("resnet18").eval()
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        h = backbone.stem(x)
        for stage in backbone.stages[:3]:
            h = stage(h)
        stage3 = backbone.forward_stages(x)[2]
        assert torch.equal(h, stage3)  # what QAConv reads
        assert torch.equal(backbone.stages[3](h), backbone(x))


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "vgg19_bn"])
def test_without_the_stem_pool_every_map_doubles_and_the_weights_stay(name):
    torch.manual_seed(0)
    pooled = build_backbone(name).eval()
    torch.manual_seed(0)
    unpooled = build_backbone(name, stem_pool=False).eval()
    assert unpooled.strides == [s // 2 for s in pooled.strides] == [2, 4, 8, 8]
    pools = [sum(isinstance(m, torch.nn.MaxPool2d) for m in b.stem.modules()) for b in (pooled, unpooled)]
    assert pools[1] == pools[0] - 1  # only the stem's last max-pooling goes (VGG's stem has several)
    state = pooled.state_dict()
    assert {k: v.shape for k, v in unpooled.state_dict().items()} == {k: v.shape for k, v in state.items()}
    unpooled.load_state_dict(state)  # the same weights serve both
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        pairs = zip(pooled.forward_stages(x), unpooled.forward_stages(x), unpooled.strides)
        for small, large, stride in pairs:
            assert large.shape[2:] == (64 // stride, 32 // stride) == (2 * small.shape[2], 2 * small.shape[3])


def test_resnet_stem_without_pool_is_the_stem_minus_its_max_pooling():
    pooled, unpooled = build_backbone("resnet18").eval(), build_backbone("resnet18", stem_pool=False).eval()
    unpooled.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 3, 32, 16)
    pool = [m for m in pooled.stem.modules() if isinstance(m, torch.nn.MaxPool2d)][-1]
    with torch.no_grad():
        torch.testing.assert_close(pool(unpooled.stem(x)), pooled.stem(x))


def test_a_stem_without_max_pooling_cannot_drop_it():
    with pytest.raises(ValueError, match="the stem of mobilenet_v2 has no max-pooling to drop"):
        build_backbone("mobilenet_v2", stem_pool=False)


def test_last_stride_one_keeps_the_same_weights_shapes():
    s1, s2 = build_backbone("resnet50", last_stride=1), build_backbone("resnet50", last_stride=2)
    assert [p.shape for p in s1.parameters()] == [p.shape for p in s2.parameters()]


def test_missing_imagenet_weights_warn_once_and_fall_back_to_random_init(empty_hub):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = build_backbone("resnet18", pretrained=True)
    missing = [w for w in caught if issubclass(w.category, PretrainedWeightsMissingWarning)]
    assert len(missing) == 1
    message = str(missing[0].message)
    assert "resnet18-f37072fd.pth" in message and str(empty_hub) in message and "https://" in message
    assert backbone(torch.randn(1, 3, 32, 16)).shape == (1, 512, 2, 1)


def save_fake_checkpoint(hub_dir, arch: str, **kwargs) -> torch.nn.Module:
    """Save a randomly initialised torchvision model where torchvision caches ``arch``'s ImageNet weights."""
    reference = getattr(torchvision.models, arch)(**kwargs)
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    (hub_dir / "checkpoints").mkdir(exist_ok=True)
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / url.rsplit("/", 1)[-1])
    return reference


def build_without_missing_weights_warning(name: str) -> Backbone:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedWeightsMissingWarning)
        return build_backbone(name, pretrained=True)


def test_cached_resnet_weights_are_loaded_without_download(empty_hub):
    reference = save_fake_checkpoint(empty_hub, "resnet18")
    backbone = build_without_missing_weights_warning("resnet18")
    assert torch.equal(backbone.stem[0].weight, reference.conv1.weight)
    assert torch.equal(backbone.stages[3][1].conv2.weight, reference.layer4[1].conv2.weight)


def test_cached_googlenet_weights_are_loaded_with_their_input_normalisation(empty_hub):
    reference = save_fake_checkpoint(empty_hub, "googlenet", aux_logits=True, init_weights=True)
    backbone = build_without_missing_weights_warning("googlenet")
    assert torch.equal(backbone.stem[1].conv.weight, reference.conv1.conv.weight)
    assert torch.equal(backbone.stages[3][2].branch1.conv.weight, reference.inception5b.branch1.conv.weight)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    raw = torch.rand(1, 3, 4, 4)  # pixels in [0, 1]
    assert torch.allclose(backbone.stem[0]((raw - mean) / std), (raw - 0.5) / 0.5, atol=1e-6)


def test_cached_mobilenet_weights_are_loaded(empty_hub):
    reference = save_fake_checkpoint(empty_hub, "mobilenet_v2")
    backbone = build_without_missing_weights_warning("mobilenet_v2")
    assert torch.equal(backbone.stem[0][0].weight, reference.features[0][0].weight)
    assert torch.equal(backbone.stages[3][-1][0].weight, reference.features[18][0].weight)


def test_register_backbone_adds_a_custom_backbone():
    @register_backbone("tiny_test_net")
    def tiny(pretrained: bool, last_stride: int) -> Backbone:
        conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        stages = [torch.nn.Conv2d(4, 4, 3, stride=2, padding=1) for _ in range(3)] + [torch.nn.Identity()]
        return Backbone(conv, stages, [4, 4, 4, 4], [4, 8, 16, 16])

    assert "tiny_test_net" in available_backbones()
    assert build_backbone("tiny_test_net")(torch.randn(1, 3, 32, 16)).shape == (1, 4, 2, 1)


def test_backbone_rejects_wrong_number_of_stages():
    with pytest.raises(ValueError, match="4 stages"):
        Backbone(torch.nn.Identity(), [torch.nn.Identity()] * 3, [1, 2, 3], [4, 8, 16])


def test_baseline_train_outputs_and_eval_embedding():
    model = Baseline(num_classes=7, backbone="resnet18")
    x = torch.randn(4, 3, 32, 16)
    out = model.train()(x)
    assert set(out) == {"feat", "bn_feat", "logits"}
    assert out["feat"].shape == out["bn_feat"].shape == (4, 512)
    assert out["logits"].shape == (4, 7)
    # training-mode BN normalises the batch with a frozen zero bias: each dimension has mean 0
    assert torch.allclose(out["bn_feat"].mean(0), torch.zeros(512), atol=1e-4)
    model.eval()
    with torch.no_grad():
        emb = model(x)
        model.eval_feature = "feat"
        raw = model(x)
    assert isinstance(emb, torch.Tensor) and emb.shape == (4, 512)
    assert torch.allclose(emb, model.neck(raw))


def test_bn_neck_bias_is_frozen_and_stays_zero():
    model = Baseline(num_classes=4, backbone="resnet18")
    assert not model.neck.bias.requires_grad
    assert model.neck.weight.requires_grad
    assert model.classifier.bias is None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = BaselineCriterion(4)
    batch = {"img": torch.randn(8, 3, 32, 16), "pid": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    losses = criterion(model.train()(batch["img"]), batch)
    assert set(losses) == {"ce", "triplet"}
    sum(losses.values()).backward()
    optimizer.step()
    assert torch.equal(model.neck.bias, torch.zeros(512))
    assert model.classifier.weight.grad is not None


def test_baseline_rejects_unknown_eval_feature():
    with pytest.raises(ValueError, match="eval_feature"):
        Baseline(3, "resnet18", eval_feature="logits")


def test_param_groups_split_backbone_and_heads():
    model = Baseline(num_classes=5, backbone="resnet18")
    groups = model.param_groups(base_lr=0.01, backbone_lr_mult=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(0.001)
    assert by_name["default"]["lr"] == pytest.approx(0.01)
    grouped = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert len(by_name["backbone"]["params"]) == len(list(model.backbone.parameters()))
    torch.optim.Adam(groups)  # accepted by torch optimizers


def test_param_groups_matches_whole_name_components_only():
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2), "header": torch.nn.Linear(2, 2)})
    groups = {g["name"]: g for g in param_groups(model, 1.0, {"head": 0.5})}
    assert len(groups["head"]["params"]) == 2 and len(groups["default"]["params"]) == 2
