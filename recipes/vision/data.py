"""Image data in the usual layouts, every one yielding `(image, label)`: image a uint8 tensor (C, S, S)
(C = 1 grey or 3 RGB, as asked; S = the load size), label an int.

- scikit-learn's 8x8 digits (shipped with the package: the seconds-long smoke runs);
- Fashion-MNIST's original IDX files, read directly (Debian's dataset-fashion-mnist installs them);
- an image folder, root/<class>/*.png|jpg|jpeg, any sizes and modes (grey, RGB, palette, alpha, 16-bit);
- webdataset-style .tar shards (dtrain.shards), read lazily.

Pixels stay uint8 until the device (4x less to copy than floats); scaling and augmentation happen there,
batched (recipes.vision.augment). Evaluation geometry is applied at load: the shorter side resized to the
load size (bilinear, antialiased; a large JPEG is decoded at 1/2, 1/4 or 1/8 scale first), then a centre
crop. Photos are turned upright by their EXIF orientation; an alpha channel is dropped.

Bad images in a folder, decided here so that nothing fails hours into an epoch:
- a file without an image suffix (.png, .jpg, .jpeg, any case) in a class folder is ignored, and the
  ignored files are counted in one line (not an error: READMEs, .DS_Store, labels.txt are common);
- a class folder without images ("remove it or add images"), fewer than two class folders, or files whose
  header does not read as an image (corrupt, empty, not an image at all: their count and the first three
  are named, "remove or fix them") stop the run before it starts, in one line. The header pass at
  construction opens every file's first bytes, not its pixels: fast;
- a tiny image (even 1x1) is fine: it is resized like any other;
- a file whose header reads but whose pixels do not (a truncated download) is only found when decoded,
  mid-epoch: the skip. It is logged once per file (in each loader process) as a warning naming it, and
  the next readable sample (i+1, i+2, ... wrapping round) takes its place, so the epoch goes on, the same
  way on every run and at any number of workers.
A tar shard's unreadable image is found the same way and skipped alike; a sample without an image member
is a layout error and stops the run, naming the shard and sample.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dtrain.shards import ShardedDataset, ShardedView, ShardError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IMAGE_EXTS = ("png", "jpg", "jpeg")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


class ImageDataError(ValueError):
    """An image folder, file or shard that cannot be used; the message (one line) names it."""


class UnreadableImage(ImageDataError):
    """One image's pixels do not decode (found mid-epoch: skipped, see the module's docstring)."""


def load_digits_tensors(channels: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """1,797 real handwritten digits, 8x8: uint8 images (N, channels, 8, 8) scaled to 0..255 (scikit-learn
    stores 0..16), int64 labels, class names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(np.round(digits.images * (255 / 16)), dtype=torch.uint8)[:, None]
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images, labels, [str(c) for c in digits.target_names]


