"""Image data: scikit-learn's 8x8 digits (shipped with the package, no download) or a class folder."""

from __future__ import annotations

from pathlib import Path

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
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert(self.mode).resize((self.size, self.size), Image.BILINEAR)
                data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageDataError(f"unreadable image {self.files[i]}: {exc}") from None
        image = data.view(self.size, self.size, -1).permute(2, 0, 1).float() / 127.5 - 1.0
        return image, self.labels[i]
