"""The vision recipe's data (recipes.vision.data) and augmentation (recipes.vision.augment): every layout
yields (uint8 (C, S, S), int); bad images are named before a run or skipped mid-epoch; augmentation
parameters depend on the sample alone, and apply batched without host syncs."""

from __future__ import annotations

import gzip
import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dtrain.data import SeededSamples, TrainSampler
from recipes.vision.augment import IDENTITY, AugmentSpec, Augmented, apply, draw, to_input
from recipes.vision.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IdxImages,
    ImageDataError,
    ImageFolder,
    fashion_mnist,
    load_digits_tensors,
)


# --- IDX / Fashion-MNIST --------------------------------------------------------------------------------

def _idx(path, magic: int, data: np.ndarray, gz: bool = False, shape=None):
    shape = data.shape if shape is None else shape
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in shape)
    raw = header + data.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_read_gz_and_raw(tmp_path, gz):
    rng = np.random.default_rng(0)
    pixels, labels = rng.integers(0, 256, (5, 6, 6)), np.array([0, 1, 2, 1, 0])
    ext = ".gz" if gz else ""
    images = _idx(tmp_path / f"i{ext}", 2051, pixels, gz)
    data = IdxImages(images, _idx(tmp_path / f"l{ext}", 2049, labels, gz))
    assert len(data) == 5 and data.classes == ["0", "1", "2"] and list(data.labels) == labels.tolist()
    image, label = data[3]
    assert image.dtype == torch.uint8 and image.shape == (1, 6, 6) and type(label) is int and label == 1
    assert torch.equal(image[0], torch.tensor(pixels[3], dtype=torch.uint8))

    rgb = IdxImages(images, tmp_path / f"l{ext}", channels=3, load_size=12)[3][0]
    assert rgb.shape == (3, 12, 12) and rgb.dtype == torch.uint8 and rgb.is_contiguous()
    assert torch.equal(rgb[0], rgb[2])
    assert abs(rgb.float().mean() - float(pixels[3].mean())) < 4  # resized, not rescaled


def test_idx_errors_are_one_line_naming_the_file(tmp_path):
    labels = _idx(tmp_path / "labels", 2049, np.zeros(4))
    images = _idx(tmp_path / "images", 2051, np.zeros((4, 3, 3)))
    cases = [
        ((_idx(tmp_path / "swapped", 2049, np.zeros(4)), labels),
         "swapped: not an IDX image file (magic number 2049, expected 2051)"),
        ((images, _idx(tmp_path / "few", 2049, np.zeros(3))), "few: 3 labels for the 4 images of"),
        ((_idx(tmp_path / "cut", 2051, np.zeros(30), shape=(4, 3, 3)), labels),
         "cut: holds 30 bytes of data for a declared shape [4, 3, 3]"),
        ((tmp_path / "missing", labels), "missing: cannot read it as an IDX file"),
    ]
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8bnot gzip at all")
    cases.append(((tmp_path / "bad.gz", labels), "bad.gz: cannot read it as an IDX file"))
    for (i, lab), message in cases:
        with pytest.raises(ImageDataError) as err:
            IdxImages(i, lab)
        assert message in str(err.value) and "\n" not in str(err.value)
        assert str(tmp_path) in str(err.value)


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(ImageDataError) as err:
        fashion_mnist(tmp_path, "train")
    assert str(err.value) == (
        f"task.root: no Fashion-MNIST IDX files in {tmp_path}; install them with: apt-get install "
        "dataset-fashion-mnist (without root: apt-get download dataset-fashion-mnist && dpkg-deb -x "
        "dataset-fashion-mnist_*.deb DIR, then task.root=DIR/usr/share/datasets/fashion-mnist)")


