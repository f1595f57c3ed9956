"""Checkpoints that resume exactly and are never half-written.

Layout under <output_dir>/checkpoints/:
    step_00000120/    model.pt optim.pt train_state.pt rng_rank{r}.pt meta.json
    latest            name of the newest complete checkpoint (written last, atomically)
    best.json         which checkpoint holds the best evaluation metric (never pruned)

A checkpoint is written into `.tmp-step_*`, every file fsynced, meta.json (the list of files) written
last, the directory renamed into place and only then `latest` updated. A crash at any point leaves
the previous checkpoint complete and `latest` pointing at it. Everything loads with
`torch.load(weights_only=True)`: no pickled objects, only tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtrain.dist import DistState, barrier

STEP_DIR = re.compile(r"^step_(\d{8})$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_file(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint file {path} cannot be loaded safely: {first}") from None


# ------------------------------------------------------------------------------------------ RNG


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(s: tuple) -> dict:
    name, keys, pos, has_gauss, cached = s
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(d: dict) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------ manager


@dataclass
class Loaded:
    path: Path
    model: dict
    optim: dict
    train_state: dict
    rng: dict | None


class CheckpointManager:
    def __init__(self, root: Path, state: DistState, keep_last: int = 3):
        self.root = Path(root)
        self.dist = state
        self.keep_last = keep_last

    # ---------------------------------------------------------------- save
    def save(self, step: int, model: dict, optim: dict, train_state: dict, *, kill_midway: bool = False) -> Path:
        """Collective: every rank must call it. Returns the final checkpoint directory."""
        name = f"step_{step:08d}"
        tmp = self.root / f".tmp-{name}"
        final = self.root / name
        if self.dist.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a crash during an earlier attempt
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier(self.dist)
        save_file(capture_rng(), tmp / f"rng_rank{self.dist.rank}.pt")
        barrier(self.dist)
        if self.dist.is_main:
            save_file(model, tmp / "model.pt")
            if kill_midway:  # fault injection: die with the checkpoint half-written
                os.kill(os.getpid(), signal.SIGKILL)
            save_file(optim, tmp / "optim.pt")
            save_file(train_state, tmp / "train_state.pt")
            files = sorted(p.name for p in tmp.iterdir())
            meta = {"format": FORMAT_VERSION, "step": step, "world_size": self.dist.world_size, "files": files}
            write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=1))
            _fsync_dir(tmp)
            if final.exists():  # same step saved again (e.g. a re-run after a crash): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            write_text_atomic(self.root / "latest", name + "\n")
            self.prune()
        barrier(self.dist)
        return final

    def mark_best(self, path: Path, metric: str, value: float, step: int) -> None:
        if self.dist.is_main:
            record = {"checkpoint": path.name, "metric": metric, "value": value, "step": step}
            write_text_atomic(self.root / "best.json", json.dumps(record) + "\n")

    def best(self) -> dict | None:
        try:
            return json.loads((self.root / "best.json").read_text())
        except (OSError, ValueError):
            return None

    def prune(self) -> None:
        complete = [p for p in self.list_steps() if self.is_complete(p)]
        best = self.best()
        keep = set(complete[-self.keep_last :])
        if best:
            keep.add(self.root / best["checkpoint"])
        for p in complete[: -self.keep_last]:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".tmp-step_*"):
            shutil.rmtree(p, ignore_errors=True)

    # ---------------------------------------------------------------- find / load
    def list_steps(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))

    @staticmethod
    def is_complete(path: Path) -> bool:
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        return all((path / f).is_file() for f in meta.get("files", [])) and bool(meta.get("files"))

    def complete_newest_first(self) -> list[Path]:
        """Complete checkpoints, the one `latest` names first, then the rest from newest to oldest."""
        found = [p for p in reversed(self.list_steps()) if self.is_complete(p)]
        try:
            named = self.root / (self.root / "latest").read_text().strip()
        except OSError:
            return found
        return [named] + [p for p in found if p != named] if named in found else found

    def newest_complete(self) -> Path | None:
        """`latest` if it names a complete checkpoint, else the newest complete one on disk."""
        found = self.complete_newest_first()
        return found[0] if found else None

    def load(self, path: Path) -> Loaded:
        path = Path(path)
        if not self.is_complete(path):
            raise CheckpointError(f"{path} is not a complete dtrain checkpoint (meta.json missing or files absent)")
        meta = json.loads((path / "meta.json").read_text())
        if meta["world_size"] != self.dist.world_size:
            raise CheckpointError(
                f"{path} was written by {meta['world_size']} ranks and this run has {self.dist.world_size}; "
                f"resume with the same number of processes"
            )
        rng_file = path / f"rng_rank{self.dist.rank}.pt"
        return Loaded(
            path=path,
            model=load_file(path / "model.pt"),
            optim=load_file(path / "optim.pt"),
            train_state=load_file(path / "train_state.pt"),
            rng=load_file(rng_file),
        )


def export_model(checkpoint: Path, out: Path) -> int:
    """Write a checkpoint's model weights as one safetensors file; returns the number of tensors."""
    from safetensors.torch import save_file as save_safetensors

    checkpoint = Path(checkpoint)
    if checkpoint.name == "checkpoints" or (checkpoint / "latest").is_file():
        latest = CheckpointManager(checkpoint, None).newest_complete()  # type: ignore[arg-type]
        if latest is None:
            raise CheckpointError(f"{checkpoint} holds no complete checkpoint")
        checkpoint = latest
    state = load_file(checkpoint / "model.pt")
    # clone(): safetensors refuses tensors that share storage (tied weights).
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_safetensors(tensors, str(tmp), metadata={"source": str(checkpoint)})
    os.replace(tmp, out)
    return len(tensors)
