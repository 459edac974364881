"""The method registry and its recipes (reidbook.methods): names, errors, options, the paper's profile
changes, training batches, and one forward + loss per recipe on a ResNet-18 at 64 x 32."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.transforms import v2

from reidbook import methods
from reidbook.data import Record
from reidbook.data.augment import RandomBlock
from reidbook.data.sampler import RandomIdentitySampler, ShuffleSampler
from reidbook.evaluation.evaluators import Embedding, Evaluator, Pairwise
from reidbook.methods import registry
from reidbook.methods.qaconv import map_stride
from reidbook.methods.recipe import Recipe
from reidbook.models.backbones import build_backbone
from reidbook.profiles import get_profile

BOOK_METHODS = {"baseline", "ianet", "pyramid", "ipad", "two-stream", "ddag", "qaconv", "pooled-softmax",
                "pooled-arc", "pooled-center", "pooled-memory"}
SMOKE = get_profile("smoke")  # resnet18, 64 x 32
NUM_CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: on the shared 2-core machine, two threads per process spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_books_methods_are_registered():
    names = methods.names()
    assert BOOK_METHODS <= set(names)
    assert names == sorted(names)
    for name in names:
        assert methods.get(name).name == name


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(KeyError, match="unknown method 'nope'; registered methods: .*baseline.*qaconv"):
        methods.get("nope")


def test_a_second_recipe_with_a_taken_name_is_refused(monkeypatch):
    methods.names()  # every recipe module imported (registered) before the registry is swapped
    monkeypatch.setattr(registry, "_RECIPES", dict(registry._RECIPES))  # leave the real registry alone
    baseline = methods.get("baseline")
    assert methods.register(baseline) is baseline  # the same recipe again (a module re-imported) is fine
    impostor = dataclasses.replace(baseline, module="somewhere.else")
    with pytest.raises(ValueError, match=r"'baseline' is already registered \(by reidbook\.methods\."):
        methods.register(impostor)
    assert methods.get("baseline") is baseline
    newcomer = dataclasses.replace(baseline, name="newcomer")
    assert methods.register(newcomer) is newcomer and "newcomer" in methods.names()


def test_resolve_options_updates_the_defaults_and_refuses_unknown_names():
    recipe = methods.get("baseline")
    assert recipe.resolve_options({}) == {"label_smoothing": 0.1, "triplet_margin": 0.3}
    assert recipe.resolve_options({"triplet_margin": 0.5}) == {"label_smoothing": 0.1, "triplet_margin": 0.5}
    with pytest.raises(ValueError, match=r"method 'baseline' has no option \['margin'\]; its options are: "
                                         r"label_smoothing, triplet_margin"):
        recipe.resolve_options({"margin": 0.5})
    assert recipe.options == {"label_smoothing": 0.1, "triplet_margin": 0.3}  # the defaults are untouched


def test_profile_for_applies_the_papers_changes_to_that_profile_only():
    qaconv = methods.get("qaconv")
    for name in ("smoke", "cpu"):
        profile = get_profile(name)
        changed = qaconv.profile_for(profile)
        assert changed.optimizer == "sgd"  # the authors' optimizer
        changes = qaconv.profiles[name]
        assert all(getattr(changed, field) == pytest.approx(value) for field, value in changes.items())
        untouched = [f.name for f in dataclasses.fields(profile) if f.name not in changes]
        assert all(getattr(changed, f) == getattr(profile, f) for f in untouched)
    assert get_profile("cpu").optimizer == "adam"  # the profile itself is not changed
    paper = qaconv.profile_for(get_profile("paper"))
    assert (paper.backbone, paper.height, paper.width, paper.optimizer) == ("resnet50", 384, 128, "sgd")
    mine = get_profile("cpu").replace(name="mine")
    assert qaconv.profile_for(mine) == mine  # no changes for a profile the paper does not name
    assert methods.get("baseline").profile_for(get_profile("cpu")) == get_profile("cpu")


def test_each_method_is_judged_by_its_own_evaluator():
    assert methods.get("baseline").evaluator_for({}) == Evaluator(Embedding("euclidean"))
    assert methods.get("ianet").evaluator_for({}) == Evaluator(Embedding("euclidean"))
    assert isinstance(methods.get("qaconv").evaluator_for({}).measure, Pairwise)
    for loss in ("softmax", "arc", "center", "memory"):
        assert methods.get(f"pooled-{loss}").evaluator_for({}).measure == Embedding("cosine")


def test_qaconv_map_stride_follows_the_input_size():
    options = {"map_stride": "auto"}
    assert map_stride(SMOKE, options) == 8  # 64 x 32 -> 8 x 4 maps
    assert map_stride(get_profile("paper"), options) == 16
    assert map_stride(SMOKE, {"map_stride": 16}) == 16


# -------------------------------------------------------------------------------------- training batches
def fake_records(ids: int = 6, per_id: int = 4) -> list[Record]:
    """Records only: the loader reads no image until iterated."""
    return [Record(f"/nowhere/{pid}_{i}.jpg", pid, i % 2) for pid in range(ids) for i in range(per_id)]


def transform_types(loader) -> list[type]:
    transform = loader.dataset.transform
    assert isinstance(transform, v2.Compose)
    return [type(step) for step in transform.transforms]


def test_qaconv_draws_shuffled_batches_with_random_block_by_default():
    recipe = methods.get("qaconv")
    options = recipe.resolve_options({})
    loader = recipe.loader(fake_records(), SMOKE, 0, recipe.augment, options)
    assert isinstance(loader.sampler, ShuffleSampler)
    steps = transform_types(loader)
    assert RandomBlock in steps and v2.RandomHorizontalFlip in steps
    assert v2.RandomCrop not in steps and v2.RandomErasing not in steps

    identity = recipe.loader(fake_records(), SMOKE, 0, recipe.augment, {**options, "sampler": "identity"})
    assert isinstance(identity.sampler, RandomIdentitySampler)
    erasing = recipe.loader(fake_records(), SMOKE, 0, recipe.augment,
                            {**options, "augmentation": "random_erasing"})
    assert v2.RandomErasing in transform_types(erasing) and RandomBlock not in transform_types(erasing)
    with pytest.raises(ValueError, match="sampler must be one of \\['identity', 'shuffle'\\], got 'pk'"):
        recipe.loader(fake_records(), SMOKE, 0, recipe.augment, {**options, "sampler": "pk"})
    with pytest.raises(ValueError, match="augmentation must be one of .*got 'mixup'"):
        recipe.loader(fake_records(), SMOKE, 0, recipe.augment, {**options, "augmentation": "mixup"})


def test_the_baseline_draws_p_x_k_batches_with_crops_and_erasing():
    recipe = methods.get("baseline")
    loader = recipe.loader(fake_records(), SMOKE, 0, recipe.augment, recipe.resolve_options({}))
    assert isinstance(loader.sampler, RandomIdentitySampler)
    assert loader.sampler.num_instances == SMOKE.batch_k and loader.batch_size == SMOKE.batch_size
    assert {v2.RandomCrop, v2.RandomErasing} <= set(transform_types(loader))
    assert RandomBlock not in transform_types(loader)


# ------------------------------------------------------------------------------ one step of every method
def random_batch(batch_size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"img": torch.randn(batch_size, 3, SMOKE.height, SMOKE.width, generator=g),
            "pid": torch.arange(batch_size) // 2 % NUM_CLASSES, "camid": torch.arange(batch_size) % 2,
            "index": torch.arange(batch_size), "modality": torch.arange(batch_size) // 4 % 2}


def build(recipe: Recipe, **options) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    torch.manual_seed(0)
    profile = recipe.profile_for(SMOKE)
    settings = {"last_stride": profile.last_stride, "stem_pool": profile.stem_pool, **recipe.backbone}
    backbone = build_backbone(profile.backbone, **settings)
    resolved = recipe.resolve_options(options)
    model = recipe.build_model(backbone, NUM_CLASSES, profile, resolved)
    return model, recipe.build_criterion(model, NUM_CLASSES, resolved), resolved


@pytest.mark.parametrize("name", sorted(BOOK_METHODS))
def test_every_recipe_builds_a_model_whose_criterion_gives_named_scalar_terms(name):
    recipe = methods.get(name)
    model, criterion, options = build(recipe)
    batch = random_batch()
    model.train()
    criterion(recipe.feed(model, batch), batch)  # a first step fills the class memories of QAConv's losses
    terms = criterion(recipe.feed(model, batch), batch)
    assert terms and all(isinstance(term_name, str) for term_name in terms)
    for term_name, value in terms.items():
        assert value.ndim == 0 and torch.isfinite(value), term_name
    sum(terms.values()).backward()
    first_conv = next(p for p in model.backbone.parameters() if p.ndim == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0  # the losses reach the backbone

    model.eval()
    with torch.no_grad():
        features = recipe.feed(model, batch)
        measure = recipe.evaluator_for(options).measure
        if isinstance(measure, Pairwise):
            distances = model.pair_distances(features[:3], features[3:])
            assert distances.shape == (3, 5) and (distances >= 0).all() and torch.isfinite(distances).all()
        else:
            assert isinstance(features, torch.Tensor) and features.shape[0] == 8 and features.ndim == 2


def test_qaconv_matches_maps_of_stage_3_at_the_map_stride():
    model, _, _ = build(methods.get("qaconv"))
    with torch.no_grad():
        maps = model.eval()(random_batch(2)["img"])
    assert maps.shape[2:] == (SMOKE.height // 8, SMOKE.width // 8)


def test_pooled_runs_use_the_classification_networks_last_stride():
    assert methods.get("pooled-softmax").backbone == {"last_stride": 2}
    model, _, _ = build(methods.get("pooled-softmax"))
    with torch.no_grad():
        last_map = model.backbone.eval()(random_batch(2)["img"])
    assert last_map.shape[2:] == (SMOKE.height // 32, SMOKE.width // 32)


def test_ianets_losses_are_the_baselines_or_the_papers():
    recipe = methods.get("ianet")
    model, criterion, _ = build(recipe)
    batch = random_batch()
    outputs = recipe.feed(model.train(), batch)
    assert set(criterion(outputs, batch)) == {"ce", "triplet"}  # the baseline's terms by default
    _, paper, _ = build(recipe, loss="paper")
    assert set(paper(outputs, batch)) == {"ce"}
    with pytest.raises(ValueError, match=r"IANet's loss must be one of \('baseline', 'paper'\), got 'focal'"):
        build(recipe, loss="focal")
