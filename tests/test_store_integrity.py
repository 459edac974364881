"""The results store stays whole: one writer per run (two processes), checksums recorded at write time and
checked at read time (a checkpoint truncated by hand, a metrics file with garbage, a flipped byte), and a
failing write (disk full) that leaves the previous complete state readable."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import reidbook.atomic as atomic
from reidbook import distributed
from reidbook.atomic import CorruptFileError, FileLock, LockTimeoutError, Manifest, read_verified
from reidbook.engine import CheckpointDir, fit
from reidbook.results import ResultsStore, Run

CONFIG = {"method": "tiny", "lr": 0.1}
FORK = multiprocessing.get_context("fork")


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    return ResultsStore(tmp_path / "results", code="code-v1")


# ----------------------------------------------------------------------------------------- two writers
def _writer(root: str, log: str, output: str, hold: float, timeout: float | None) -> None:
    """A second process: get_or_train the CONFIG run, noting in ``log`` when it trains; its stdout goes to
    ``output``."""
    sys.stdout = open(output, "w", buffering=1)  # noqa: SIM115 - the child's stdout until it exits

    def train(run: Run) -> dict[str, float]:
        with open(log, "a") as file:
            file.write(f"{os.getpid()}\n")
        time.sleep(hold)
        return {"mAP": 0.5}

    try:
        ResultsStore(root, code="code-v1", lock_timeout=timeout).get_or_train("tiny", CONFIG, train)
    except LockTimeoutError as error:
        print(f"LockTimeoutError: {error}")


def _start_writer(tmp_path: Path, name: str, hold: float, timeout: float | None = None) -> Any:
    process = FORK.Process(target=_writer, args=(str(tmp_path / "results"), str(tmp_path / "trained.log"),
                                                 str(tmp_path / f"{name}.out"), hold, timeout))
    process.start()
    return process


def _wait_for(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the other process did not get there in time")
        time.sleep(0.05)


def test_two_writers_of_one_run_train_it_once_and_the_second_says_who_holds_it(tmp_path, store):
    first = _start_writer(tmp_path, "first", hold=1.5)
    _wait_for(lambda: (tmp_path / "trained.log").is_file())  # the first one trains, holding the lock
    second = _start_writer(tmp_path, "second", hold=0.0)
    first.join(60)
    second.join(60)
    assert first.exitcode == 0 and second.exitcode == 0
    trainers = (tmp_path / "trained.log").read_text().split()
    assert trainers == [str(first.pid)]  # trained once
    message = (tmp_path / "second.out").read_text()
    assert f"is being written by process {first.pid} on host {socket.gethostname()}" in message
    assert "waiting as long as it takes" in message
    run = store.run("tiny", CONFIG)
    assert run.complete and run.problems() == [] and run.load_metrics() == {"mAP": 0.5}


def test_a_writer_with_no_time_to_wait_fails_naming_the_holder(tmp_path, store):
    first = _start_writer(tmp_path, "first", hold=3.0)
    _wait_for(lambda: (tmp_path / "trained.log").is_file())
    impatient = ResultsStore(store.root, code="code-v1", lock_timeout=0)
    with pytest.raises(LockTimeoutError, match=f"held by process {first.pid} on host"):
        impatient.get_or_train("tiny", CONFIG, lambda run: pytest.fail("must not train"))
    assert impatient.run("tiny", CONFIG).status().startswith(f"being written by process {first.pid}")
    first.join(60)
    assert impatient.run("tiny", CONFIG).status() == "complete"


def test_the_lock_of_a_killed_writer_is_free_at_once(tmp_path, store):
    first = _start_writer(tmp_path, "first", hold=60.0)
    _wait_for(lambda: (tmp_path / "trained.log").is_file())
    os.kill(first.pid, signal.SIGKILL)
    first.join(30)
    run = store.run("tiny", CONFIG)
    assert not run.lock.is_held()
    started = time.monotonic()
    store.get_or_train("tiny", CONFIG, lambda run: {"mAP": 0.25})  # the killed run is trained again
    assert time.monotonic() - started < 5 and run.load_metrics() == {"mAP": 0.25}


def test_a_process_may_take_the_lock_it_holds_again(tmp_path):
    lock = FileLock(tmp_path / ".k.lock")
    with lock.held(timeout=0):
        with lock.held(timeout=0):  # re-entrant (e.g. an evaluation stored while its run trains)
            assert lock.is_held()
        assert lock.is_held()
    assert not lock.is_held()
    assert json.loads((tmp_path / ".k.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(ValueError, match="timeout must be None or >= 0"):
        lock.acquire(-1)


# ---------------------------------------------------------------------------------------- checksums
def make_batches() -> list[dict[str, torch.Tensor]]:
    inputs = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    return [{"img": inputs[i: i + 4], "pid": (inputs[i: i + 4, 0] > 0).long()} for i in range(0, 16, 4)]


def criterion(outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"ce": nn.functional.cross_entropy(outputs, batch["pid"])}


class CountSteps:
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, state: Any) -> None:
        self.steps += 1


def train_linear(directory: Path, epochs: int, hooks: tuple = ()) -> nn.Linear:
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    fit(model, criterion, make_batches(), epochs=epochs, lr=0.1, device="cpu", progress=False,
        checkpoint_dir=directory, hooks=hooks)
    return model


def test_a_checkpoint_truncated_by_hand_is_skipped_and_the_run_resumes_from_the_one_before(tmp_path):
    train_linear(tmp_path / "run", epochs=2)
    newest, older = CheckpointDir(tmp_path / "run").paths()
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match=f"skipping checkpoint {newest}: .* bytes on disk"):
        path, checkpoint = CheckpointDir(tmp_path / "run").latest()
    assert path == older and checkpoint["epoch"] == 1
    counter = CountSteps()
    with pytest.warns(UserWarning, match="bytes on disk"):
        resumed = train_linear(tmp_path / "run", epochs=3, hooks=(counter,))
    assert counter.steps == 2 * 4  # epochs 2 and 3 again, from the checkpoint of epoch 1
    reference = train_linear(tmp_path / "reference", epochs=3)
    for a, b in zip(resumed.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_with_one_byte_changed_is_never_loaded(tmp_path):
    train_linear(tmp_path, epochs=1)
    (path,) = CheckpointDir(tmp_path).paths()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same size: only the SHA-256 tells
    with pytest.raises(CorruptFileError, match="SHA-256 differs"):
        CheckpointDir.load(path)
    with pytest.warns(UserWarning, match="corrupted"):
        assert CheckpointDir(tmp_path).load_latest() is None


def train_fn_with_checkpoints(counter: CountSteps) -> Any:
    def train(run: Run) -> dict[str, float]:
        model = train_linear(run.checkpoint_dir, epochs=2, hooks=(counter,))
        run.save_model(model)
        return {"weight_sum": float(model.weight.detach().sum())}

    return train


def test_a_metrics_file_with_garbage_is_detected_and_the_run_trained_again(store, capsys):
    run = store.get_or_train("tiny", CONFIG, lambda run: {"mAP": 0.5})
    (run.dir / "metrics.json").write_text('{"mAP": 0.9}')  # garbage: edited after it was written
    assert run.problems() == ["metrics.json: 12 bytes on disk, 17 when written (truncated or changed)"]
    with pytest.raises(CorruptFileError, match="metrics.json.*cannot be trusted: train it again"):
        run.load_metrics()
    assert run.status() == "damaged: metrics.json: 12 bytes on disk, 17 when written (truncated or changed)"
    again = store.get_or_train("tiny", CONFIG, lambda run: {"mAP": 0.5})
    assert "is damaged (metrics.json: 12 bytes on disk" in capsys.readouterr().out
    assert again.load_metrics() == {"mAP": 0.5} and again.problems() == []


def test_a_truncated_weights_file_is_rebuilt_from_the_last_good_checkpoint_without_training(store, capsys):
    counter = CountSteps()
    run = store.get_or_train("tiny", CONFIG, train_fn_with_checkpoints(counter))
    weights = run.load_weights()
    assert counter.steps == 8
    model_file = run.dir / "model.pt"
    model_file.write_bytes(model_file.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="model.pt"):
        run.load_model(nn.Linear(3, 2))
    store.get_or_train("tiny", CONFIG, train_fn_with_checkpoints(counter))
    assert "training it again, from its last good checkpoint" in capsys.readouterr().out
    assert counter.steps == 8  # the finished run's last checkpoint gave the weights back
    assert all(torch.equal(a, b) for a, b in zip(run.load_weights().values(), weights.values()))


def test_files_without_a_recorded_checksum_are_not_trusted(store):
    run = store.get_or_train("tiny", CONFIG, lambda run: {"mAP": 0.5})
    (run.dir / "notes.json").write_text("{}")  # written around the store
    assert run.problems() == ["notes.json: " + atomic.NOT_RECORDED]
    with pytest.raises(CorruptFileError, match="no checksum recorded"):
        run.read_json("notes.json")
    (run.dir / "MANIFEST.json").write_text("garbage")
    (problem,) = run.problems()
    assert problem.startswith("MANIFEST.json: unreadable manifest (Expecting value")


def test_a_damaged_stored_evaluation_is_computed_again(store):
    run = store.get_or_train("tiny", CONFIG, lambda run: {"mAP": 0.5})
    run.save_evaluation("k1", {"post": []}, {"mAP": 0.25})
    assert run.load_evaluation("k1") == ({"mAP": 0.25}, None)
    (run.evaluation_dir("k1") / "metrics.json").write_text("garbage!" * 3)
    with pytest.warns(UserWarning, match="stored evaluation .*metrics.json is damaged"):
        assert run.load_evaluation("k1") is None
    with pytest.warns(UserWarning, match="leaving out the damaged stored evaluation"):
        assert run.evaluations() == []


# ----------------------------------------------------------------------------------- failing writes
def disk_full_after(limit: int) -> Any:
    """A stand-in for torch.save that writes ``limit`` bytes and then fails as a full disk does."""

    def save(obj: Any, file: Any) -> None:
        file.write(b"\0" * limit)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_a_write_failing_midway_leaves_the_previous_complete_state_readable(store, monkeypatch):
    run = store.get_or_train("tiny", CONFIG, lambda run: {"mAP": 0.5})
    run.save_model(nn.Linear(3, 2))
    before = run.load_weights()
    manifest = (run.dir / "MANIFEST.json").read_bytes()
    monkeypatch.setattr(atomic.torch, "save", disk_full_after(64))
    with pytest.raises(OSError, match="No space left on device"):
        run.save_model(nn.Linear(3, 2))
    monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(run.load_weights().values(), before.values()))
    assert (run.dir / "MANIFEST.json").read_bytes() == manifest
    assert not [p for p in run.dir.iterdir() if p.name.endswith(".tmp")] and run.problems() == []

    real_write = Manifest._write
    monkeypatch.setattr(Manifest, "_write", lambda self, entries: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="No space left on device"):
        run.save_metrics({"mAP": 0.75})  # the file is replaced, its record cannot be written
    monkeypatch.setattr(Manifest, "_write", real_write)
    with pytest.raises(CorruptFileError, match="metrics.json"):
        run.load_metrics()  # never silently used
    assert run.problems() == ["metrics.json: 18 bytes on disk, 17 when written (truncated or changed)"]


def test_a_checkpoint_whose_record_cannot_be_written_is_skipped_and_older_ones_kept(tmp_path, monkeypatch):
    train_linear(tmp_path, epochs=1)
    checkpoints = CheckpointDir(tmp_path, keep=1)
    (kept,) = checkpoints.paths()
    payload = CheckpointDir.load(kept)
    monkeypatch.setattr(Manifest, "_write", lambda self, entries: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="No space left on device"):
        checkpoints.save({**payload, "global_step": 99})
    monkeypatch.undo()
    assert [p.name for p in checkpoints.paths()] == ["checkpoint-000000099.pt", kept.name]  # nothing deleted
    with pytest.warns(UserWarning, match="checkpoint-000000099.pt: no checksum recorded"):
        path, loaded = checkpoints.latest()
    assert path == kept and loaded["global_step"] == payload["global_step"]
    read_verified(kept)


def test_only_rank_zero_writes_the_store(store, monkeypatch):
    run = store.run("tiny", CONFIG)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with pytest.raises(RuntimeError, match="rank 1 tried to write .*only rank 0 writes the results store"):
        run.save_metrics({"mAP": 0.5})
    with pytest.raises(RuntimeError, match="only rank 0"):
        run.start()
