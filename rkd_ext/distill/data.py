"""Datasets, deterministic sharding and batch augmentation for the distillation script.

Every dataset yields uint8 images of shape (3, H, W) and int64 labels; augmentation
(random crop with zero padding, horizontal flip) and normalisation run on whole
batches with torch ops, on the training device, from an explicit generator, so
that a run is reproducible from its seed alone and resumes exactly.
"""
import hashlib
import io
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ArrayDataset", "ImageFolder", "UnreadableImage", "VERIFY_LIMIT", "derive_seed", "synthetic", "load_cifar100",
    "load_cifar_file", "scan_image_folder", "load_image_folder", "shard_indices", "iterate_batches", "augment",
    "normalize", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# Image folders of at most this many images are decoded whole when loaded (seconds, even for photos), so that a
# bad file stops a run before it writes anything; in a larger folder a bad file is found when training reads it
# (decoding ImageNet's 1.3M images up front would take an hour or more).
VERIFY_LIMIT = 2000


def derive_seed(*keys):
    """A 63-bit seed from any printable keys, stable across processes and Python runs (unlike ``hash``)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*keys):
    return torch.Generator().manual_seed(derive_seed(*keys))


@dataclass
class ArrayDataset:
    """A dataset held in memory: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple

    def __len__(self):
        return self.labels.shape[0]


# ---------------------------------------------------------------------------- synthetic

def synthetic(num_classes=10, train_size=2560, val_size=512, image_size=16, seed=0):
    """A learnable, class-structured image set generated from ``seed`` alone.

    Each class owns four prototypes: a smooth random colour field plus an oriented
    sinusoidal grating of a class-specific angle and a random frequency. A sample
    is one of its class's prototypes, circularly shifted by up to 2 pixels, with
    random contrast and brightness, blended with a random prototype (up to 50%)
    and Gaussian noise. Nearest-class-mean on raw pixels is far from perfect, a
    small ResNet learns it to about 85-90% in a few epochs, and a narrower one
    learns it more slowly, which leaves room for distillation to show.

    Returns:
        (train, val) :class:`ArrayDataset` pair, split from one draw.
    """
    g = generator("synthetic", seed, num_classes, image_size)
    n = train_size + val_size
    h = w = image_size
    k = 4
    protos = num_classes * k
    field = F.interpolate(torch.rand(protos, 3, 4, 4, generator=g), size=(h, w), mode="bilinear",
                          align_corners=False)
    angle = (torch.arange(num_classes).repeat_interleave(k) + torch.rand(protos, generator=g)) * torch.pi / num_classes
    freq = 1.0 + 2.5 * torch.rand(protos, generator=g)
    phase = 2 * torch.pi * torch.rand(protos, 3, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    proj = (angle.cos()[:, None, None] * xx + angle.sin()[:, None, None] * yy) * freq[:, None, None]
    grating = 0.5 + 0.5 * torch.sin(2 * torch.pi * proj[:, None] + phase[:, :, None, None])
    prototypes = 0.5 * field + 0.5 * grating

    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    x = prototypes[labels * k + torch.randint(0, k, (n,), generator=g)]
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    x = torch.stack([xi.roll((int(dy), int(dx)), dims=(1, 2)) for xi, (dy, dx) in zip(x, shifts)])
    contrast = 0.6 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    brightness = 0.3 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    blend = 0.5 * torch.rand(n, 1, 1, 1, generator=g)
    distractor = prototypes[torch.randint(0, protos, (n,), generator=g)]
    x = 0.5 + contrast * (x - 0.5) + brightness + blend * (distractor - 0.5)
    x = x + 0.2 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)

    train_images = images[:train_size]
    as_float = train_images.float() / 255
    mean = tuple(as_float.mean(dim=(0, 2, 3)).tolist())
    std = tuple(as_float.std(dim=(0, 2, 3)).tolist())
    return (ArrayDataset(train_images, labels[:train_size], num_classes, mean, std),
            ArrayDataset(images[train_size:], labels[train_size:], num_classes, mean, std))


# ---------------------------------------------------------------------------- CIFAR-100

