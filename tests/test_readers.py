"""Readers of the real datasets, checked on tiny hand-made copies of each layout."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from reidbook.data.readers import (
    ImageReadError,
    check_cross_camera_matches,
    list_image_files,
    read_image,
)
from reidbook.data.readers.bbox_folders import DUKE_START_FRAMES
from reidbook.data.records import INFRARED, VISIBLE, DatasetLayoutError, Record, ReIDDataset
from reidbook.data.registry import load_dataset


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 8), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGE_BYTES = {".jpg": _image_bytes("JPEG"), ".png": _image_bytes("PNG"), ".bmp": _image_bytes("BMP")}


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(IMAGE_BYTES[Path(name).suffix])


def names_of(records: list[Record]) -> list[str]:
    return [Path(r.path).name for r in records]


# --------------------------------------------------------------------------- Market-1501


MARKET_TRAIN = ["0002_c1s1_000100_01.jpg", "0002_c2s1_000200_01.jpg", "0007_c1s2_000050_01.jpg",
                "0007_c3s1_000010_01.jpg"]  # fmt: skip
MARKET_QUERY = ["0002_c1s2_000030_01.jpg", "0005_c2s1_000300_01.jpg"]
MARKET_GALLERY = ["-1_c1s2_000080_01.jpg", "0000_c1s1_000500_01.jpg", "0002_c2s1_000250_01.jpg",
                  "0005_c1s1_000400_01.jpg", "0005_c3s1_000020_01.jpg"]  # fmt: skip


def make_market(parent: Path, query: list[str] = MARKET_QUERY) -> Path:
    root = parent / "Market-1501-v15.09.15"
    write_images(root / "bounding_box_train", MARKET_TRAIN)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    write_images(root / "query", query)
    write_images(root / "bounding_box_test", MARKET_GALLERY)
    return root


def test_market_splits_relabel_cameras_junk_and_distractors(tmp_path):
    root = make_market(tmp_path)
    data = load_dataset("market1501", root)
    assert isinstance(data, ReIDDataset)
    assert (len(data.train), len(data.query), len(data.gallery)) == (4, 2, 4)
    assert names_of(data.train) == sorted(MARKET_TRAIN)  # Thumbs.db ignored, sorted order
    assert [r.pid for r in data.train] == [0, 0, 1, 1]  # 2 -> 0, 7 -> 1
    assert [r.camid for r in data.train] == [0, 1, 0, 2]
    assert [(r.pid, r.camid) for r in data.query] == [(2, 0), (5, 1)]
    assert "-1_c1s2_000080_01.jpg" not in names_of(data.gallery)  # junk dropped
    assert 0 in {r.pid for r in data.gallery}  # distractor kept
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in data.train + data.gallery)
    assert {r.modality for r in data.train + data.query + data.gallery} == {VISIBLE}


def test_market_time_lays_sessions_end_to_end(tmp_path):
    data = load_dataset("market", make_market(tmp_path))
    # Session lengths (largest frame over all folders, junk included):
    # c1s1: max(100, 400, 500) = 500; c1s2: max(50, 30, 80) = 80; c2s1: 300; c3s1: 20.
    assert data.meta["session_offsets"] == {0: {1: 0, 2: 500}, 1: {1: 0}, 2: {1: 0}}
    times = {Path(r.path).name: r.time for r in data.train + data.query + data.gallery}
    assert times["0002_c1s2_000030_01.jpg"] == pytest.approx((500 + 30) / 25)
    assert times["0007_c1s2_000050_01.jpg"] == pytest.approx((500 + 50) / 25)
    assert times["0005_c1s1_000400_01.jpg"] == pytest.approx(400 / 25)
    assert times["0005_c2s1_000300_01.jpg"] == pytest.approx(300 / 25)


def test_market_root_may_be_the_dataset_folder_or_its_parent(tmp_path):
    root = make_market(tmp_path)
    from_parent = load_dataset("market1501", tmp_path)
    from_folder = load_dataset("market1501", root)
    assert from_parent.root == from_folder.root == str(root)
    assert from_parent.train == from_folder.train


# --------------------------------------------------------------------------- DukeMTMC-reID


def test_duke_times_use_the_camera_synchronisation(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    write_images(root / "bounding_box_train", ["0001_c2_f0046182.jpg", "0001_c5_f0050000.jpg"])
    write_images(root / "query", ["0005_c1_f0044200.jpg"])
    write_images(root / "bounding_box_test", ["0005_c8_f0003000.jpg", "0005_c1_f0044300.jpg"])
    data = load_dataset("duke", tmp_path)
    times = {Path(r.path).name: r.time for r in data.train + data.query + data.gallery}
    # Camera c starts at global frame DUKE_START_FRAMES[c-1]: 3607 (c2), 1 (c5), 5543 (c1), 46766 (c8).
    assert DUKE_START_FRAMES[1] == 3607 and DUKE_START_FRAMES[4] == 1
    assert times["0001_c2_f0046182.jpg"] == pytest.approx((46182 + 3606) / 59.94)
    assert times["0001_c5_f0050000.jpg"] == pytest.approx(50000 / 59.94)
    assert times["0005_c1_f0044200.jpg"] == pytest.approx((44200 + 5542) / 59.94)
    assert times["0005_c8_f0003000.jpg"] == pytest.approx((3000 + 46765) / 59.94)
    assert [r.camid for r in data.gallery] == [0, 7]


def test_duke_camera_outside_the_eight_is_a_malformed_name(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    write_images(root / "bounding_box_train", ["0001_c9_f0046182.jpg"])
    write_images(root / "query", ["0005_c1_f0044200.jpg"])
    write_images(root / "bounding_box_test", ["0005_c2_f0003000.jpg"])
    with pytest.raises(DatasetLayoutError, match="0001_c9_f0046182.jpg"):
        load_dataset("dukemtmcreid", root)


# --------------------------------------------------------------------------- CUHK03-NP


def make_cuhk03(parent: Path) -> Path:
    root = parent / "cuhk03-np"
    for variant, n_train in (("labeled", 3), ("detected", 2)):
        train_names = [f"{10 + i:04d}_c1_{i}.png" for i in range(n_train)]
        write_images(root / variant / "bounding_box_train", train_names)
        write_images(root / variant / "query", ["0100_c1_1.png"])
        write_images(root / variant / "bounding_box_test", ["0100_c2_1.png", "0100_c1_2.png"])
    return root


@pytest.mark.parametrize("variant, n_train", [("labeled", 3), ("detected", 2)])
def test_cuhk03_variants(tmp_path, variant, n_train):
    root = make_cuhk03(tmp_path)
    for where in (tmp_path, root, root / variant):
        data = load_dataset("cuhk03", where, variant=variant)
        assert data.root == str(root / variant)
        assert len(data.train) == n_train
        assert [r.pid for r in data.train] == list(range(n_train))
        assert all(r.time is None for r in data.train)


def test_cuhk03_rejects_the_other_variant_folder(tmp_path):
    root = make_cuhk03(tmp_path)
    with pytest.raises(DatasetLayoutError, match="labeled"):
        load_dataset("cuhk03", root / "detected", variant="labeled")
    with pytest.raises(ValueError, match="variant"):
        load_dataset("cuhk03", root, variant="hand-made")


# --------------------------------------------------------------------------- MSMT17


def make_msmt(parent: Path, version: str) -> Path:
    folder, train, test = {"v1": ("MSMT17_V1", "train", "test"),
                           "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2")}[version]  # fmt: skip
    root = parent / folder
    lists = {
        ("list_train.txt", train): ["0003/0003_000_01_0303morning_0015_0.jpg 3",
                                    "0003/0003_001_05_0303noon_0020_1.jpg 3"],
        ("list_val.txt", train): ["0004/0004_000_02_0303morning_0030_0.jpg 4"],
        ("list_query.txt", test): ["0000/0000_000_15_0113afternoon_0001_0.jpg 0"],
        ("list_gallery.txt", test): ["0000/0000_001_07_0113afternoon_0002_0.jpg 0",
                                     "0001/0001_000_15_0113afternoon_0003_0.jpg 1"],
    }  # fmt: skip
    for (list_name, image_folder), lines in lists.items():
        (root / list_name).parent.mkdir(parents=True, exist_ok=True)
        (root / list_name).write_text("\n".join(lines) + "\n")
        for line in lines:
            relative = Path(line.split()[0])
            write_images(root / image_folder / relative.parent, [relative.name])
    return root


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_msmt17_versions_train_plus_val_and_cameras(tmp_path, version):
    root = make_msmt(tmp_path, version)
    for kwargs in ({"version": version}, {}):
        data = load_dataset("msmt17", tmp_path, **kwargs)
        assert data.meta["version"] == version
        assert data.root == str(root)
        assert len(data.train) == 3  # train + val
        assert [r.pid for r in data.train] == [0, 0, 1]
        assert [r.camid for r in data.train] == [0, 4, 1]
        assert [(r.pid, r.camid) for r in data.query] == [(0, 14)]
        assert [(r.pid, r.camid) for r in data.gallery] == [(0, 6), (1, 14)]


def test_msmt17_wrong_version_names_the_missing_folder(tmp_path):
    make_msmt(tmp_path, "v1")
    with pytest.raises(DatasetLayoutError, match="MSMT17_V2"):
        load_dataset("msmt17", tmp_path, version="v2")
    with pytest.raises(DatasetLayoutError, match="mask_train_v2"):
        load_dataset("msmt17", tmp_path / "MSMT17_V1", version="v2")


def test_msmt17_malformed_list_line_names_file_and_line(tmp_path):
    root = make_msmt(tmp_path, "v1")
    (root / "list_val.txt").write_text("0004/0004_000_02_0303morning_0030_0.jpg four\n")
    with pytest.raises(DatasetLayoutError, match=r"line 1 in .*list_val.txt"):
        load_dataset("msmt17", root)


# --------------------------------------------------------------------------- SYSU-MM01


def make_sysu(parent: Path) -> Path:
    root = parent / "SYSU-MM01"
    for cam in range(1, 7):
        for pid in (1, 2, 3, 4, 5):
            if cam == 5 and pid == 5:
                continue  # not every person is seen by every camera
            write_images(root / f"cam{cam}" / f"{pid:04d}", ["0001.jpg", "0002.jpg"])
    (root / "exp").mkdir()
    (root / "exp" / "train_id.txt").write_text("1,2\n")
    (root / "exp" / "val_id.txt").write_text("3")
    (root / "exp" / "test_id.txt").write_text("4,5\n")
    return root


def test_sysu_splits_modalities_and_cameras(tmp_path):
    make_sysu(tmp_path)
    data = load_dataset("sysu", tmp_path)
    assert len(data.train) == 3 * 6 * 2 and data.num_train_pids == 3
    assert sorted({r.pid for r in data.train}) == [0, 1, 2]
    assert {r.camid for r in data.query} == {2, 5}  # cam3, cam6
    assert {r.modality for r in data.query} == {INFRARED}
    assert len(data.query) == 2 * 2 * 2
    assert {r.camid for r in data.gallery} == {0, 1, 3, 4}
    assert {r.modality for r in data.gallery} == {VISIBLE}
    assert len(data.gallery) == (4 * 2 - 1) * 2  # pid 5 never met cam5
    assert {r.pid for r in data.query} == {r.pid for r in data.gallery} == {4, 5}
    infrared_train = {r.camid for r in data.train if r.modality == INFRARED}
    assert infrared_train == {2, 5}


def test_sysu_indoor_mode_keeps_cameras_1_and_2(tmp_path):
    make_sysu(tmp_path)
    data = load_dataset("sysumm01", tmp_path / "SYSU-MM01", mode="indoor")
    assert {r.camid for r in data.gallery} == {0, 1}
    assert len(data.gallery) == 2 * 2 * 2
    assert len(data.query) == 8


def test_sysu_malformed_id_file(tmp_path):
    root = make_sysu(tmp_path)
    (root / "exp" / "test_id.txt").write_text("4;5\n")
    with pytest.raises(DatasetLayoutError, match="test_id.txt"):
        load_dataset("sysu", root)


# --------------------------------------------------------------------------- RegDB


def make_regdb(parent: Path) -> Path:
    root = parent / "RegDB"
    for trial, (train_ids, test_ids) in {1: ((1, 2), (3, 4)), 2: ((3, 4), (1, 2))}.items():
        for split, ids in (("train", train_ids), ("test", test_ids)):
            for folder, modality, letter in (("Visible", "visible", "v"), ("Thermal", "thermal", "t")):
                lines = []
                for label, pid in enumerate(ids):
                    for k in range(2):
                        relative = f"{folder}/{pid}/male_back_{letter}_{pid:05d}{k}_{pid}.bmp"
                        write_images((root / relative).parent, [Path(relative).name])
                        lines.append(f"{relative} {label}")
                (root / "idx").mkdir(exist_ok=True)
                (root / "idx" / f"{split}_{modality}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_regdb_trials_and_search_direction(tmp_path):
    make_regdb(tmp_path)
    data = load_dataset("regdb", tmp_path, trial=1)
    assert len(data.train) == 8 and data.num_train_pids == 2
    assert {(r.camid, r.modality) for r in data.train} == {(0, VISIBLE), (1, INFRARED)}
    assert {(r.camid, r.modality) for r in data.query} == {(0, VISIBLE)}
    assert {(r.camid, r.modality) for r in data.gallery} == {(1, INFRARED)}
    assert all("/3/" in r.path or "/4/" in r.path for r in data.query)
    reverse = load_dataset("regdb", tmp_path, trial=2, mode="thermal_to_visible")
    assert {r.modality for r in reverse.query} == {INFRARED}
    assert {r.modality for r in reverse.gallery} == {VISIBLE}
    assert all("/1/" in r.path or "/2/" in r.path for r in reverse.query)
    with pytest.raises(ValueError, match="trial"):
        load_dataset("regdb", tmp_path, trial=11)


def test_regdb_missing_trial_file_names_it(tmp_path):
    root = make_regdb(tmp_path)
    with pytest.raises(DatasetLayoutError, match="train_visible_3.txt"):
        load_dataset("regdb", root, trial=3)


# --------------------------------------------------------------------------- VeRi-776 and VehicleID


def test_veri776(tmp_path):
    root = tmp_path / "VeRi"
    write_images(root / "image_train", ["0001_c001_00016450_0.jpg", "0001_c002_00016460_0.jpg"])
    write_images(root / "image_query", ["0002_c002_00030600_0.jpg"])
    write_images(root / "image_test", ["0002_c002_00030605_1.jpg", "0002_c020_00084280_0.jpg"])
    data = load_dataset("veri", tmp_path)
    assert [r.camid for r in data.train] == [0, 1] and [r.pid for r in data.train] == [0, 0]
    assert [(r.pid, r.camid) for r in data.gallery] == [(2, 1), (2, 19)]


def make_vehicleid(parent: Path) -> Path:
    root = parent / "VehicleID_V1.0"
    split = root / "train_test_split"
    split.mkdir(parents=True)
    train = [(f"{i:07d}", 100 + i // 2) for i in range(6)]
    test = [(f"{1000 + i:07d}", 7 + i // 4) for i in range(20)]  # 5 vehicles x 4 images
    lists = {"train_list.txt": train, "test_list_800.txt": test, "test_list_1600.txt": test[:8]}
    for name, lines in lists.items():
        (split / name).write_text("".join(f"{image} {vid}\n" for image, vid in lines))
    write_images(root / "image", [f"{image}.jpg" for image, _ in train + test])
    return root


def test_vehicleid_random_gallery_protocol_is_seeded(tmp_path):
    make_vehicleid(tmp_path)
    data = load_dataset("vehicleid", tmp_path, test_size=800, seed=0)
    assert data.num_train_pids == 3 and [r.pid for r in data.train] == [0, 0, 1, 1, 2, 2]
    assert sorted(r.pid for r in data.gallery) == [7, 8, 9, 10, 11]  # one image per vehicle
    assert len(data.query) == 15
    assert not {r.path for r in data.query} & {r.path for r in data.gallery}
    assert {r.camid for r in data.query} == {0} and {r.camid for r in data.gallery} == {1}
    again = load_dataset("vehicleid", tmp_path, test_size=800, seed=0)
    assert again.gallery == data.gallery and again.query == data.query
    galleries = {tuple(r.path for r in load_dataset("vehicleid", tmp_path, seed=s).gallery) for s in range(5)}
    assert len(galleries) > 1
    medium = load_dataset("vehicleid", tmp_path, test_size=1600)
    assert len(medium.gallery) == 2 and len(medium.query) == 6
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("vehicleid", tmp_path, test_size=1000)


# --------------------------------------------------------------------------- errors and images


def test_missing_root_and_missing_split_folder_name_path_and_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as missing_root:
        load_dataset("market1501", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(missing_root.value)
    assert "bounding_box_test" in str(missing_root.value)

    with pytest.raises(DatasetLayoutError) as not_found:
        load_dataset("market1501", tmp_path)
    assert str(tmp_path / "Market-1501-v15.09.15" / "bounding_box_train") in str(not_found.value)

    root = make_market(tmp_path)
    for image in (root / "query").iterdir():
        image.unlink()
    (root / "query").rmdir()
    with pytest.raises(DatasetLayoutError) as missing_query:
        load_dataset("market1501", root)
    assert str(root / "query") in str(missing_query.value)
    assert "bounding_box_train/" in str(missing_query.value)


def test_malformed_file_name_names_the_file(tmp_path):
    root = make_market(tmp_path)
    write_images(root / "bounding_box_test", ["person_07.jpg"])
    with pytest.raises(DatasetLayoutError, match=r"person_07\.jpg.*PPPP_cCsS_FFFFFF_BB"):
        load_dataset("market1501", root)


def test_queries_without_cross_camera_match_are_named(tmp_path):
    # 0009 appears in the gallery only under the query's own camera (c1); 0003 not at all.
    root = make_market(tmp_path, query=MARKET_QUERY + ["0003_c2s1_000010_01.jpg", "0009_c1s1_000020_01.jpg"])
    write_images(root / "bounding_box_test", ["0009_c1s1_000040_01.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", root)
    message = str(error.value)
    assert "2 of 4 queries" in message
    assert "0003_c2s1_000010_01.jpg" in message and "0009_c1s1_000020_01.jpg" in message
    assert "0002_c1s2_000030_01.jpg" not in message


def test_check_cross_camera_matches_accepts_a_good_dataset():
    query = [Record("q.jpg", 1, 0)]
    gallery = [Record("g1.jpg", 1, 0), Record("g2.jpg", 1, 1)]
    check_cross_camera_matches(ReIDDataset("toy", "/", [], query, gallery))
    with pytest.raises(DatasetLayoutError, match="q.jpg"):
        check_cross_camera_matches(ReIDDataset("toy", "/", [], query, gallery[:1]))


def test_read_image_returns_rgb_and_names_bad_files(tmp_path):
    gray = tmp_path / "thermal.bmp"
    Image.new("L", (3, 5), 128).save(gray)
    image = read_image(gray)
    assert image.mode == "RGB" and image.size == (3, 5)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(broken)
    with pytest.raises(ImageReadError, match="absent.jpg"):
        read_image(tmp_path / "absent.jpg")


def test_list_image_files_is_sorted_and_skips_other_files(tmp_path):
    write_images(tmp_path, ["b.jpg", "a.png", "c.bmp"])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_image_files(tmp_path)] == ["a.png", "b.jpg", "c.bmp"]
