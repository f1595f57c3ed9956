"""Serving path: export the best checkpoint (ONNX + safetensors, parity-checked) and classify images.

    dtrain export RUN_DIR OUT_DIR              # OUT_DIR/model.onnx, model.safetensors, dtrain_export.json
    dtrain predict OUT_DIR --images a.png photos/

The ONNX model takes pixels: float32 (N, C, S, S) in 0..255, S the size the run's images are loaded at
(digits 8, Fashion-MNIST 28, a folder or tar shards task.load_size), and does the rest itself: the scaling
(and resizing to task.image_size) that evaluation does with `model_input`, then the network. A client
decodes an image like evaluation does (shorter side to S, centre crop; `decode_image`) and sends it.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtrain.checkpoint import read_weights
from dtrain.serving import run_checkpoint, staged_dir
from dtrain.config import load_config
from recipes.vision import Config, datasets, held_out, input_size, load_size, make_model, model_input
from recipes.vision.data import IMAGE_SUFFIXES, ImageDataError, UnreadableImage, decode_image

PARITY_ATOL = 1e-3
"""Max |logit difference| allowed between ONNX Runtime and eager PyTorch (fp32)."""
PARITY_MIN_AGREEMENT = 0.995
"""Share of validation images that must get the same predicted class from both."""
PARITY_IMAGES = 256
"""Validation images the parity check runs on (at most)."""
OPSET = 17
"""ONNX opset, as the ticket router's export (TorchScript exporter: needs no onnxscript)."""
BATCH = 64


class ExportError(RuntimeError):
    pass


class ImageInputError(ImageDataError):
    """An image given to predict that cannot be used (missing, not an image, corrupt): bad input, exit 2."""

    bad_input = True


def pixel_size(cfg: Config) -> int:
    """The side of the images `datasets(cfg)` yields: what a client sends. Digits are 8x8 and
    Fashion-MNIST 28x28 whatever load_size says; folders and shards are decoded at load_size."""
    return {"digits": 8, "fashion_mnist": 28}.get(cfg.dataset, load_size(cfg))


def _classes(run_dir: Path, cfg: Config) -> list[str]:
    """The class names the run trained with: classes.json (written when it started), else from the data."""
    path = run_dir / "classes.json"
    if path.is_file():
        return list(json.loads(path.read_text())["classes"])
    return list(datasets(cfg)[3])


def load_trained(run_dir: str | Path, which: str = "best"):
    """(model in eval mode, class names, task config, checkpoint directory) of a vision run."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    classes = _classes(run_dir, cfg.task)
    checkpoint = run_checkpoint(run_dir, which)
    model = make_model(cfg.task, len(classes), weights=False)
    # Any format the run wrote (ddp's model.pt, fsdp's dcp shards, DeepSpeed's fp32 weights), checked
    # against meta.json, never unpickled.
    model.load_state_dict(read_weights(checkpoint))
    return model.eval(), classes, cfg, checkpoint


class Pixels(nn.Module):
    """The served model: float pixels (N, C, S, S) in 0..255 -> logits, through evaluation's `model_input`."""

    def __init__(self, model: nn.Module, cfg: Config):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(model_input(self.cfg, images))


def _resize_matrix(n_in: int, n_out: int, align_corners: bool) -> torch.Tensor:
    """(n_out, n_in): PyTorch's antialiased bilinear resize of one axis as a matrix: the identity image's
    columns resized (its rows kept as they are)."""
    basis = torch.eye(n_in)[None, None]
    out = F.interpolate(basis, size=(n_out, n_in), mode="bilinear", align_corners=align_corners, antialias=True)
    return out[0, 0].contiguous()