class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Loads only what the CIFAR "python" format holds: dicts, lists, strings, numbers and numpy arrays.

    A pickle can call any importable function while it loads; this one resolves
    only the globals numpy needs to rebuild a plain array (and the codec Python 3
    uses for bytes in protocol 2) and refuses everything else.
    """

    ALLOWED = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    })

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _RefusedGlobal(
                f"refusing to load global '{module}.{name}': a CIFAR-100 file holds only arrays, lists and "
                "strings, so this file is not one (or has been tampered with)")
        return super().find_class(module, name)


def load_cifar_file(path, num_classes=100):
    """One CIFAR-100 "python" file (``train`` or ``test``) as uint8 (N, 3, 32, 32) images and int64 labels.

    Raises:
        pickle.UnpicklingError: the file references anything but numpy arrays.
        ValueError: the file is empty, truncated or not a pickle, or its content is not laid out as the format
            says.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise ValueError(f"{path}: the file is empty, not a CIFAR-100 'python' file")
    try:
        # latin1 is how Python 3 must read the arrays in Python 2 pickles.
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _RefusedGlobal:
        raise
    except Exception as e:  # a damaged pickle fails in many ways: EOFError, UnpicklingError, ValueError, ...
        detail = " ".join(str(e).split())[:200]
        raise ValueError(f"{path}: not a CIFAR-100 'python' file, or a truncated one "
                         f"({type(e).__name__}: {detail})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", "fine_labels"):
        if key not in obj:
            raise ValueError(f"{path}: missing key '{key}' (keys: {sorted(map(str, obj))})")
    data, labels = obj["data"], obj["fine_labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
                         f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}")
    if not (isinstance(labels, list) and len(labels) == data.shape[0]
            and all(isinstance(v, int) and 0 <= v < num_classes for v in labels)):
        raise ValueError(f"{path}: 'fine_labels' must be a list of {data.shape[0]} ints in [0, {num_classes})")
    # Each row is 1024 red, 1024 green, then 1024 blue bytes, each plane 32x32 row-major.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.tensor(labels, dtype=torch.int64)


def load_cifar100(root):
    """CIFAR-100 from ``root`` (the ``cifar-100-python`` folder, or a folder that contains it)."""
    for base in (root, os.path.join(root, "cifar-100-python")):
        if os.path.isfile(os.path.join(base, "train")) and os.path.isfile(os.path.join(base, "test")):
            train = load_cifar_file(os.path.join(base, "train"))
            val = load_cifar_file(os.path.join(base, "test"))
            return (ArrayDataset(*train, 100, CIFAR100_MEAN, CIFAR100_STD),
                    ArrayDataset(*val, 100, CIFAR100_MEAN, CIFAR100_STD))
    raise FileNotFoundError(f"--data-dir {root}: no CIFAR-100 'train' and 'test' files there or in "
                            f"{os.path.join(root, 'cifar-100-python')}")


# ---------------------------------------------------------------------------- image folders

