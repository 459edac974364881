"""The chapters' shared glue: a stored run is reproducible from its seed and reused, not retrained."""

import json

import pytest
import torch

from reidbook import experiment
from reidbook.experiment import (
    RANDOM_BLOCK,
    open_dataset,
    train_loss_comparison,
    train_qaconv,
    train_reid_model,
)
from reidbook.models import Baseline, BaselineCriterion
from reidbook.profiles import get_profile
from reidbook.results import ResultsStore

PROFILE = get_profile("smoke", epochs=1, max_steps_per_epoch=2, eval_every=0)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return open_dataset("synthetic-market", tmp_path_factory.mktemp("data"),
                        world={"world_size": "small", "num_train_ids": 8, "num_test_ids": 8})


def build_model(num_classes):
    return Baseline(num_classes, backbone="resnet18")


def build_criterion(model, num_classes):
    return BaselineCriterion(num_classes)


def train(world, store, **kwargs):
    return train_reid_model("tiny", world, PROFILE, build_model=build_model, build_criterion=build_criterion,
                            store=store, progress=False, **kwargs)


def test_same_seed_gives_the_same_weights_in_fresh_stores(tiny_world, tmp_path):
    torch.manual_seed(123)  # the global RNG state before the call must not matter
    first = train(tiny_world, ResultsStore(tmp_path / "a"))
    torch.manual_seed(456)
    second = train(tiny_world, ResultsStore(tmp_path / "b"))
    a = torch.load(first.dir / "model.pt", weights_only=True)
    b = torch.load(second.dir / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.load_metrics()["mAP"] == second.load_metrics()["mAP"]


def test_a_complete_run_is_reused_and_another_seed_is_a_new_run(tiny_world, tmp_path):
    store = ResultsStore(tmp_path)
    run = train(tiny_world, store, seed=0)

    def must_not_build(num_classes):
        raise AssertionError("a complete run was trained again")

    again = train_reid_model("tiny", tiny_world, PROFILE, build_model=must_not_build,
                             build_criterion=build_criterion, store=store, progress=False, seed=0)
    assert again.key == run.key and again.complete
    other = train(tiny_world, store, seed=1)
    assert other.key != run.key
    assert set(run.load_metrics()) >= {"mAP", "mINP", "rank1", "cmc"}


def test_unknown_built_in_world_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="synthetic-market-b"):
        open_dataset("synthetic-nowhere", tmp_path)


class StopTraining(Exception):
    pass


