"""Tests of the training engine: a tiny conv net, a tiny criterion, an in-memory loader of dict batches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from reidbook.engine import (
    CheckpointDir,
    NonFiniteLossError,
    build_optimizer,
    build_param_groups,
    epoch_seed,
    extract_features,
    fit,
    seed_everything,
    warmup_multistep_factor,
)

NUM_IDS = 4


class TinyNet(nn.Module):
    """conv -> GAP -> BN -> dropout -> linear: dict in train mode, embedding (B, 8) in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.2)
        self.classifier = nn.Linear(8, NUM_IDS)

    def forward(self, img: torch.Tensor):
        feat = self.bn(self.backbone(img).mean(dim=(2, 3)))  # (B, 8)
        if not self.training:
            return feat
        return {"feat": feat, "logits": self.classifier(self.drop(feat))}


class TinyCriterion:
    def __call__(self, outputs, batch):
        return {
            "ce": nn.functional.cross_entropy(outputs["logits"], batch["pid"]),
            "norm": outputs["feat"].pow(2).mean(),
        }


class NoisyImages(Dataset):
    """Fixed images per identity plus noise drawn from torch's global RNG (a random augmentation)."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(123)
        self.pids = torch.arange(n) % NUM_IDS
        self.base = torch.randn(NUM_IDS, 3, 8, 4, generator=g)[self.pids]  # (n, 3, 8, 4)

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, i: int):
        img = self.base[i] + 0.3 * torch.randn(3, 8, 4)
        return {"img": img, "pid": self.pids[i], "camid": torch.tensor(i % 2), "index": torch.tensor(i)}


class EpochSampler(Sampler):
    """A shuffling sampler reseeded by set_epoch, like RandomIdentitySampler."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch, self.epochs_seen = n, seed, 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    dataset = NoisyImages(n)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(n))


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


FIT_ARGS = dict(epochs=4, lr=0.05, warmup_epochs=1, milestones=(3,), device="cpu", progress=False, seed=7)


