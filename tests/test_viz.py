"""Figures and tables of reidbook.viz: what each draws is checked against hand-computed expectations."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from PIL import Image  # noqa: E402

from reidbook import viz  # noqa: E402
from reidbook.data.records import Record  # noqa: E402
from reidbook.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from reidbook.engine import History  # noqa: E402
from reidbook.evaluation.ranking import evaluate_rank  # noqa: E402
from reidbook.models.baseline import Baseline  # noqa: E402
from reidbook.models.qaconv import Correspondences, QueryAdaptiveConv  # noqa: E402
from reidbook.report import spread  # noqa: E402

H, W = 64, 32


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tiny_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def write_records(folder, pids_cams) -> list[Record]:
    """One small PNG per (pid, camid) in ``folder`` (the i-th shows ``tiny_image(i)``), as records."""
    folder.mkdir()
    records = []
    for index, (pid, camid) in enumerate(pids_cams):
        path = folder / f"{pid:04d}_c{camid}_{index:03d}.png"
        Image.fromarray(tiny_image(index)).save(path)
        records.append(Record(str(path), pid, camid))
    return records


def frame_color(ax) -> tuple:
    colors = {to_rgba(spine.get_edgecolor()) for spine in ax.spines.values()}
    assert len(colors) == 1, f"the four spines have different colours: {colors}"
    return colors.pop()


# ---------------------------------------------------------------------------------------------- images
def test_every_image_form_gives_the_same_array(tmp_path):
    pixels = tiny_image(0)
    expected = pixels.astype(np.float32) / 255
    path = tmp_path / "0001_c0_000.png"
    Image.fromarray(pixels).save(path)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (torch.from_numpy(expected).permute(2, 0, 1) - mean) / std
    forms = [
        pixels,
        expected,
        Image.fromarray(pixels),
        str(path),
        path,
        Record(str(path), 1, 0),
        torch.from_numpy(pixels).permute(2, 0, 1),  # uint8 (3, H, W)
        normalised,
    ]
    for form in forms:
        np.testing.assert_allclose(viz.to_image_array(form), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        viz.to_image_array(torch.zeros(H, W, 3))


def test_image_grid_one_axes_per_image_and_titles():
    images = [tiny_image(i) for i in range(5)]
    fig = viz.image_grid(images, titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes] == list("abcde")
    np.testing.assert_allclose(fig.axes[4].images[0].get_array(), images[4] / 255, atol=1e-6)
    with pytest.raises(ValueError, match="titles"):
        viz.image_grid(images, titles=["only one"])


# ------------------------------------------------------------------------------------------ history
def make_history() -> History:
    history = History()
    ce = [2.0, 1.0, 4.0, 3.0, 1.5, 0.5]
    for global_step, value in enumerate(ce):
        epoch, step = divmod(global_step, 3)
        history.step_rows.append(
            {
                "epoch": epoch,
                "step": step,
                "global_step": global_step,
                "ce": value,
                "triplet": 0.3,
                "ce_weight": 1.0,
                "triplet_weight": 1.0,
                "total": value + 0.3,
                "lr": 0.1 * (epoch + 1),
                "time": 0.01,
            }
        )
    history.epoch_rows = [
        {"epoch": 0, "steps": 3, "ce": 7 / 3, "total": 2.6, "lr": 0.1, "time": 0.03},
        {
            "epoch": 1,
            "steps": 3,
            "ce": 5 / 3,
            "total": 2.0,
            "lr": 0.2,
            "time": 0.03,
            "eval_time": 1.0,
            "rank1": 0.5,
            "mAP": 0.25,
        },
    ]
    return history


def test_plot_history_panels_smoothing_and_metrics():
    history = make_history()
    smooth = 0.5
    fig = viz.plot_history(history, smooth=smooth)
    assert len(fig.axes) == 3  # losses, lr, metrics
    losses, lr_ax, metrics_ax = fig.axes
    assert [t.get_text() for t in losses.get_legend().get_texts()] == ["ce", "triplet", "total"]
    raw, smoothed = losses.lines[0], losses.lines[1]
    np.testing.assert_allclose(raw.get_xdata(), [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    values = np.array([2.0, 1.0, 4.0, 3.0, 1.5, 0.5])
    expected = [  # debiased exponential moving average, written out
        sum(smooth**i * values[t - i] for i in range(t + 1)) / sum(smooth**i for i in range(t + 1))
        for t in range(len(values))
    ]
    np.testing.assert_allclose(smoothed.get_ydata(), expected)
    np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), [0.1] * 3 + [0.2] * 3)
    metric_lines = {line.get_label(): line for line in metrics_ax.lines}
    assert set(metric_lines) == {"rank1", "mAP"}
    np.testing.assert_allclose(metric_lines["rank1"].get_xdata(), [2])  # evaluated after the 2nd epoch
    np.testing.assert_allclose(metric_lines["mAP"].get_ydata(), [25.0])  # fractions drawn in percent


def test_plot_history_of_a_step_frame_has_no_metric_panel():
    fig = viz.plot_history(make_history().steps, terms=["ce"], smooth=0)
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [2.0, 1.0, 4.0, 3.0, 1.5, 0.5])
    with pytest.raises(ValueError, match="missing_term"):
        viz.plot_history(make_history(), terms=["missing_term"])


# ---------------------------------------------------------------------------------------------- CMC
def test_plot_cmc_draws_each_curve_in_percent_up_to_max_rank():
    curves = {"baseline": np.linspace(0.5, 1.0, 30), "method": np.linspace(60.0, 100.0, 30)}
    fig = viz.plot_cmc(curves, max_rank=10)
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_xdata(), np.arange(1, 11))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 100 * curves["baseline"][:10])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), curves["method"][:10])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (rank-1 50.0%)", "method (rank-1 60.0%)"]


# --------------------------------------------------------------------------------------- ranked list
def test_ranked_list_colours_skips_same_camera_and_labels(tmp_path):
    queries = write_records(tmp_path / "query", [(1, 0), (2, 1)])
    gallery = write_records(tmp_path / "gallery", [(1, 0), (2, 1), (1, 1), (3, 0), (1, 2), (2, 0)])
    distmat = np.array(
        [
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # gallery 0 (pid 1, cam 0) is the query's own camera: skipped
            [0.9, 0.0, 0.8, 0.7, 0.6, 0.5],  # gallery 1 (pid 2, cam 1) skipped; gallery 5 is its match
        ]
    )
    topk = 3
    fig = viz.ranked_list(distmat, queries, gallery, [0, 1], topk=topk)
    assert len(fig.axes) == 2 * (topk + 1)
    axes = np.array(fig.axes).reshape(2, topk + 1)
    green, red, black = to_rgba(viz.MATCH_COLOR), to_rgba(viz.WRONG_COLOR), to_rgba(viz.QUERY_COLOR)
    assert [frame_color(ax) for ax in axes[0]] == [black, red, green, red]  # galleries 1, 2, 3
    assert [frame_color(ax) for ax in axes[1]] == [black, green, red, red]  # galleries 5, 4, 3
    assert [ax.get_xlabel() for ax in axes[0, 1:]] == ["#1\n0.1", "#2\n0.2", "#3\n0.3"]
    assert axes[1, 0].get_xlabel() == "query\npid 2, cam 1"
    np.testing.assert_allclose(axes[0, 0].images[0].get_array(), tiny_image(0) / 255, atol=1e-6)
    np.testing.assert_allclose(axes[0, 1].images[0].get_array(), tiny_image(1) / 255, atol=1e-6)

    as_array = viz.ranked_list(distmat, queries, gallery, np.array([0, 1]), topk=topk)
    assert [frame_color(ax) for ax in as_array.axes[: topk + 1]] == [black, red, green, red]

    kept = viz.ranked_list(distmat, queries, gallery, [0], topk=topk, remove_same_camera=False)
    assert [frame_color(ax) for ax in kept.axes[1:]] == [green, red, green]  # galleries 0, 1, 2


def test_ranked_list_leaves_missing_ranks_blank(tmp_path):
    queries = write_records(tmp_path / "query", [(1, 0)])
    gallery = write_records(tmp_path / "gallery", [(1, 0), (2, 1), (1, 1)])
    fig = viz.ranked_list(np.array([[0.0, 0.1, 0.2]]), queries, gallery, [0], topk=4)
    assert len(fig.axes) == 5
    assert [ax.axison for ax in fig.axes] == [True, True, True, False, False]


def test_ranked_gallery_rank1_agrees_with_evaluate_rank():
    rng = np.random.default_rng(3)
    q_pids, q_cams = rng.integers(0, 6, 40), rng.integers(0, 3, 40)
    g_pids, g_cams = rng.integers(0, 6, 90), rng.integers(0, 3, 90)
    distmat = rng.random((40, 90)).round(1)  # many ties: both must break them by gallery index
    queries = [Record(f"q{i}.png", int(p), int(c)) for i, (p, c) in enumerate(zip(q_pids, q_cams))]
    gallery = [Record(f"g{i}.png", int(p), int(c)) for i, (p, c) in enumerate(zip(g_pids, g_cams))]
    hits = []
    for q, query in enumerate(queries):
        valid = [g for g in gallery if g.pid == query.pid and g.camid != query.camid]
        if valid:  # evaluate_rank skips queries without a true match
            first = viz.ranked_gallery(distmat[q], query, gallery, topk=1)[0]
            hits.append(gallery[first].pid == query.pid)
    cmc = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)["cmc"]
    assert np.mean(hits) == pytest.approx(cmc[0])


# ------------------------------------------------------------------------------- distance histograms
def test_distance_histograms_match_naive_pair_lists():
    rng = np.random.default_rng(0)
    q_pids, q_cams = np.array([0, 1, 2, 0]), np.array([0, 1, 0, 1])
    g_pids, g_cams = rng.integers(0, 3, 25), rng.integers(0, 2, 25)
    distmat = rng.random((4, 25))
    positive, negative = [], []
    for q in range(4):
        for g in range(25):
            if q_pids[q] != g_pids[g]:
                negative.append(distmat[q, g])
            elif q_cams[q] != g_cams[g]:
                positive.append(distmat[q, g])
    bins = 7
    fig = viz.distance_histograms(distmat, q_pids, g_pids, q_cams, g_cams, bins=bins)
    (ax,) = fig.axes
    edges = np.histogram_bin_edges(positive + negative, bins=bins)
    for container, pairs in zip(ax.containers, (positive, negative)):
        heights = [patch.get_height() for patch in container.patches]
        np.testing.assert_allclose(heights, np.histogram(pairs, bins=edges, density=True)[0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        f"same identity ({len(positive)} pairs)",
        f"different identities ({len(negative)} pairs)",
    ]

    all_positive, _ = viz.pair_distances(distmat, q_pids, g_pids)  # no cameras: every same-pid pair counts
    assert all_positive.size == (q_pids[:, None] == g_pids[None, :]).sum() > len(positive)


# --------------------------------------------------------------------------------------------- Grad-CAM
def test_embedding_similarity_is_one_for_the_reference_itself():
    reference = torch.tensor([3.0, -1.0, 2.0])
    orthogonal = torch.tensor([1.0, 3.0, 0.0])
    for measure in ("cosine", "projection"):
        target = viz.EmbeddingSimilarity(reference, measure)
        assert target(reference).item() == pytest.approx(1.0)
        assert target(orthogonal).item() == pytest.approx(0.0)
    assert viz.EmbeddingSimilarity(reference, "cosine")(2 * reference).item() == pytest.approx(1.0)
    assert viz.EmbeddingSimilarity(reference, "projection")(2 * reference).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="measure"):
        viz.EmbeddingSimilarity(reference, "dot")


def test_cosine_gradient_vanishes_at_the_reference_but_projection_does_not():
    reference = torch.tensor([3.0, -1.0, 2.0])
    gradients = {}
    for measure in ("cosine", "projection"):
        embedding = reference.clone().requires_grad_(True)
        viz.EmbeddingSimilarity(reference, measure)(embedding).backward()
        gradients[measure] = embedding.grad
    torch.testing.assert_close(gradients["cosine"], torch.zeros(3), atol=1e-7, rtol=0)
    torch.testing.assert_close(gradients["projection"], reference / reference.dot(reference))


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return Baseline(num_classes=4, backbone="resnet18")


def naive_gradcam(model, image, measure_reference):
    """Grad-CAM written out for one image: ReLU(sum_c mean(dS/dA_c) A_c), min-max scaled, upsampled."""
    saved = {}
    handle = model.backbone.stages[-1].register_forward_hook(lambda m, i, out: saved.setdefault("A", out))
    try:
        model.eval()
        embedding = model(image[None])[0]
        saved["A"].retain_grad()
        score = embedding @ measure_reference / measure_reference.dot(measure_reference)
        score.backward()
    finally:
        handle.remove()
    activations, grads = saved["A"][0].detach(), saved["A"].grad[0]  # (C, h, w)
    cam = torch.relu((grads.mean(dim=(1, 2))[:, None, None] * activations).sum(0))  # (h, w)
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    cam = F.interpolate(cam[None, None], size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    return ((cam - cam.min()) / (cam.max() + 1e-7 - cam.min())).numpy()


def test_gradcam_embeddings_maps_and_model_state(tiny_model):
    pytest.importorskip("pytorch_grad_cam")
    images = torch.randn(2, 3, H, W)
    tiny_model.train()
    tiny_model.backbone.stem.requires_grad_(False)
    cams = viz.gradcam_embeddings(tiny_model, images)
    assert cams.shape == (2, H, W)
    assert cams.min() >= 0 and cams.max() <= 1
    assert all(cam.std() > 0.01 for cam in cams)
    assert tiny_model.training
    assert not any(p.requires_grad for p in tiny_model.backbone.stem.parameters())
    assert all(p.requires_grad for p in tiny_model.backbone.stages.parameters())

    tiny_model.eval()
    with torch.no_grad():
        references = tiny_model(images)
    for index in range(2):
        expected = naive_gradcam(tiny_model, images[index], references[index])
        np.testing.assert_allclose(cams[index], expected, atol=2e-3)
    assert not tiny_model.training


def test_gradcam_needs_a_target_layer_without_backbone_stages():
    pytest.importorskip("pytorch_grad_cam")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with pytest.raises(ValueError, match="target_layer"):
        viz.gradcam_embeddings(model, torch.randn(1, 3, 8, 8))
    cams = viz.gradcam_embeddings(model, torch.randn(1, 3, 8, 8), target_layer=model[0])
    assert cams.shape == (1, 8, 8)


def test_plot_gradcam_one_row_per_image_one_column_per_model():
    images = torch.randn(3, 3, H, W)
    cams = {"baseline": np.random.default_rng(0).random((3, H, W)), "method": np.zeros((3, H, W))}
    fig = viz.plot_gradcam(images, cams, titles=["a", "b", "c"])
    assert len(fig.axes) == 3 * 3
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_title() for ax in axes[0]] == ["input", "baseline", "method"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b", "c"]
    assert len(axes[1, 1].images) == 2  # the image and the heatmap over it
    np.testing.assert_allclose(axes[1, 1].images[1].get_array(), cams["baseline"][1])
    with pytest.raises(ValueError, match="baseline"):
        viz.plot_gradcam(images, {"baseline": np.zeros((2, H, W))})


# ----------------------------------------------------------------------------- QAConv correspondences
# A 4 x 2 map on 64 x 32 images: 16 x 16 pixel cells. Query cell i (row-major) matches gallery cell PERM[i].
PERM = np.array([5, 2, 7, 0, 3, 6, 1, 4])
SIMS = np.array([0.1, 0.8, -0.3, 0.5, 0.9, 0.0, 0.6, 0.2])
GALLERY_X = 36  # the query's width 32 + the white gap (64 / 16 = 4 pixels)


def hand_built(similarity: np.ndarray = SIMS) -> Correspondences:
    return Correspondences(
        rows=torch.from_numpy(PERM // 2).view(4, 2),
        cols=torch.from_numpy(PERM % 2).view(4, 2),
        similarity=torch.from_numpy(similarity).float().view(4, 2),
    )


def expected_segments(cells: np.ndarray) -> np.ndarray:
    """The segments of query cells ``cells`` (flat indices): query cell centre -> matched gallery centre."""
    start = np.stack([(cells % 2 + 0.5) * 16, (cells // 2 + 0.5) * 16], axis=-1)
    end = np.stack([GALLERY_X + (PERM[cells] % 2 + 0.5) * 16, (PERM[cells] // 2 + 0.5) * 16], axis=-1)
    return np.stack([start, end], axis=1)


def pair_lines(ax) -> LineCollection:
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    return lines


def test_plot_correspondences_joins_query_cell_centres_to_gallery_cell_centres():
    query, gallery = tiny_image(0), tiny_image(1)
    fig = viz.plot_correspondences([(query, gallery, hand_built())])
    ax = fig.axes[0]
    by_similarity = np.argsort(SIMS)  # the weakest first: the strongest is drawn on top
    np.testing.assert_array_equal(np.array(pair_lines(ax).get_segments()), expected_segments(by_similarity))
    canvas = ax.images[0].get_array()
    assert canvas.shape == (H, GALLERY_X + W, 3)
    np.testing.assert_allclose(canvas[:, :W], query / 255, atol=1e-6)
    np.testing.assert_array_equal(canvas[:, W:GALLERY_X], 1.0)  # the white gap
    np.testing.assert_allclose(canvas[:, GALLERY_X:], gallery / 255, atol=1e-6)
    assert ax.images[0].get_extent() == [0, GALLERY_X + W, H, 0]  # pixel edges on integers

    # a gallery twice the size is resized to the query's height: the same cell centres
    big = np.repeat(np.repeat(gallery, 2, axis=0), 2, axis=1)  # (128, 64, 3)
    resized = viz.plot_correspondences([(query, big, hand_built())])
    assert resized.axes[0].images[0].get_array().shape == (H, GALLERY_X + W, 3)
    np.testing.assert_array_equal(
        np.array(pair_lines(resized.axes[0]).get_segments()), expected_segments(by_similarity)
    )


def test_plot_correspondences_of_query_adaptive_conv():
    torch.manual_seed(0)
    query_map = F.normalize(torch.randn(64, 4, 2), dim=0)
    gallery_flat = torch.empty(64, 8)
    gallery_flat[:, torch.from_numpy(PERM)] = query_map.flatten(1)  # gallery cell PERM[i] = query cell i
    found = QueryAdaptiveConv((4, 2)).correspondences(query_map, gallery_flat.view(64, 4, 2))
    images = torch.randn(2, 3, H, W)  # ImageNet-normalised
    fig = viz.plot_correspondences([(images[0], images[1], found)])
    segments = np.array(pair_lines(fig.axes[0]).get_segments())
    np.testing.assert_array_equal(np.sort(segments, axis=0), np.sort(expected_segments(np.arange(8)), axis=0))


def test_plot_correspondences_top_draws_the_most_similar():
    fig = viz.plot_correspondences([(tiny_image(0), tiny_image(1), hand_built())], top=3)
    segments = np.array(pair_lines(fig.axes[0]).get_segments())
    assert segments.shape == (3, 2, 2)
    np.testing.assert_array_equal(segments, expected_segments(np.array([6, 1, 4])))  # 0.6, 0.8, 0.9
    every = viz.plot_correspondences([(tiny_image(0), tiny_image(1), hand_built())], top=100)
    assert len(pair_lines(every.axes[0]).get_segments()) == 8


def test_plot_correspondences_colours_follow_similarity_on_a_shared_scale():
    viridis = plt.get_cmap("viridis")
    cells = PERM.reshape(4, 2)  # duck-typed numpy correspondences at half the similarity
    weaker = SimpleNamespace(rows=cells // 2, cols=cells % 2, similarity=SIMS.reshape(4, 2) / 2)
    pairs = [(tiny_image(0), tiny_image(1), hand_built()), (tiny_image(2), tiny_image(3), weaker)]
    fig = viz.plot_correspondences(pairs, titles=["same", "different"], matches=[True, False])
    strong, weak = (pair_lines(ax).get_colors() for ax in fig.axes[:2])
    np.testing.assert_allclose(strong[-1], viridis(1.0))  # the highest similarity (0.9) gets vmax's colour
    np.testing.assert_allclose(strong[0], viridis(0.0))  # the lowest (-0.3) vmin's
    np.testing.assert_allclose(weak[-1], viridis((0.45 + 0.3) / 1.2))  # the scale is shared by both pairs
    assert [ax.get_title() for ax in fig.axes[:2]] == ["same", "different"]
    assert frame_color(fig.axes[0]) == to_rgba(viz.MATCH_COLOR)
    assert frame_color(fig.axes[1]) == to_rgba(viz.WRONG_COLOR)
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "cosine similarity of the matched locations"

    magma = plt.get_cmap("magma")
    fixed = viz.plot_correspondences(pairs[:1], cmap="magma", vmin=-1, vmax=1)
    np.testing.assert_allclose(pair_lines(fixed.axes[0]).get_colors(), magma((np.sort(SIMS) + 1) / 2))


def test_plot_correspondences_lays_out_at_most_four_pairs_per_row():
    pairs = [(tiny_image(i), tiny_image(i + 1), hand_built()) for i in range(6)]
    fig = viz.plot_correspondences(pairs)
    image_axes = fig.axes[:-1]  # the last is the colorbar
    assert len(image_axes) == 6
    assert len({ax.get_position().x0 for ax in image_axes}) == 4
    assert len({round(ax.get_position().y0, 6) for ax in image_axes}) == 2


def test_plot_correspondences_rejects_bad_inputs():
    query, gallery = tiny_image(0), tiny_image(1)
    good = hand_built()
    cases = [
        ([], {}, "at least one"),
        ([(query, gallery)], {}, r"\(query, gallery, correspondences\)"),
        ([(query, gallery, good)], {"titles": ["a", "b"]}, "2 titles for 1 pairs"),
        ([(query, gallery, good)], {"matches": []}, "0 matches for 1 pairs"),
        ([(query, gallery, good)], {"top": 0}, "top must be at least 1"),
        ([(query, gallery, good)], {"vmin": 0.5, "vmax": 0.5}, "vmin must be below vmax"),
        ([(query, gallery, good._replace(cols=good.cols[:2]))], {}, "one shape"),
        ([(query, gallery, good._replace(similarity=good.similarity.flatten()))], {}, "one shape"),
        ([(query, gallery, good._replace(rows=good.rows.float()))], {}, "integer"),
        ([(query, gallery, good._replace(rows=good.rows + 1))], {}, "4 x 2 map"),
        ([(query, gallery, good._replace(similarity=good.similarity * np.nan))], {}, "non-finite"),
    ]
    for pairs, options, message in cases:
        with pytest.raises(ValueError, match=message):
            viz.plot_correspondences(pairs, **options)
    with pytest.raises(TypeError, match="similarity"):
        viz.plot_correspondences([(query, gallery, SimpleNamespace(rows=good.rows, cols=good.cols))])


# ------------------------------------------------------------------------------------------ tables
def test_results_table_labels_sources_and_converts_fractions():
    paper = {"Baseline": {"Rank-1": 94.1, "mAP": 85.7}, "IANet": {"Rank-1": 94.4, "mAP": 83.1}}
    ours = pd.DataFrame({"rank1": [0.8734, 0.9012], "mAP": [0.61, 0.655]}, index=["Baseline", "Ours-only"])
    table = viz.results_table(
        ours, paper, ours_label="ours: built-in world, CPU", paper_label="paper: Market"
    )
    assert list(table.columns) == [
        ("paper: Market", "rank-1"),
        ("paper: Market", "mAP"),
        ("ours: built-in world, CPU", "rank-1"),
        ("ours: built-in world, CPU", "mAP"),
    ]
    assert list(table.index) == ["Baseline", "IANet", "Ours-only"]
    assert table.loc["Baseline", ("ours: built-in world, CPU", "rank-1")] == 87.3
    assert table.loc["Ours-only", ("ours: built-in world, CPU", "mAP")] == 65.5
    assert table.loc["IANet", ("paper: Market", "mAP")] == 83.1  # already percent: unchanged
    assert np.isnan(table.loc["IANet", ("ours: built-in world, CPU", "rank-1")])


def test_results_table_from_an_evaluation_dict_drops_arrays():
    ours = {"cmc": np.array([0.5, 0.7, 0.9]), "mAP": 0.4, "mINP": torch.tensor(0.125), "rank1": 0.5}
    table = viz.results_table(ours, {"rank-1": 94.1}, ours_label="ours", paper_label="paper")
    assert table.loc["result", "ours"].to_dict() == {"mAP": 40.0, "mINP": 12.5, "rank-1": 50.0}
    assert table.loc["result", ("paper", "rank-1")] == 94.1


def test_plot_bar_compare_error_bars_are_the_reports_spread():
    df = pd.DataFrame({"method": ["a", "a", "a"], "seed": [0, 1, 2], "mAP": [0.81, 0.86, 0.84]})
    for kind in ("half-range", "std"):
        (ax,) = viz.plot_bar_compare(df, "mAP", spread=kind).axes
        low, high = ax.collections[0].get_segments()[0][:, 1]
        assert (high - low) / 2 == pytest.approx(spread([81.0, 86.0, 84.0], kind))
        plt.close(ax.figure)
    with pytest.raises(ValueError, match="'iqr'"):
        viz.plot_bar_compare(df, "mAP", spread="iqr")


def test_plot_bar_compare_means_and_error_bars():
    df = pd.DataFrame(
        {
            "method": ["baseline", "baseline", "ianet", "ianet"],
            "seed": [0, 1, 0, 1],
            "mAP": [0.5, 0.6, 0.7, 0.7],
        }
    )
    fig = viz.plot_bar_compare(df, "mAP")
    (ax,) = fig.axes
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], [55.0, 70.0])
    low, high = ax.collections[0].get_segments()[0][:, 1]  # the first bar's error bar
    assert (low, high) == pytest.approx((50.0, 60.0))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "ianet"]


def test_person_showing_finds_a_plain_picture_with_every_part_and_names_what_it_cannot_find():
    parts = ("head", "torso", "bag", "legs", "shoes")
    person = viz.person_showing(0, parts)
    shot = viz.plain_render(person, 0)
    assert set(parts) <= set(shot.parts)
    assert viz.person_showing(0, parts).pid == person.pid  # seeded: the same identity again
    with pytest.raises(RuntimeError, match="no identity among 3 draws shows every one of"):
        viz.person_showing(0, ("wings",), tries=3)
