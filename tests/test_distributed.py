"""Multi-process training (reidbook.distributed, engine.fit under torchrun) on the CPU with gloo.

The sharding and the helpers are checked in this process. The training scenarios run twice: here, in one
process (the references), and in two processes started by ``torchrun --standalone --nproc_per_node 2`` on
this very file (its ``__main__`` part), once for the whole module. They check that, with the same global
batch, two processes compute the single process's losses and updates (gathered outputs, SyncBatchNorm, a
criterion with its own parameter and memory), that an interrupted two-process run resumes to the same final
metrics as an uninterrupted one, and that the gathered test features equal the single process's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from reidbook import distributed
from reidbook.data.sampler import (
    CrossModalityIdentitySampler,
    IdentityBalancedBatches,
    RandomBatches,
    RandomIdentitySampler,
    ShuffleSampler,
    SwitchingBatchSampler,
)
from reidbook.distributed import GlobalBatchNorm, ShardedBatchSampler, convert_batchnorm, interleave
from reidbook.engine import epoch_seed, extract_features, fit
from reidbook.models.backbones import build_backbone
from reidbook.models.baseline import Baseline, BaselineCriterion
from reidbook.models.heads import BNNeck

REPO = Path(__file__).resolve().parents[1]
NUM_IDS, PER_ID = 8, 4  # 32 training images
PIDS = [i // PER_ID for i in range(NUM_IDS * PER_ID)]


# ------------------------------------------------------------------------------------------ sharding
def global_and_shared_batches(make: Callable[[], Any], world: int, epoch: int = 3) -> tuple[list, list]:
    """The batches of a fresh batch sampler from ``make()`` at ``epoch``, and each rank's shares of them
    (every rank with its own sampler, as in separate processes)."""
    single = [list(b) for b in _with_epoch(make(), epoch)]
    shares = [list(ShardedBatchSampler(_with_epoch(make(), epoch), rank, world)) for rank in range(world)]
    return single, shares


def _with_epoch(sampler: Any, epoch: int) -> Any:
    for target in (sampler, getattr(sampler, "sampler", None)):
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
    return sampler


def switching() -> SwitchingBatchSampler:
    streams = {"random": RandomBatches(len(PIDS), 8), "balanced": IdentityBalancedBatches(PIDS, 4, 2)}
    sampler = SwitchingBatchSampler(streams, 6, default="random", seed=5)
    sampler.set_chooser(lambda epoch, index: "balanced" if index % 3 else "random")
    return sampler


SAMPLERS = {
    "P x K": lambda: BatchSampler(RandomIdentitySampler(PIDS, 8, 2, seed=1), 8, drop_last=True),
    "shuffled": lambda: BatchSampler(ShuffleSampler(len(PIDS), seed=1), 8, drop_last=True),
    "cross-modality": lambda: BatchSampler(
        CrossModalityIdentitySampler(PIDS, [i % 2 for i in range(len(PIDS))], 2, 2, seed=1), 8, drop_last=True
    ),
    "pyramid switch": switching,
}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("world", [2, 4])
def test_every_sampler_shards_its_global_batch_into_disjoint_shares_whose_union_is_the_batch(name, world):
    single, shares = global_and_shared_batches(SAMPLERS[name], world)
    assert len(single) >= 3 and all(len(s) == len(single) for s in shares)
    for index, batch in enumerate(single):
        parts = [share[index] for share in shares]
        positions = [set(range(rank, len(batch), world)) for rank in range(world)]
        assert all(len(part) == len(batch) // world for part in parts)
        assert set.union(*positions) == set(range(len(batch))) and sum(map(len, positions)) == len(batch)
        for rank, part in enumerate(parts):
            assert part == [batch[p] for p in range(rank, len(batch), world)]  # rank r: positions r, r+W, ...
        assert interleave([torch.tensor(p) for p in parts]).tolist() == batch  # the batch, in its order


def test_cross_modality_shares_hold_both_modalities():
    _, shares = global_and_shared_batches(SAMPLERS["cross-modality"], 2)
    for share in shares[0] + shares[1]:
        assert {i % 2 for i in share} == {0, 1}


def test_shards_refuse_a_batch_that_the_processes_do_not_divide():
    sampler = ShardedBatchSampler([[0, 1, 2, 3, 4, 5], [6, 7, 8]], rank=0, world_size=2)
    with pytest.raises(ValueError, match="global batch 1 holds 3 images, not a multiple of the 2 processes"):
        list(sampler)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        ShardedBatchSampler([[0, 1]], rank=2, world_size=2)


def test_shard_loader_shares_the_sampler_and_keeps_the_loader_settings():
    loader = identity_loader()
    share = distributed.shard_loader(loader, 1, 2)
    assert share.dataset is loader.dataset and share.collate_fn is loader.collate_fn
    assert share.batch_sampler.batch_sampler is loader.batch_sampler and len(share) == len(loader)
    loader.sampler.set_epoch(4)  # the engine sets the epoch on the global loader: the share follows
    batches = _with_epoch(BatchSampler(RandomIdentitySampler(PIDS, 8, 2, seed=3), 8, drop_last=True), 4)
    expected = [batch[1::2] for batch in batches]
    assert [batch["index"].tolist() for batch in share] == expected
    with pytest.raises(TypeError, match="DataLoader that draws batches"):
        distributed.shard_loader([{"img": torch.zeros(1)}], 0, 2)


def test_interleave_puts_strided_shares_back_in_order_also_when_their_lengths_differ():
    rows = torch.arange(7)
    assert torch.equal(interleave([rows[0::3], rows[1::3], rows[2::3]]), rows)
    x = torch.randn(6, 2, requires_grad=True)
    interleave([x[0::2], x[1::2]]).mul(torch.arange(6.0)[:, None]).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0)[:, None].expand(6, 2))  # differentiable, rows not mixed


def test_rank_zero_draws_the_single_processs_data_stream_and_the_others_their_own():
    assert distributed.rank_epoch_seed(7, 3, 0) == epoch_seed(7, 3)
    seeds = {distributed.rank_epoch_seed(7, 3, r) for r in range(4)} | {distributed.rank_epoch_seed(7, 4, 1)}
    assert len(seeds) == 5


class OwnForward(nn.BatchNorm1d):
    """A BatchNorm subclass with a forward of its own: left alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_converted_batchnorm_shares_parameters_and_state_and_reverts():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), BNNeck(16), OwnForward(16))
    weight, state = model[1].weight, {k: v.clone() for k, v in model.state_dict().items()}
    revert = convert_batchnorm(model, torch.device("cpu"))
    assert [type(m) for m in model] == [nn.Conv2d, GlobalBatchNorm, nn.Flatten, GlobalBatchNorm, OwnForward]
    assert not model[3].bias.requires_grad  # the same (frozen) parameter
    assert model[1].weight is weight and model.state_dict().keys() == state.keys()
    x = torch.randn(6, 3, 2, 2)
    out = model(x)  # one process: plain batch norm
    reference = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), BNNeck(16), OwnForward(16))
    reference.load_state_dict(state)
    torch.testing.assert_close(out, reference(x))
    revert()
    assert [type(m) for m in model] == [nn.Conv2d, nn.BatchNorm2d, nn.Flatten, BNNeck, OwnForward]
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)  # the trained statistics
    assert int(model[1].num_batches_tracked) == 1


