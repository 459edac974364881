"""DDAG (Ye et al., ECCV 2020): IWPA and graph attention against naive transcriptions of Eqs. 2-9, the
batch graph, the dynamic weight of Eq. 11 (scripted and through the engine, with a mid-epoch resume),
the cross-modality sampler, and the two-stream split (modality-specific stems, shared stages)."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from reidbook.data import load_dataset
from reidbook.data.loader import MODALITY_CODES, ImageDataset
from reidbook.data.sampler import CrossModalityIdentitySampler
from reidbook.data.synthetic import generate_world
from reidbook.data.transforms import build_transforms
from reidbook.engine import History, fit
from reidbook.models.backbones import build_backbone
from reidbook.models.ddag import (
    IWPA,
    CrossModalityGraphAttention,
    DDAGCriterion,
    DDAGNet,
    DynamicDualAggregation,
    GraphAttentionLayer,
    PartNonLocalAttention,
    TwoStreamBackbone,
    ddag_feed,
    graph_adjacency,
    instance_loss_mean,
    region_pool_parts,
)

TINY_IMAGE = (3, 64, 32)  # resnet18, last stride 1: a 4 x 2 final map


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------- naive formulas


def naive_stripes(height: int, parts: int) -> list[list[int]]:
    """Rows of each of the p non-overlapping stripes, the first ``height % parts`` one row taller."""
    sizes = [height // parts + (1 if i < height % parts else 0) for i in range(parts)]
    starts = [sum(sizes[:i]) for i in range(parts)]
    return [list(range(s, s + n)) for s, n in zip(starts, sizes)]


def naive_parts(fmap: torch.Tensor, parts: int) -> list[list[torch.Tensor]]:
    """x_i^p of every image by loops: the mean of the stripe's cells, [b][i] -> (C,)."""
    batch, channels, height, width = fmap.shape
    out = []
    for b in range(batch):
        row = []
        for rows in naive_stripes(height, parts):
            cells = [fmap[b, :, y, x] for y in rows for x in range(width)]
            row.append(sum(cells) / len(cells))
        out.append(row)
    return out


