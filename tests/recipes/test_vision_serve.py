"""Vision serving end to end: tiny runs through the CLI, `dtrain export` (ONNX + safetensors, parity-checked
on the run's validation images) and `dtrain predict --images` from the export and from the run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtrain.cli import main
from tests.conftest import dtrain, run

pytest.importorskip("onnxruntime")

VISION = "recipes/vision/config.yaml"
SMALL = ["task.widths=[8,16]", "task.blocks_per_stage=1", "train.log_every=2", "train.max_steps=4",
         "train.eval_every=2"]


def _png(path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _predict(capsys, source, *args) -> tuple[int, list[dict], str]:
    """`dtrain predict SOURCE ARGS` in this process (saves a child's start-up): exit code, rows, stderr."""
    code = main(["predict", str(source), *map(str, args)])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def _one_line(code: int, rows: list, err: str, *needles: str) -> None:
    assert code == 2 and not rows, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _check_rows(rows: list[dict], classes: list[str]) -> None:
    for row in rows:
        assert set(row) == {"image", "label", "confidence", "top3"}
        probs = [p for _, p in row["top3"]]
        assert len(row["top3"]) == min(3, len(classes)) and probs == sorted(probs, reverse=True)
        assert row["top3"][0] == [row["label"], row["confidence"]] and row["label"] in classes
        assert len({label for label, _ in row["top3"]}) == len(row["top3"])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A 4-step digits run and its export."""
    tmp = tmp_path_factory.mktemp("digits")
    run(VISION, *SMALL, f"output_dir={tmp / 'run'}")
    meta = json.loads(dtrain("export", str(tmp / "run"), str(tmp / "export")).stdout)
    return tmp, meta


def test_digits_export_is_parity_checked_and_predicts_like_the_run(digits, capsys):
    from safetensors.torch import load_file

    from dtrain.checkpoint import read_weights

    tmp, meta = digits
    export = tmp / "export"
    assert sorted(p.name for p in export.iterdir()) == ["dtrain_export.json", "model.onnx", "model.safetensors"]
    assert json.loads((export / "dtrain_export.json").read_text()) == {k: v for k, v in meta.items() if k != "out"}
    assert meta["recipe"] == "vision" and meta["classes"] == [str(d) for d in range(10)]
    assert (meta["channels"], meta["load_size"], meta["image_size"], meta["model"]) == (1, 8, 8, "resnet")
    best = json.loads((tmp / "run" / "checkpoints" / "best.json").read_text())["checkpoint"]
    assert meta["checkpoint"] == best
    p = meta["parity"]
    assert p["images"] == 256 and p["max_abs_logit_diff"] <= 1e-3 and p["agreement"] >= 0.995
    weights, trained = load_file(export / "model.safetensors"), read_weights(tmp / "run" / "checkpoints" / best)
    assert set(weights) == set(trained) and all(torch.equal(weights[k], trained[k]) for k in trained)

    import onnx

    graph = onnx.load(str(export / "model.onnx"))
    assert json.loads({m.key: m.value for m in graph.metadata_props}["dtrain.classes"]) == meta["classes"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    from sklearn.datasets import load_digits

    images = load_digits().images
    for i in range(4):  # larger than 8x8 and not square: decoded to 8x8 like evaluation
        _png(tmp / "images" / f"sub/{i}.png", np.kron(np.round(images[i] * 255 / 16), np.ones((3, 4))).astype(np.uint8))
    _png(tmp / "images" / "single.png", np.round(images[9] * 255 / 16).astype(np.uint8))
    (tmp / "images" / "notes.txt").write_text("not an image, and not a .png: skipped in a directory\n")
    code, from_onnx, err = _predict(capsys, export, "--images", tmp / "images")
    assert code == 0, err
    assert [r["image"] for r in from_onnx] == [str(tmp / "images" / n) for n in ("single.png", *(f"sub/{i}.png" for i in range(4)))]
    _check_rows(from_onnx, meta["classes"])
    code, from_run, err = _predict(capsys, tmp / "run", "--images", tmp / "images" / "sub" / "0.png", tmp / "images")
    assert code == 0, err
    assert [r["image"] for r in from_run] == [from_onnx[1]["image"], *(r["image"] for r in from_onnx)]
    assert [r["label"] for r in from_run[1:]] == [r["label"] for r in from_onnx]
    for a, b in zip(from_run[1:], from_onnx):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-3)


def test_bad_images_are_one_line_naming_the_file_before_any_prediction(digits, capsys):
    tmp, _ = digits
    export = tmp / "export"
    good = tmp / "good.png"
    _png(good, np.zeros((8, 8), np.uint8))
    (tmp / "notes.txt").write_text("hello\n")
    _png(tmp / "noise.png", np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    (tmp / "corrupt.png").write_bytes((tmp / "noise.png").read_bytes()[:400])  # the header reads, the pixels do not
    (tmp / "empty").mkdir()
    for args, needles in [
        ((good, tmp / "missing.png"), (f"{tmp / 'missing.png'} does not exist",)),
        ((good, tmp / "notes.txt"), (f"{tmp / 'notes.txt'} is not an image",)),
        ((good, tmp / "corrupt.png"), (f"{tmp / 'corrupt.png'} is an unreadable image", "nothing was predicted")),
        ((tmp / "empty",), (f"{tmp / 'empty'} holds no .png/.jpg/.jpeg images",)),
    ]:
        _one_line(*_predict(capsys, export, "--images", *args), *needles)
    _one_line(*_predict(capsys, tmp / "run", "--images", good, tmp / "corrupt.png"), str(tmp / "corrupt.png"))
    # the wrong kind of input for the model: one plain line, exit 2
    _one_line(*_predict(capsys, export, "a ticket text"), "is an image model", "--images")
    _one_line(*_predict(capsys, export), "give what to predict")
    router = tmp / "router_export"
    router.mkdir()
    (router / "dtrain_export.json").write_text(json.dumps({"recipe": "ticket_router"}))
    pytest.importorskip("transformers", reason="the ticket router needs dtrain[text]")
    _one_line(*_predict(capsys, router, "--images", good), "is a text model", "not --images")


def test_export_fails_in_one_line_and_writes_nothing_without_parity(digits, monkeypatch):
    from recipes.vision import serve

    tmp, _ = digits
    monkeypatch.setattr(serve, "PARITY_ATOL", -1.0)
    with pytest.raises(serve.ExportError, match=r"ONNX parity failed on 256 validation images.*nothing was written"):
        serve.export(tmp / "run", tmp / "refused")
    assert not (tmp / "refused").exists() and not list(tmp.glob(".refused.*"))


def test_rgb_folder_run_exports_with_the_resize_in_the_graph(tmp_path, capsys):
    """load_size 24 > image_size 16: the ONNX graph shrinks the pixels as evaluation does (antialiased)."""
    g = np.random.default_rng(0)
    classes = ["cat", "dog", "eel"]
    for c, name in enumerate(classes):
        for i in range(10):
            _png(tmp_path / "images" / name / f"{i}.png", (g.random((20, 26 + c, 3)) * 100 + 60 * c).astype(np.uint8))
    out = tmp_path / "run"
    run(VISION, *SMALL, "task.dataset=folder", f"task.root={tmp_path / 'images'}", "task.channels=3",
        "task.image_size=16", "task.load_size=24", "train.batch_size=4", f"output_dir={out}")
    assert json.loads((out / "classes.json").read_text())["classes"] == classes
    meta = json.loads(dtrain("export", str(out), str(tmp_path / "export"), "--checkpoint", "latest").stdout)
    assert (meta["channels"], meta["load_size"], meta["image_size"], meta["classes"]) == (3, 24, 16, classes)
    assert meta["checkpoint"] == "step_00000004"
    p = meta["parity"]
    assert p["images"] == 6 and p["max_abs_logit_diff"] <= 1e-3 and p["agreement"] >= 0.995
    code, from_onnx, err = _predict(capsys, tmp_path / "export", "--images", tmp_path / "images" / "eel")
    assert code == 0 and len(from_onnx) == 10, err
    _check_rows(from_onnx, classes)
    code, from_run, err = _predict(capsys, out, "--images", tmp_path / "images" / "eel")
    assert code == 0, err
    assert [r["label"] for r in from_run] == [r["label"] for r in from_onnx]
    assert [r["top3"][0][0] for r in from_run] == [r["top3"][0][0] for r in from_onnx]