def test_gather_outputs_refuses_batch_level_outputs_with_a_message():
    with pytest.raises(ValueError, match=r"outputs\['dist'\] has shape \(4, 4\).*batch-level"):
        distributed.gather_outputs({"dist": torch.zeros(4, 4)}, 4)
    with pytest.raises(ValueError, match=r"outputs\['scale'\] has shape \(\).*per-sample"):
        distributed.gather_outputs({"scale": torch.tensor(1.0)}, 4)


# -------------------------------------------------------------------------- scenarios (1 or 2 processes)
class Images(Dataset):
    """Fixed random 64 x 32 images of ``PIDS``; ``noise`` > 0 adds a random augmentation drawn from torch's
    global generator (the way the package's transforms draw)."""

    def __init__(self, count: int = len(PIDS), noise: float = 0.0, dtype: torch.dtype = torch.float32):
        self.base = torch.randn(count, 3, 64, 32, generator=torch.Generator().manual_seed(11)).to(dtype)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = self.base[i] + self.noise * torch.randn(3, 64, 32) if self.noise else self.base[i]
        return {"img": img, "pid": PIDS[i % len(PIDS)], "camid": i % 3, "index": i, "modality": 0}


def identity_loader(noise: float = 0.0, dtype: torch.dtype = torch.float32) -> DataLoader:
    return DataLoader(Images(noise=noise, dtype=dtype), batch_size=8,
                      sampler=RandomIdentitySampler(PIDS, 8, 2, seed=3), drop_last=True)


FIT = dict(device="cpu", progress=False, seed=0, amp=False, channels_last=False)


