"""Tests of the run profiles: values, overrides, validation and JSON round trips."""

from __future__ import annotations

import dataclasses

import pytest

from reidbook.profiles import Profile, available_profiles, get_profile


def test_the_three_profiles_exist():
    assert available_profiles() == ["cpu", "paper", "smoke"]


def test_paper_profile_has_the_strong_baseline_settings():
    p = get_profile("paper")
    assert (p.backbone, p.init, p.last_stride, p.height, p.width) == ("resnet50", "imagenet", 1, 256, 128)
    assert p.stem_pool
    assert (p.epochs, p.optimizer, p.lr, p.warmup_epochs, p.milestones, p.gamma) == (
        120,
        "adam",
        3.5e-4,
        10,
        (40, 70),
        0.1,
    )
    assert (p.batch_p, p.batch_k, p.batch_size) == (16, 4, 64)


def test_smoke_is_smaller_than_cpu_which_is_smaller_than_paper():
    smoke, cpu, paper = get_profile("smoke"), get_profile("cpu"), get_profile("paper")
    assert smoke.height * smoke.width <= cpu.height * cpu.width < paper.height * paper.width
    def steps(p):  # training steps of a run, an uncapped epoch counted as infinitely many
        return p.epochs * (p.max_steps_per_epoch or float("inf"))

    assert steps(smoke) < steps(cpu) < steps(paper)
    assert smoke.max_steps_per_epoch is not None


def test_overrides_change_only_the_named_fields():
    p = get_profile("cpu", epochs=5, lr=1e-3)
    base = get_profile("cpu")
    assert (p.epochs, p.lr) == (5, 1e-3)
    changed = {f.name for f in dataclasses.fields(Profile) if getattr(p, f.name) != getattr(base, f.name)}
    assert changed == {"epochs", "lr"}


def test_unknown_fields_and_profiles_raise_clear_errors():
    with pytest.raises(ValueError, match=r"unknown profile field\(s\) \['epoch'\]; valid fields are: name, "):
        get_profile("cpu", epoch=3)
    with pytest.raises(ValueError, match="available profiles: cpu, paper, smoke"):
        get_profile("gpu")


def test_world_overrides_merge_and_never_leak_into_the_registry():
    p = get_profile("smoke", world={"num_train_ids": 10})
    assert p.world == {"world_size": "small", "num_train_ids": 10}
    p.world["num_test_ids"] = 99  # a notebook mutating its copy
    assert get_profile("smoke").world == {"world_size": "small"}


def test_profiles_round_trip_through_json_and_dicts():
    p = get_profile("paper", seeds=[1, 2], milestones=[30])
    assert p.seeds == (1, 2) and p.milestones == (30,) and p.seed == 1
    assert Profile.from_json(p.to_json()) == p
    assert Profile.from_dict(p.to_dict()) == p
    assert p.to_dict()["milestones"] == [30]


def test_default_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("REIDBOOK_PROFILE", raising=False)
    assert get_profile().name == "cpu"
    monkeypatch.setenv("REIDBOOK_PROFILE", "smoke")
    assert get_profile().name == "smoke"


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile("cpu").epochs = 3


PRETRAIN = {"method": "baseline", "dataset": "synthetic-market", "world_seed": 1,
            "world": {"num_train_ids": 8}, "epochs": 2, "milestones": [1]}


def test_init_replaces_pretrained_and_is_validated():
    assert "pretrained" not in {f.name for f in dataclasses.fields(Profile)}
    assert get_profile("smoke").init == "random"
    with pytest.raises(ValueError, match=r"init must be one of \('random', 'imagenet', 'world'\), got 'yes'"):
        get_profile("cpu", init="yes")
    with pytest.raises(ValueError, match=r"unknown profile field\(s\) \['pretrained'\]"):
        get_profile("cpu", pretrained=True)


def test_a_world_start_needs_a_pretraining_spec():
    with pytest.raises(ValueError, match="init='world' needs a pretrain spec"):
        get_profile("smoke", init="world")
    with pytest.raises(ValueError, match="init='world' needs a pretrain spec"):
        Profile(name="mine", init="world")
    p = get_profile("smoke", init="world", pretrain=PRETRAIN)
    assert p.init == "world" and p.pretrain == PRETRAIN and p.pretrain is not PRETRAIN  # copied
    assert Profile.from_json(p.to_json()) == p


def test_the_new_fields_round_trip_and_dict_fields_are_copied():
    budgets = {"01_baseline.ipynb": 300.0}
    p = get_profile("cpu", stem_pool=False, amp=True, channels_last="auto", budgets=budgets)
    assert (p.stem_pool, p.amp, p.channels_last, p.budgets) == (False, True, "auto", budgets)
    budgets["01_baseline.ipynb"] = 1.0  # the caller's dict changes; the profile's does not
    assert p.budgets == {"01_baseline.ipynb": 300.0}
    assert Profile.from_dict(p.to_dict()) == p
    assert p.to_dict()["budgets"] == {"01_baseline.ipynb": 300.0}
