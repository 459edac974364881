"""Tests of the results store: keys, reuse, forced retraining, resume of interrupted runs, stored
evaluations, tables; and the atomic writes every file goes through."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from reidbook.atomic import atomic_torch_save, atomic_write, atomic_write_text
from reidbook.engine import History, fit
from reidbook.profiles import get_profile
from reidbook.results import (
    ResultsStore,
    canonical_json,
    default_results_dir,
    evaluation_key,
    run_key,
)

CONFIG = {"lr": 0.1, "epochs": 3, "model": {"name": "tiny", "dims": [4, 2]}}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("REIDBOOK_FORCE", raising=False)
    return ResultsStore(tmp_path / "results", code="code-v1")


# ----------------------------------------------------------------------------------------------- keys
def test_key_depends_on_config_values_not_key_order():
    reordered = {"model": {"dims": [4, 2], "name": "tiny"}, "epochs": 3, "lr": 0.1}
    assert run_key(CONFIG, "c") == run_key(reordered, "c")
    assert run_key(CONFIG, "c") != run_key({**CONFIG, "lr": 0.2}, "c")
    assert run_key(CONFIG, "c") != run_key({**CONFIG, "model": {"name": "tiny", "dims": [4, 3]}}, "c")


def test_key_depends_on_code(store, tmp_path):
    other = ResultsStore(tmp_path / "results", code="code-v2")
    assert store.run("a", CONFIG).key != other.run("a", CONFIG).key


def test_every_run_needs_a_code_fingerprint_and_a_stores_own_one_wins(tmp_path):
    with pytest.raises(ValueError, match="run 'a' needs the fingerprint of the code it uses"):
        ResultsStore(tmp_path).run("a", CONFIG)
    free = ResultsStore(tmp_path)
    assert free.run("a", CONFIG, code="x").key == run_key(CONFIG, "x") != free.run("a", CONFIG, code="y").key
    fixed = ResultsStore(tmp_path, code="pinned")
    assert fixed.run("a", CONFIG, code="x").code == "pinned"
    assert fixed.run("a", CONFIG, code="x").key == run_key(CONFIG, "pinned")


def test_run_json_records_the_code_the_run_used(tmp_path):
    run = ResultsStore(tmp_path).get_or_train("a", CONFIG, lambda run: None, code="abc", force=False)
    info = json.loads((run.dir / "run.json").read_text())
    assert (info["name"], info["key"], info["code"]) == ("a", run.key, "abc")


def test_canonical_json_accepts_profiles_and_rejects_non_json_values():
    profile = get_profile("smoke")
    assert canonical_json(profile) == canonical_json(profile.to_dict())
    assert canonical_json({"b": (1, 2), "a": None}) == '{"a":null,"b":[1,2]}'
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        canonical_json({"fn": print})


def test_profile_override_changes_the_key():
    cpu = get_profile("cpu")
    assert run_key(cpu, "c") != run_key(get_profile("cpu", epochs=cpu.epochs + 1), "c")


# ---------------------------------------------------------------------------------------- get_or_train
def test_get_or_train_trains_once_then_reuses(store):
    calls = []

    def train(run):
        calls.append(run.key)
        return {"mAP": 0.5, "cmc": np.array([0.5, 1.0])}

    run = store.get_or_train("baseline", CONFIG, train)
    again = store.get_or_train("baseline", CONFIG, train)
    assert len(calls) == 1 and run.key == again.key and again.complete
    assert again.load_metrics() == {"mAP": 0.5, "cmc": [0.5, 1.0]}
    assert json.loads((run.dir / "config.json").read_text()) == CONFIG
    env = run.load_environment()
    assert {"python", "packages", "git_commit", "device", "cpu_count", "date"} <= set(env)
    assert set(env["packages"]) == {"torch", "torchvision", "numpy", "reidbook"}
    store.get_or_train("baseline", {**CONFIG, "lr": 0.2}, train)
    assert len(calls) == 2


def test_force_argument_and_environment_variable_retrain(store, monkeypatch):
    calls = []

    def train(run):
        (run.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        assert not any(run.checkpoint_dir.iterdir())  # a forced run starts from scratch
        (run.checkpoint_dir / "checkpoint-000000001.pt").write_bytes(b"x")
        calls.append(1)

    store.get_or_train("baseline", CONFIG, train)
    store.get_or_train("baseline", CONFIG, train, force=True)
    monkeypatch.setenv("REIDBOOK_FORCE", "1")
    store.get_or_train("baseline", CONFIG, train)
    assert len(calls) == 3


def test_interrupted_run_is_not_complete_and_resumes_through_its_checkpoints(store):
    torch.manual_seed(0)
    inputs = torch.randn(16, 3)
    batches = [{"img": inputs[i : i + 4], "pid": (inputs[i : i + 4, 0] > 0).long()} for i in range(0, 16, 4)]

    def criterion(outputs, batch):
        return {"ce": nn.functional.cross_entropy(outputs, batch["pid"])}

    class StopAtEpoch:
        def __init__(self, epoch):
            self.epoch = epoch

        def on_epoch_start(self, state):
            if state.epoch == self.epoch:
                raise KeyboardInterrupt

    def make_train(stop_epoch):
        def train(run):
            torch.manual_seed(1)
            model = nn.Linear(3, 2)
            history = fit(
                model,
                criterion,
                batches,
                epochs=4,
                lr=0.1,
                device="cpu",
                progress=False,
                checkpoint_dir=run.checkpoint_dir,
                hooks=[StopAtEpoch(stop_epoch)],
            )
            run.save_history(history)
            run.save_model(model)
            return {"final_ce": float(history.epochs["ce"].iloc[-1])}

        return train

    with pytest.raises(KeyboardInterrupt):
        store.get_or_train("resume", CONFIG, make_train(stop_epoch=2))
    run = store.run("resume", CONFIG)
    assert run.exists and not run.complete
    store.get_or_train("resume", CONFIG, make_train(stop_epoch=-1))
    assert run.complete
    history = run.load_history()
    assert list(history.epochs["epoch"]) == [0, 1, 2, 3]

    reference = ResultsStore(store.root, code="code-reference")
    ref_run = reference.get_or_train("resume", CONFIG, make_train(stop_epoch=-1))
    assert run.load_metrics() == ref_run.load_metrics()
    for a, b in zip(
        run.load_model(nn.Linear(3, 2)).parameters(), ref_run.load_model(nn.Linear(3, 2)).parameters()
    ):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ storage
def test_history_round_trips_through_csv(store):
    history = History(
        [{"epoch": 0, "step": 0, "ce": 1.5, "ce_weight": 1.0, "total": 1.5, "lr": 0.1}],
        [{"epoch": 0, "steps": 1, "ce": 1.5, "mAP": 0.25}],
    )
    run = store.run("h", CONFIG)
    run.save_history(history)
    loaded = run.load_history()
    pd.testing.assert_frame_equal(loaded.steps, history.steps)
    pd.testing.assert_frame_equal(loaded.epochs, history.epochs)


def test_missing_weights_raise_a_clear_error(store):
    with pytest.raises(FileNotFoundError, match="no stored weights"):
        store.run("w", CONFIG).load_model(nn.Linear(2, 2))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = atomic_write_text(tmp_path / "f.json", "old")

    class Boom(Exception):
        pass

    def failing(file):
        file.write("partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(path, failing, binary=False)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_run_names_with_slashes_are_rejected(store):
    with pytest.raises(ValueError, match="no slashes"):
        store.run("../escape", CONFIG)


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REIDBOOK_RESULTS", str(tmp_path / "elsewhere"))
    assert default_results_dir() == tmp_path / "elsewhere"
    assert ResultsStore(code="c").root == tmp_path / "elsewhere"


# -------------------------------------------------------------------------------------------- tables
def test_table_lists_complete_runs_of_the_stores_code(store, tmp_path):
    store.get_or_train(
        "baseline", {"lr": 0.1, "model": {"name": "r18"}}, lambda run: {"mAP": 0.4, "cmc": [1]}
    )
    store.get_or_train("ianet", {"lr": 0.2, "model": {"name": "r18"}}, lambda run: {"mAP": 0.5})
    store.run("unfinished", {"lr": 0.3}).start()
    ResultsStore(store.root, code="old-code").get_or_train("baseline", {"lr": 0.1}, lambda run: {"mAP": 0.1})

    table = store.table(code="code-v1").sort_values("name").reset_index(drop=True)
    assert table["name"].tolist() == ["baseline", "ianet"]
    assert table["mAP"].tolist() == [0.4, 0.5]
    assert table["config.lr"].tolist() == [0.1, 0.2]
    assert table["config.model.name"].tolist() == ["r18", "r18"]
    assert len(store.table()) == 3  # without a fingerprint: every code's complete runs
    assert "cmc" not in table.columns
    assert store.table(names=["ianet"], code="code-v1")["name"].tolist() == ["ianet"]


def test_runs_and_table_filter_by_name_and_code(tmp_path):
    store = ResultsStore(tmp_path)
    for name, code, lr in (("baseline", "v1", 0.1), ("baseline", "v2", 0.1), ("ianet", "v1", 0.2)):
        store.get_or_train(name, {"lr": lr}, lambda run, lr=lr: {"mAP": lr}, code=code)
    store.run("unfinished", {"lr": 0.3}, code="v1").start()
    assert sorted((r.name, r.code) for r in store.runs()) == [("baseline", "v1"), ("baseline", "v2"),
                                                                ("ianet", "v1")]
    assert sorted(r.name for r in store.runs(code="v1")) == ["baseline", "ianet"]
    (only,) = store.runs(["baseline"], code="v2")
    assert only.key == run_key({"lr": 0.1}, "v2") and only.complete
    assert len(store.table()) == 3 and len(store.table(["baseline"])) == 2
    assert store.table(code="v1").sort_values("name")["mAP"].tolist() == [0.1, 0.2]
    assert store.runs(["nothing"]) == [] and store.table(["nothing"]).empty


# ----------------------------------------------------------------------------------- stored evaluations
DESCRIPTION = {"data": {"name": "market1501"}, "measure": {"kind": "Embedding"}, "post": []}


def test_an_evaluation_key_depends_on_the_description_not_its_key_order():
    reordered = {"post": [], "measure": {"kind": "Embedding"}, "data": {"name": "market1501"}}
    assert evaluation_key(DESCRIPTION) == evaluation_key(reordered)
    assert evaluation_key(DESCRIPTION) != evaluation_key({**DESCRIPTION, "post": [{"kind": "ReRank"}]})


def test_evaluations_are_stored_under_their_run_with_or_without_distances(store):
    run = store.get_or_train("baseline", CONFIG, lambda run: {"mAP": 0.5})
    key = evaluation_key(DESCRIPTION)
    assert run.load_evaluation(key) is None and run.evaluations() == []
    distances = np.arange(6, dtype=np.float32).reshape(2, 3)
    run.save_evaluation(key, DESCRIPTION, {"mAP": 0.25, "cmc": np.array([0.5, 1.0])}, distances)
    metrics, matrix = run.load_evaluation(key, distances=True)
    assert metrics == {"mAP": 0.25, "cmc": [0.5, 1.0]}
    np.testing.assert_array_equal(matrix, distances)
    assert matrix.dtype == np.float32
    assert run.load_evaluation(key) == (metrics, None)  # distances only when asked for

    other = evaluation_key({**DESCRIPTION, "post": [{"kind": "ReRank"}]})
    run.save_evaluation(other, {**DESCRIPTION, "post": [{"kind": "ReRank"}]}, {"mAP": 0.3})
    assert run.load_evaluation(other) == ({"mAP": 0.3}, None)
    assert run.load_evaluation(other, distances=True) is None  # not kept: must be computed again
    listed = {e["key"]: e for e in run.evaluations()}
    assert set(listed) == {key, other}
    assert listed[key]["description"] == DESCRIPTION and listed[other]["metrics"] == {"mAP": 0.3}
    assert (run.evaluation_dir(key) / "COMPLETE").is_file()


def test_an_evaluation_without_its_marker_is_not_there(store):
    run = store.get_or_train("baseline", CONFIG, lambda run: {"mAP": 0.5})
    key = evaluation_key(DESCRIPTION)
    run.save_evaluation(key, DESCRIPTION, {"mAP": 0.25})
    (run.evaluation_dir(key) / "COMPLETE").unlink()  # as if the process died before the marker
    assert run.load_evaluation(key) is None and run.evaluations() == []


def test_evaluations_follow_their_runs_key(store, tmp_path):
    run = store.get_or_train("baseline", CONFIG, lambda run: {"mAP": 0.5})
    run.save_evaluation(evaluation_key(DESCRIPTION), DESCRIPTION, {"mAP": 0.25})
    retrained = ResultsStore(store.root, code="code-v2").get_or_train("baseline", CONFIG, lambda run: {})
    assert retrained.evaluations() == [] and retrained.load_evaluation(evaluation_key(DESCRIPTION)) is None


def test_write_json_and_read_json_round_trip_and_default_to_empty(store):
    run = store.run("baseline", CONFIG)
    assert run.read_json("training.json") == {}
    run.write_json("training.json", {"seconds": 1.5, "device": "cpu", "losses": np.array([0.5, 0.25])})
    assert run.read_json("training.json") == {"seconds": 1.5, "device": "cpu", "losses": [0.5, 0.25]}
    assert not [p.name for p in run.dir.iterdir() if p.name.endswith(".tmp")]


def test_atomic_torch_save_round_trips(tmp_path):
    path = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "deep" / "model.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