def naive_refined(parts: list[torch.Tensor], wu, wv, wz) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eqs. 2-4 for one image: f_ij = exp(u_i^T v_j), alpha_ij = f_ij / sum_i f_ij,
    x̄_j = sum_i alpha_ij z_i."""
    p = len(parts)
    f = torch.zeros(p, p, dtype=parts[0].dtype)
    for i in range(p):
        for j in range(p):
            f[i, j] = torch.exp((wu @ parts[i]) @ (wv @ parts[j]))
    alpha = torch.zeros_like(f)
    for i in range(p):
        for j in range(p):
            alpha[i, j] = f[i, j] / sum(f[k, j] for k in range(p))
    refined = [sum(alpha[i, j] * (wz @ parts[i]) for i in range(p)) for j in range(p)]
    return alpha, refined


def naive_batch_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """Training-mode BatchNorm1d by loops over channels: biased batch variance."""
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        column = x[:, c]
        mean = column.sum() / len(column)
        var = ((column - mean) ** 2).sum() / len(column)
        out[:, c] = (column - mean) / torch.sqrt(var + eps) * gamma[c] + beta[c]
    return out


def naive_gat_head(x, adjacency, projection, score, slope=0.2):
    """Eqs. 7-8 of one head, node by node: alpha (K, K) and sum_j alpha_ij h(x_j) (K, d)."""
    k_nodes, d = x.shape[0], projection.shape[1]
    h = [x[i] @ projection for i in range(k_nodes)]
    alpha = torch.zeros(k_nodes, k_nodes, dtype=x.dtype)
    out = torch.zeros(k_nodes, d, dtype=x.dtype)
    for i in range(k_nodes):
        neighbours = [j for j in range(k_nodes) if adjacency[i, j] > 0]
        e = {j: F.leaky_relu(torch.cat([h[i], h[j]]) @ score[:, 0], slope) for j in neighbours}
        denominator = sum(torch.exp(e[j]) for j in neighbours)
        for j in neighbours:
            alpha[i, j] = torch.exp(e[j]) / denominator
            out[i] += alpha[i, j] * h[j]
    return alpha, out


# ----------------------------------------------------------------------------------------- IWPA


def test_region_pooling_cuts_non_overlapping_stripes_and_rejects_too_few_rows():
    fmap = torch.randn(2, 5, 7, 3, dtype=torch.float64)
    pooled = region_pool_parts(fmap, 3)  # stripes of 3, 2, 2 rows
    expected = naive_parts(fmap, 3)
    assert naive_stripes(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    for b in range(2):
        for i in range(3):
            torch.testing.assert_close(pooled[b, i], expected[b][i])
    with pytest.raises(ValueError, match="parts=5"):
        region_pool_parts(torch.randn(1, 2, 4, 2), 5)


@pytest.mark.parametrize("residual", ["bn", "identity", "none", "neck"])
@pytest.mark.parametrize("part_weights", ["learnable", "average", "softmax"])
def test_iwpa_matches_naive_eqs_2_to_5(residual, part_weights):
    batch, channels, parts = 4, 6, 3
    fmap = torch.randn(batch, channels, 7, 2, dtype=torch.float64)
    neck = torch.randn(batch, channels, dtype=torch.float64)
    iwpa = IWPA(channels, parts, inter_channels=5, residual=residual, part_weights=part_weights).double()
    with torch.no_grad():  # make the BN's affine and the learnable weights non-trivial
        if residual == "bn":
            iwpa.aggregation.residual_bn.weight.uniform_(0.5, 1.5)
            iwpa.aggregation.residual_bn.bias.uniform_(-0.5, 0.5)
        if part_weights != "average":
            iwpa.aggregation.weight.copy_(torch.tensor([0.2, -0.7, 1.3]))
    out = iwpa(fmap, neck)

    wu, wv, wz = (layer.weight for layer in (iwpa.attention.u, iwpa.attention.v, iwpa.attention.z))
    w = {"learnable": torch.tensor([0.2, -0.7, 1.3]), "average": torch.full((3,), 1 / 3)}.get(
        part_weights, torch.tensor([0.2, -0.7, 1.3]).softmax(0)
    )
    pooled = fmap.mean(dim=(2, 3))
    bn = iwpa.aggregation.residual_bn
    residual_term = {
        "bn": lambda: naive_batch_norm(pooled, bn.weight, bn.bias, bn.eps),
        "identity": lambda: pooled,
        "none": lambda: torch.zeros_like(pooled),
        "neck": lambda: neck,
    }[residual]()
    for b, image_parts in enumerate(naive_parts(fmap, parts)):
        _, refined = naive_refined(image_parts, wu, wv, wz)
        expected = residual_term[b] + sum(w[i].double() * refined[i] for i in range(parts))  # Eq. 5
        torch.testing.assert_close(out[b], expected)


def test_part_attention_map_is_column_normalised_and_matches_eqs_2_3():
    fmap = torch.randn(2, 4, 6, 2, dtype=torch.float64)
    iwpa = IWPA(4, 3).double()
    alpha = iwpa.part_attention(fmap)  # (B, p, p)
    assert alpha.shape == (2, 3, 3)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(2, 3, dtype=torch.float64))
    wu, wv, wz = (layer.weight for layer in (iwpa.attention.u, iwpa.attention.v, iwpa.attention.z))
    for b, image_parts in enumerate(naive_parts(fmap, 3)):
        torch.testing.assert_close(alpha[b], naive_refined(image_parts, wu, wv, wz)[0])


def test_authors_row_softmax_equals_ours_with_u_and_v_exchanged():
    parts = torch.randn(3, 4, 8, dtype=torch.float64)  # (B, p, C)
    attention = PartNonLocalAttention(8, 5).double()
    u, v, z = attention.u(parts), attention.v(parts), attention.z(parts)
    # the authors' code with u and v swapped: softmax_j(v(x_i)^T u(x_j)), x̄_i = sum_j alpha_ij z(x_j)
    code_alpha = (v @ u.transpose(1, 2)).softmax(dim=-1)
    torch.testing.assert_close(attention(parts), code_alpha @ z)


def test_part_weights_start_at_one_over_p_and_only_learnable_ones_train():
    for kind, trainable in [("learnable", True), ("softmax", True), ("average", False)]:
        iwpa = IWPA(8, 4, part_weights=kind)
        torch.testing.assert_close(iwpa.aggregation.part_weight_vector(), torch.full((4,), 0.25))
        names = {name for name, _ in iwpa.named_parameters()}
        assert ("aggregation.weight" in names) == trainable
    with pytest.raises(ValueError, match="part_weights"):
        IWPA(8, 3, part_weights="concat")
    with pytest.raises(ValueError, match="iwpa_residual"):
        IWPA(8, 3, residual="rbn")
    with pytest.raises(ValueError, match="neck_feature"):
        IWPA(8, 3, residual="neck")(torch.randn(2, 8, 3, 1))


def test_iwpa_output_bn_normalises_x_star_with_a_frozen_zero_bias():
    iwpa = IWPA(6, 3, residual="neck", part_weights="softmax", output_bn=True).double()
    fmap, neck = torch.randn(5, 6, 3, 2, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    out = iwpa(fmap, neck)
    torch.testing.assert_close(out.mean(0), torch.zeros(6, dtype=torch.float64))
    assert not iwpa.aggregation.output_bn.bias.requires_grad


# -------------------------------------------------------------------------------------- the graph


def test_adjacency_of_a_scripted_batch():
    pids = torch.tensor([3, 5, 3, 7, 5, 3])
    expected = torch.tensor(
        [
            [2, 0, 1, 0, 0, 1],
            [0, 2, 0, 0, 1, 0],
            [1, 0, 2, 0, 0, 1],
            [0, 0, 0, 2, 0, 0],
            [0, 1, 0, 0, 2, 0],
            [1, 0, 1, 0, 0, 2],
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(graph_adjacency(pids), expected)
    one_hot = F.one_hot(pids).float()  # Eq. 6 as written: l_i^T l_j + I
    torch.testing.assert_close(graph_adjacency(pids), one_hot @ one_hot.T + torch.eye(6))


def test_graph_attention_matches_naive_eqs_7_8_and_never_crosses_identities():
    pids = torch.tensor([0, 1, 0, 2, 1, 0, 1])
    x = torch.randn(7, 5, dtype=torch.float64)
    adjacency = graph_adjacency(pids).double()
    layer = GraphAttentionLayer(5, 3, heads=2).double()
    alpha, out = layer.attention(x, adjacency), layer(x, adjacency)
    for head in range(2):
        naive_alpha, naive_out = naive_gat_head(x, adjacency, layer.projection[head], layer.score[head])
        torch.testing.assert_close(alpha[head], naive_alpha)
        torch.testing.assert_close(out[head], naive_out)
    different = pids.unsqueeze(0) != pids.unsqueeze(1)
    assert (alpha[:, different] == 0).all()
    assert (alpha[:, ~different] > 0).all()
    # other identities' features do not reach a node
    moved = x.clone()
    moved[pids != 0] += 10 * torch.randn_like(moved[pids != 0])
    torch.testing.assert_close(layer(moved, adjacency)[:, pids == 0], out[:, pids == 0])


@pytest.mark.parametrize("output_elu", [False, True])
def test_cgsa_concatenates_heads_with_elu_then_one_head_output_and_log_softmax(output_elu):
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.randn(6, 8, dtype=torch.float64)
    adjacency = graph_adjacency(pids).double()
    cgsa = CrossModalityGraphAttention(8, num_classes=4, heads=3, dim=2, output_elu=output_elu).double()
    hidden = F.elu(
        torch.cat(
            [
                naive_gat_head(x, adjacency, cgsa.hidden.projection[h], cgsa.hidden.score[h])[1]
                for h in range(3)
            ],
            dim=1,
        )
    )  # Eq. 8: (K, L*d)
    scores = naive_gat_head(hidden, adjacency, cgsa.output.projection[0], cgsa.output.score[0])[1]
    expected = (F.elu(scores) if output_elu else scores).log_softmax(dim=1)
    torch.testing.assert_close(cgsa(x, adjacency), expected)
    torch.testing.assert_close(cgsa.node_features(x, adjacency), hidden)


def test_graph_dropout_only_acts_in_training():
    cgsa = CrossModalityGraphAttention(8, 4, heads=2, dim=3, dropout=0.5)
    x, adjacency = torch.randn(6, 8), graph_adjacency(torch.tensor([0, 0, 1, 1, 2, 2]))
    cgsa.eval()
    torch.testing.assert_close(cgsa(x, adjacency), cgsa(x, adjacency))
    cgsa.train()
    assert not torch.allclose(cgsa(x, adjacency), cgsa(x, adjacency))
    with pytest.raises(ValueError, match="dropout"):
        GraphAttentionLayer(4, 2, dropout=1.0)


# ------------------------------------------------------------------------------ two-stream network


def test_each_image_goes_through_its_own_stem_and_the_stages_are_shared():
    backbone = build_backbone("resnet18")
    stream = TwoStreamBackbone(backbone)
    assert stream.stages is backbone.stages and stream.stems[0] is backbone.stem
    for a, b in zip(stream.stems[0].parameters(), stream.stems[1].parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # same start, separate weights
    with torch.no_grad():
        stream.stems[1][0].weight.mul_(-1.0)  # make the two stems differ
    img = torch.randn(6, *TINY_IMAGE)
    modality = torch.tensor([1, 0, 0, 1, 1, 0])
    mixed = stream.forward_stems(img, modality)  # train mode: each stem's BN sees its own images only
    for code in (0, 1):
        alone = stream.stems[code](img[modality == code])
        torch.testing.assert_close(mixed[modality == code], alone)


def test_gradients_reach_only_the_stem_of_the_batch_modality():
    model = DDAGNet(5, parts=3, graph=True)
    img, pids = torch.randn(4, *TINY_IMAGE), torch.tensor([0, 0, 1, 1])
    for code in (0, 1):
        model.zero_grad(set_to_none=True)
        outputs = model(img, torch.full((4,), code), pids)
        sum(DDAGCriterion(5)(outputs, {"pid": pids}).values()).backward()
        used, unused = model.two_stream.stems[code], model.two_stream.stems[1 - code]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used.parameters())
        assert all(p.grad is None for p in unused.parameters())
        assert all(p.grad is not None for p in model.two_stream.stages.parameters())


def test_modality_is_checked_with_a_clear_message():
    model = DDAGNet(3, parts=0, graph=False)
    img = torch.randn(2, *TINY_IMAGE)
    with pytest.raises(ValueError, match=r"\[2\]"):
        model(img, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(img, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="integer"):
        model(img, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="modality"):
        model(img, [0, 1])


@pytest.mark.parametrize(
    "parts, graph, keys, terms",
    [
        (0, False, set(), {"id", "triplet"}),  # B
        (3, False, {"part_feat", "part_logits"}, {"id", "triplet", "part_id"}),  # B+P
        (0, True, {"graph_log_probs"}, {"id", "triplet", "graph"}),  # B+G
        (3, True, {"part_feat", "part_logits", "graph_log_probs"}, {"id", "triplet", "part_id", "graph"}),
    ],
)
def test_table_1_variants_have_their_outputs_terms_and_test_embedding(parts, graph, keys, terms):
    model = DDAGNet(4, parts=parts, graph=graph)
    img, modality, pids = torch.randn(4, *TINY_IMAGE), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 3, 3])
    outputs = model(img, modality, pids)
    assert set(outputs) == {"feat", "bn_feat", "logits"} | keys
    assert set(DDAGCriterion(4)(outputs, {"pid": pids})) == terms
    model.eval()
    embedding = model(img, modality)
    assert embedding.shape == (4, 512)
    fmap = model.two_stream(img, modality)
    reference = model.iwpa(fmap) if parts else model.neck(fmap.mean(dim=(2, 3)))
    torch.testing.assert_close(embedding, reference)


def test_graph_needs_labels_in_training_and_options_are_validated():
    model = DDAGNet(4, parts=0, graph=True)
    with pytest.raises(ValueError, match="pids"):
        model(torch.randn(2, *TINY_IMAGE), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="parts must be"):
        DDAGNet(4, parts=-1)
    with pytest.raises(ValueError, match="eval_feature='part_feat'"):
        DDAGNet(4, parts=0, eval_feature="part_feat")
    with pytest.raises(ValueError, match="graph_heads|heads"):
        DDAGNet(4, graph_heads=0)
    groups = DDAGNet(4, parts=0, graph=False).param_groups(0.1, backbone_lr_mult=0.1)
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({"two_stream": 0.01, "default": 0.1})


def test_criterion_terms_equal_their_definitions():
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    feat = torch.randn(6, 4)
    outputs = {
        "feat": feat,
        "logits": torch.randn(6, 3),
        "part_logits": torch.randn(6, 3),
        "graph_log_probs": torch.randn(6, 3).log_softmax(1),
    }
    terms = DDAGCriterion(3)(outputs, {"pid": pids})
    torch.testing.assert_close(terms["id"], F.cross_entropy(outputs["logits"], pids))
    torch.testing.assert_close(terms["part_id"], F.cross_entropy(outputs["part_logits"], pids))
    graph = -sum(outputs["graph_log_probs"][i, pids[i]] for i in range(6)) / 6
    torch.testing.assert_close(terms["graph"], graph)
    hinge = []
    for a in range(6):
        dists = [torch.dist(feat[a], feat[j]) for j in range(6)]
        d_ap = max(dists[j] for j in range(6) if pids[j] == pids[a])
        d_an = min(dists[j] for j in range(6) if pids[j] != pids[a])
        hinge.append(torch.clamp(d_ap - d_an + 0.3, min=0))
    torch.testing.assert_close(terms["triplet"], sum(hinge) / 6, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ dynamic aggregation


def scripted_history() -> History:
    rows = []
    values = {0: [(2.0, 1.0, 3.0, 5.0), (1.0, 0.5, 2.0, 4.0)], 1: [(0.5, 0.25, 1.0, 2.0)]}
    for epoch, steps in values.items():
        for step, (id_, tri, part, graph) in enumerate(steps):
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "id": id_,
                    "triplet": tri,
                    "part_id": part,
                    "graph": graph,
                    "id_weight": 1.0,
                    "triplet_weight": 2.0,
                    "part_id_weight": 1.0,
                    "graph_weight": 0.3,
                }
            )
    return History(step_rows=rows)


def test_dynamic_weight_on_scripted_epoch_losses():
    history = scripted_history()
    # E[L_P] per epoch, triplet weighted by 2, the graph term left out
    mean0 = ((2.0 + 2 * 1.0 + 3.0) + (1.0 + 2 * 0.5 + 2.0)) / 2
    mean1 = 0.5 + 2 * 0.25 + 1.0
    assert instance_loss_mean(history, 0) == pytest.approx(mean0)
    assert instance_loss_mean(history, 0, ("id", "triplet")) == pytest.approx((4.0 + 2.0) / 2)
    hook = DynamicDualAggregation()
    state = SimpleNamespace(epoch=0, loss_weights={"graph": 1.0}, history=history)
    for epoch, weight in [(0, 0.0), (1, 1 / (1 + mean0)), (2, 1 / (1 + mean1))]:
        state.epoch = epoch
        hook.on_epoch_start(state)
        assert state.loss_weights["graph"] == pytest.approx(weight)
        if epoch < 2:
            hook.on_epoch_end(state)
    table = hook.table()
    assert table["graph_weight"].tolist() == pytest.approx([0.0, 1 / (1 + mean0), 1 / (1 + mean1)])
    assert table["instance_loss"].tolist()[:2] == pytest.approx([mean0, mean1])
    assert math.isnan(table["instance_loss"].iloc[2])
    restored = DynamicDualAggregation()
    restored.load_state_dict(hook.state_dict())
    pd.testing.assert_frame_equal(restored.table(), table)
    with pytest.raises(ValueError, match="no step of epoch 5"):
        instance_loss_mean(history, 5)
    with pytest.raises(ValueError, match="none of the terms"):
        instance_loss_mean(history, 0, ("ce",))


# ----------------------------------------------------------------------------------------- sampler


def scripted_labels() -> tuple[list[int], list[int]]:
    """Identities 0-3 with both modalities (varied counts), identity 9 visible only."""
    counts = {0: (5, 2), 1: (1, 4), 2: (3, 3), 3: (6, 1), 9: (4, 0)}
    pids, modalities = [], []
    for pid, (visible, infrared) in counts.items():
        pids += [pid] * (visible + infrared)
        modalities += [0] * visible + [1] * infrared
    return pids, modalities


def test_cross_modality_sampler_batches_have_m_visible_and_m_infrared_per_identity(capsys):
    pids, modalities = scripted_labels()
    sampler = CrossModalityIdentitySampler(pids, modalities, num_pids=2, num_instances=2, seed=3)
    assert "skipping 1 of 5 identities" in capsys.readouterr().out
    assert sampler.skipped_pids == [9] and sampler.batch_size == 8
    # chunks of 2: visible 2+1+1+3 = 7, infrared 1+2+1+1 = 5 -> 7 // 2 = 3 batches
    indices = list(sampler)
    assert len(indices) == len(sampler) == 3 * 8
    for start in range(0, len(indices), 8):
        batch = indices[start : start + 8]
        visible, infrared = batch[:4], batch[4:]
        assert all(modalities[i] == 0 for i in visible) and all(modalities[i] == 1 for i in infrared)
        ids = [pids[i] for i in visible]
        assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
        assert [pids[i] for i in infrared] == ids  # same identities, same order
        assert 9 not in ids


def test_cross_modality_sampler_is_deterministic_per_seed_and_epoch():
    pids, modalities = scripted_labels()

    def make(seed: int) -> CrossModalityIdentitySampler:
        return CrossModalityIdentitySampler(pids, modalities, 2, 2, seed=seed)

    a, b = make(0), make(0)
    epochs_a = [list(a) for _ in range(3)]
    assert epochs_a == [list(b) for _ in range(3)]
    assert epochs_a[0] != epochs_a[1]
    resumed = make(0)
    resumed.set_epoch(2)
    assert list(resumed) == epochs_a[2]
    assert list(make(1)) != epochs_a[0]


def test_cross_modality_sampler_feeds_a_data_loader_and_validates_arguments():
    pids, modalities = scripted_labels()
    sampler = CrossModalityIdentitySampler(pids, modalities, 2, 3)
    loader = DataLoader(
        list(range(len(pids))), batch_size=sampler.batch_size, sampler=sampler, drop_last=True
    )
    batches = [b.tolist() for b in loader]
    assert all(len(b) == 12 for b in batches) and len(batches) == sampler.num_batches
    with pytest.raises(ValueError, match="one entry per image"):
        CrossModalityIdentitySampler([0, 1], [0], 1, 1)
    with pytest.raises(ValueError, match=r"codes \[2\]"):
        CrossModalityIdentitySampler([0, 0], [0, 2], 1, 1)
    with pytest.raises(ValueError, match="only 4"):
        CrossModalityIdentitySampler(pids, modalities, 5, 1)
    with pytest.raises(ValueError, match="num_instances"):
        CrossModalityIdentitySampler(pids, modalities, 2, 0)


# --------------------------------------------------------------------------------- with the engine


@pytest.fixture(scope="module")
def sysu_train(tmp_path_factory):
    root = generate_world(tmp_path_factory.mktemp("ddag"), "sysu", seed=0, world_size="small", progress=False)
    return load_dataset("sysu", root).train


def make_loader(records) -> DataLoader:
    dataset = ImageDataset(records, build_transforms(64, 32, train=True), cache_size=(64, 32))
    sampler = CrossModalityIdentitySampler(
        [r.pid for r in records], [MODALITY_CODES[r.modality] for r in records], 2, 2, seed=0
    )
    return DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=True)


class InterruptAt:
    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def on_step_start(self, state) -> None:
        if (state.epoch, state.step) == self.at:
            raise KeyboardInterrupt


def test_fit_on_the_sysu_world_sets_the_graph_weight_and_resumes_mid_epoch(sysu_train, tmp_path):
    assert {r.modality for r in sysu_train} == {"visible", "infrared"}
    num_classes = len({r.pid for r in sysu_train})

    def run(hooks, model_seed=0, **checkpoints):
        torch.manual_seed(model_seed)
        model = DDAGNet(num_classes, graph_dim=16)
        history = fit(
            model,
            DDAGCriterion(num_classes),
            make_loader(sysu_train),
            epochs=2,
            max_steps_per_epoch=3,
            optimizer="sgd",
            lr=0.01,
            hooks=hooks,
            feed=ddag_feed,
            device="cpu",
            progress=False,
            seed=5,
            **checkpoints,
        )
        return model, history

    hook = DynamicDualAggregation()
    reference, history = run([hook])
    steps = history.steps
    assert set(steps.columns) >= {"id", "triplet", "part_id", "graph", "graph_weight"}
    assert (steps.loc[steps.epoch == 0, "graph_weight"] == 0).all()
    epoch0 = steps[steps.epoch == 0]
    expected = 1 / (1 + (epoch0.id + epoch0.triplet + epoch0.part_id).mean())
    assert steps.loc[steps.epoch == 1, "graph_weight"].tolist() == pytest.approx([expected] * 3)
    assert hook.weights == pytest.approx({0: 0.0, 1: expected})

    checkpoints = dict(checkpoint_dir=tmp_path / "run", checkpoint_every_steps=1)
    with pytest.raises(KeyboardInterrupt):
        run([DynamicDualAggregation(), InterruptAt(1, 1)], **checkpoints)
    resumed_hook = DynamicDualAggregation()
    resumed, resumed_history = run([resumed_hook], model_seed=99, **checkpoints)
    assert resumed_hook.state_dict() == hook.state_dict()
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs")
    pd.testing.assert_frame_equal(
        history.steps.drop(columns="time"), resumed_history.steps.drop(columns="time")
    )
