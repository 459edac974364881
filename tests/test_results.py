"""Tests of the results store: keys, reuse, forced retraining, resume of interrupted runs, tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from reidbook.engine import History, fit
from reidbook.profiles import get_profile
from reidbook.results import (
    ResultsStore,
    atomic_write_text,
    canonical_json,
    code_fingerprint,
    default_results_dir,
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


def test_code_fingerprint_hashes_python_sources_only(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("ignored")
    first = code_fingerprint(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("changed")
    assert code_fingerprint(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "mod.py").write_text("x = 2\n")
    assert code_fingerprint(tmp_path / "pkg") != first
    assert len(code_fingerprint()) == 64  # the real package


def test_code_fingerprint_ignores_presentation_modules_only(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "viz.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "sub" / "viz.py").write_text("b = 1\n")
    first = code_fingerprint(tmp_path / "pkg")
    (tmp_path / "pkg" / "viz.py").write_text("a = 2\n")
    assert code_fingerprint(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "sub" / "viz.py").write_text("b = 2\n")
    assert code_fingerprint(tmp_path / "pkg") != first


def test_canonical_json_accepts_profiles_and_rejects_non_json_values():
    profile = get_profile("smoke")
    assert canonical_json(profile) == canonical_json(profile.to_dict())
    assert canonical_json({"b": (1, 2), "a": None}) == '{"a":null,"b":[1,2]}'
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        canonical_json({"fn": print})


def test_profile_override_changes_the_key():
    assert run_key(get_profile("cpu"), "c") != run_key(get_profile("cpu", epochs=3), "c")


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

    from reidbook.results import atomic_write

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
def test_table_lists_complete_runs_of_the_current_code(store, tmp_path):
    store.get_or_train(
        "baseline", {"lr": 0.1, "model": {"name": "r18"}}, lambda run: {"mAP": 0.4, "cmc": [1]}
    )
    store.get_or_train("ianet", {"lr": 0.2, "model": {"name": "r18"}}, lambda run: {"mAP": 0.5})
    store.run("unfinished", {"lr": 0.3}).start()
    ResultsStore(store.root, code="old-code").get_or_train("baseline", {"lr": 0.1}, lambda run: {"mAP": 0.1})

    table = store.table().sort_values("name").reset_index(drop=True)
    assert table["name"].tolist() == ["baseline", "ianet"]
    assert table["mAP"].tolist() == [0.4, 0.5]
    assert table["config.lr"].tolist() == [0.1, 0.2]
    assert table["config.model.name"].tolist() == ["r18", "r18"]
    assert "cmc" not in table.columns
    assert store.table(names=["ianet"])["name"].tolist() == ["ianet"]
    assert len(store.table(current_code_only=False)) == 3