def _antialiased_resize(g, x, output_size, align_corners, *_scales):
    """ONNX for F.interpolate(bilinear, antialias=True), which the TorchScript exporter does not know (and
    ONNX Resize's antialias filter is not PyTorch's: 12/255 apart when shrinking). The input's sides are
    fixed here, and the resize is linear in the pixels, rows and columns apart: two MatMuls with
    constant matrices, equal to PyTorch's to float rounding, up or down."""
    from torch.onnx import symbolic_helper as sh

    size = sh._maybe_get_const(output_size, "is")
    sides = sh._get_tensor_sizes(x) or []
    if not isinstance(size, (list, tuple)) or len(sides) != 4 or None in sides[-2:]:
        raise ExportError("ONNX export: an antialiased resize needs a fixed image side and output size")
    corners = bool(sh._maybe_get_const(align_corners, "b"))
    rows = _resize_matrix(sides[-2], size[0], corners)
    cols = _resize_matrix(sides[-1], size[1], corners).T.contiguous()
    y = g.op("MatMul", g.op("Constant", value_t=rows), x)
    return g.op("MatMul", y, g.op("Constant", value_t=cols))


@contextlib.contextmanager
def _resize_exportable():
    name = "aten::_upsample_bilinear2d_aa"
    torch.onnx.register_custom_op_symbolic(name, _antialiased_resize, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, OPSET)