class InterruptAt:
    """Raises KeyboardInterrupt when (epoch, step) is reached, once."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.fired = (epoch, step), False

    def on_step_start(self, state) -> None:
        if not self.fired and (state.epoch, state.step) == self.at:
            self.fired = True
            raise KeyboardInterrupt


class WeightSchedule:
    """Shrinks the 'ce' weight every epoch (kept only in state.loss_weights), sets the 'norm' weight every
    step and counts steps in its state_dict: a stateful method hook."""

    def __init__(self) -> None:
        self.count = 0

    def on_epoch_start(self, state) -> None:
        state.loss_weights["ce"] = 0.9 * state.loss_weights.get("ce", 1.0)

    def on_step_start(self, state) -> None:
        self.count += 1
        state.loss_weights["norm"] = 0.1 + 0.01 * self.count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def history_without_time(history) -> tuple[pd.DataFrame, pd.DataFrame]:
    return history.steps.drop(columns=["time"]), history.epochs.drop(columns=["time"])


# ----------------------------------------------------------------------------------------- LR schedule
def test_warmup_multistep_factor_matches_hand_computed_values():
    kw = dict(warmup_epochs=10, milestones=(40, 70), gamma=0.1, warmup_factor=0.1)
    assert warmup_multistep_factor(0, **kw) == pytest.approx(0.1)
    assert warmup_multistep_factor(5, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_multistep_factor(2.5, **kw) == pytest.approx(0.1 + 0.9 * 0.25)
    assert warmup_multistep_factor(10, **kw) == pytest.approx(1.0)
    assert warmup_multistep_factor(39.9, **kw) == pytest.approx(1.0)
    assert warmup_multistep_factor(40, **kw) == pytest.approx(0.1)
    assert warmup_multistep_factor(70, **kw) == pytest.approx(0.01)
    assert warmup_multistep_factor(119, **kw) == pytest.approx(0.01)


def test_fit_applies_warmup_and_step_decay_per_epoch_and_per_step():
    history = fit(make_model(), TinyCriterion(), make_loader(), **{**FIT_ARGS, "warmup_epochs": 2})
    lrs = history.epochs["lr"].to_numpy()
    np.testing.assert_allclose(lrs, [0.05 * 0.1, 0.05 * 0.55, 0.05, 0.005])
    per_step = fit(
        make_model(),
        TinyCriterion(),
        make_loader(),
        **{**FIT_ARGS, "warmup_epochs": 2, "lr_schedule": "step"},
    )
    steps = per_step.steps
    expected = [
        0.05 * warmup_multistep_factor(g / 4, warmup_epochs=2, milestones=(3,), gamma=0.1)
        for g in steps["global_step"]
    ]
    np.testing.assert_allclose(steps["lr"].to_numpy(), expected)


# ------------------------------------------------------------------------------- optimizer and groups
def test_param_groups_use_multipliers_and_collect_unlisted_parameters():
    model = make_model()
    groups = build_param_groups(
        model,
        0.1,
        [
            {"params": model.backbone.parameters(), "lr_mult": 0.1},
            {"params": model.classifier.parameters(), "lr": 0.5, "name": "head"},
        ],
    )
    assert [g["name"] for g in groups] == ["group0", "head", "default"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.5, 0.1])
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in model.bn.parameters()}
    with pytest.raises(ValueError, match="repeats a parameter"):
        build_param_groups(model, 0.1, [{"params": model.bn.parameters()}, {"params": model.bn.parameters()}])
    with pytest.raises(ValueError, match="no 'params'"):
        build_param_groups(model, 0.1, [{"lr": 1.0}])


def test_fit_logs_one_lr_column_per_group_and_scales_them_together():
    model = make_model()
    history = fit(
        model,
        TinyCriterion(),
        make_loader(),
        **FIT_ARGS,
        param_groups=[{"params": model.backbone.parameters(), "lr_mult": 0.1, "name": "backbone"}],
    )
    epochs = history.epochs
    np.testing.assert_allclose(epochs["lr_backbone"], 0.1 * epochs["lr_default"])
    np.testing.assert_allclose(epochs["lr"], epochs["lr_backbone"])


def test_build_optimizer_by_name_or_ready():
    model = make_model()
    assert isinstance(build_optimizer(model, "SGD", lr=0.1), torch.optim.SGD)
    assert isinstance(build_optimizer(model, "adamw", lr=0.1), torch.optim.AdamW)
    ready = torch.optim.Adam(model.parameters(), lr=0.1)
    assert build_optimizer(model, ready, lr=1.0) is ready
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "lion", lr=0.1)


# ------------------------------------------------------------------------------------------- history
def test_history_records_terms_weights_and_weighted_total():
    history = fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, loss_weights={"norm": 0.5})
    steps, epochs = history.steps, history.epochs
    assert list(steps.columns) == [
        "epoch",
        "step",
        "global_step",
        "ce",
        "norm",
        "ce_weight",
        "norm_weight",
        "total",
        "lr",
        "time",
    ]
    assert len(steps) == 16 and list(steps["global_step"]) == list(range(16))
    np.testing.assert_allclose(steps["total"], steps["ce"] + 0.5 * steps["norm"], rtol=1e-6)
    assert (steps["ce_weight"] == 1.0).all() and (steps["norm_weight"] == 0.5).all()
    assert list(epochs["epoch"]) == [0, 1, 2, 3] and list(epochs["steps"]) == [4, 4, 4, 4]
    np.testing.assert_allclose(epochs["ce"], steps.groupby("epoch")["ce"].mean(), rtol=1e-6)
    assert epochs["ce"].iloc[-1] < epochs["ce"].iloc[0]  # it learns


def test_max_steps_per_epoch_caps_each_epoch():
    history = fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, max_steps_per_epoch=2)
    assert list(history.epochs["steps"]) == [2, 2, 2, 2]


def test_fit_runs_the_model_through_the_given_feed():
    seen = []

    def feed(model, batch):
        seen.append((model.training, len(batch["index"])))
        return model(batch["img"] * 0)  # the loss then cannot depend on the images

    history = fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, feed=feed, max_steps_per_epoch=1)
    assert seen == [(True, 8)] * 4
    plain = fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, max_steps_per_epoch=1)
    assert not np.allclose(history.steps["ce"], plain.steps["ce"])


def test_bad_criterion_outputs_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="'total'"):
        fit(make_model(), lambda o, b: {"total": o["logits"].sum()}, make_loader(), **FIT_ARGS)
    with pytest.raises(ValueError, match="scalar tensor"):
        fit(make_model(), lambda o, b: {"ce": o["logits"]}, make_loader(), **FIT_ARGS)


def test_non_finite_loss_names_term_epoch_and_step():
    calls = {"n": 0}

    def criterion(outputs, batch):
        calls["n"] += 1
        bad = torch.tensor(float("nan")) if calls["n"] == 6 else outputs["logits"].sum() * 0
        return {"ce": nn.functional.cross_entropy(outputs["logits"], batch["pid"]), "aux": bad}

    with pytest.raises(NonFiniteLossError, match=r"'aux' is nan at epoch 1, step 1") as info:
        fit(make_model(), criterion, make_loader(), **FIT_ARGS)
    assert (info.value.term, info.value.epoch, info.value.step, info.value.global_step) == ("aux", 1, 1, 5)


# ------------------------------------------------------------------------------- hooks and evaluation
def test_hooks_see_every_event_and_can_change_weights_and_swap_the_loader():
    small = make_loader(n=16)
    events = []

    class Recorder:
        def on_train_start(self, state):
            events.append("train")

        def on_epoch_start(self, state):
            events.append(f"epoch{state.epoch}")
            if state.epoch == 2:
                state.train_loader = small  # swap the sampler/loader
                state.loss_weights["norm"] = 0.0

        def on_step_end(self, state):
            assert set(state.losses) == {"ce", "norm"}

        def on_epoch_end(self, state):
            events.append(f"end{state.epoch}")

    history = fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, hooks=[Recorder()])
    assert events == ["train", "epoch0", "end0", "epoch1", "end1", "epoch2", "end2", "epoch3", "end3"]
    assert list(history.epochs["steps"]) == [4, 4, 2, 2]
    assert list(history.epochs["norm_weight"]) == [1.0, 1.0, 0.0, 0.0]
    assert small.sampler.epochs_seen == [2, 3]


def test_sampler_set_epoch_is_called_every_epoch():
    loader = make_loader()
    fit(make_model(), TinyCriterion(), loader, **FIT_ARGS)
    assert loader.sampler.epochs_seen == [0, 1, 2, 3]


def test_evaluator_runs_every_n_epochs_and_after_the_last_in_eval_mode():
    modes = []

    def evaluator(model):
        modes.append(model.training)
        return {"mAP": 0.25 * len(modes), "cmc": np.arange(3)}

    history = fit(
        make_model(),
        TinyCriterion(),
        make_loader(),
        **{**FIT_ARGS, "epochs": 5},
        eval_every=2,
        evaluator=evaluator,
    )
    assert modes == [False, False, False]
    epochs = history.epochs
    assert epochs["mAP"].isna().tolist() == [True, False, True, False, False]
    assert epochs["mAP"].dropna().tolist() == [0.25, 0.5, 0.75]
    assert "cmc" not in epochs.columns  # non-scalars stay out of the table


# ----------------------------------------------------------------------------- checkpoints and resume
def assert_same_run(model_a, history_a, model_b, history_b):
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs")
    for frame_a, frame_b in zip(history_without_time(history_a), history_without_time(history_b)):
        pd.testing.assert_frame_equal(frame_a, frame_b)


@pytest.mark.parametrize("interrupt_at, every_steps", [((2, 1), 0), ((1, 3), 2), ((0, 2), 1)])
def test_resumed_run_equals_uninterrupted_run(tmp_path, interrupt_at, every_steps):
    args = dict(**FIT_ARGS, loss_weights={"norm": 0.2}, checkpoint_every_steps=every_steps)
    reference = make_model()
    expected = fit(
        reference,
        TinyCriterion(),
        make_loader(),
        **args,
        hooks=[WeightSchedule()],
        checkpoint_dir=tmp_path / "reference",
    )

    with pytest.raises(KeyboardInterrupt):
        fit(
            make_model(),
            TinyCriterion(),
            make_loader(),
            **args,
            checkpoint_dir=tmp_path / "run",
            hooks=[WeightSchedule(), InterruptAt(*interrupt_at)],
        )
    assert not CheckpointDir(tmp_path / "run").complete
    resumed = make_model(seed=99)  # a different initialisation: everything must come from the checkpoint
    hook = WeightSchedule()
    history = fit(
        resumed, TinyCriterion(), make_loader(), **args, checkpoint_dir=tmp_path / "run", hooks=[hook]
    )
    assert CheckpointDir(tmp_path / "run").complete
    assert hook.count == 16
    assert_same_run(reference, expected, resumed, history)


def test_a_different_seed_gives_a_different_run():
    """Guard for the test above: equality of runs is not trivial."""
    a, b = make_model(), make_model()
    ha = fit(a, TinyCriterion(), make_loader(), **FIT_ARGS)
    hb = fit(b, TinyCriterion(), make_loader(), **{**FIT_ARGS, "seed": 8})
    assert not np.allclose(ha.steps["ce"], hb.steps["ce"])


def test_finished_run_returns_at_once_with_final_weights(tmp_path):
    trained = make_model()
    expected = fit(trained, TinyCriterion(), make_loader(), **FIT_ARGS, checkpoint_dir=tmp_path)
    steps = []

    class Count:
        def on_step_start(self, state):
            steps.append(state.global_step)

    again = make_model(seed=5)
    history = fit(again, TinyCriterion(), make_loader(), **FIT_ARGS, checkpoint_dir=tmp_path, hooks=[Count()])
    assert steps == []
    assert_same_run(trained, expected, again, history)


def test_corrupt_and_temporary_checkpoint_files_are_never_loaded(tmp_path):
    fit(make_model(), TinyCriterion(), make_loader(), **{**FIT_ARGS, "epochs": 2}, checkpoint_dir=tmp_path)
    (tmp_path / "checkpoint-999999999.pt").write_bytes(b"half a file")
    (tmp_path / ".checkpoint-999999998.pt.abc.tmp").write_bytes(b"temporary")
    with pytest.warns(UserWarning, match="skipping checkpoint .*no checksum recorded"):
        checkpoint = CheckpointDir(tmp_path).load_latest()
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (2, 8)


def test_checkpoint_dir_keeps_only_the_newest_files(tmp_path):
    fit(
        make_model(),
        TinyCriterion(),
        make_loader(),
        **FIT_ARGS,
        checkpoint_dir=tmp_path,
        checkpoint_every_steps=1,
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["COMPLETE", "MANIFEST.json", "checkpoint-000000015.pt", "checkpoint-000000016.pt"]
    assert set(json.loads((tmp_path / "MANIFEST.json").read_text())["files"]) == set(names[2:])


def test_finished_run_can_be_extended_by_more_epochs(tmp_path):
    fit(make_model(), TinyCriterion(), make_loader(), **{**FIT_ARGS, "epochs": 2}, checkpoint_dir=tmp_path)
    assert CheckpointDir(tmp_path).complete
    with pytest.raises(KeyboardInterrupt):
        fit(
            make_model(),
            TinyCriterion(),
            make_loader(),
            **FIT_ARGS,
            checkpoint_dir=tmp_path,
            hooks=[InterruptAt(3, 0)],
        )
    assert not CheckpointDir(tmp_path).complete
    history = fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, checkpoint_dir=tmp_path)
    assert list(history.epochs["epoch"]) == [0, 1, 2, 3] and CheckpointDir(tmp_path).complete


def test_checkpoint_with_more_epochs_than_requested_is_refused(tmp_path):
    fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="more than the requested epochs=2"):
        fit(
            make_model(), TinyCriterion(), make_loader(), **{**FIT_ARGS, "epochs": 2}, checkpoint_dir=tmp_path
        )


# ------------------------------------------------------------------------------- seeding and devices
def test_seed_everything_and_epoch_seed_are_deterministic():
    seed_everything(3)
    first = (torch.rand(3), np.random.rand(3))
    seed_everything(3)
    torch.testing.assert_close(torch.rand(3), first[0])
    np.testing.assert_array_equal(np.random.rand(3), first[1])
    assert epoch_seed(0, 1) == epoch_seed(0, 1)
    assert len({epoch_seed(s, e) for s in range(3) for e in range(3)}) == 9


def test_bfloat16_autocast_and_channels_last_run_on_cpu():
    history = fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, amp=True, channels_last=True)
    assert np.isfinite(history.steps["total"]).all()
    with pytest.raises(ValueError, match="amp must be"):
        fit(make_model(), TinyCriterion(), make_loader(), **FIT_ARGS, amp="yes")


# ------------------------------------------------------------------------------ features and ranking
def test_extract_features_concatenates_eval_outputs_and_averages_flips():
    model = make_model()
    model.train()
    loader = [
        {"img": torch.randn(3, 3, 8, 4), "pid": torch.tensor([0, 1, 2]), "camid": torch.tensor([0, 0, 1])},
        {"img": torch.randn(2, 3, 8, 4), "pid": torch.tensor([3, 4]), "camid": torch.tensor([1, 1])},
    ]
    feats, pids, camids = extract_features(model, loader, device="cpu", progress=False)
    assert model.training  # mode restored
    model.eval()
    images = torch.cat([b["img"] for b in loader])
    with torch.no_grad():
        plain = model(images)
        mirrored = model(images.flip(3))
    torch.testing.assert_close(feats, plain)
    assert pids.tolist() == [0, 1, 2, 3, 4] and camids.tolist() == [0, 0, 1, 1, 1]
    flipped, _, _ = extract_features(model, loader, device="cpu", flip=True, progress=False)
    torch.testing.assert_close(flipped, (plain + mirrored) / 2)
    in_channels_last, _, _ = extract_features(model, loader, device="cpu", flip=True, progress=False,
                                               channels_last=True)
    assert in_channels_last.is_contiguous()  # the features come back in the default layout
    torch.testing.assert_close(in_channels_last, flipped, atol=1e-5, rtol=1e-5)


class TwoInputs(nn.Module):
    """Eval outputs of a method that needs more of the batch than the images: a dict of a pooled embedding
    shifted by the image's modality and a (mirror-sensitive) feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, img: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.bn(self.conv(img))  # (B, 2, H, W)
        return {"embedding": fmap.mean(dim=(2, 3)) + modality[:, None].float(), "map": fmap}


