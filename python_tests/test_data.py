"""Data of the distillation script: synthetic set, CIFAR-100 loader, image folders, sharding, augmentation."""
import importlib.util
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from rkd_ext.distill import data

HAS_PIL = importlib.util.find_spec("PIL") is not None


# ---------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_seeded():
    a_train, a_val = data.synthetic(num_classes=5, train_size=100, val_size=40, image_size=12, seed=3)
    b_train, b_val = data.synthetic(num_classes=5, train_size=100, val_size=40, image_size=12, seed=3)
    c_train, _ = data.synthetic(num_classes=5, train_size=100, val_size=40, image_size=12, seed=4)
    assert a_train.images.shape == (100, 3, 12, 12) and a_train.images.dtype == torch.uint8
    assert a_val.images.shape == (40, 3, 12, 12) and a_val.labels.dtype == torch.int64
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_val.labels, b_val.labels)
    assert not torch.equal(a_train.images, c_train.images)
    # Classes are balanced to within one sample over train + val.
    counts = torch.bincount(torch.cat([a_train.labels, a_val.labels]), minlength=5)
    assert counts.max() - counts.min() <= 1
    # The normalisation constants are the training set's own statistics.
    pixels = a_train.images.double() / 255
    np.testing.assert_allclose(a_train.mean, pixels.mean(dim=(0, 2, 3)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(a_train.std, pixels.std(dim=(0, 2, 3)).numpy(), rtol=1e-4)


def test_synthetic_classes_are_learnable_but_not_trivial():
    train, val = data.synthetic(num_classes=10, train_size=2000, val_size=500, image_size=16, seed=0)
    x, xv = train.images.double().flatten(1), val.images.double().flatten(1)
    centroids = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xv, centroids).argmin(1) == val.labels).double().mean().item()
    # Chance is 0.1: a nearest-centroid classifier on raw pixels does far better,
    # but far from perfectly, so a network has something to learn.
    assert 0.3 < accuracy < 0.9


# ---------------------------------------------------------------------------- CIFAR-100

def _cifar_dict(n, seed=0, bytes_keys=False):
    rng = np.random.default_rng(seed)
    content = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
               "fine_labels": [int(v) for v in rng.integers(0, 100, size=n)],
               "coarse_labels": [int(v) for v in rng.integers(0, 20, size=n)],
               "filenames": [f"img_{i}.png" for i in range(n)],
               "batch_label": "testing batch 1 of 1"}
    if bytes_keys:
        content = {k.encode(): v for k, v in content.items()}
    return content


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_file_layout(tmp_path, protocol, bytes_keys):
    content = _cifar_dict(6, bytes_keys=bytes_keys)
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    images, labels = data.load_cifar_file(str(path))
    raw = content[b"data" if bytes_keys else "data"]
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    # Row n holds 1024 red, then 1024 green, then 1024 blue bytes, each a 32x32 plane in row-major order.
    for n, c, y, x in [(0, 0, 0, 0), (1, 0, 0, 31), (2, 1, 5, 7), (3, 2, 31, 31), (5, 2, 17, 3)]:
        assert images[n, c, y, x].item() == raw[n, c * 1024 + y * 32 + x]
    assert labels.tolist() == content[b"fine_labels" if bytes_keys else "fine_labels"]


def test_load_cifar100_finds_the_extracted_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps(_cifar_dict(8, 1), protocol=2))
    (folder / "test").write_bytes(pickle.dumps(_cifar_dict(3, 2), protocol=2))
    train, val = data.load_cifar100(str(tmp_path))
    assert (len(train), len(val), train.num_classes) == (8, 3, 100)
    assert train.mean == data.CIFAR100_MEAN and val.std == data.CIFAR100_STD
    with pytest.raises(FileNotFoundError, match="no CIFAR-100"):
        data.load_cifar100(str(tmp_path / "elsewhere"))