def _resized(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (C, H, W) -> (C, size, size), bilinear and antialiased (the images here are square)."""
    if size is None or image.shape[-2:] == (size, size):
        return image
    x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


# --- Fashion-MNIST: IDX files -------------------------------------------------------------------------

def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file (MNIST's format, gzipped or raw) with this magic number (2051: uint8 images (N, H, W);
    2049: uint8 labels (N,)) as a numpy array; anything wrong is one ImageDataError naming the file."""
    path = Path(path)
    kind = {2051: "image", 2049: "label"}.get(magic, "IDX")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip's magic, whatever the suffix
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ImageDataError(f"{path}: cannot read it as an IDX file ({exc})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else "none"
        raise ImageDataError(f"{path}: not an IDX {kind} file (magic number {found}, expected {magic}); give "
                             "the original Fashion-MNIST/MNIST files")
    dims = raw[3]
    if len(raw) < 4 + 4 * dims:
        raise ImageDataError(f"{path}: its IDX header is cut short; the file is damaged, fetch it again")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise ImageDataError(f"{path}: holds {data.size} bytes of data for a declared shape {shape}; the file "
                             "is truncated or damaged, fetch it again")
    return data.reshape(shape)


class IdxImages(Dataset):
    """An IDX image file and its label file (MNIST's format), held in memory as one uint8 tensor of grey
    images; a sample is (uint8 (channels, S, S), int), S the file's size or load_size (resized per sample,
    so memory stays at the file's size)."""

    def __init__(self, images_path: str | Path, labels_path: str | Path, channels: int = 1,
                 load_size: int | None = None, classes: list[str] | tuple[str, ...] | None = None):
        images = read_idx(images_path, 2051)
        labels = read_idx(labels_path, 2049)
        if len(images) != len(labels):
            raise ImageDataError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of "
                                 f"{images_path}; give matching files")
        if images.shape[1] != images.shape[2]:
            raise ImageDataError(f"{images_path}: images of {images.shape[1]}x{images.shape[2]}; square ones "
                                 "expected")
        self.images = torch.from_numpy(images.copy())[:, None]  # (N, 1, H, W), grey
        self.labels: np.ndarray = labels.astype(np.int64)
        n_classes = len(classes) if classes else int(self.labels.max(initial=0)) + 1
        if len(self.labels) and self.labels.max() >= n_classes:
            raise ImageDataError(f"{labels_path}: label {int(self.labels.max())} for {n_classes} classes; give "
                                 "the labels that belong with these images")
        self.classes = list(classes) if classes else [str(c) for c in range(n_classes)]
        self.channels, self.load_size = channels, load_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = _resized(self.images[i], self.load_size)
        if self.channels == 3:
            image = image.expand(3, -1, -1).contiguous()
        return image, int(self.labels[i])


def fashion_mnist(root: str | Path = FASHION_MNIST_DIR, split: str = "train", channels: int = 1,
                  load_size: int | None = None) -> IdxImages:
    """Fashion-MNIST's 'train' (60,000) or 'test' (10,000) split from its IDX files under root
    (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: 'train' or 'test', got {split!r}")
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
            if (root / name).is_file():
                return root / name
        raise ImageDataError(
            f"task.root: no Fashion-MNIST IDX files in {root}; install them with: apt-get install "
            "dataset-fashion-mnist (without root: apt-get download dataset-fashion-mnist && dpkg-deb -x "
            "dataset-fashion-mnist_*.deb DIR, then task.root=DIR/usr/share/datasets/fashion-mnist)")

    return IdxImages(find("images-idx3"), find("labels-idx1"), channels, load_size, FASHION_MNIST_CLASSES)


# --- decoding ------------------------------------------------------------------------------------------

def decode_image(source, name, size: int, mode: str) -> torch.Tensor:
    """A file path or bytes -> uint8 (channels, size, size): upright by its EXIF orientation, converted to
    `mode` ('L' or 'RGB'), the shorter side resized to `size` (bilinear, antialiased), centre-cropped. An
    image that does not decode raises UnreadableImage naming `name`."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size (much faster), and
            # straight into the asked mode.
            im.draft(mode, (size, size))
            if im.getexif().get(0x0112, 1) != 1:  # a phone photo taken sideways
                im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey: keep the top 8 bits (convert clips)
                im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            if im.mode in ("P", "PA") and mode == "RGB":
                im = im.convert("RGBA")  # a palette with transparency converts via RGBA without a warning
            if im.mode != mode:
                im = im.convert(mode)
            w, h = im.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)  # the centre square
            # One resize of just the centre square; reducing_gap box-averages first when shrinking a lot.
            im = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except Exception as exc:  # Pillow's decoders raise OSError mostly, but struct.error, IndexError... too
        raise UnreadableImage(f"unreadable image {name}: {exc}") from None
    return data.view(size, size, -1).permute(2, 0, 1).contiguous()


