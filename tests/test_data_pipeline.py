"""Transforms, the P x K sampler and the loaders, on tiny images written to a temporary folder."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from reidbook.data.loader import ImageDataset, build_test_loader, build_train_loader, load_uint8
from reidbook.data.records import INFRARED, VISIBLE, Record
from reidbook.data.sampler import RandomIdentitySampler
from reidbook.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms


@pytest.fixture
def records(tmp_path) -> list[Record]:
    """6 identities with 1..6 images of 24 x 12 pixels; identity p has p + 1 images."""
    rng = np.random.default_rng(0)
    out = []
    for pid in range(6):
        for k in range(pid + 1):
            path = tmp_path / f"{pid:04d}_c{k % 2}_{k}.png"
            Image.fromarray(rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)).save(path)
            out.append(Record(str(path), pid, k % 2, INFRARED if k % 3 == 2 else VISIBLE))
    return out


def batches_of(sampler: RandomIdentitySampler) -> list[list[int]]:
    indices = list(sampler)
    return [indices[i : i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("train", [True, False])
def test_transforms_give_normalised_float_images_of_the_requested_size(train):
    image = torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8)
    out = build_transforms(16, 8, train=train)(image)
    assert out.shape == (3, 16, 8) and out.dtype == torch.float32


def test_test_transform_is_resize_then_imagenet_normalisation():
    image = torch.full((3, 16, 8), 255, dtype=torch.uint8)
    out = build_transforms(16, 8, train=False)(image)
    for c in range(3):
        expected = (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[c], torch.full((16, 8), expected), atol=1e-6)


def test_flip_only_transform_flips_about_half_the_time():
    image = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)
    transform = build_transforms(4, 6, train=True, pad=0, random_erasing=0.0, normalize=False)
    torch.manual_seed(0)
    original, flipped = image.float() / 255, image.flip(-1).float() / 255
    outs = [transform(image) for _ in range(200)]
    assert all(torch.allclose(o, original) or torch.allclose(o, flipped) for o in outs)
    flips = [torch.allclose(o, flipped) for o in outs]
    assert 70 < sum(flips) < 130


def test_pad_and_crop_shifts_the_image_within_the_padding():
    image = torch.full((3, 12, 6), 200, dtype=torch.uint8)
    transform = build_transforms(12, 6, train=True, flip=False, pad=3, random_erasing=0.0, normalize=False)
    torch.manual_seed(1)
    outs = [transform(image) for _ in range(30)]
    for out in outs:
        bright = (out[0] > 0).nonzero()
        rows, cols = bright[:, 0], bright[:, 1]
        # the bright region is the image shifted by at most 3 pixels, cut by the borders: a rectangle
        assert rows.max() - rows.min() + 1 >= 12 - 3 and cols.max() - cols.min() + 1 >= 6 - 3
        assert int((out[0] > 0).sum()) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert any((out[0] == 0).any() for out in outs)  # some crops show the zero padding


def test_random_erasing_fills_one_rectangle_inside_the_image_with_the_mean():
    image = torch.full((3, 32, 16), 255, dtype=torch.uint8)
    transform = build_transforms(32, 16, train=True, flip=False, pad=0, random_erasing=1.0)
    torch.manual_seed(2)
    for _ in range(20):
        out = transform(image)
        assert out.shape == (3, 32, 16)
        erased = (out == 0).all(dim=0)  # normalised mean colour is 0 in every channel
        rows, cols = erased.nonzero()[:, 0], erased.nonzero()[:, 1]
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(erased.sum()) == area  # one axis-aligned rectangle
        assert 0.02 * 32 * 16 * 0.5 <= area <= 0.33 * 32 * 16 * 1.1


def test_transform_arguments_are_validated():
    with pytest.raises(ValueError, match="random_erasing"):
        build_transforms(8, 4, train=True, random_erasing=1.5)
    with pytest.raises(ValueError, match="pad"):
        build_transforms(8, 4, train=True, pad=-1)


def square_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the True pixels of a 2-D mask; asserts they fill one rectangle."""
    rows, cols = mask.nonzero(as_tuple=True)
    assert len(rows) > 0, "no block was pasted"
    top, left = int(rows.min()), int(cols.min())
    height, width = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    assert int(mask.sum()) == height * width  # filled, no holes
    return top, left, height, width


