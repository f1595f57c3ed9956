"""One writer per run directory: a second job started on the same `output_dir` is refused before it
writes anything, naming the job that holds it.

Rank 0 holds an exclusive `flock` on `<output_dir>/.dtrain.lock` for the whole run; the file says who
(host, pid, Slurm job id). The kernel drops the lock when its process dies, however it dies, so a lock
left by a crashed or killed job is simply taken over by the next start: only a live holder refuses.
(On a shared file system this needs working POSIX locks, as NFS v4 and Lustre provide.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".dtrain.lock"


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another process"
    job = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{job}"


def _refusal(output_dir: Path, path: Path) -> RunLocked:
    return RunLocked(f"output_dir {output_dir} is in use by a running job ({_describe(path)}); wait for it "
                     "to end or stop it, or choose another output_dir")


def check_free(output_dir: str | Path) -> None:
    """Raise RunLocked if a live job holds `output_dir` (takes nothing; creates nothing)."""
    path = Path(output_dir) / LOCK_FILE
    if not path.is_file():
        return
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(Path(output_dir), path) from None
        fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def hold(output_dir: str | Path) -> Iterator[None]:
    """Hold `output_dir` for the body (rank 0 only). Raises RunLocked if a live job holds it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(out, path) from None
        # Ours now (a dead holder's lock went with it): say who holds it.
        f.truncate(0)
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "since": time.time()}) + "\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
