"""The generic glue (reidbook.experiment): a run is trained once, stored with its evaluation and found again
by its key; stored evaluations are reused without loading the model; a world-pretrained backbone starts
from the pretraining run; stress curves read fresh test worlds. On a tiny built-in world, smoke profile,
one epoch of two steps."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from reidbook import experiment, methods
from reidbook.data.augment import RandomBlock
from reidbook.data.sampler import RandomIdentitySampler, ShuffleSampler
from reidbook.engine import seed_everything
from reidbook.evaluation.evaluators import Embedding, Evaluator, ReRank, describe
from reidbook.experiment import (
    dataset_identity,
    evaluate,
    load_model,
    lookup,
    open_dataset,
    pretraining,
    stress_curve,
    train,
)
from reidbook.fingerprint import code_fingerprint
from reidbook.models.backbones import build_backbone
from reidbook.profiles import get_profile
from reidbook.results import ResultsStore

PROFILE = get_profile("smoke", epochs=1, max_steps_per_epoch=2, eval_every=0)
WORLD = {"world_size": "small", "num_train_ids": 6, "num_test_ids": 6, "num_distractors": 4, "num_junk": 0}
#: Stress worlds: only their test split is read.
TEST_WORLD = {"num_train_ids": 2, "num_test_ids": 4, "num_distractors": 2, "num_junk": 0}
#: A "world" start whose pretraining run is the baseline run of PROFILE on the tiny world itself.
PRETRAIN = {"method": "baseline", "dataset": "synthetic-market", "world_seed": 0, "world": WORLD, "epochs": 1,
            "milestones": [], "max_steps_per_epoch": 2}


class StopTraining(Exception):
    pass


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: on the shared 2-core machine, two threads per process spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def _isolated(data_root, tmp_path, monkeypatch):
    """Worlds opened by name (pretraining, stress worlds) go to the test's data folder, never the repo's."""
    monkeypatch.setenv("REIDBOOK_DATA", str(data_root))
    monkeypatch.setenv("REIDBOOK_RESULTS", str(tmp_path / "unused-results"))
    monkeypatch.delenv("REIDBOOK_FORCE", raising=False)


def forget_models_and_features() -> None:
    experiment._MODELS.clear()
    experiment._SPLITS.clear()


def no_model_load(run):
    raise AssertionError(f"the model of {run.name} was loaded although its evaluation is stored")


@pytest.fixture(scope="module")
def tiny_world(data_root):
    return open_dataset("synthetic-market", data_root, world=WORLD)


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """The baseline trained once: (store, run, the trained model's state)."""
    store = ResultsStore(tmp_path_factory.mktemp("store"))
    torch.manual_seed(123)  # the global RNG state before the call must not matter
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REIDBOOK_FORCE", raising=False)
        run = train("baseline", tiny_world, PROFILE, store=store, progress=False)
    state = {k: v.clone() for k, v in experiment._MODELS[run.dir.as_posix()].state_dict().items()}
    return store, run, state


def test_train_stores_a_complete_run_with_its_evaluation(trained, tiny_world):
    store, run, _ = trained
    assert run.complete and run.name == "baseline"
    assert run.code == code_fingerprint(("reidbook.experiment", "reidbook.methods.baseline"))
    config = json.loads((run.dir / "config.json").read_text())
    assert config == run.config
    assert config["method"] == "baseline" and config["seed"] == PROFILE.seed == 0
    assert config["data"] == json.loads(json.dumps(dataset_identity(tiny_world)))
    assert config["options"] == dict(methods.get("baseline").options)
    assert config["start"] == {"init": "random"}
    assert not {"seeds", "budgets", "device", "stress_world"} & set(config["profile"])  # they change no run
    assert config["profile"]["epochs"] == 1 and config["profile"]["max_steps_per_epoch"] == 2
    for name in ("model.pt", "history_steps.csv", "history_epochs.csv", "environment.json"):
        assert (run.dir / name).is_file(), name
    training = run.read_json("training.json")
    assert training["steps"] == 2 and training["epochs"] == 1 and training["device"] == "cpu"
    assert set(training["final_losses"]) == {"ce", "triplet"}
    metrics = run.load_metrics()
    assert set(metrics) >= {"mAP", "mINP", "rank1", "cmc"} and 0 <= metrics["mAP"] <= 1
    (stored,) = run.evaluations()  # the recipe's evaluation at the end of training
    assert stored["metrics"] == metrics
    assert stored["description"]["measure"] == describe(Embedding())
    assert stored["description"]["protocol"]["kind"] == "Standard" and stored["description"]["post"] == []


def test_a_stored_run_is_reused_without_training(trained, tiny_world, monkeypatch, capsys):
    store, run, _ = trained

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(experiment, "fit", must_not_train)
    again = train("baseline", tiny_world, PROFILE, store=store, progress=False)
    assert again.key == run.key and again.dir == run.dir and again.complete
    assert "baseline (seed 0, market1501): reused from the results store" in capsys.readouterr().out
    found = lookup("baseline", tiny_world, PROFILE, store=store)
    assert (found.key, found.complete) == (run.key, True)


def test_lookup_keys_seed_options_and_profile_but_not_presentation_fields(trained, tiny_world):
    store, run, _ = trained

    def key(profile=PROFILE, **kwargs):
        return lookup("baseline", tiny_world, profile, store=store, **kwargs).key

    assert key(seed=0) == key(label_smoothing=0.1) == run.key  # the defaults, spelled out
    others = [key(seed=1), key(label_smoothing=0.0), key(triplet_margin=0.5), key(PROFILE.replace(epochs=2)),
              key(PROFILE.replace(lr=1e-3))]
    assert len({run.key, *others}) == len(others) + 1
    assert not lookup("baseline", tiny_world, PROFILE, seed=1, store=store).complete  # looked up, not trained
    unkeyed = PROFILE.replace(seeds=(0, 5), budgets={"01_baseline.ipynb": 60.0}, device="cpu",
                              stress_world={"num_test_ids": 3})
    assert key(unkeyed) == run.key
    assert lookup("ianet", tiny_world, PROFILE, store=store).key != run.key


def test_unknown_options_and_methods_are_named(tiny_world, tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match=r"no option \['margin'\]; its options are: label_smoothing, "
                                         r"triplet_margin"):
        lookup("baseline", tiny_world, PROFILE, store=store, margin=0.5)
    with pytest.raises(KeyError, match="unknown method 'basline'; registered methods: baseline"):
        train("basline", tiny_world, PROFILE, store=store, progress=False)
    assert not any(tmp_path.iterdir())  # nothing was started


def test_open_dataset_names_the_built_in_worlds(tmp_path):
    with pytest.raises(ValueError, match="synthetic-market-b"):
        open_dataset("synthetic-nowhere", tmp_path)


# ------------------------------------------------------------------------------------------------ models
def test_load_model_rebuilds_the_trained_model(trained):
    _, run, state = trained
    forget_models_and_features()
    model = load_model(run)
    assert not model.training
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert load_model(run) is model  # kept in memory
    trained_model = methods.get("baseline").build_model(
        build_backbone("resnet18"), run.config["data"]["num_train_pids"], PROFILE, run.config["options"])
    trained_model.load_state_dict(state)
    images = torch.randn(3, 3, PROFILE.height, PROFILE.width)
    with torch.no_grad():
        torch.testing.assert_close(model(images), trained_model.eval()(images))


def test_an_unfinished_run_has_no_model(tiny_world, tmp_path):
    run = lookup("baseline", tiny_world, PROFILE, seed=3, store=ResultsStore(tmp_path))
    with pytest.raises(FileNotFoundError, match="not complete: train it first"):
        load_model(run)


# -------------------------------------------------------------------------------------------- evaluations
def test_the_recipes_evaluation_is_read_from_the_store(trained, tiny_world, monkeypatch):
    _, run, _ = trained
    forget_models_and_features()
    monkeypatch.setattr(experiment, "load_model", no_model_load)
    result = evaluate(run, tiny_world)
    assert result.metrics == run.load_metrics() and result.distances is None
    assert len(run.evaluations()) >= 1


def test_a_post_processed_evaluation_is_stored_and_reused_across_processes(trained, tiny_world, monkeypatch):
    _, run, _ = trained
    before = {e["key"] for e in run.evaluations()}
    rerank = ReRank(k1=6, k2=3)
    first = evaluate(run, tiny_world, post=[rerank])
    added = [e for e in run.evaluations() if e["key"] not in before]
    assert len(added) == 1 and added[0]["metrics"] == first.metrics
    assert added[0]["description"]["post"] == [describe(rerank)] == first.description["post"]
    assert added[0]["description"]["data"] == json.loads(json.dumps(dataset_identity(tiny_world)))

    forget_models_and_features()  # as in a new process
    monkeypatch.setattr(experiment, "load_model", no_model_load)
    again = evaluate(run, tiny_world, post=[ReRank(k1=6, k2=3)])
    assert again.metrics == first.metrics and again.description == added[0]["description"]
    assert len(run.evaluations()) == len(before) + 1
    with pytest.raises(AssertionError, match="was loaded"):  # another setting is another evaluation
        evaluate(run, tiny_world, post=[ReRank(k1=7, k2=3)])


def test_a_fresh_and_a_reused_evaluation_describe_themselves_alike(trained, tiny_world):
    _, run, _ = trained
    fresh = evaluate(run, tiny_world, post=[ReRank(k1=5, k2=2)])
    reused = evaluate(run, tiny_world, post=[ReRank(k1=5, k2=2)])
    assert fresh.description == reused.description


def test_keep_distances_stores_and_returns_the_matrix(trained, tiny_world, monkeypatch):
    _, run, _ = trained
    loads = []
    real_load = experiment.load_model

    def counting_load(run):
        loads.append(run.key)
        return real_load(run)

    forget_models_and_features()
    monkeypatch.setattr(experiment, "load_model", counting_load)
    cosine = Evaluator(Embedding("cosine"))
    result = evaluate(run, tiny_world, cosine, keep_distances=True)
    shape = (len(tiny_world.query), len(tiny_world.gallery))
    assert result.distances.shape == shape and loads == [run.key]
    assert (result.distances >= -1e-6).all() and (result.distances <= 2 + 1e-6).all()
    stored = [e for e in run.evaluations() if e["description"]["measure"] == describe(Embedding("cosine"))]
    assert len(stored) == 1
    assert np.load(run.evaluation_dir(stored[0]["key"]) / "distances.npy").shape == shape

    forget_models_and_features()
    monkeypatch.setattr(experiment, "load_model", no_model_load)
    again = evaluate(run, tiny_world, cosine, keep_distances=True)
    torch.testing.assert_close(again.distances, result.distances)
    assert again.metrics == result.metrics

    # the evaluation stored at the end of training kept no matrix: asking for it computes it
    monkeypatch.setattr(experiment, "load_model", counting_load)
    plain = evaluate(run, tiny_world, keep_distances=True)
    assert plain.distances.shape == shape and loads == [run.key, run.key]
    assert plain.metrics["mAP"] == pytest.approx(run.load_metrics()["mAP"], abs=1e-6)


def test_stress_curve_gives_one_row_per_run_and_strength_and_stores_its_evaluations(trained, monkeypatch):
    _, run, _ = trained
    before = {e["key"] for e in run.evaluations()}
    curve = stress_curve([run], "occlusion", [0.0, 2.0], test_world=TEST_WORLD)
    assert list(curve.columns) == ["method", "seed", "strength", "rank1", "mAP"]
    assert curve[["method", "seed", "strength"]].values.tolist() == [["baseline", 0, 0.0],
                                                                     ["baseline", 0, 2.0]]
    assert curve["mAP"].between(0, 1).all()
    added = [e for e in run.evaluations() if e["key"] not in before]
    assert sorted(e["description"]["data"]["built_in"]["world"]["occlusion"] for e in added) == [0.0, 2.0]
    assert sorted(e["metrics"]["mAP"] for e in added) == sorted(curve["mAP"])
    assert all(e["description"]["data"]["built_in"]["world"]["num_test_ids"] == 4 for e in added)

    forget_models_and_features()
    monkeypatch.setattr(experiment, "load_model", no_model_load)
    again = stress_curve([run], "occlusion", [0.0, 2.0], test_world=TEST_WORLD)
    assert again.equals(curve)


def test_stress_curve_refuses_runs_on_real_data(trained):
    store, run, _ = trained
    real = store.run("baseline", {**run.config, "data": {"name": "market1501", "folder": "Market-1501"}},
                     run.code)
    with pytest.raises(ValueError, match="trained on market1501, not on the built-in world"):
        stress_curve([real], "occlusion", [1.0], test_world=TEST_WORLD)


def test_evaluation_frame_reads_the_stored_evaluations(trained, tiny_world, monkeypatch):
    _, run, _ = trained
    forget_models_and_features()
    monkeypatch.setattr(experiment, "load_model", no_model_load)
    frame = experiment.evaluation_frame({"baseline": [run]}, {"tiny": tiny_world})
    assert frame.to_dict("records") == [{"label": "baseline", "seed": 0, "train": "tiny", "test": "tiny",
                                         **{m: run.load_metrics()[m] for m in ("rank1", "mAP", "mINP")}}]


# ---------------------------------------------------------------------------------- a world-pretrained start
def test_a_world_start_trains_the_pretraining_run_first_reproducibly_and_loads_its_backbone(
        trained, tiny_world, tmp_path, monkeypatch):
    _, reference, _ = trained
    profile = PROFILE.replace(init="world", pretrain=PRETRAIN)
    store = ResultsStore(tmp_path)
    real_fit, started = experiment.fit, []

    def fit_until_the_run_itself(model, criterion, loader, **kwargs):
        if kwargs["checkpoint_dir"].parent.name == reference.key:  # the pretraining run: train it
            started.append("pretraining")
            return real_fit(model, criterion, loader, **kwargs)
        started.append({k: v.clone() for k, v in model.backbone.state_dict().items()})
        raise StopTraining

    monkeypatch.setattr(experiment, "fit", fit_until_the_run_itself)
    torch.manual_seed(456)
    with pytest.raises(StopTraining):
        train("baseline", tiny_world, profile, store=store, progress=False)
    assert started[0] == "pretraining" and len(started) == 2

    (pre,) = store.runs(["baseline"])  # the complete runs: the pretraining alone
    assert pre.key == reference.key  # the same config and code as the trained fixture
    # trained again in a fresh store from another global RNG state: the same seed gives the same weights
    pre_weights, reference_weights = (torch.load(r.dir / "model.pt", weights_only=True)
                                      for r in (pre, reference))
    assert pre_weights.keys() == reference_weights.keys()
    assert all(torch.equal(pre_weights[k], reference_weights[k]) for k in pre_weights)
    assert pre.load_metrics()["mAP"] == reference.load_metrics()["mAP"]
    configs = {path.parent.name: json.loads(path.read_text())
               for path in store.root.glob("baseline/*/config.json")}
    (config,) = [config for key, config in configs.items() if key != pre.key]  # the run that was started
    assert config["start"] == {"init": "world", "run": f"baseline/{pre.key}"}

    start = started[1]
    assert all(torch.equal(start[k], pre_weights[f"backbone.{k}"]) for k in start)
    seed_everything(0)  # what a random start from the same seed would have been
    fresh = build_backbone("resnet18", last_stride=PROFILE.last_stride).state_dict()
    assert not all(torch.equal(start[k], fresh[k]) for k in start)
    untrained = experiment.untrained_model("baseline", tiny_world.num_train_pids, profile, store=store)
    assert all(torch.equal(v, start[k]) for k, v in untrained.backbone.state_dict().items())


def test_a_world_started_run_can_be_looked_up(trained, tiny_world):
    store, reference, _ = trained
    profile = PROFILE.replace(init="world", pretrain=PRETRAIN)
    pre = pretraining(profile, store=store, train_missing=False)
    assert pre.complete and pre.key == reference.key
    run = lookup("baseline", tiny_world, profile, store=store)
    assert run.config["start"] == {"init": "world", "run": f"baseline/{reference.key}"} and not run.complete


# ---------------------------------------------------------------------------------- QAConv's training batches
def captured_training(method: str, tiny_world, tmp_path, monkeypatch, profile=PROFILE, **options):
    """(loader, fit's keyword arguments) of a run of ``method``, stopped before its first step."""
    seen = {}

    def stop(model, criterion, loader, **kwargs):
        seen.update(loader=loader, model=model, **kwargs)
        raise StopTraining

    monkeypatch.setattr(experiment, "fit", stop)
    with pytest.raises(StopTraining):
        train(method, tiny_world, profile, store=ResultsStore(tmp_path), progress=False, **options)
    return seen


def transform_types(loader) -> list[type]:
    return [type(step) for step in loader.dataset.transform.transforms]


def test_qaconv_trains_on_shuffled_batches_with_random_block_and_sgd(tiny_world, tmp_path, monkeypatch):
    seen = captured_training("qaconv", tiny_world, tmp_path, monkeypatch)
    assert isinstance(seen["loader"].sampler, ShuffleSampler)
    steps = transform_types(seen["loader"])
    assert RandomBlock in steps and v2.RandomCrop not in steps and v2.RandomErasing not in steps
    assert (seen["optimizer"], seen["lr"]) == ("sgd", 0.01)  # the recipe's change to the smoke profile
    assert seen["param_groups"] is None  # a random start: one learning rate
    assert seen["feed"] is methods.get("qaconv").feed
    (config_file,) = (tmp_path / "qaconv").glob("*/config.json")  # the started run's config
    config = json.loads(config_file.read_text())
    assert config["options"]["sampler"] == "shuffle" and config["options"]["augmentation"] == "random_block"
    assert config["profile"]["optimizer"] == "sgd"


def test_qaconv_on_identity_batches(tiny_world, tmp_path, monkeypatch):
    seen = captured_training("qaconv", tiny_world, tmp_path, monkeypatch, sampler="identity")
    assert isinstance(seen["loader"].sampler, RandomIdentitySampler)
    assert RandomBlock in transform_types(seen["loader"])


def test_a_trained_start_gets_the_recipes_backbone_learning_rate(tiny_world, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ImageNet weights are not cached here: a random start, warned
        seen = captured_training("qaconv", tiny_world, tmp_path, monkeypatch, profile=PROFILE.replace(
            init="imagenet"))
    groups = {group["name"]: group for group in seen["param_groups"]}
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * 0.01) and groups["default"]["lr"] == 0.01
    backbone = {id(p) for p in seen["model"].backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone


def test_test_flip_off_judges_a_run_without_mirror_images(trained, tiny_world, tmp_path):
    _, run, _ = trained
    assert experiment.run_evaluator(run) == methods.get("baseline").evaluator_for({})  # flip-averaged
    unflipped = train("baseline", tiny_world, PROFILE.replace(test_flip=False), store=ResultsStore(tmp_path),
                      progress=False)
    assert unflipped.key != run.key
    evaluator = experiment.run_evaluator(unflipped)
    assert evaluator == Evaluator(Embedding("euclidean", flip=False))
    by_hand = evaluator.evaluate(load_model(unflipped), tiny_world, height=PROFILE.height,
                                 width=PROFILE.width)
    assert unflipped.load_metrics()["mAP"] == pytest.approx(by_hand.metrics["mAP"])
    assert evaluate(unflipped, tiny_world).description["measure"]["flip"] is False