def export_onnx(served: nn.Module, sample: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """ONNX graph of `served` with a dynamic batch axis; `metadata` goes into its metadata_props (classes,
    channels, sizes travel with the graph, for a server in another language)."""
    import onnx

    with _resize_exportable(), torch.no_grad(), warnings.catch_warnings():
        # to_input compares the image side with the model's: fixed for this graph, as the tracer warns
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's, as the ticket router's
        torch.onnx.export(served.eval(), (sample,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(graph, str(path))


def validation_images(cfg, limit: int = PARITY_IMAGES) -> torch.Tensor:
    """Up to `limit` uint8 images (N, C, S, S) of the run's validation set: its val_root, else the split
    build() holds out of the training set (same seed, same split), else its test set."""
    data, val, test, _ = datasets(cfg.task)
    if val is None:
        _, idx = held_out(cfg.task, data, cfg.seed)
        val = torch.utils.data.Subset(data, idx) if idx else test
    if val is None or len(val) == 0:
        raise ExportError("no validation images for the ONNX parity check; give task.val_root")
    return torch.stack([val[i][0] for i in range(min(len(val), limit))])


def _logits_eager(model: nn.Module, cfg: Config, images: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([model(model_input(cfg, images[i: i + BATCH])).float()
                          for i in range(0, len(images), BATCH)]).numpy()


def _logits_onnx(session, images: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(["logits"], {"images": images[i: i + BATCH]})[0]
                           for i in range(0, len(images), BATCH)])


def parity(model: nn.Module, cfg: Config, session, images: torch.Tensor) -> dict:
    """ONNX Runtime (float pixels) vs eager PyTorch (evaluation's uint8 path) over `images`."""
    got = _logits_onnx(session, images.float().numpy())
    ref = _logits_eager(model, cfg, images)
    return {"images": len(images), "max_abs_logit_diff": float(np.abs(got - ref).max()),
            "agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()), "atol": PARITY_ATOL,
            "min_agreement": PARITY_MIN_AGREEMENT}


def export(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> dict:
    """Write OUT_DIR/model.onnx, model.safetensors and dtrain_export.json; fails (writing nothing) unless
    ONNX Runtime matches eager PyTorch on the run's validation images."""
    import onnxruntime as ort
    from safetensors.torch import save_file

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, classes, cfg, ckpt = load_trained(run_dir, checkpoint)
    task = cfg.task
    images = validation_images(cfg)
    side = pixel_size(task)
    if images.shape[1:] != (task.channels, side, side):
        raise ExportError(f"validation images are {tuple(images.shape[1:])}, expected {(task.channels, side, side)}"
                          " (channels, side, side); recipes.vision.serve.pixel_size does not know this data set")

    with staged_dir(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        info = {"recipe": "vision", "classes": classes, "channels": task.channels, "load_size": side,
                "image_size": input_size(task), "model": task.model}
        export_onnx(Pixels(model, task), images[:2].float(), tmp / "model.onnx",
                    {f"dtrain.{k}": json.dumps(v) for k, v in info.items()})
        session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        result = parity(model, task, session, images)
        if result["max_abs_logit_diff"] > PARITY_ATOL or result["agreement"] < PARITY_MIN_AGREEMENT:
            raise ExportError(
                f"ONNX parity failed on {result['images']} validation images: max |logit diff| "
                f"{result['max_abs_logit_diff']:.2e} (limit {PARITY_ATOL}), same class on "
                f"{result['agreement']:.2%} (need {PARITY_MIN_AGREEMENT:.1%}); nothing was written")
        meta = {**info, "checkpoint": ckpt.name, "source": str(ckpt), "input": "images: float32 (N, C, S, S) "
                "pixels 0..255, S = load_size, decoded like evaluation (shorter side to S, centre crop)",
                "task": asdict(task), "parity": result}
        (tmp / "dtrain_export.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# ------------------------------------------------------------------------------------------ predict


def image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every .png/.jpg/.jpeg under a directory (sorted, hidden ones left out)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not inside:
                raise ImageInputError(f"{p} holds no .png/.jpg/.jpeg images; give image files or directories of them")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            raise ImageInputError(f"{p} does not exist; give image files (.png, .jpg) or directories of them")
    return found


def read_images(paths: Sequence[Path], side: int, channels: int) -> torch.Tensor:
    """uint8 (N, C, side, side), decoded like evaluation; the first file that does not decode is named."""
    out = []
    for path in paths:
        try:
            out.append(decode_image(path, path, side, "L" if channels == 1 else "RGB"))
        except UnreadableImage as exc:
            reason = str(exc).split(": ", 1)[-1]
            what = "not an image" if reason.startswith("cannot identify") else f"an unreadable image ({reason})"
            raise ImageInputError(f"{path} is {what}; give .png or .jpg images; nothing was predicted") from None
    return torch.stack(out)


class Classifier:
    """Classifies images with an exported directory (ONNX Runtime) or a run directory (eager PyTorch)."""

    def __init__(self, source: str | Path):
        source = Path(source)
        if (source / "dtrain_export.json").is_file():
            import onnxruntime as ort

            meta = json.loads((source / "dtrain_export.json").read_text())
            self.classes, self.channels, self.side = meta["classes"], meta["channels"], meta["load_size"]
            session = ort.InferenceSession(str(source / "model.onnx"), providers=["CPUExecutionProvider"])
            self._logits = lambda images: _logits_onnx(session, images.float().numpy())
        elif (source / "config.yaml").is_file():
            model, self.classes, cfg, _ = load_trained(source)
            self.channels, self.side = cfg.task.channels, pixel_size(cfg.task)
            self._logits = lambda images: _logits_eager(model, cfg.task, images)
        else:
            raise ImageInputError(
                f"{source} is neither an exported model (dtrain_export.json) nor a run directory (config.yaml)")

    def __call__(self, paths: Sequence[str | Path]) -> list[dict]:
        files = image_paths(paths)
        images = read_images(files, self.side, self.channels)  # every file checked before any prediction
        logits = self._logits(images).astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        rows = []
        for path, p in zip(files, probs):
            top = np.argsort(-p, kind="stable")[:3]
            rows.append({"image": str(path), "label": self.classes[top[0]], "confidence": round(float(p[top[0]]), 4),
                         "top3": [[self.classes[k], round(float(p[k]), 4)] for k in top]})
        return rows


def predict(source: str | Path, texts: Sequence[str] = (), file: str | Path | None = None,
            images: Sequence[str | Path] = ()) -> list[dict]:
    """Classify `images` (files, or directories of .png/.jpg): each result has image, label, confidence and
    top3 ([label, probability], most probable first)."""
    if texts or file is not None:
        raise ImageInputError(f"{source} is an image model: give images with --images PATH [PATH ...], not texts")
    if not images:
        raise ImageInputError("give images to classify: --images PATH [PATH ...] (files or directories)")
    return Classifier(source)(images)
