"""Training augmentation: drawn per sample in the loader's workers, applied batched on the device.

A sample's parameters (crop box, flip, erased box) come from its own seed (`dtrain.data.sample_rng`: run
seed, epoch, sample index), so the stream of (image, augmentation) is the same at any world size and any
number of DataLoader workers, and a resume on another topology continues it. The pixels are then moved
once, for the whole batch, by one `grid_sample` on the device: no per-image Python, no host sync.

Parameters per sample (`draw`), 9 float32:
  0-3  the crop box in the source image: centre (cx, cy) and size (w, h), as fractions of its sides;
  4    flip: +1 as is, -1 mirrored left-right;
  5-8  the erased box in the output: corner (x0, y0) and size (w, h) as fractions (w = 0: none).
`IDENTITY` is (0.5, 0.5, 1, 1, 1, 0, 0, 0, 0): the whole image, unflipped, nothing erased.

Geometry follows the usual CPU recipes: random-resized crop as torchvision's RandomResizedCrop (area
share and log-uniform aspect ratio, 10 tries, then the whole image), but with fractional boxes (the
device samples between pixels); the shift crop as RandomCrop(padding=p) (black outside the image);
random erasing as Zhong et al. 2017 (2-40 % of the area, aspect 0.3-3.3), the box set to 0 after
normalisation (the mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dtrain.data import sample_rng

IDENTITY = (0.5, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


@dataclass(frozen=True, kw_only=True)
class AugmentSpec:
    """What `draw` may do to a training image; the defaults do nothing."""

    crop_scale: tuple[float, float] | None = None
    """Random-resized crop: the crop's share of the image area drawn from [min, max] (ImageNet's recipe:
    (0.08, 1.0)); None or (1, 1): off."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Random-resized crop: its aspect ratio (width / height), log-uniform in [min, max]."""
    crop_padding: int = 0
    """Shift crop: pad by this many pixels (black), crop back at a random offset; only without crop_scale."""
    flip: bool = False
    """Mirror left-right with probability 1/2."""
    erase_p: float = 0.0
    """Random erasing: with this probability a box of 2-40 % of the area, aspect 0.3-3.3, is set to 0 after
    normalisation."""

    def __post_init__(self):
        bad = []
        if self.crop_scale is not None and not (len(self.crop_scale) == 2
                                                and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            bad.append(f"crop_scale: [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        if not (len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            bad.append(f"crop_ratio: [min, max] with 0 < min <= max, got {self.crop_ratio}")
        if self.crop_padding < 0:
            bad.append(f"crop_padding: >= 0, got {self.crop_padding}")
        if not 0 <= self.erase_p <= 1:
            bad.append(f"erase_p: between 0 and 1, got {self.erase_p}")
        if bad:
            raise ValueError("AugmentSpec: " + "; ".join(bad))

    @property
    def resized_crop(self) -> bool:
        return self.crop_scale is not None and self.crop_scale[0] < 1

    @property
    def active(self) -> bool:
        return bool(self.resized_crop or self.crop_padding or self.flip or self.erase_p)


def _uniform(rng: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=rng, dtype=torch.float64))


def _crop_box(spec: AugmentSpec, rng: torch.Generator, size: int) -> tuple[float, float, float, float]:
    if spec.resized_crop:  # RandomResizedCrop's draw on a square image, in fractions of its side
        log_ratio = (math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))
        for _ in range(10):
            area = _uniform(rng, *spec.crop_scale)
            ratio = math.exp(_uniform(rng, *log_ratio))
            w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if w <= 1 and h <= 1:
                return _uniform(rng, w / 2, 1 - w / 2), _uniform(rng, h / 2, 1 - h / 2), w, h
        return 0.5, 0.5, 1.0, 1.0
    if spec.crop_padding:  # a whole-pixel shift in [-p, p] each way
        p = spec.crop_padding
        dx, dy = torch.randint(-p, p + 1, (2,), generator=rng).tolist()
        return 0.5 + dx / size, 0.5 + dy / size, 1.0, 1.0
    return 0.5, 0.5, 1.0, 1.0