def baseline_scenario(dtype: torch.dtype = torch.float64, steps: int = 3) -> dict[str, Any]:
    """The smoke profile's baseline (ResNet-18, last stride 1, 64 x 32, P=4 x K=2) for a few SGD steps on
    the same global batches: label-smoothed CE + batch-hard triplet over the whole batch, BN everywhere."""
    torch.manual_seed(0)
    model = Baseline(NUM_IDS, build_backbone("resnet18", last_stride=1)).to(dtype)
    history = fit(model, BaselineCriterion(NUM_IDS), identity_loader(dtype=dtype), epochs=1,
                  max_steps_per_epoch=steps, optimizer="sgd", lr=0.05, weight_decay=5e-4, **FIT)
    return {"losses": history.steps[["ce", "triplet"]].to_numpy(), "state": model.state_dict()}


def first_step_scenario() -> dict[str, Any]:
    """The baseline's first loss in float32. Its gradients already differ from one process's by about 1%:
    the float noise of other summation orders (1e-7) flips ReLUs and max-pooling choices that sit near their
    ties in a randomly initialised net; the steps are therefore compared in float64."""
    return baseline_scenario(torch.float32, steps=1)


class Memory(nn.Module):
    """The newest feature of each class (a buffer written by the criterion) and a learnable scale that the
    loss uses only once a class is stored: a stand-in for QAConv's class memory and matcher."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("maps", torch.zeros(NUM_IDS, 8))
        self.register_buffer("seen", torch.zeros(NUM_IDS, dtype=torch.bool))
        self.scale = nn.Parameter(torch.ones(1))


class MemoryNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.BatchNorm2d(8), nn.ReLU())
        self.neck = nn.BatchNorm1d(8)
        self.classifier = nn.Linear(8, NUM_IDS)
        self.memory = Memory()

    def forward(self, img: torch.Tensor) -> Any:
        feat = self.neck(self.conv(img).mean(dim=(2, 3)))  # (B, 8)
        return {"feat": feat, "logits": self.classifier(feat)} if self.training else feat


class MemoryCriterion(nn.Module):
    def __init__(self, model: MemoryNet) -> None:
        super().__init__()
        self.memory = model.memory

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        feat, pids = outputs["feat"], batch["pid"]
        memory = self.memory
        if memory.seen.any():
            scores = memory.scale * feat @ memory.maps[memory.seen].t()  # (B, seen)
            match = nn.functional.cross_entropy(scores, (pids[:, None] == memory.seen.nonzero().t()).float())
        else:
            match = feat.sum() * 0.0  # the scale is not used in this step
        with torch.no_grad():
            for feature, pid in zip(feat, pids):  # in batch order: the last image of a class stays
                memory.maps[pid], memory.seen[pid] = feature, True
        return {"ce": nn.functional.cross_entropy(outputs["logits"], pids), "match": match}


def memory_scenario() -> dict[str, Any]:
    """Four SGD steps (momentum, strong weight decay) of a net whose criterion holds a parameter used from
    the second step on and a memory written from the (global) batch."""
    torch.manual_seed(0)
    model = MemoryNet().double()
    history = fit(model, MemoryCriterion(model), identity_loader(dtype=torch.float64), epochs=1,
                  max_steps_per_epoch=4, optimizer="sgd", lr=0.1, weight_decay=0.1, **FIT)
    return {"losses": history.steps[["ce", "match"]].to_numpy(), "state": model.state_dict()}


class InterruptAt:
    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def on_step_start(self, state: Any) -> None:
        if (state.epoch, state.step) == self.at:
            raise KeyboardInterrupt


def eval_loader(count: int = 13, batch_size: int = 4) -> DataLoader:
    return DataLoader(Images(count), batch_size=batch_size, sampler=SequentialSampler(range(count)))


def resume_scenario(folder: Path) -> dict[str, Any]:
    """Two epochs of noisy (randomly augmented) batches with an evaluation on gathered test features,
    uninterrupted and interrupted mid-epoch then resumed from the checkpoints."""

    def train(directory: Path, hooks: tuple = ()) -> dict[str, Any]:
        torch.manual_seed(0)
        model = MemoryNet()

        def evaluator(m: nn.Module) -> dict[str, float]:
            features = extract_features(m, eval_loader(), device="cpu", progress=False)[0]
            return {"score": float(features.pow(2).sum()), "first": float(features[0, 0])}

        history = fit(model, MemoryCriterion(model), identity_loader(noise=0.5), epochs=2,
                      max_steps_per_epoch=3, optimizer="sgd", lr=0.1, checkpoint_dir=directory,
                      checkpoint_every_steps=1, hooks=hooks, evaluator=evaluator, eval_every=1, **FIT)
        return {"steps": history.steps.drop(columns="time").to_numpy(),
                "metrics": history.epochs[["score", "first"]].to_numpy(), "state": model.state_dict()}

    uninterrupted = train(folder / "uninterrupted")
    try:
        train(folder / "interrupted", hooks=(InterruptAt(1, 1),))
    except KeyboardInterrupt:
        pass
    return {"uninterrupted": uninterrupted, "resumed": train(folder / "interrupted")}


def features_scenario() -> dict[str, Any]:
    """Test features of 13 images (batches of 4) from a net with batch norm, as a tensor and as a dict."""
    torch.manual_seed(1)
    model = MemoryNet().eval()
    plain = extract_features(model, eval_loader(), device="cpu", progress=False, flip=True)

    def feed(m: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"feat": m(batch["img"]), "index": batch["index"].float()[:, None]}

    as_dict = extract_features(model, eval_loader(), device="cpu", progress=False, feed=feed)
    return {"plain": plain, "dict": as_dict}


SCENARIOS = {"baseline": baseline_scenario, "first step": first_step_scenario, "memory": memory_scenario,
             "features": features_scenario}


# --------------------------------------------------------------------------- the two-process run
@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every scenario in two processes (torchrun, gloo): each rank's results."""
    folder = tmp_path_factory.mktemp("two")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, str(folder)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_with_sync_batchnorm_two_processes_take_the_single_process_steps(two_processes):
    for name in ("baseline", "first step", "memory"):
        single = SCENARIOS[name]()
        for rank in range(2):  # every rank computes the loss of the whole global batch (recorded in float32)
            np.testing.assert_allclose(two_processes[rank][name]["losses"], single["losses"], rtol=1e-6,
                                       atol=1e-7, err_msg=f"{name}, rank {rank}")
        if name == "first step":
            continue
        for key, value in single["state"].items():  # float64: the updates agree to 1e-9
            torch.testing.assert_close(two_processes[0][name]["state"][key], value, rtol=1e-9, atol=1e-11,
                                       msg=lambda m, label=f"{name}: {key}": f"{label}: {m}")
    # the memory and its scale: a parameter unused in the first step keeps no gradient there (no weight
    # decay, no momentum), the memory is written from the global batch, in its order
    assert not torch.equal(two_processes[0]["memory"]["state"]["memory.scale"], torch.ones(1))
    torch.testing.assert_close(two_processes[1]["memory"]["state"]["memory.maps"],
                               two_processes[0]["memory"]["state"]["memory.maps"])


