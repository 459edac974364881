"""Benchmark: training images/s of the strong baseline on this CPU, per numerical setting and input size.

Each setting runs in a fresh Python process (so one setting's warm caches, compiled graphs or thread
pools cannot help another) and times ``--steps`` optimizer steps of the baseline (ResNet-18, last stride
1, label-smoothed CE + batch-hard triplet, Adam) on batches of 64 after ``--warmup`` untimed steps:

- ``model``: the model step alone, on a fixed batch already in memory;
- ``pipeline``: the same step fed by the real training loader (P x K sampler, cached uint8 images,
  flip / pad-crop / random erasing) over the built-in world, with the share of time spent waiting for data.

If the pipeline's img/s is much lower than the model's, the data pipeline is the bottleneck. The settings:
fp32 eager, ``channels_last``, bf16 autocast (losses in fp32), ``torch.compile``, and their combinations.
The last line reads ``best: <setting> <ratio>x fp32 eager`` (pipeline throughput at the first input size).

    python benchmarks/bench_training.py [--sizes 64x32 128x64] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SETTINGS = {
    "fp32 eager": {},
    "channels_last": {"channels_last": True},
    "bf16 autocast": {"amp": True},
    "bf16 + channels_last": {"amp": True, "channels_last": True},
    "torch.compile": {"compile": True},
    "compile + channels_last": {"compile": True, "channels_last": True},
    "compile + bf16 + channels_last": {"compile": True, "amp": True, "channels_last": True},
}
BATCH_P, BATCH_K = 16, 4


def size_arg(text: str) -> tuple[int, int]:
    """'64x32' -> (64, 32)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"an input size is HxW, e.g. 64x32; got {text!r}") from None
    return height, width


def child(setting: str, height: int, width: int, steps: int, warmup: int, threads: int) -> dict:
    """One setting, in this (fresh) process: img/s of the model step and of the loader-fed step."""
    from contextlib import nullcontext

    import torch

    from reidbook.data.loader import build_train_loader
    from reidbook.engine import seed_everything
    from reidbook.experiment import open_dataset
    from reidbook.models import Baseline, BaselineCriterion

    torch.set_num_threads(threads)
    seed_everything(0)
    options = SETTINGS[setting]
    data = open_dataset("synthetic-market", "data")
    model = Baseline(data.num_train_pids, backbone="resnet18", last_stride=1).train()
    criterion = BaselineCriterion(data.num_train_pids)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    memory_format = torch.channels_last if options.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = torch.compile(model) if options.get("compile") else model
    loader = build_train_loader(data.train, height=height, width=width, batch_size=BATCH_P * BATCH_K,
                                num_instances=BATCH_K, seed=0)

    def step(batch: dict) -> None:
        images = batch["img"].contiguous(memory_format=memory_format)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if options.get("amp") else nullcontext()
        with autocast:
            outputs = forward(images)
        terms = criterion({k: v.float() for k, v in outputs.items()}, batch)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()

    batches = iter(loader)
    for _ in range(len(loader)):  # one pass decodes and caches every image, as after a first epoch
        next(batches)
    fixed = next(iter(loader))
    for _ in range(warmup):
        step(fixed)
    start = time.perf_counter()
    for _ in range(steps):
        step(fixed)
    model_seconds = time.perf_counter() - start

    waited, start = 0.0, time.perf_counter()
    batches = iter(loader)
    for _ in range(steps):
        tick = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - tick
        step(batch)
    pipeline_seconds = time.perf_counter() - start
    images = steps * BATCH_P * BATCH_K
    return {"model": images / model_seconds, "pipeline": images / pipeline_seconds,
            "data_share": waited / pipeline_seconds}


def run_fresh(setting: str, size: tuple[int, int], args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", setting, "--sizes", f"{size[0]}x{size[1]}",
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=size_arg, default=[(64, 32), (128, 64)])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, *args.sizes[0], args.steps, args.warmup, args.threads)))
        return

    print(f"baseline ResNet-18, batch {BATCH_P * BATCH_K}, {args.steps} timed steps after {args.warmup}, "
          f"{args.threads} threads; img/s (model step alone | loader-fed step, share of time waiting for "
          "data)")
    results: dict[tuple[str, tuple[int, int]], dict] = {}
    for size in args.sizes:
        for setting in args.settings:
            result = results[setting, size] = run_fresh(setting, size, args)
            label = f"{size[0]}x{size[1]}  {setting:<32s}"
            if "error" in result:
                print(f"{label} failed: {result['error']}", flush=True)
                continue
            print(f"{label} {result['model']:7.1f} | {result['pipeline']:7.1f} img/s "
                  f"(data {100 * result['data_share']:4.1f}%)", flush=True)
    first = args.sizes[0]
    reference = results.get(("fp32 eager", first), {}).get("pipeline")
    ranked = [(r["pipeline"], s) for (s, size), r in results.items() if size == first and "pipeline" in r]
    if reference and ranked:
        best_speed, best = max(ranked)
        print(f"best: {best} {best_speed / reference:.2f}x fp32 eager")


if __name__ == "__main__":
    main()