def test_random_block_pastes_a_white_square_after_resize_and_before_normalisation():
    image = torch.zeros(3, 40, 20, dtype=torch.uint8)  # resized to 32 x 16: the block lives at output size
    transform = build_transforms(
        32, 16, train=True, flip=False, pad=0, random_erasing=0.0, random_block=1.0, normalize=False
    )
    torch.manual_seed(3)
    sides = []
    for _ in range(40):
        out = transform(image)
        assert out.shape == (3, 32, 16) and out.dtype == torch.float32
        top, left, height, width = square_bounds((out == 1.0).all(dim=0))
        assert height == width and 1 <= height <= int(0.8 * 16)  # a square, side at most 0.8 x width
        assert top >= 0 and left >= 0 and top + height <= 32 and left + width <= 16
        assert set(out.unique().tolist()) == {0.0, 1.0}  # exactly white on exactly black, no blur
        sides.append(height)
    assert len(set(sides)) > 1  # the side is drawn, not fixed


def test_random_block_is_normalised_white():
    image = torch.zeros(3, 32, 16, dtype=torch.uint8)
    transform = build_transforms(32, 16, train=True, flip=False, pad=0, random_erasing=0.0, random_block=1.0)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    white, black = (1.0 - mean) / std, (0.0 - mean) / std
    torch.manual_seed(4)
    for _ in range(10):
        out = transform(image)
        mask = torch.isclose(out, white.view(3, 1, 1), atol=1e-6).all(dim=0)  # (32, 16)
        _, _, height, width = square_bounds(mask)
        assert height == width <= int(0.8 * 16)
        torch.testing.assert_close(out[:, ~mask], black.view(3, 1).expand(3, int((~mask).sum())))


def test_random_block_only_in_training_and_its_probability_is_validated():
    image = torch.zeros(3, 32, 16, dtype=torch.uint8)
    test_transform = build_transforms(32, 16, train=False, random_block=1.0, normalize=False)
    assert all(torch.equal(test_transform(image), torch.zeros(3, 32, 16)) for _ in range(10))
    no_block = build_transforms(32, 16, train=True, flip=False, pad=0, random_erasing=0.0, normalize=False)
    assert torch.equal(no_block(image), torch.zeros(3, 32, 16))  # random_block defaults to off
    with pytest.raises(ValueError, match="random_block"):
        build_transforms(32, 16, train=True, random_block=1.5)
    with pytest.raises(ValueError, match="random_block"):
        build_transforms(32, 16, train=True, random_block=-0.1)


# --------------------------------------------------------------------------- sampler


def test_every_batch_has_p_identities_with_k_instances_each():
    pids = [p for p in range(10) for _ in range(3 + p % 4)]
    sampler = RandomIdentitySampler(pids, batch_size=12, num_instances=3, seed=0)
    batches = batches_of(sampler)
    assert len(batches) * 12 == len(sampler) > 0
    for batch in batches:
        counts = Counter(pids[i] for i in batch)
        assert len(counts) == 4 and set(counts.values()) == {3}


def test_epoch_length_follows_the_chunk_count():
    pids = [0] * 7 + [1] * 2 + [2] * 4 + [3] * 4  # chunks of 2: 3 + 1 + 2 + 2 = 8 -> 4 batches of P=2
    assert len(RandomIdentitySampler(pids, batch_size=4, num_instances=2, seed=0)) == 16


def test_same_seed_and_epoch_give_the_same_order_and_other_epochs_or_seeds_differ():
    pids = [p for p in range(8) for _ in range(5)]

    def order(seed: int, epoch: int) -> list[int]:
        sampler = RandomIdentitySampler(pids, 8, 4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 2) == order(3, 2)
    assert order(3, 2) != order(3, 3)
    assert order(3, 2) != order(4, 2)


def test_iterating_again_without_set_epoch_moves_to_the_next_epoch():
    pids = [p for p in range(8) for _ in range(5)]
    sampler = RandomIdentitySampler(pids, 8, 4, seed=0)
    first, second = list(sampler), list(sampler)
    assert first != second
    sampler.set_epoch(1)
    assert list(sampler) == second