def test_an_interrupted_two_process_run_resumes_to_the_same_final_metrics(two_processes):
    for rank in range(2):
        run = two_processes[rank]["resume"]
        np.testing.assert_array_equal(run["resumed"]["metrics"], run["uninterrupted"]["metrics"])
        np.testing.assert_array_equal(run["resumed"]["steps"], run["uninterrupted"]["steps"])
        for key, value in run["uninterrupted"]["state"].items():
            assert torch.equal(run["resumed"]["state"][key], value), key
    assert two_processes[0]["resume"]["resumed"]["metrics"].shape == (2, 2)


def test_the_gathered_evaluation_equals_the_single_process_one(two_processes):
    single = features_scenario()
    for rank in range(2):
        features, pids, camids = two_processes[rank]["features"]["plain"]
        torch.testing.assert_close(features, single["plain"][0], rtol=1e-5, atol=1e-6)
        assert torch.equal(pids, single["plain"][1]) and torch.equal(camids, single["plain"][2])
        gathered = two_processes[rank]["features"]["dict"][0]
        assert torch.equal(gathered["index"][:, 0], torch.arange(13.0))  # every image once, in order
        torch.testing.assert_close(gathered["feat"], single["dict"][0]["feat"], rtol=1e-5, atol=1e-6)


def _main(folder: Path) -> None:
    """Under torchrun: every scenario in this process, its results saved as rank<r>.pt."""
    assert distributed.init_from_env("cpu") and distributed.world_size() == 2
    results = {name: scenario() for name, scenario in SCENARIOS.items()}
    results["resume"] = resume_scenario(folder / "checkpoints")
    torch.save(results, folder / f"rank{distributed.rank()}.pt")
    distributed.close()


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
