"""Chapter 2's figures for IANet: one person under pose and scale changes, the relation maps of a point
before and after training (Fig. 4), valid receptive fields of five points (Fig. 8, left), channel maps
after CIA (Fig. 8, right), the sanity check of fresh blocks, and the memory that the relation maps take."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ... import viz
from ...data.synthetic import Identity, Rendered
from ...data.transforms import build_transforms
from ...models.ianet import IANet, relation_memory, relation_of_point, single_context_appearance_relation

PARTS = ("head", "torso", "bag", "legs", "shoes")


def as_input(rendered: Rendered, height: int, width: int) -> Tensor:
    """A rendered picture as the model's normalised input (3, height, width)."""
    to_tensor = build_transforms(height, width, train=False)
    return to_tensor(torch.from_numpy(np.array(rendered.image)).permute(2, 0, 1))


def to_cell(point: tuple[float, float], picture: np.ndarray, height: int, width: int) -> tuple[int, int]:
    """A point (x, y) of ``picture`` -> (row, column) of a height x width map over it."""
    x, y = point
    row = min(int(y / picture.shape[0] * height), height - 1)
    return row, min(int(x / picture.shape[1] * width), width - 1)


def pose_and_scale_figure(person: Identity, seed: int) -> Figure:
    """One identity under four gait phases and four scales, everything else fixed."""
    phases, scales = (0.0, 1.2, 2.4, 3.6), (0.6, 0.75, 0.95, 1.15)
    pictures = ([viz.plain_render(person, seed, phase=p, swing=0.75).image for p in phases]
                + [viz.plain_render(person, seed, scale=s).image for s in scales])
    fig = viz.image_grid(pictures, ncols=8, height=2.0,
                         titles=[f"phase {p}" for p in phases] + [f"scale {s}" for s in scales])
    fig.suptitle(f"identity {person.pid}: pose (left) and scale (right) variation", y=1.04)
    return fig


def fresh_blocks_check(untrained: IANet, plain: nn.Module, image: Tensor) -> pd.DataFrame:
    """A fresh IANet (blocks' BN at zero) against the baseline holding the same weights: per IA block the
    map size it sees and whether its relation rows sum to 1, and whether both networks agree."""
    plain.load_state_dict({k: v for k, v in untrained.state_dict().items() if k in plain.state_dict()},
                          strict=False)
    untrained.eval(), plain.eval()
    with torch.no_grad():
        records = untrained.relation_maps(image[None])
        same = torch.allclose(untrained(image[None]), plain(image[None]), atol=1e-5)
    added = sum(p.numel() for p in untrained.parameters()) - sum(p.numel() for p in plain.parameters())
    rows = [{"map": "×".join(str(n) for n in r["features"].shape[-2:]), "channels": r["features"].shape[1],
             **{f"{kind} rows sum to 1": bool(torch.allclose(r[kind].sum(-1), torch.ones(1))) if kind in r
                else None for kind in ("spatial", "channel")},
             "output equals the baseline's": same, "parameters added (BN only)": added}
            for r in records]
    return pd.DataFrame(rows).rename_axis("IA block")


def context_rows(model: IANet, image: Tensor, picture: np.ndarray, point: tuple[float, float]) -> dict:
    """{name: (h, w) row of ``point``} for S^A_K (K = 1, 2, 3, 5), S^A and S of the first IA block."""
    record = model.relation_maps(image[None])[0]
    features = record["features"]
    h, w = features.shape[-2:]
    y, x = to_cell(point, picture, h, w)
    maps = {f"$S^A_{k}$": single_context_appearance_relation(features, k) for k in (1, 2, 3, 5)}
    maps.update({"$S^A$ (Eq. 2)": record["appearance"], "$S$ (Eq. 5)": record["semantic"]})
    return {name: relation_of_point(m, h, w, y, x)[0].numpy() for name, m in maps.items()}


def plot_relation_rows(models: Mapping[str, IANet], rendered: Rendered, height: int,
                       width: int) -> tuple[Figure, pd.DataFrame]:
    """Fig. 4: the torso's row of every relation map of the first IA block, one figure row per model
    (before and after training), each panel min-max scaled; and each row's largest / smallest entry."""
    picture, point = np.asarray(rendered.image), rendered.parts["torso"]
    image = as_input(rendered, height, width)
    rows = {name: context_rows(model, image, picture, point) for name, model in models.items()}
    columns = len(next(iter(rows.values()))) + 1
    fig, axes = plt.subplots(len(rows), columns, figsize=(11, 2.2 * len(rows)), layout="constrained",
                             squeeze=False)
    for r, (name, maps) in enumerate(rows.items()):
        axes[r, 0].imshow(picture), axes[r, 0].plot(*point, "w*", markersize=12, markeredgecolor="k")
        axes[r, 0].set_ylabel(name), axes[r, 0].set_xticks([]), axes[r, 0].set_yticks([])
        for c, (title, heat) in enumerate(maps.items(), start=1):
            viz.heat_overlay(axes[r, c], picture, heat)
            axes[0, c].set_title(title, fontsize=9)
    with np.errstate(divide="ignore"):  # an entry that underflows to 0 gives an infinite ratio
        ratios = {name: {title: heat.max() / heat.min() for title, heat in maps.items()}
                  for name, maps in rows.items()}
    return fig, pd.DataFrame(ratios).rename_axis("largest / smallest entry of the row")


def uniformity_bound(model: IANet, image: Tensor) -> float:
    """``exp(max S^L)`` of the first IA block on ``image``: no row of its semantic map S can have a larger
    max / min ratio (the note under Fig. 4)."""
    record = model.relation_maps(image[None])[0]
    return float(torch.exp(record["location"].max()))