class _Payload:
    """Unpickling this calls ``func(*args)``: what a malicious file would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_cifar_loader_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    content = _cifar_dict(2)
    content["fine_labels"] = _Payload(os.system, f"touch {marker}")
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps(content, protocol=2))
    # The file really is an exploit: the standard unpickler runs the command.
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global '(posix|os|nt).system'"):
        data.load_cifar_file(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("func", [eval, getattr, open, np.load])
def test_cifar_loader_refuses_other_globals(tmp_path, func):
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps({"data": _Payload(func, "x"), "fine_labels": []}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        data.load_cifar_file(str(path))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("fine_labels"), "missing key 'fine_labels'"),
    (lambda d: d.update(data=d["data"].astype(np.float32)), "'data' must be a uint8 array"),
    (lambda d: d.update(data=d["data"][:, :100]), "'data' must be a uint8 array"),
    (lambda d: d.update(data=d["data"].astype(object)), "'data' must be a uint8 array"),
    (lambda d: d.update(fine_labels=d["fine_labels"][:-1]), "'fine_labels' must be a list of 4 ints"),
    (lambda d: d.update(fine_labels=[100] * 4), "'fine_labels' must be a list of 4 ints"),
])
def test_cifar_loader_validates_content(tmp_path, change, message):
    content = _cifar_dict(4)
    change(content)
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=message):
        data.load_cifar_file(str(path))


def test_cifar_loader_refuses_a_non_dict(tmp_path):
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="expected a pickled dict, got list"):
        data.load_cifar_file(str(path))


# ---------------------------------------------------------------------------- image folders

def _make_tree(root, layout):
    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_scan_image_folder(tmp_path):
    _make_tree(tmp_path, ["train/dog/b.JPG", "train/dog/a.png", "train/cat/x.jpeg", "train/cat/notes.txt",
                          "train/cat/sub/y.webp", "val/dog/c.png"])
    samples, classes = data.scan_image_folder(str(tmp_path / "train"))
    assert classes == ["cat", "dog"]
    assert [(os.path.relpath(p, tmp_path), label) for p, label in samples] == [
        ("train/cat/x.jpeg", 0), ("train/cat/sub/y.webp", 0), ("train/dog/a.png", 1), ("train/dog/b.JPG", 1)]
    # A validation split keeps the training split's class indices, even with classes missing.
    val, val_classes = data.scan_image_folder(str(tmp_path / "val"), classes)
    assert val_classes == classes and [label for _, label in val] == [1]
    (tmp_path / "val" / "horse").mkdir()
    with pytest.raises(ValueError, match="horse"):
        data.scan_image_folder(str(tmp_path / "val"), classes)
    with pytest.raises(FileNotFoundError):
        data.scan_image_folder(str(tmp_path / "test"))


def test_image_folder_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    _make_tree(tmp_path, ["train/a/1.png"])
    # A None entry makes "import PIL" fail, as it does where Pillow is not installed.
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        data.ImageFolder(str(tmp_path / "train"), 32)


@pytest.mark.skipif(not HAS_PIL, reason="needs Pillow")
def test_image_folder_decodes_resizes_and_crops(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label, colour in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
            (tmp_path / split / label).mkdir(parents=True)
            Image.new("RGB", (40, 20), colour).save(tmp_path / split / label / "img.png")
            Image.new("L", (20, 50), 128).save(tmp_path / split / label / "grey.png")
    train, val = data.load_image_folder(str(tmp_path), 16)
    assert len(train) == 4 and train.classes == ["blue", "red"] and val.classes == train.classes
    for index in range(4):
        image, label = train[index]
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
        path = train.samples[index][0]
        expected = (128, 128, 128) if path.endswith("grey.png") else ((0, 0, 255) if label == 0 else (255, 0, 0))
        assert image[:, 8, 8].tolist() == list(expected)


# ---------------------------------------------------------------------------- sharding and batches

def test_shards_match_distributed_sampler_order():
    dataset = list(range(11))
    for world in (1, 2, 3, 4):
        for rank in range(world):
            sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
            assert data.shard_indices(11, rank, world, shuffle=False).tolist() == list(sampler)


def test_shuffled_shards_partition_each_epoch():
    n, world = 23, 3
    for epoch in range(3):
        shards = [data.shard_indices(n, r, world, shuffle=True, seed=5, epoch=epoch) for r in range(world)]
        assert {len(s) for s in shards} == {8}
        merged = torch.cat(shards)
        assert set(merged.tolist()) == set(range(n))
        assert len(merged) - len(set(merged.tolist())) == 24 - n
        eval_shards = [data.shard_indices(n, r, world, shuffle=True, seed=5, epoch=epoch, pad=False)
                       for r in range(world)]
        assert sorted(torch.cat(eval_shards).tolist()) == list(range(n))
    same = data.shard_indices(n, 1, world, shuffle=True, seed=5, epoch=1)
    assert torch.equal(same, data.shard_indices(n, 1, world, shuffle=True, seed=5, epoch=1))
    assert not torch.equal(same, data.shard_indices(n, 1, world, shuffle=True, seed=5, epoch=2))
    assert not torch.equal(same, data.shard_indices(n, 1, world, shuffle=True, seed=6, epoch=1))


def test_iterate_batches_drop_last():
    ds = data.ArrayDataset(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2),
                           torch.arange(10), 10, (0.5,) * 3, (0.25,) * 3)
    order = torch.tensor([9, 3, 1, 0, 4, 8, 2])
    batches = list(data.iterate_batches(ds, order, 3, drop_last=True))
    assert [b[1].tolist() for b in batches] == [[9, 3, 1], [0, 4, 8]]
    assert [b[0][:, 0, 0, 0].tolist() for b in batches] == [[9, 3, 1], [0, 4, 8]]
    batches = list(data.iterate_batches(ds, order, 3, drop_last=False))
    assert [b[1].tolist() for b in batches] == [[9, 3, 1], [0, 4, 8], [2]]


# ---------------------------------------------------------------------------- augmentation

def test_augment_outputs_are_padded_crops_or_their_mirror_images():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (200, 3, 5, 6), dtype=torch.uint8)
    pad = 2
    out = data.augment(images, torch.Generator().manual_seed(1), padding=pad)
    assert out.shape == images.shape and out.dtype == torch.uint8
    seen = set()
    for image, result in zip(images, out):
        canvas = torch.zeros(3, 5 + 2 * pad, 6 + 2 * pad, dtype=torch.uint8)
        canvas[:, pad:pad + 5, pad:pad + 6] = image
        matches = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (0, 1)
                   if torch.equal(result, (lambda c: c.flip(2) if flip else c)(canvas[:, dy:dy + 5, dx:dx + 6]))]
        assert len(matches) == 1
        seen.add(matches[0])
    # 200 draws from 50 equally likely (offset, flip) outcomes cover most of them.
    assert len(seen) > 40 and {f for _, _, f in seen} == {0, 1}
    again = data.augment(images, torch.Generator().manual_seed(1), padding=pad)
    assert torch.equal(out, again)


def test_augment_without_padding_or_flip_is_identity():
    images = torch.randn(4, 3, 8, 8)
    assert torch.equal(data.augment(images, torch.Generator().manual_seed(0), padding=0, flip=False), images)


def test_normalize():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = data.normalize(images, (0.5, 0.2, 0.0), (0.25, 0.1, 1.0))
    torch.testing.assert_close(out[0, :, 0, :], torch.tensor([[-2.0, -1.2, 2.0], [-2.0, 0.0, 8.0], [0.0, 0.2, 1.0]]))
    assert out.dtype == torch.float32


def test_derive_seed_is_stable():
    # A fixed value: seeds must not change between processes or Python runs, as hash() of a str would.
    assert data.derive_seed("shuffle", 0, 1) == 8995750565518765203
    assert data.derive_seed("shuffle", 0, 1) != data.derive_seed("shuffle", 1, 0)
    assert 0 <= data.derive_seed("x") < 2 ** 63
