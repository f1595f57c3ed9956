"""Vision recipe: a small ResNet trained on handwritten digits (or your own image folder).

Reads like a script: config -> data -> model -> loss and metrics. The loop lives in dtrain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dtrain.data import sample_rng, stratified_split
from dtrain.recipe import BuildContext, Task
from recipes.vision.data import ImageDataError, ImageFolder, TarImages, load_digits_tensors
from recipes.vision.model import ResNet


@dataclass(kw_only=True)
class Config:
    dataset: Literal["digits", "folder", "tar"] = "digits"
    """'digits': the 8x8 handwritten digits scikit-learn ships; 'folder': images under `root`; 'tar': tar
    shards under `root` (webdataset layout: key.png|jpg + key.cls), read lazily."""
    root: str | None = None
    """Image folder laid out as root/<class name>/*.png|jpg (dataset: folder), or a directory or glob of
    .tar shards (dataset: tar)."""
    val_root: str | None = None
    """dataset: tar: validation shards; without them val_fraction of the training shards is held out."""
    image_size: int = 32
    """Folder images are resized to image_size x image_size (digits stay 8x8)."""
    channels: Literal[1, 3] = 1
    """1: greyscale, 3: RGB (folder images are converted on load)."""
    val_fraction: float = 0.2
    """Held out per class for validation (stratified)."""
    widths: tuple[int, ...] = (32, 64, 128)
    """Channels of the ResNet's stages; each stage after the first halves the resolution."""
    blocks_per_stage: int = 2
    crop_padding: int = 1
    """Random-crop augmentation: pad by this many pixels, crop back at a random offset (0: off)."""

    def check(self) -> list[str]:
        bad = []
        if self.dataset in ("folder", "tar") and not self.root:
            bad.append(f"task.root: required when task.dataset is '{self.dataset}' (a directory of "
                       f"{'class folders' if self.dataset == 'folder' else '.tar shards'})")
        if not 0.0 < self.val_fraction < 1.0:
            bad.append(f"task.val_fraction: must be between 0 and 1, got {self.val_fraction}")
        if self.image_size < 8:
            bad.append(f"task.image_size: must be >= 8, got {self.image_size}")
        if not self.widths or any(w <= 0 for w in self.widths):
            bad.append(f"task.widths: must be a non-empty list of positive ints, got {list(self.widths)}")
        if self.blocks_per_stage < 1:
            bad.append(f"task.blocks_per_stage: must be >= 1, got {self.blocks_per_stage}")
        if self.crop_padding < 0:
            bad.append(f"task.crop_padding: must be >= 0, got {self.crop_padding}")
        return bad


def random_crop(images: torch.Tensor, pad: int, shifts: torch.Tensor) -> torch.Tensor:
    """Shift each image by its (dy, dx) in [0, 2 * pad] minus pad (zero fill), on the images' device."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy, dx = shifts[:, 0], shifts[:, 1]
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


class Shifted(torch.utils.data.Dataset):
    """Training images with their crop offsets, drawn from each sample's own seed (dtrain's sample_rng: run
    seed, epoch, sample index) in the loader's workers: a sample gets the same crop whatever the number of
    ranks or workers, so a resume on another topology continues the very stream. The crop itself runs on
    the device, batched (train_transform)."""

    def __init__(self, base: torch.utils.data.Dataset, pad: int):
        self.base, self.pad = base, pad

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):  # a sharded set's order and fingerprint are the wrapped set's
        if name in ("block_order", "fingerprint"):
            return getattr(self.base, name)
        raise AttributeError(name)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        rng = sample_rng()
        if rng is None:  # not a training fetch: no shift
            return image, label, torch.full((2,), self.pad)
        return image, label, torch.randint(0, 2 * self.pad + 1, (2,), generator=rng)


def preflight(cfg: Config) -> None:
    """Before any process starts: an image folder exists and holds at least two classes of images
    (each image is decoded when first read; an unreadable one is named then)."""
    if cfg.dataset == "folder":
        ImageFolder(cfg.root, cfg.image_size, cfg.channels)
    elif cfg.dataset == "tar":  # indexes the shards once, before the ranks start
        TarImages(cfg.root, cfg.image_size, cfg.channels)
        if cfg.val_root:
            TarImages(cfg.val_root, cfg.image_size, cfg.channels)


def build(cfg: Config, ctx: BuildContext) -> Task:
    if cfg.dataset == "digits":
        images, labels, classes = load_digits_tensors(cfg.channels)
        dataset = torch.utils.data.TensorDataset(images, labels)
        label_list = labels.tolist()
    elif cfg.dataset == "tar":
        dataset = TarImages(cfg.root, cfg.image_size, cfg.channels, ctx.dist)
        classes, label_list = dataset.classes, dataset.labels
    else:
        dataset = ImageFolder(cfg.root, cfg.image_size, cfg.channels)
        classes, label_list = dataset.classes, dataset.labels
    if cfg.dataset == "tar" and cfg.val_root:  # all of root trains, in its sharded order
        train_data, val_data = dataset, TarImages(cfg.val_root, cfg.image_size, cfg.channels, ctx.dist)
        if len(val_data.classes) > len(classes):
            raise ImageDataError(f"task.val_root: class {len(val_data.classes) - 1} is not in the training shards")
    else:
        train_idx, val_idx = stratified_split(label_list, cfg.val_fraction, ctx.seed)
        train_data = torch.utils.data.Subset(dataset, train_idx)
        val_data = torch.utils.data.Subset(dataset, val_idx)

    def model():
        return ResNet(in_channels=cfg.channels, num_classes=len(classes), widths=list(cfg.widths),
                      blocks_per_stage=cfg.blocks_per_stage)

    def loss_fn(logits, batch):
        return F.cross_entropy(logits.float(), batch[1])

    def eval_stats(logits, batch):
        return {"correct": (logits.argmax(-1) == batch[1]).sum(), "count": torch.tensor(len(batch[1]))}

    def summarize(sums):
        return {"accuracy": (sums["correct"] / sums["count"]).item()}

    def augment(batch):
        if not cfg.crop_padding:
            return batch
        images, labels, shifts = batch
        return random_crop(images, cfg.crop_padding, shifts), labels

    return Task(
        model=model,
        train_data=Shifted(train_data, cfg.crop_padding) if cfg.crop_padding else train_data,
        val_data=val_data,
        loss_fn=loss_fn,
        eval_stats=eval_stats,
        summarize=summarize,
        train_transform=augment,
        shard_units=lambda m: list(m.stages),  # strategy fsdp: each ResNet stage is one unit
        extras={"classes": classes},
    )
