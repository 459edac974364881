"""The command line (python -m reidbook): help, messages for bad arguments, --set, the runs listing, and a
smoke-profile run trained by two processes under torchrun that a chapter then reuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reidbook import cli, experiment, methods
from reidbook.data.synthetic import generate_world
from reidbook.profiles import get_profile
from reidbook.results import ResultsStore

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--profile", "smoke", "--set", "epochs=1", "--set", "max_steps_per_epoch=2", "--quiet"]


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- help
def test_help_names_every_command_option_method_profile_and_dataset(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "train" in out and "runs" in out
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    for option in ("--method", "--dataset", "--profile", "--seed", "--world-seed", "--data-root", "--results",
                   "--device", "--set", "--force", "--no-sync-bn", "--lock-timeout", "--quiet"):
        assert option in out, option
    for name in [*methods.names(), "smoke", "cpu", "paper", "synthetic-market", "market1501", "sysu"]:
        assert name in out, name
    assert "torchrun --standalone --nproc_per_node" in out and "REIDBOOK_RESULTS" in out
    code, out, _ = run_cli(capsys, "runs", "--help")
    assert code == 0 and "--verify" in out and "--method" in out


@pytest.mark.parametrize("argv, message", [
    (["--method", "nope", "--dataset", "synthetic-market", "--profile", "smoke"],
     "invalid choice: 'nope' (choose from 'baseline'"),
    (["--method", "baseline", "--dataset", "atlantis", "--profile", "smoke"],
     "unknown dataset 'atlantis'; choose one of: synthetic-market, synthetic-market-b"),
    (["--method", "baseline", "--dataset", "synthetic-market", "--profile", "huge"],
     "invalid choice: 'huge' (choose from 'cpu', 'paper', 'smoke')"),
    (["--method", "baseline", "--dataset", "synthetic-market", "--profile", "smoke", "--device", "gpu"],
     "unknown device 'gpu'"),
    (["--method", "baseline", "--dataset", "synthetic-market", "--profile", "smoke", "--lock-timeout", "-1"],
     "expected a number of seconds >= 0, got '-1'"),
    (["--method", "baseline", "--dataset", "synthetic-market", "--profile", "smoke", "--set", "bogus=1"],
     "unknown setting 'bogus': not a profile field (name, backbone"),
    (["--method", "qaconv", "--dataset", "synthetic-market", "--profile", "smoke", "--set", "augmentation"],
     "--set expects KEY=VALUE, got 'augmentation'"),
])
def test_bad_arguments_get_a_message_naming_the_valid_choices(capsys, argv, message):
    code, _, err = run_cli(capsys, "train", *argv)
    assert code == 2 and message in err


def test_under_torchrun_one_named_gpu_for_every_process_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(capsys, "train", "--method", "baseline", "--dataset", "synthetic-market",
                           "--profile", "smoke", "--device", "cuda:1")
    assert code == 2 and "device 'cuda:1' names one GPU, but each of the 2 processes" in err


def test_set_reaches_profile_fields_world_knobs_and_method_options():
    qaconv = methods.get("qaconv")
    overrides, options = cli.parse_settings(
        ["epochs=4", "milestones=[2, 3]", "world.num_train_ids=60", "augmentation=none", "lr=1e-2",
         "option.channels=64", "profile.amp=false"], qaconv)
    assert overrides == {"epochs": 4, "milestones": [2, 3], "world": {"num_train_ids": 60}, "lr": 0.01,
                         "amp": False}
    assert options == {"augmentation": "none", "channels": 64}
    assert get_profile("smoke", **overrides).milestones == (2, 3)
    with pytest.raises(ValueError, match="'option.epochs': not a profile field"):
        cli.parse_settings(["option.epochs=3"], qaconv)


def test_a_name_that_is_both_a_field_and_an_option_needs_a_prefix():
    recipe = methods.get("baseline")
    both = type(recipe)(**{**recipe.__dict__, "options": {"epochs": 1}})
    with pytest.raises(ValueError, match="both a profile field and an option of 'baseline'.*profile.epochs"):
        cli.parse_settings(["epochs=2"], both)
    assert cli.parse_settings(["option.epochs=2"], both) == ({}, {"epochs": 2})


# --------------------------------------------------------------------------------------------- runs
def test_runs_lists_complete_incomplete_damaged_and_busy_runs(tmp_path, capsys):
    store = ResultsStore(tmp_path, code="c")
    data = {"name": "market1501", "built_in": {"dataset": "synthetic-market"}}
    config = {"method": "baseline", "data": data, "profile": {"name": "smoke"}, "seed": 0}
    store.get_or_train("baseline", config, lambda run: {"rank1": 0.5, "mAP": 0.25, "mINP": 0.125})
    store.run("baseline", {**config, "seed": 1}).start()
    damaged = store.get_or_train("ianet", {**config, "seed": 2}, lambda run: {"mAP": 0.3})
    (damaged.dir / "metrics.json").write_text("{}")
    busy = store.run("qaconv", {**config, "seed": 3})
    busy.start()
    frame = cli.runs_frame(store)
    with busy.lock.held(timeout=0):
        busy_frame = cli.runs_frame(store)
    rows = frame.set_index(["method", "seed"])
    assert rows.loc[("baseline", 0), ["dataset", "profile", "rank-1", "mAP", "status"]].tolist() == [
        "synthetic-market", "smoke", 50.0, 25.0, "complete"]
    assert rows.loc[("baseline", 1), "status"] == "incomplete"
    assert rows.loc[("ianet", 2), "status"].startswith("damaged: metrics.json: 2 bytes on disk")
    assert busy_frame.query("method == 'qaconv'")["status"].item().startswith(
        f"being written by process {os.getpid()}")
    code, out, _ = run_cli(capsys, "runs", "--results", str(tmp_path), "--method", "ianet")
    assert code == 0 and "damaged" in out and "1 runs in" in out and "baseline" not in out.split("\n", 1)[1]
    code, out, _ = run_cli(capsys, "runs", "--results", str(tmp_path / "empty"))
    assert code == 0 and "no runs in" in out


# ------------------------------------------------------------------------------- torchrun, end to end
@pytest.fixture(scope="module")
def smoke_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_world(root, preset="market", seed=0, progress=False, **get_profile("smoke").world)
    return root


def test_torchrun_trains_the_chapters_run_which_a_chapter_then_reuses(smoke_world, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["train", "--method", "baseline", "--dataset", "synthetic-market", "--data-root", str(smoke_world),
            "--results", str(results), "--device", "cpu", *SMOKE]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, "-m", "reidbook", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert done.stdout.count("baseline seed 0: rank-1") == 1  # rank 0 alone speaks
    assert f"stored in {results}" in done.stdout and "(complete)" in done.stdout

    # the chapter's cells: the same profile, world and seed find the run without training it
    cfg = get_profile("smoke", device="cpu", epochs=1, max_steps_per_epoch=2)
    data = experiment.open_dataset("synthetic-market", smoke_world, world=cfg.world, world_seed=0)
    store = ResultsStore(results)
    run = experiment.train("baseline", data, cfg, seed=0, store=store, progress=False)
    assert "reused from the results store" in capsys.readouterr().out
    assert run.read_json("training.json")["world_size"] == 2 and run.problems() == []

    # the metrics stored by the two processes (features split between them and gathered) are the single
    # process's evaluation of the stored model
    recipe = methods.get("baseline")
    single = recipe.evaluator_for(run.config["options"]).evaluate(
        experiment.load_model(run), data, height=cfg.height, width=cfg.width, device="cpu").metrics
    stored = run.load_metrics()
    for name in ("rank1", "mAP", "mINP"):
        assert stored[name] == pytest.approx(single[name], abs=1e-6), name

    code, out, _ = run_cli(capsys, *argv)  # the command line in one process: reused, not retrained
    assert code == 0 and "reused from the results store" in out and str(run.dir) in out
    frame = cli.runs_frame(store)
    assert frame[["method", "processes", "status"]].values.tolist() == [["baseline", 2, "complete"]]