def test_real_fashion_mnist_train_and_test():
    if not FASHION_MNIST_DIR.is_dir():
        if os.environ.get("CI"):  # CI installs Debian's dataset-fashion-mnist: missing there is a failure
            pytest.fail(f"{FASHION_MNIST_DIR} missing: CI must apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    for split, n in (("train", 60_000), ("test", 10_000)):
        data = fashion_mnist(FASHION_MNIST_DIR, split)
        assert len(data) == n and data.classes == list(FASHION_MNIST_CLASSES)
        assert np.bincount(data.labels).tolist() == [n // 10] * 10
        image, label = data[0]
        assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10
        assert int(image.max()) > 100  # real pixels, not zeros
    assert fashion_mnist(FASHION_MNIST_DIR, "test", channels=3, load_size=32)[0][0].shape == (3, 32, 32)


def test_digits_are_uint8_0_to_255():
    images, labels, classes = load_digits_tensors(3)
    assert images.dtype == torch.uint8 and images.shape == (1797, 3, 8, 8) and int(images.max()) == 255
    assert classes == [str(c) for c in range(10)] and labels.shape == (1797,)


# --- image folders --------------------------------------------------------------------------------------

def _jpeg(size=(64, 48), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _folder(root):
    """Two classes, mixed sizes and modes, a non-image file to ignore."""
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (40, 20), (0, 255, 0)).save(root / "cat" / "a_rgb.png")
    Image.new("L", (7, 30), 90).save(root / "cat" / "b_grey.png")
    Image.new("P", (16, 16), 3).save(root / "cat" / "c_palette.png")
    Image.new("RGBA", (20, 20), (10, 20, 30, 0)).save(root / "dog" / "d_alpha.png")
    Image.new("RGB", (1, 1), (255, 255, 255)).save(root / "dog" / "e_tiny.png")
    (root / "dog" / "f_photo.JPG").write_bytes(_jpeg())
    Image.fromarray(np.full((9, 9), 40000, dtype=np.uint16)).save(root / "dog" / "g_16bit.png")
    (root / "dog" / "README.txt").write_text("not an image")
    return root


def test_image_folder_any_size_and_mode_gives_uint8_squares(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = ImageFolder(_folder(tmp_path / "imgs"), 12, channels=3)
    assert "1 file(s) without an image suffix (.png/.jpg/.jpeg) ignored" in caplog.text
    assert data.classes == ["cat", "dog"] and list(data.labels) == [0, 0, 0, 1, 1, 1, 1] and data.ignored == 1
    for i in range(len(data)):
        image, label = data[i]
        assert image.shape == (3, 12, 12) and image.dtype == torch.uint8 and type(label) is int
    assert (data[0][0][1] == 255).all() and (data[0][0][0] == 0).all()  # RGB kept
    assert (data[4][0] == 255).all()  # 1x1 white, resized
    assert (data[6][0] - 156).abs().max() <= 1  # 16-bit grey 40000 -> its top 8 bits
    grey = ImageFolder(tmp_path / "imgs", 5, channels=1)
    assert grey[1][0].shape == (1, 5, 5) and (grey[1][0] == 90).all()


def test_image_folder_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:30] = (0, 255, 0)
    wide[:, 30:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2).copy()).save(tmp_path / "b" / "tall.png")
    data = ImageFolder(tmp_path, 10, 3)
    for i in range(2):
        image = data[i][0].int() if i == 0 else data[i][0].int().transpose(1, 2)
        inner = image[:, :, 1:-1]  # the edge columns blend a little with their neighbours, as in any resize
        assert inner[1].min() >= 250 and inner[0].max() <= 5 and inner[2].max() <= 5  # the green centre only
        assert image[1].min() >= 200 and image[0].max() <= 40 and image[2].max() <= 40


def test_big_jpeg_decodes_at_a_reduced_scale_to_the_load_size(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "big.jpeg").write_bytes(_jpeg((1600, 1200), (30, 60, 220)))
    image = ImageFolder(tmp_path, 64, 3)[0][0]
    assert image.shape == (3, 64, 64) and (image.int() - torch.tensor([30, 60, 220])[:, None, None]).abs().max() < 8


def test_image_folder_errors_name_the_folder_or_files(tmp_path):
    root = _folder(tmp_path / "empty_class")
    (root / "bird").mkdir()
    (root / "bird" / "notes.txt").write_text("x")
    with pytest.raises(ImageDataError) as err:
        ImageFolder(root, 8, 3)
    assert str(err.value) == (f"task.root: class folder {root / 'bird'} holds no .png/.jpg images; "
                              "remove it or add images")

    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "cat" / "x.png")
    with pytest.raises(ImageDataError, match="needs at least 2 class folders of .png/.jpg images, found 1"):
        ImageFolder(one, 8, 3)
    with pytest.raises(ImageDataError, match="is not a directory"):
        ImageFolder(tmp_path / "nowhere", 8, 3)

    root = _folder(tmp_path / "corrupt")
    (root / "cat" / "text.jpg").write_text("this is not a JPEG")
    with pytest.raises(ImageDataError) as err:
        ImageFolder(root, 8, 3)
    assert str(err.value) == (f"task.root: 1 file(s) do not read as images: {root / 'cat' / 'text.jpg'}; "
                              "remove or fix it")
    for k in range(4):
        (root / "dog" / f"empty{k}.png").write_bytes(b"")
    with pytest.raises(ImageDataError) as err:
        ImageFolder(root, 8, 3)
    message = str(err.value)
    assert message.startswith(f"task.root: 5 file(s) do not read as images: {root / 'cat' / 'text.jpg'}, ")
    assert message.endswith(" and 2 more; remove or fix them") and "\n" not in message