def scan_image_folder(root, classes=None):
    """(path, label) pairs of ``root/<class>/<image>``, classes sorted by name.

    Args:
        classes: the class names to use (a validation split must reuse the
            training split's); by default the sub-folders of ``root``.

    Returns:
        (samples, classes)
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{root}: class folders {unknown[:5]} do not exist in the training split")
    if not classes:
        raise ValueError(f"{root}: no class folders")
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
            samples += [(os.path.join(dirpath, f), label) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not samples:
        raise ValueError(f"{root}: no images with extensions {IMAGE_EXTENSIONS}")
    return samples, classes


class UnreadableImage(ValueError):
    """An image file of an image folder that Pillow cannot decode; the message names the file."""


def _require_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("--data imagefolder decodes images with Pillow, which is not installed: "
                          "pip install pillow (or rkd_ext[images])") from None
    return Image


class ImageFolder(torch.utils.data.Dataset):
    """Images decoded on demand: shorter side resized to ``image_size / 0.875``, then centre-cropped.

    That is the usual ImageNet evaluation transform; training adds the batch
    augmentation of :func:`augment` on top.
    """

    def __init__(self, root, image_size, classes=None):
        _require_pillow()
        self.samples, self.classes = scan_image_folder(root, classes)
        self.image_size = image_size
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.num_classes = len(self.classes)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        image_cls = _require_pillow()
        path, label = self.samples[index]
        size = self.image_size
        img = _decode(path)
        short = round(size / 0.875)
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), image_cls.Resampling.BILINEAR)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), label

    def verify(self):
        """Decode every image; raise :class:`UnreadableImage` for the first that fails."""
        for path, _ in self.samples:
            _decode(path)


def _decode(path):
    """The image in ``path``, every pixel decoded, as RGB.

    Raises:
        UnreadableImage: the file is missing, not an image, truncated or corrupt.
    """
    image_cls = _require_pillow()
    try:
        with image_cls.open(path) as img:
            return img.convert("RGB")  # loads the pixels: a header that opens may still hide a truncated file
    except Exception as e:  # a damaged file fails in many ways: UnidentifiedImageError, OSError, struct.error, ...
        detail = " ".join(str(e).replace(f" {path!r}", "").split())[:200]  # Pillow's own messages repeat the path
        raise UnreadableImage(f"{path} is not an image Pillow can decode ({type(e).__name__}: {detail})") from None


def load_image_folder(root, image_size):
    """The ``train`` and ``val`` splits of ``root``; with :data:`VERIFY_LIMIT` images or fewer, every one decoded.

    Raises:
        UnreadableImage: a small folder holds an image that cannot be decoded.
    """
    train = ImageFolder(os.path.join(root, "train"), image_size)
    val = ImageFolder(os.path.join(root, "val"), image_size, classes=train.classes)
    if len(train) + len(val) <= VERIFY_LIMIT:
        train.verify()
        val.verify()
    return train, val


# ---------------------------------------------------------------------------- sharding and batches

def shard_indices(n, rank, world_size, *, shuffle, seed=0, epoch=0, pad=True):
    """This process's share of ``range(n)``, as ``torch.utils.data.DistributedSampler`` would give it.

    With ``shuffle`` the order is a permutation drawn from ``(seed, epoch)``, the
    same on every process. With ``pad`` the order is extended by its own head to
    a multiple of ``world_size`` so that every process gets as many samples (what
    training needs: equal step counts keep the collectives in step); without it
    (evaluation) every sample is seen exactly once.
    """
    order = torch.randperm(n, generator=generator("shuffle", seed, epoch)) if shuffle else torch.arange(n)
    if pad:
        total = -(-n // world_size) * world_size
        order = torch.cat([order, order[: total - n]]) if total > n else order
    return order[rank::world_size]


def iterate_batches(dataset, indices, batch_size, *, drop_last, workers=0, pin_memory=False):
    """(uint8 images, int64 labels) batches of ``dataset`` in the order of ``indices``.

    Raises:
        UnreadableImage: an image of an image folder cannot be decoded; the message names it alone, even when a
            decoding worker met it.
    """
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    chunks = [indices[i:i + batch_size] for i in range(0, stop, batch_size)]
    if isinstance(dataset, ArrayDataset):
        for idx in chunks:
            yield dataset.images[idx], dataset.labels[idx]
        return
    loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=[c.tolist() for c in chunks],
                                              num_workers=workers, pin_memory=pin_memory))
    for chunk in chunks:
        try:
            batch = next(loader)
        except UnreadableImage as e:
            failure = str(e)
            break
        yield batch
    else:
        return
    # Out of the except clause, so that no traceback holds on to the loader: its workers stop now.
    del loader
    # From a worker, the message is the worker's whole traceback: decode the batch (the loader keeps the order, so
    # it is this one) here for the bare message, or failing that take the traceback's last line.
    for index in chunk.tolist():
        dataset[index]
    last = failure.strip().splitlines()[-1]
    raise UnreadableImage(last.partition("UnreadableImage: ")[2] or last)


# ---------------------------------------------------------------------------- augmentation

def augment(images, gen, padding=4, flip=True):
    """Random crop with ``padding`` zero pixels on each side, then random horizontal flip, per sample.

    Args:
        images: (N, C, H, W) batch, any dtype, on any device.
        gen: CPU ``torch.Generator`` the offsets and flips are drawn from.
    """
    n, c, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen).to(device)
    flips = (torch.rand(n, generator=gen) < 0.5).to(device) if flip else torch.zeros(n, dtype=torch.bool,
                                                                                     device=device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0, None] + torch.arange(h, device=device)
    cols = offsets[:, 1, None] + torch.arange(w, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(n, device=device)[:, None, None, None],
                  torch.arange(c, device=device)[None, :, None, None],
                  rows[:, None, :, None],
                  cols[:, None, None, :]]


def normalize(images, mean, std):
    """uint8 images to float32 ``(x / 255 - mean) / std`` per channel."""
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32, device=images.device)[:, None, None]
    return (images.float() / 255 - mean) / std