class CapturingStore:
    """Stands in for a ResultsStore: records what a run would be keyed by, trains nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def get_or_train(self, name, config, train_fn):
        self.calls.append((name, config))


def test_augment_and_lr_mults_enter_the_config_and_reach_loader_and_optimizer(tiny_world, tmp_path,
                                                                               monkeypatch):
    seen: dict = {}
    real_loader = experiment.build_train_loader

    def recording_loader(records, **kwargs):
        seen["loader"] = kwargs
        return real_loader(records, **kwargs)

    def stopping_fit(model, criterion, loader, **kwargs):
        seen["model"], seen["param_groups"] = model, kwargs["param_groups"]
        raise StopTraining

    monkeypatch.setattr(experiment, "build_train_loader", recording_loader)
    monkeypatch.setattr(experiment, "fit", stopping_fit)
    store = ResultsStore(tmp_path)
    augment, lr_mults = {"random_erasing": 0.0, "random_block": 1.0}, {"backbone": 0.1}
    with pytest.raises(StopTraining):
        train(tiny_world, store, augment=augment, lr_mults=lr_mults)

    assert seen["loader"]["random_block"] == 1.0 and seen["loader"]["random_erasing"] == 0.0
    groups = {group["name"]: group for group in seen["param_groups"]}
    assert set(groups) == {"backbone", "default"}
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * PROFILE.lr)
    assert groups["default"]["lr"] == pytest.approx(PROFILE.lr)
    backbone_params = {id(p) for p in seen["model"].backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone_params
    assert backbone_params.isdisjoint(id(p) for p in groups["default"]["params"])
    (config_file,) = (tmp_path / "tiny").glob("*/config.json")  # the started run's config
    config = json.loads(config_file.read_text())
    assert config["augment"] == augment and config["lr_mults"] == lr_mults

    plain, with_augment, with_lr_mults = CapturingStore(), CapturingStore(), CapturingStore()
    train(tiny_world, plain)
    train(tiny_world, with_augment, augment=augment)
    train(tiny_world, with_lr_mults, lr_mults=lr_mults)
    plain_config = plain.calls[0][1]
    assert "augment" not in plain_config and "lr_mults" not in plain_config
    assert with_augment.calls[0][1] == {**plain_config, "augment": augment}
    assert with_lr_mults.calls[0][1] == {**plain_config, "lr_mults": lr_mults}


def test_train_qaconv_stores_a_match_run_with_random_block_and_reuses_it(tiny_world, tmp_path, monkeypatch):
    loader_kwargs: list[dict] = []
    real_loader = experiment.build_train_loader

    def recording_loader(records, **kwargs):
        loader_kwargs.append(kwargs)
        return real_loader(records, **kwargs)

    monkeypatch.setattr(experiment, "build_train_loader", recording_loader)
    store = ResultsStore(tmp_path)
    run = train_qaconv(tiny_world, PROFILE, store=store, progress=False)

    assert run.complete and run.name == "qaconv"
    stored = json.loads((run.dir / "config.json").read_text())
    for config in (run.config, stored):
        assert config["metric"] == "match"
        assert config["augment"] == {"random_erasing": 0.0, "random_block": 1.0} == RANDOM_BLOCK
        assert config["options"] == {} and "lr_mults" not in config  # no ImageNet weights: one rate
    assert len(loader_kwargs) == 1 and loader_kwargs[0]["random_block"] == 1.0
    assert loader_kwargs[0]["random_erasing"] == 0.0
    metrics = run.load_metrics()
    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["rank1"] <= 1.0
    weights = torch.load(run.dir / "model.pt", weights_only=True)
    assert weights["memory.seen"].any()  # trained with the class memory
    assert weights["memory.maps"].shape[2:] == (4, 2)  # resnet18 at 64 x 32, map stride 16

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(experiment, "fit", must_not_train)
    again = train_qaconv(tiny_world, PROFILE, store=store, progress=False)
    assert again.key == run.key and again.dir == run.dir and again.complete
    assert again.load_metrics() == metrics
    assert len(loader_kwargs) == 1  # no loader was built either


def test_train_qaconv_keys_options_and_uses_backbone_lr_mult_only_with_imagenet_weights(tiny_world):
    scratch, pretrained, fine = CapturingStore(), CapturingStore(), CapturingStore()
    train_qaconv(tiny_world, PROFILE, store=scratch)
    train_qaconv(tiny_world, PROFILE.replace(pretrained=True), store=pretrained)
    train_qaconv(tiny_world, PROFILE, options={"map_stride": 8}, augment=None, store=fine)
    (name, config), = scratch.calls
    assert name == "qaconv" and "lr_mults" not in config and config["augment"] == RANDOM_BLOCK
    assert pretrained.calls[0][1]["lr_mults"] == {"backbone": 0.1}
    fine_config = fine.calls[0][1]
    assert fine_config["options"] == {"map_stride": 8} and "augment" not in fine_config
    assert fine_config["metric"] == "match"


def test_train_loss_comparison_memory_is_a_cosine_run_of_pooled_features(tiny_world, tmp_path):
    run = train_loss_comparison("memory", tiny_world, PROFILE, store=ResultsStore(tmp_path), progress=False)
    assert run.complete and run.name == "pooled-memory"
    assert run.config["metric"] == "cosine" and run.config["options"] == {"loss": "memory"}
    assert "augment" not in run.config and "lr_mults" not in run.config
    metrics = run.load_metrics()
    assert 0.0 <= metrics["mAP"] <= 1.0
    weights = torch.load(run.dir / "model.pt", weights_only=True)
    assert weights["head.seen"].any()  # the criterion wrote into the model's own feature memory
    assert weights["head.memory"].shape == (tiny_world.num_train_pids, 512)  # resnet18 pooled features