class _SkipUnreadable:
    """Mid-epoch decoding failures: warn once per file, use the next readable sample (deterministic)."""

    labels: np.ndarray
    warned: set

    def _decode(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            try:
                return self._decode(j), int(self.labels[j])
            except UnreadableImage as exc:
                if j not in self.warned:
                    self.warned.add(j)
                    log.warning("[dtrain] warning: %s; skipped, the next readable sample takes its place", exc)
        raise ImageDataError("no image in the data set can be decoded")


def _header_reads(path: str) -> bool:
    """Whether Pillow can read the file's header (Image.open reads no pixels)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size
        return True
    except Exception:  # UnidentifiedImageError, OSError, SyntaxError, DecompressionBombError, ...: all bad
        return False


class ImageFolder(_SkipUnreadable, Dataset):
    """root/<class>/*.png|jpg|jpeg (class = folder name, sorted), decoded lazily with Pillow in the
    DataLoader's workers to uint8 (channels, load_size, load_size). Bad files: the module's docstring.

    File names are held as one numpy bytes array and labels as one int64 array (not Python lists of
    objects): forked workers then share them instead of copying every page the refcounts touch."""

    def __init__(self, root: str | Path, load_size: int, channels: int = 3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageDataError(f"task.root: {self.root} is not a directory; expected root/<class>/*.png|jpg")
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if len(self.classes) < 2:
            raise ImageDataError(f"task.root: {self.root} needs at least 2 class folders of .png/.jpg images, "
                                 f"found {len(self.classes)}; expected root/<class>/*.png|jpg")
        files: list[str] = []
        labels: list[int] = []
        ignored = 0
        for label, name in enumerate(self.classes):
            found = 0
            for entry in sorted(os.scandir(self.root / name), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                    ignored += 1
                    continue
                files.append(f"{name}/{entry.name}")
                labels.append(label)
                found += 1
            if not found:
                raise ImageDataError(f"task.root: class folder {self.root / name} holds no .png/.jpg images; "
                                     "remove it or add images")
        # The header pass: threads, since on a network file system it waits on reads, not on the CPU.
        with ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
            ok = list(pool.map(_header_reads, (str(self.root / f) for f in files), chunksize=64))
        bad = [self.root / f for f, good in zip(files, ok) if not good]
        if bad:
            names = ", ".join(map(str, bad[:3])) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ImageDataError(f"task.root: {len(bad)} file(s) do not read as images: {names}; remove or fix "
                                 f"{'it' if len(bad) == 1 else 'them'}")
        if ignored:
            log.warning("[dtrain] %s: %d file(s) without an image suffix (.png/.jpg/.jpeg) ignored", self.root,
                        ignored)
        self.ignored = ignored
        self.files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.labels = np.array(labels, dtype=np.int64)
        self.load_size = load_size
        self.mode = "L" if channels == 1 else "RGB"
        self.warned: set = set()

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.files[i])

    def _decode(self, i: int) -> torch.Tensor:
        path = self.path(i)
        return decode_image(path, path, self.load_size, self.mode)


class TarImages(_SkipUnreadable, ShardedView):
    """Tar shards in webdataset's layout (dtrain.shards): each sample a `key.png|jpg` with its class in
    `key.cls` (an integer). Read and decoded one sample at a time, in the loader's workers, to uint8
    (channels, image_size, image_size); the class list comes from the shards' index, without reading the
    images."""

    def __init__(self, source: str, image_size: int, channels: int, dist=None):
        try:
            super().__init__(ShardedDataset(source, dist=dist))  # with dist (in the ranks): indexed in turns
        except ShardError as exc:
            raise ImageDataError(f"task.root: {exc}") from None
        if any(s.kind != "tar" for s in self.rows.shards):
            raise ImageDataError(f"task.root: {source} must hold only .tar shards for task.dataset=tar")
        # One int64 array, 8 bytes a sample, on every rank before an image is read: a list costs 8 a slot
        # plus 28 per int above 256 (most of ImageNet's 1,000 classes), ~0.36 GB at 10M images.
        self.labels: np.ndarray = np.concatenate([s.labels() for s in self.rows.shards])
        unlabeled = np.flatnonzero(self.labels < 0)
        if len(unlabeled):
            shard, row = self.rows.locate(int(unlabeled[0]))
            raise ImageDataError(f"{shard} sample {row}: no integer .cls member; every sample needs its class")
        present = np.flatnonzero(np.bincount(self.labels)).tolist()
        self.classes = [str(c) for c in range(present[-1] + 1)] if present else []
        if len(present) < 2:
            raise ImageDataError(f"task.root: {source} needs at least 2 classes, found {present}")
        self.load_size, self.mode = image_size, "L" if channels == 1 else "RGB"
        self.warned: set = set()

    def _decode(self, i: int) -> torch.Tensor:
        sample = self.rows[i]
        shard, row = self.rows.locate(i)
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:  # a layout error, not a damaged file: stop, naming it
            raise ImageDataError(f"{shard} sample {row}: no .png or .jpg member (has {', '.join(sample)})")
        return decode_image(sample[ext], f"{shard} sample {row}", self.load_size, self.mode)
