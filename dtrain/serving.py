"""What every recipe's `dtrain export` shares: which checkpoint of a run it serves, and an output directory
that appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from dtrain.checkpoint import CheckpointError, CheckpointManager


def run_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """`best` (else `latest` when the run kept no best), `latest` (the newest complete checkpoint), or a
    step_* directory: a path, or a name under RUN_DIR/checkpoints."""
    manager = CheckpointManager(run_dir / "checkpoints", None)  # type: ignore[arg-type]  # reading only
    if which == "best":
        best = manager.best()
        if best is not None:
            return manager.root / best["checkpoint"]
        which = "latest"
    if which == "latest":
        path = manager.newest_complete()
        if path is None:
            raise CheckpointError(f"{run_dir} holds no complete checkpoint; train first")
        return path
    path = Path(which)
    return path if path.is_dir() or not (manager.root / which).is_dir() else manager.root / which


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary directory beside `out_dir` to write an export into; it replaces `out_dir` only when the
    block ends without an error, so a failed export (a parity check, a full disk) leaves nothing behind
    and an earlier export intact."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export should follow the user's umask
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
