"""Image data: scikit-learn's 8x8 digits (shipped with the package, no download) or a class folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_digits_tensors(channels: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """1,797 real handwritten digits, 8x8, scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images, labels, [str(c) for c in digits.target_names]


class ImageDataError(ValueError):
    """An image folder or image that cannot be used; the message names it."""


class ImageFolder(Dataset):
    """root/<class>/*.png|jpg, decoded lazily with Pillow (so DataLoader workers share the work)."""

    def __init__(self, root: str | Path, image_size: int, channels: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageDataError(f"task.root: {self.root} is not a directory; expected root/<class>/*.png|jpg")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.files: list[Path] = []
        self.labels: list[int] = []
        for label, name in enumerate(self.classes):
            for f in sorted((self.root / name).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append(f)
                    self.labels.append(label)
        if len(self.classes) < 2 or not self.files:
            raise ImageDataError(
                f"task.root: {self.root} needs at least 2 class folders with .png/.jpg images "
                f"(found {len(self.classes)} folders, {len(self.files)} images)"
            )
        self.size = image_size
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return decode_image(self.files[i], self.files[i], self.size, self.mode), self.labels[i]


def decode_image(source, name, size: int, mode: str) -> torch.Tensor:
    """A file or bytes -> (channels, size, size) in [-1, 1]; an unreadable image names `name`."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im = im.convert(mode).resize((size, size), Image.BILINEAR)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDataError(f"unreadable image {name}: {exc}") from None
    return data.view(size, size, -1).permute(2, 0, 1).float() / 127.5 - 1.0


IMAGE_EXTS = ("png", "jpg", "jpeg")


class TarImages(Dataset):
    """Tar shards in webdataset's layout (dtrain.shards): each sample a `key.png|jpg` with its class in
    `key.cls` (an integer). Read and decoded one sample at a time, in the loader's workers; the class
    list comes from the shards' index, without reading the images."""


    def __init__(self, source: str, image_size: int, channels: int, dist=None):
        from dtrain.shards import ShardedDataset, ShardError

        try:
            self.rows = ShardedDataset(source, dist=dist)  # with dist (in the ranks): indexed in turns
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
        self.size, self.mode = image_size, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> dict:
        return self.rows.fingerprint()

    @property
    def block_order(self) -> int:  # the shards' shuffle block: dtrain's sharded order
        return self.rows.block_order

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.rows[i]
        shard, row = self.rows.locate(i)
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise ImageDataError(f"{shard} sample {row}: no .png or .jpg member (has {', '.join(sample)})")
        return decode_image(sample[ext], f"{shard} sample {row}", self.size, self.mode), int(self.labels[i])