def test_truncated_image_is_skipped_with_one_warning_and_the_next_sample(tmp_path, caplog):
    root = _folder(tmp_path / "imgs")
    truncated = root / "cat" / "b_grey.png"
    raw = _jpeg((256, 256))
    truncated.unlink()
    truncated = root / "cat" / "b_truncated.jpg"
    truncated.write_bytes(raw[: len(raw) // 2])  # the header reads; the pixels stop halfway
    data = ImageFolder(root, 8, 3)  # the header pass lets it through
    assert data.path(1) == truncated
    with caplog.at_level(logging.WARNING, logger="recipes.vision.data"):
        image, label = data[1]
        again, _ = data[1]
    assert torch.equal(image, data[2][0]) and torch.equal(again, image) and label == data.labels[2]
    warnings = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(warnings) == 1 and str(truncated) in warnings[0]
    assert "skipped, the next readable sample takes its place" in warnings[0]


# --- augmentation ---------------------------------------------------------------------------------------

MEAN, STD = 127.0, 128.0


def _images(n=6, c=3, s=16, seed=0):
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _identity(n):
    return torch.tensor(IDENTITY).expand(n, -1)


@pytest.mark.parametrize("out", [16, 24])
def test_identity_params_equal_the_eval_input(out):
    images = _images()
    torch.testing.assert_close(apply(images, _identity(6), out, MEAN, STD), to_input(images, out, MEAN, STD),
                               atol=1e-4, rtol=0)
    if out == 16:
        torch.testing.assert_close(to_input(images, 16, MEAN, STD), (images.float() - MEAN) / STD)


def test_flip_mirrors_and_twice_is_the_identity():
    images = _images()
    flip = _identity(6).clone()
    flip[:, 4] = -1
    once = apply(images, flip, 16, 0.0, 1.0)
    torch.testing.assert_close(once, images.flip(-1).float(), atol=1e-3, rtol=0)
    twice = apply(once.round().to(torch.uint8), flip, 16, 0.0, 1.0)
    torch.testing.assert_close(twice, images.float(), atol=1e-3, rtol=0)


def test_shift_moves_whole_pixels_with_black_outside():
    images = _images(n=1)
    shift = _identity(1).clone()
    shift[0, 0] = 0.5 + 2 / 16  # the output reads 2 pixels to the right
    out = apply(images, shift, 16, 0.0, 1.0)[0]
    torch.testing.assert_close(out[:, :, :14], images[0, :, :, 2:].float(), atol=1e-3, rtol=0)
    assert (out[:, :, 14:] == 0).all()


def test_erase_fills_its_box_with_zero_after_normalisation():
    images = _images(n=2)
    params = _identity(2).clone()
    params[0, 5:] = torch.tensor([0.25, 0.5, 0.5, 0.25])  # x 4..11, y 8..11 of 16
    out = apply(images, params, 16, MEAN, STD)
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[8:12, 4:12] = True
    assert (out[0][:, box] == 0).all()
    ref = to_input(images, 16, MEAN, STD)
    torch.testing.assert_close(out[0][:, ~box], ref[0][:, ~box], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], ref[1], atol=1e-4, rtol=0)


def test_apply_shapes_dtypes_channels_last_and_no_host_sync():
    images = _images(n=4, c=3, s=20)
    spec = AugmentSpec(crop_scale=(0.08, 1.0), flip=True, erase_p=1.0)
    params = torch.stack([draw(spec, torch.Generator().manual_seed(i), 20) for i in range(4)])
    out = apply(images, params, 32, MEAN, STD, channels_last=True)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert to_input(images, 32, MEAN, STD, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    # On the meta device every value is unknown: a .item() or a branch on a value would raise here.
    meta = apply(images.to("meta"), params.to("meta"), 32, MEAN, STD, channels_last=True)
    assert meta.shape == (4, 3, 32, 32)
    assert to_input(images.to("meta"), 8, MEAN, STD).shape == (4, 3, 8, 8)


def test_draw_ranges_and_identity_when_off():
    g = torch.Generator().manual_seed(0)
    assert draw(AugmentSpec(), g, 16).tolist() == list(IDENTITY)
    assert draw(AugmentSpec(crop_scale=(1.0, 1.0)), g, 16).tolist() == list(IDENTITY)
    spec = AugmentSpec(crop_scale=(0.08, 1.0), flip=True, erase_p=0.5)
    p = torch.stack([draw(spec, torch.Generator().manual_seed(i), 16) for i in range(400)])
    cx, cy, w, h, flip, ex, ey, ew, eh = p.unbind(1)
    assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert 0.4 < (flip < 0).float().mean() < 0.6 and 0.4 < (ew > 0).float().mean() < 0.6
    erased = ew > 0
    assert ((ew * eh)[erased] >= 0.02 - 1e-6).all() and ((ew * eh)[erased] <= 0.4 + 1e-6).all()
    assert ((ex + ew)[erased] <= 1 + 1e-6).all() and ((ey + eh)[erased] <= 1 + 1e-6).all()
    shifts = torch.stack([draw(AugmentSpec(crop_padding=2), torch.Generator().manual_seed(i), 16) for i in range(200)])
    assert set((shifts[:, :2] - 0.5).mul(16).round().flatten().tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentSpec(crop_scale=(0.5, 0.1))


class _Indexed(torch.utils.data.Dataset):
    """Image i is uint8 i, its label is i: the batch says which sample each row is."""

    block_order = 8

    def __len__(self):
        return 40

    def fingerprint(self):
        return {"n": 40}

    def __getitem__(self, i):
        return torch.full((1, 8, 8), i, dtype=torch.uint8), i


def _params_by_index(workers: int, world: int) -> dict[int, list[float]]:
    spec = AugmentSpec(crop_scale=(0.2, 1.0), flip=True, erase_p=0.5)
    found = {}
    for rank in range(world):
        sampler = TrainSampler(40, rank, world, seed=3, keyed=True)
        sampler.set_epoch(1)
        loader = torch.utils.data.DataLoader(SeededSamples(Augmented(_Indexed(), spec), seed=3), batch_size=5,
                                             sampler=sampler, num_workers=workers)
        for _, labels, params in loader:
            found.update(zip(labels.tolist(), params.tolist()))
    return found


def test_params_depend_on_the_sample_not_on_workers_or_world_size():
    one = _params_by_index(workers=0, world=1)
    assert len(one) == 40 and len({tuple(p) for p in one.values()}) == 40
    assert _params_by_index(workers=2, world=1) == one
    two_ranks = _params_by_index(workers=0, world=2)
    assert two_ranks and all(one[i] == p for i, p in two_ranks.items())


def test_augmented_passes_the_sharded_order_through_and_is_identity_outside_training():
    data = Augmented(_Indexed(), AugmentSpec(flip=True))
    assert data.block_order == 8 and data.fingerprint() == {"n": 40}
    image, label, params = data[3]
    assert label == 3 and params.tolist() == list(IDENTITY)
    plain = Augmented(torch.utils.data.TensorDataset(torch.zeros(2, 1, 4, 4)), AugmentSpec())
    assert not hasattr(plain, "block_order") and not hasattr(plain, "fingerprint")