def test_identities_with_fewer_than_k_images_are_sampled_with_replacement():
    pids = [0] * 2 + [1] * 4 + [2] * 4
    sampler = RandomIdentitySampler(pids, batch_size=8, num_instances=4, seed=0)
    seen_small = False
    for batch in batches_of(sampler):
        small = [i for i in batch if pids[i] == 0]
        if small:
            seen_small = True
            assert len(small) == 4 and set(small) == {0, 1}  # both images, plus repeats
    assert seen_small


def test_images_are_not_repeated_within_a_batch_when_an_identity_has_enough():
    # identity 0 (6 images) is visited as often as the others (12 images): its pool refills mid-epoch
    pids = [0] * 6 + [p for p in range(1, 4) for _ in range(12)]
    sampler = RandomIdentitySampler(pids, batch_size=8, num_instances=4, seed=1)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for batch in batches_of(sampler):
            assert len(set(batch)) == len(batch)


def test_sampler_arguments_are_validated():
    with pytest.raises(ValueError, match="multiple"):
        RandomIdentitySampler([0, 0, 1, 1], batch_size=5, num_instances=2, seed=0)
    with pytest.raises(ValueError, match="identities"):
        RandomIdentitySampler([0, 0, 1, 1], batch_size=6, num_instances=2, seed=0)


# --------------------------------------------------------------------------- dataset and loaders


def test_image_dataset_sample_and_cache(records):
    dataset = ImageDataset(records, build_transforms(16, 8, train=False), cache=True, cache_size=(16, 8))
    sample = dataset[5]
    assert sample["img"].shape == (3, 16, 8)
    assert (sample["pid"], sample["camid"], sample["index"]) == (records[5].pid, records[5].camid, 5)
    assert sample["modality"] == (1 if records[5].modality == INFRARED else 0)
    assert dataset.image(5) is dataset.image(5)  # decoded once, then cached
    assert torch.equal(dataset.image(5), load_uint8(records[5].path, (16, 8)))


def test_uncached_dataset_reads_the_original_pixels(records):
    dataset = ImageDataset(records, build_transforms(24, 12, train=False), cache=False)
    expected = torch.from_numpy(np.array(Image.open(records[0].path))).permute(2, 0, 1)
    assert torch.equal(dataset.image(0), expected)


def test_train_loader_yields_the_contract_batches(records):
    loader = build_train_loader(records, height=16, width=8, batch_size=6, num_instances=3, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader.sampler) // 6 > 0
    for batch in batches:
        assert set(batch) == {"img", "pid", "camid", "index", "modality"}
        assert batch["img"].shape == (6, 3, 16, 8) and batch["img"].dtype == torch.float32
        for key in ("pid", "camid", "index", "modality"):
            assert batch[key].dtype == torch.long and batch[key].shape == (6,)
        assert [records[i].pid for i in batch["index"].tolist()] == batch["pid"].tolist()
        assert len(set(batch["pid"].tolist())) == 2


def test_train_loader_is_reproducible_from_seed_and_epoch(records):
    def epoch_batches(epoch: int) -> list[torch.Tensor]:
        loader = build_train_loader(records, height=16, width=8, batch_size=6, num_instances=3, seed=7)
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(1000 + epoch)  # what the engine does at the start of each epoch
        return [b["img"] for b in loader]

    first, again, other = epoch_batches(1), epoch_batches(1), epoch_batches(2)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


def test_test_loader_keeps_record_order(records):
    loader = build_test_loader(records, height=16, width=8, batch_size=4)
    batches = list(loader)
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(records)))
    assert torch.cat([b["pid"] for b in batches]).tolist() == [r.pid for r in records]
    again = torch.cat([b["img"] for b in loader])
    assert torch.equal(torch.cat([b["img"] for b in batches]), again)  # no randomness at test time


def test_unknown_modality_is_rejected(records):
    bad = [Record(records[0].path, 0, 0, "thermal")]
    with pytest.raises(ValueError, match="thermal"):
        ImageDataset(bad, build_transforms(16, 8, train=False))
