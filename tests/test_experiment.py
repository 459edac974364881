"""The chapters' shared glue: a stored run is reproducible from its seed and reused, not retrained."""

import pytest
import torch

from reidbook.experiment import open_dataset, train_reid_model
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


def build_criterion(num_classes):
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