def plot_receptive_fields(baseline: nn.Module, ianet: IANet, shots: Mapping[str, Rendered], height: int,
                          width: int, threshold: float = 0.2) -> tuple[list[Figure], pd.DataFrame]:
    """Fig. 8 (left): for points on the head, torso, bag, legs and shoes of each picture, the valid
    receptive field of the stage-3 feature at that point in the baseline and in IANet (shown where it
    exceeds ``threshold`` of its maximum), and IANet's own SIA relation row of the first block; with the
    share of the picture above the threshold per model and part."""
    figures, areas = [], []
    models = {"baseline": baseline, "IANet": ianet}
    for shot_name, shot in shots.items():
        parts = [p for p in PARTS if p in shot.parts]
        image, picture = as_input(shot, height, width), np.asarray(shot.image)
        fields = {}
        for name, model in models.items():
            layer = model.backbone.stages[2]
            with torch.no_grad():
                h, w = model.backbone.forward_stages(image[None])[2].shape[-2:]
            fields[name] = viz.receptive_fields(model, image, [to_cell(shot.parts[p], picture, h, w)
                                                               for p in parts], layer)
        first_block = ianet.relation_maps(image[None])[0]
        grid = first_block["features"].shape[-2:]
        fig, axes = plt.subplots(3, len(parts), figsize=(1.6 * len(parts), 6.2), layout="constrained",
                                 squeeze=False)
        for c, part in enumerate(parts):
            for r, (name, field) in enumerate(fields.items()):
                areas.append({"picture": shot_name, "part": part, "model": name,
                              "area": float((field[c] >= threshold * field[c].max()).mean())})
                viz.heat_overlay(axes[r, c], picture, field[c], threshold)
                axes[r, c].plot(*shot.parts[part], "w*", markersize=9, markeredgecolor="k")
            cell = to_cell(shot.parts[part], picture, *grid)
            row = relation_of_point(first_block["spatial"], *grid, *cell)[0]
            viz.heat_overlay(axes[2, c], picture, row.numpy())
            axes[0, c].set_title(part, fontsize=9)
        for r, name in enumerate((*fields, "IANet SIA row")):
            axes[r, 0].set_ylabel(name)
        fig.suptitle(shot_name, y=1.02)
        figures.append(fig)
    table = pd.DataFrame(areas).pivot_table(index="model", columns="part", values="area", aggfunc="mean")
    return figures, table.mul(100).round(1).rename_axis(
        "share of the picture above the threshold (%), mean over pictures")


def _cia_input_output(model: IANet, image: Tensor) -> tuple[Tensor, Tensor]:
    captured: dict[str, Tensor] = {}
    block = model.blocks[-1].cia
    handle = block.register_forward_hook(
        lambda module, inputs, output: captured.update(input=inputs[0], output=output))
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        handle.remove()
    return captured["input"][0], captured["output"][0]


def standout_channel(fmap: Tensor, cell: tuple[int, int]) -> int:
    """The channel whose value at ``cell`` has the largest z-score within its own map."""
    flat = fmap.flatten(1)  # (C, h*w)
    z = (fmap[:, cell[0], cell[1]] - flat.mean(1)) / flat.std(1).clamp_min(1e-6)
    return int(z.argmax())


def plot_cia_channels(model: IANet, shot: Rendered, height: int, width: int) -> Figure | None:
    """Fig. 8 (right), by a rule instead of by hand: for each small cue, the channel of the last IA block's
    CIA output that stands out most at the cue, at the CIA output and at its input; ``None`` without CIA."""
    if model.blocks[-1].cia is None:
        return None
    picture = np.asarray(shot.image)
    before, after = _cia_input_output(model, as_input(shot, height, width))
    cues = [p for p in ("bag", "shoes", "head") if p in shot.parts]
    fig, axes = plt.subplots(2, len(cues), figsize=(1.7 * len(cues), 4.2), layout="constrained",
                             squeeze=False)
    for c, cue in enumerate(cues):
        channel = standout_channel(after, to_cell(shot.parts[cue], picture, *after.shape[-2:]))
        for r, (name, fmap) in enumerate((("CIA output", after), ("CIA input", before))):
            viz.heat_overlay(axes[r, c], picture, fmap[channel].numpy())
            axes[r, 0].set_ylabel(name)
        axes[0, c].set_title(f"{cue}: channel {channel}", fontsize=9)
    return fig


def relation_memory_table(stages: Sequence[int], channels: Sequence[int], *, batch_size: int, height: int,
                          width: int, backbone: str, profile: str) -> pd.DataFrame:
    """MiB that autograd keeps for one IA block after each of ``stages``: at the paper's 256x128 input and
    batch of 32 (ResNet-50), single-context at that size, and at the profile's input and backbone."""
    settings = (("paper: 256×128, batch 32, ResNet-50", (32, 256, 128), {}),
                (f"{profile}: {height}×{width}, batch {batch_size}, {backbone}", (batch_size, height, width),
                 None),
                ("paper size, single context K=1", (32, 256, 128), {"contexts": (1,)}))
    memory = {}
    for stage in stages:
        for name, size, kwargs in settings:
            usage = relation_memory(*size, stage, **(kwargs if kwargs is not None
                                                      else {"channels": channels[stage - 1]}))
            memory[name, f"after stage {stage}"] = {"spatial maps": usage.spatial_bytes,
                                                    "channel maps": usage.channel_bytes,
                                                    "other": usage.other_bytes, "total": usage.total_bytes}
    table = pd.DataFrame(memory).T / 2**20
    return table.round(1).rename_axis(["setting", "IA block"]).rename(columns=lambda c: f"{c} (MiB)")
