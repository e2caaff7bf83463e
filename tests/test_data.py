"""Data pipeline: sources, decoded cache, split, loaders and batched augmentation, on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from vision_ensemble.config import CIFAR10_CLASSES
from vision_ensemble.data import (BatchTransform, DeviceImageDataset, device_loader, load_dataset, prepare_cache,
                                  scan_image_folder, stratified_split, stream_loader, tree_root_of)


def test_cifar10_archive_counts_and_label_order(cifar10):
    assert cifar10.class_names == list(CIFAR10_CLASSES)
    assert len(cifar10.train) + len(cifar10.val) == 50_000
    assert (len(cifar10.train), len(cifar10.val)) == (45_000, 5_000)
    assert len(cifar10.test) == 10_000
    assert cifar10.train.images.shape[1:] == (32, 32, 3) and cifar10.train.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(cifar10.train.labels) + np.bincount(cifar10.val.labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(cifar10.val.labels), [500] * 10)
    np.testing.assert_array_equal(np.bincount(cifar10.test.labels), [1000] * 10)
    # Files are read class by class, so labels come in class order.
    assert np.all(np.diff(cifar10.test.labels) >= 0)
    assert cifar10.skipped == 0


def test_cache_round_trip_is_bit_identical_to_decoding_files(cifar10):
    root = tree_root_of(cifar10.cache_dir)
    paths, labels, _ = scan_image_folder(root / "test")
    np.testing.assert_array_equal(labels, cifar10.test.labels)
    for i in np.random.default_rng(0).choice(len(paths), 64, replace=False):
        decoded = np.asarray(Image.open(paths[i]).convert("RGB"))
        np.testing.assert_array_equal(cifar10.test.images[i], decoded)


def test_split_is_stratified_and_identical_across_runs(cifar10, cifar10_archive, tmp_path):
    saved = json.loads(cifar10.split_file.read_text())
    assert saved["seed"] == 0 and len(saved["val_indices"]) == 5000
    all_labels = np.concatenate([cifar10.train.labels, cifar10.val.labels])
    val_a = stratified_split(np.sort(all_labels), 0.1, seed=0)
    val_b = stratified_split(np.sort(all_labels), 0.1, seed=0)
    np.testing.assert_array_equal(val_a, val_b)
    np.testing.assert_array_equal(val_a, saved["val_indices"])
    assert not np.array_equal(val_a, stratified_split(np.sort(all_labels), 0.1, seed=1))
    # An uneven dataset: every class keeps its share, the total is exact.
    labels = np.repeat(np.arange(3), [7, 50, 143])
    val = stratified_split(labels, 20, seed=3)
    assert len(val) == 20 and list(np.bincount(labels[val])) == [1, 5, 14]


def test_small_folder_end_to_end_with_corrupt_file(tmp_path):
    root = make_image_folder(tmp_path / "shapes", per_class=10, size=(80, 100))
    (root / "train" / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_dataset(root, cache_root=tmp_path / "cache", val_size=0.2, seed=0)
    assert ds.skipped == 1
    assert ds.class_names == ["circle", "square", "stripes"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 30)
    assert ds.train.images.shape[1:] == (80, 100, 3)
    np.testing.assert_array_equal(np.bincount(ds.val.labels), [2, 2, 2])

    loader = device_loader(DeviceImageDataset(ds.train), batch_size=8, shuffle=True, drop_last=True)
    transform = BatchTransform((3, 64, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), train=True)
    seen = 0
    for images, labels in loader:
        assert images.dtype == torch.uint8 and images.shape == (8, 3, 80, 100)
        x = transform(images)
        assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
        seen += len(labels)
    assert seen == 24


def test_zip_archive_is_extracted_once_into_the_cache(tmp_path):
    import shutil

    make_image_folder(tmp_path / "shapes" / "inner", per_class=4)
    archive = shutil.make_archive(str(tmp_path / "shapes"), "zip", root_dir=tmp_path / "shapes")
    ds = load_dataset(archive, cache_root=tmp_path / "cache", val_size=3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 12)
    assert (ds.cache_dir / "extracted" / "inner" / "train" / "circle").is_dir()
    np.testing.assert_array_equal(load_dataset(archive, cache_root=tmp_path / "cache", val_size=3).test.images,
                                  ds.test.images)


def test_cache_is_rebuilt_when_the_source_changes(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4)
    cache = prepare_cache(root, tmp_path / "cache")
    before = np.load(cache / "train_images.npy")
    assert prepare_cache(root, tmp_path / "cache") == cache  # unchanged: reused
    first = sorted((root / "train" / "circle").iterdir())[0]
    Image.fromarray(np.full((80, 100, 3), 7, np.uint8)).save(first)
    prepare_cache(root, tmp_path / "cache")
    after = np.load(cache / "train_images.npy")
    assert not np.array_equal(before[0], after[0]) and np.all(after[0] == 7)


def test_mixed_image_sizes_are_resized_to_the_common_size(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=3, size=(40, 40))
    Image.fromarray(np.zeros((90, 60, 3), np.uint8)).save(root / "train" / "circle" / "big.png")
    with pytest.warns(UserWarning, match="not 40x40"):
        ds = load_dataset(root, cache_root=tmp_path / "cache", val_size=3)
    assert ds.train.images.shape[1:] == (40, 40, 3)


@pytest.mark.parametrize("size", [32, 224])
def test_train_augmentation_keeps_shape_dtype_and_range(cifar10, size):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.from_numpy(cifar10.val.images[:64]).permute(0, 3, 1, 2)
    x = BatchTransform((3, size, size), mean, std, "bicubic", train=True)(images)
    assert x.shape == (64, 3, size, size) and x.dtype == torch.float32
    low = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)
    high = ((1 - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1)
    assert torch.all(x >= low - 1e-5) and torch.all(x <= high + 1e-5)


def test_random_crop_and_flip_return_windows_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    transform = BatchTransform((3, 8, 8), (0, 0, 0), (1 / 255,) * 3, train=True, crop_padding=2)
    out = transform(images)  # mean 0, std 1/255: pixel values pass through unchanged
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    for img, pad in zip(out, padded):
        windows = [pad[:, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(img, w) for w in windows)
    assert not torch.equal(out, images.float())


def test_cutout_blanks_one_square_inside_each_image():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 12, 12), dtype=torch.uint8)  # no pixel is 0 before the cutout
    transform = BatchTransform((3, 12, 12), (0, 0, 0), (1 / 255,) * 3, train=True, crop_padding=0, hflip=False,
                               cutout=5)
    out = transform(images)
    blank = (out == 0).all(dim=1)  # zero in every channel: the mean colour after normalisation
    corners = set()
    for img_blank, img_out, img_in in zip(blank, out, images.float()):
        rows, cols = img_blank.any(1).nonzero().flatten(), img_blank.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == 5 and int(img_blank.sum()) == 25  # one 5 x 5 square, all of it inside
        top, left = int(rows[0]), int(cols[0])
        assert img_blank[top:top + 5, left:left + 5].all()
        assert torch.equal(img_out[:, ~img_blank], img_in[:, ~img_blank])  # the rest untouched
        corners.add((top, left))
    assert len(corners) > 20  # drawn per image
    assert torch.equal(BatchTransform((3, 12, 12), (0, 0, 0), (1 / 255,) * 3, cutout=5)(images), images.float())


def test_eval_transform_matches_torchvision_resize_and_centre_crop():
    from torchvision.transforms import v2

    images = torch.randint(0, 256, (2, 3, 60, 90), dtype=torch.uint8)
    ours = BatchTransform((3, 48, 48), (0, 0, 0), (1 / 255,) * 3, "bilinear", crop_pct=0.75)(images)
    reference = v2.Compose([v2.Resize(64, antialias=True), v2.CenterCrop(48)])(images.float()).clamp(0, 255)
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=0)


def test_stream_loader_gathers_batches_from_the_memory_mapped_cache(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=6, fmt="png")
    ds = load_dataset(root, cache_root=tmp_path / "cache", val_size=0.5, seed=5)
    assert isinstance(ds.val.pixels, np.memmap)  # nothing decoded or copied into RAM up front
    expected = ds.val.images
    loader = stream_loader(ds.val, batch_size=4, shuffle=True, num_workers=2)
    found = []
    for images, labels in loader:  # shuffled batches: each image still comes with its own label
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 80, 100)
        for image, label in zip(images.permute(0, 2, 3, 1).numpy(), labels.numpy()):
            (index,) = [i for i in range(len(expected)) if np.array_equal(expected[i], image)]
            assert ds.val.labels[index] == label
            found.append(index)
    assert sorted(found) == list(range(len(expected))) and found != sorted(found)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (10, 20_000), (20_000, 10), (333, 500)])
def test_eval_transform_handles_tiny_huge_and_extreme_aspect_images(shape):
    images = torch.randint(0, 256, (1, 3, *shape), dtype=torch.uint8)
    x = BatchTransform((3, 64, 64), (0.5,) * 3, (0.5,) * 3, "bicubic")(images)
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all() and x.abs().max() <= 1 + 1e-5


def test_extreme_aspect_shortcut_matches_the_full_resize():
    # A smooth image (as photos are): the shortcut's sampling grid is offset from the full resize's by about
    # a tenth of a source pixel, which moves values by at most a few levels, most at the crop edges.
    coarse = torch.rand(1, 3, 4, 200) * 255
    images = torch.nn.functional.interpolate(coarse, size=(40, 2000), mode="bilinear", align_corners=False)
    ours = BatchTransform((3, 64, 64), (0, 0, 0), (1 / 255,) * 3, "bicubic")(images)
    full = torch.nn.functional.interpolate(images, size=(64, 3200), mode="bicubic", align_corners=False).clamp(0, 255)
    torch.testing.assert_close(ours, full[..., :, 1568:1632], atol=5.0, rtol=0)  # of 255, at the crop edges


def test_common_split_seed_is_the_members_split_and_refuses_a_mixture():
    from vision_ensemble.data import DataError, common_split_seed
    assert common_split_seed({"a": {"seed": 4, "split_seed": 0}, "b": {"seed": 5, "split_seed": 0}}) == 0
    assert common_split_seed({"a": {"seed": 2}, "foreign": {}}) == 2  # before split_seed: the split was by seed
    assert common_split_seed({"foreign": {}}, requested=7) == 7
    assert common_split_seed({"foreign": {}}) is None
    with pytest.raises(DataError, match="a: split seed 0, b: split seed 1"):
        common_split_seed({"a": {"seed": 0}, "b": {"seed": 1}})
    with pytest.raises(DataError, match="--split-seed 1"):
        common_split_seed({"a": {"split_seed": 0}}, requested=1)