def _erase_box(spec: AugmentSpec, rng: torch.Generator) -> tuple[float, float, float, float]:
    if not spec.erase_p or _uniform(rng, 0, 1) >= spec.erase_p:
        return 0.0, 0.0, 0.0, 0.0
    log_aspect = (math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]))
    for _ in range(10):
        area, aspect = _uniform(rng, *ERASE_AREA), math.exp(_uniform(rng, *log_aspect))
        h, w = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w < 1 and h < 1:
            return _uniform(rng, 0, 1 - w), _uniform(rng, 0, 1 - h), w, h
    return 0.0, 0.0, 0.0, 0.0


def draw(spec: AugmentSpec, rng: torch.Generator, size: int) -> torch.Tensor:
    """One sample's 9 augmentation parameters (module docstring) for a size x size image, from its own
    generator: crop box, flip sign, erased box; the identity's values for what spec leaves off."""
    cx, cy, w, h = _crop_box(spec, rng, size)
    flip = -1.0 if spec.flip and _uniform(rng, 0, 1) < 0.5 else 1.0
    return torch.tensor([cx, cy, w, h, flip, *_erase_box(spec, rng)], dtype=torch.float32)


class Augmented(Dataset):
    """Training images with their augmentation parameters: (image, label, params), params drawn from the
    sample's own seed (`sample_rng`). Outside a training fetch (no sample seed: the sanity evaluation, a
    direct call) the parameters are the identity's. A sharded set's `block_order` and `fingerprint`, and
    `labels` / `classes`, are the wrapped set's."""

    def __init__(self, base: Dataset, spec: AugmentSpec):
        self.base, self.spec = base, spec

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):
        if name in ("block_order", "fingerprint", "labels", "classes"):
            return getattr(self.__dict__["base"], name)
        raise AttributeError(name)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        rng = sample_rng()
        if rng is None or not self.spec.active:
            return image, label, torch.tensor(IDENTITY)
        return image, label, draw(self.spec, rng, image.shape[-1])


def _finish(x: torch.Tensor, mean: float, std: float, channels_last: bool) -> torch.Tensor:
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_input(images: torch.Tensor, out_size: int, mean: float, std: float, channels_last: bool = False) -> torch.Tensor:
    """Evaluation and serving: uint8 (N, C, S, S) images -> float (x - mean) / std of out_size, resized
    (bilinear, antialiased) when S differs. Equal to `apply` with identity parameters whenever
    out_size >= S (apply's sampling is not antialiased when shrinking)."""
    x = images.float()
    if x.shape[-2:] != (out_size, out_size):  # shapes live on the host: no sync
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    return _finish(x, mean, std, channels_last)


def apply(images: torch.Tensor, params: torch.Tensor, out_size: int, mean: float, std: float,
          channels_last: bool = False) -> torch.Tensor:
    """A batch of uint8 images (N, C, S, S) and their parameters (N, 9) -> augmented float images
    (N, C, out_size, out_size), (x - mean) / std, on the images' device. Crop, flip and resize are one
    affine grid_sample (bilinear); outside the image (the shift's padding) is black, an erased box 0."""
    n, c = images.shape[:2]
    dev = images.device
    p = params.to(dev, torch.float32, non_blocking=True)
    cx, cy, w, h, flip = p[:, :5].unbind(1)
    zero = torch.zeros_like(cx)
    # Output coordinates in [-1, 1] -> source coordinates: scale by the box (mirrored by flip), move to its centre.
    theta = torch.stack([torch.stack([w * flip, zero, 2 * cx - 1], 1),
                         torch.stack([zero, h, 2 * cy - 1], 1)], 1)
    grid = F.affine_grid(theta, [n, c, out_size, out_size], align_corners=False)
    # Border padding: the last half pixel at an edge repeats it (as F.interpolate does), and beyond the
    # image (a shift) is masked to black below.
    x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(-1)[:, None]  # (N, 1, out, out)
    x = torch.where(inside, x, 0.0)
    x = (x - mean) / std
    centres = (torch.arange(out_size, device=dev, dtype=torch.float32) + 0.5) / out_size
    x0, y0, ew, eh = p[:, 5:9, None].unbind(1)  # each (N, 1)
    in_x = (centres >= x0) & (centres < x0 + ew)  # (N, out)
    in_y = (centres >= y0) & (centres < y0 + eh)
    x = x.masked_fill(in_y[:, None, :, None] & in_x[:, None, None, :], 0.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