def feed_with_modality(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return model(batch["img"], batch["modality"])


def test_extract_features_uses_the_feed_and_averages_every_output_of_a_dict_with_its_mirror():
    torch.manual_seed(0)
    model = TwoInputs()
    model.train()
    loader = [
        {"img": torch.randn(3, 3, 8, 4), "pid": torch.tensor([0, 1, 2]), "camid": torch.tensor([0, 0, 1]),
         "modality": torch.tensor([0, 1, 1])},
        {"img": torch.randn(2, 3, 8, 4), "pid": torch.tensor([3, 4]), "camid": torch.tensor([1, 1]),
         "modality": torch.tensor([1, 0])},
    ]
    feats, pids, camids = extract_features(model, loader, feed=feed_with_modality, device="cpu",
                                           progress=False)
    assert model.training  # mode restored
    model.eval()
    images, modality = torch.cat([b["img"] for b in loader]), torch.cat([b["modality"] for b in loader])
    with torch.no_grad():
        plain, mirrored = model(images, modality), model(images.flip(3), modality)
    assert set(feats) == {"embedding", "map"}
    for name in feats:
        torch.testing.assert_close(feats[name], plain[name])
    assert pids.tolist() == [0, 1, 2, 3, 4] and camids.tolist() == [0, 0, 1, 1, 1]
    model.train()
    flipped, _, _ = extract_features(model, loader, feed=feed_with_modality, device="cpu", flip=True,
                                     progress=False)
    assert model.training
    for name in flipped:  # the modality reaches the mirrored pass too: it is not averaged away
        torch.testing.assert_close(flipped[name], (plain[name] + mirrored[name]) / 2)
    assert not torch.allclose(flipped["map"], plain["map"])  # the mirror image changes the maps


def test_extract_features_needs_a_batch():
    with pytest.raises(ValueError, match="no batch"):
        extract_features(make_model(), [], device="cpu", progress=False)
