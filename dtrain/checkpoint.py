"""Checkpoints that resume exactly and are never half-written.

Layout under <output_dir>/checkpoints/:
    step_00000120/    model.pt optim.pt train_state.pt rng_rank{r}.pt meta.json
    latest            name of the newest complete checkpoint (written last, atomically)
    best.json         which checkpoint holds the best evaluation metric (never pruned)

Sharded formats (strategy fsdp, `checkpoint.format: dcp`, strategy deepspeed) use the same directory and
the same completion rule, with the model and optimizer under `state/` instead of model.pt/optim.pt:
    step_00000120/    state/ (DCP shards + .metadata, or DeepSpeed's files) train_state.pt rng_rank{r}.pt meta.json
Each rank hashes the files under `state/` it wrote (DCP's `__<rank>_*.distcp`, DeepSpeed's
`zero_pp_rank_<rank>_*`; rank 0 also the shared ones) and rank 0 gathers the digests into meta.json:
no rank reads another's shard to hash it. An async save stages the state in memory, writes and hashes
in the background, and is finished (meta.json, renamed, `latest`) once the write has ended on every
rank - which the ranks learn at their stop-request meeting (preemption.py), at the next save, or at
the end of the run. A crash before that leaves a `.tmp-` directory, never a checkpoint marked complete.

A checkpoint is written into `.tmp-step_*`, every file fsynced, meta.json (the list of files and
their sha256) written last, the directory renamed into place and only then `latest` updated. A crash
or a failed write at any point leaves the previous checkpoint complete and `latest` pointing at it.
Loading checks listed files against their sha256 (a truncated or bit-flipped file is named, not loaded)
and uses `torch.load(weights_only=True)`: no pickled objects, only tensors and plain containers. Files a
rank reads itself (train_state.pt, its RNG, model.pt) it checks as it reads them; each file under
`state/` is checked by one rank only (the one standing for the rank that wrote it), and the ranks agree
before any of them reads state, so a damaged shard stops every rank, named, and costs no rank a read
of the whole checkpoint. `dtrain checkpoint export` (one process) checks every file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dtrain.dist import DistState, all_reduce_sum, barrier, broadcast_object, gather_objects

STEP_DIR = re.compile(r"^step_(\d{8})$")
FORMAT_VERSION = 2
"""2: meta.json holds a sha256 per file (1 had none; still loadable)."""


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_file(obj: Any, path: Path, *, fail_after: int | None = None) -> str:
    """torch.save `obj` to `path`, fsynced; returns the file's sha256.

    Serialised in memory first: a failing disk then raises a plain OSError (torch's own writer turns
    ENOSPC into an opaque RuntimeError), and the checksum costs no second read. `fail_after` bytes
    simulates a full disk for the tests: the write stops part-way with ENOSPC, as a real one would."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    with open(path, "wb") as f:
        if fail_after is not None and len(data) > fail_after:
            f.write(data[:fail_after])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_file(path: Path, sha256: str | None = None) -> Any:
    """torch.load with weights_only=True; with `sha256`, the bytes are checked before anything is parsed.

    The file is hashed in blocks, then memory-mapped (torch.save's zip format allows it): its tensors are
    views of the file's pages, not a copy beside the file's bytes in memory. Reading the bytes whole and
    unpickling them from memory held each checkpoint twice, on every rank (issue 22); the mapped pages
    are the page cache's, shared by the ranks of a node. Older (non-zip) files are read without mmap."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        if sha256 is not None and _sha256(path) != sha256:
            raise CheckpointError(f"checkpoint file {path} is corrupted: its sha256 does not match meta.json")
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's zip format (mmap needs it)
    except OSError as exc:
        raise CheckpointError(f"checkpoint file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
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
    model: dict | None
    """None for sharded formats: the strategy reads `path / 'state'` itself."""
    optim: dict | None
    train_state: dict
    rng: dict | None
    """None when the checkpoint was written by another number of ranks (the streams cannot carry over)."""
    world_size: int = 1
    kind: str = "torch"


@dataclass
class _Pending:
    step: int
    tmp: Path
    final: Path
    handle: Future | None
    """Ends once this rank's part is written and hashed: its result is that part's digests."""
    kind: str
    hashes: dict[str, str]
    """Digests of what this rank wrote before `state/` (its RNG; rank 0 also train_state.pt)."""
    best: dict | None = None


class CheckpointManager:
    def __init__(self, root: Path, state: DistState, keep_last: int = 3):
        self.root = Path(root)
        self.dist = state
        self.keep_last = keep_last
        self._pending: _Pending | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------- save
    def save(self, step: int, model: dict, optim: dict, train_state: dict, *, kill_midway: bool = False,
             disk_full: bool = False) -> Path:
        """Collective: every rank must call it. Returns the final checkpoint directory.

        A write that fails (full disk, lost permissions) on any rank fails the save on every rank with
        one CheckpointError; nothing is marked complete and the previous checkpoint stays `latest`."""
        name = f"step_{step:08d}"
        tmp = self.root / f".tmp-{name}"
        final = self.root / name
        error: OSError | None = None
        try:
            if self.dist.is_main:
                self.root.mkdir(parents=True, exist_ok=True)
                if tmp.exists():  # left by a crash during an earlier attempt
                    shutil.rmtree(tmp)
                tmp.mkdir()
        except OSError as exc:
            error = exc
        barrier(self.dist)
        hashes: dict[str, str] = {}
        if error is None:
            try:
                rng_name = f"rng_rank{self.dist.rank}.pt"
                hashes[rng_name] = save_file(capture_rng(), tmp / rng_name)
            except OSError as exc:
                error = exc
        # Rank 0 lists every rank's RNG file in meta.json, so it needs their hashes.
        all_hashes = gather_objects(hashes, self.dist)
        if self.dist.is_main and error is None and all(all_hashes):
            try:
                self._write_main(step, tmp, final, model, optim, train_state, all_hashes, kill_midway, disk_full)
            except OSError as exc:
                error = exc
                shutil.rmtree(tmp, ignore_errors=True)
        failed = all_reduce_sum(0.0 if error is None else 1.0, self.dist)
        if failed.item():
            previous = self.newest_complete()
            raise _write_failed(final, error, previous)
        return final

    def _write_main(self, step, tmp, final, model, optim, train_state, rank_hashes, kill_midway, disk_full) -> None:
        hashes = {k: v for h in rank_hashes for k, v in h.items()}
        # fault injection: a full disk part-way through the model file
        hashes["model.pt"] = save_file(model, tmp / "model.pt", fail_after=4096 if disk_full else None)
        if kill_midway:  # fault injection: die with the checkpoint half-written
            os.kill(os.getpid(), signal.SIGKILL)
        hashes["optim.pt"] = save_file(optim, tmp / "optim.pt")
        hashes["train_state.pt"] = save_file(train_state, tmp / "train_state.pt")
        self._commit(tmp, final, {"format": FORMAT_VERSION, "step": step, "world_size": self.dist.world_size,
                                  "files": sorted(hashes), "sha256": hashes})
        self.prune()

    def _commit(self, tmp: Path, final: Path, meta: dict) -> None:
        """Rank 0, every file of `tmp` written: meta.json last inside it, the directory renamed into
        place, then `latest`. A crash before the rename leaves only `tmp`, never a complete-looking part."""
        write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=1))
        _fsync_dir(tmp)
        if final.exists():  # same step saved again (e.g. a re-run after a crash): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        write_text_atomic(self.root / "latest", final.name + "\n")

    # ---------------------------------------------------------------- sharded formats (dcp, deepspeed)
    def begin_save(self, step: int, train_state: dict, write_state: Callable[[Path], Future | None],
                   kind: str) -> Path:
        """Collective. RNG and loop state are written now; `write_state(dir)` writes model + optimizer on
        every rank and may return a future (an async write). The checkpoint is completed by `finish`,
        right away for a synchronous write, else at the next save or the end of the run."""
        self.finish()  # one write in flight at a time: the previous one completes first
        name = f"step_{step:08d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        error: BaseException | None = None
        try:
            if self.dist.is_main:
                self.root.mkdir(parents=True, exist_ok=True)
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir()
        except OSError as exc:
            error = exc
        self._check_all(error, final)
        hashes: dict[str, str] = {}
        try:
            rng_name = f"rng_rank{self.dist.rank}.pt"
            hashes[rng_name] = save_file(capture_rng(), tmp / rng_name)
            if self.dist.is_main:
                hashes["train_state.pt"] = save_file(train_state, tmp / "train_state.pt")
        except OSError as exc:
            error = exc
        self._check_all(error, final, tmp)
        handle = write_state(tmp / "state")
        if handle is not None:
            # Each rank hashes its own files in the background once its write has ended (DCP ends an
            # async save on every rank only after all shards and the index are written).
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtrain-ckpt-hash")
            handle = self._executor.submit(_wait_then_hash, handle, tmp / "state", self.dist.rank)
        self._pending = _Pending(step, tmp, final, handle, kind, hashes)
        if handle is None:
            self.finish()
        return final

    @property
    def pending(self) -> bool:
        """An async write is in flight (its checkpoint is not complete yet)."""
        return self._pending is not None

    @property
    def written(self) -> bool:
        """This rank's part of the write in flight has ended and is hashed (or none is in flight).
        Local, no collective: the ranks compare their answers at a meeting the loop already holds."""
        return self._pending is None or self._pending.handle is None or self._pending.handle.done()

    def poll(self, all_written: bool) -> None:
        """Complete the write in flight if `all_written`: every rank said `written` at the same meeting
        (the stop-request agreement, about once a second). Every rank calls it with the same value.

        No collective of its own, and none at all until the write has ended: a check every step would
        put a collective and a host sync into each step of exactly the time the write should overlap."""
        if all_written and self._pending is not None:
            self.finish()

    def finish(self) -> Path | None:
        """Collective. Wait for the write in flight (if any), then mark it complete: gather every rank's
        digests into meta.json, rename into place, point `latest` at it. Returns its path."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        error: BaseException | None = None
        hashes = dict(pending.hashes)
        try:
            if pending.handle is not None:
                hashes.update(pending.handle.result())
            else:  # a synchronous write: every rank hashes its own files now, side by side
                hashes.update(_hash_own(pending.tmp / "state", self.dist.rank))
        except Exception as exc:  # noqa: BLE001 - reported on every rank below
            error = exc
        self._check_all(error, pending.final, pending.tmp)
        every_rank = gather_objects(hashes, self.dist)
        error = None
        if self.dist.is_main:
            try:
                hashes = {k: v for h in every_rank for k, v in h.items()}
                self._commit(pending.tmp, pending.final, {
                    "format": FORMAT_VERSION, "kind": pending.kind, "step": pending.step,
                    "world_size": self.dist.world_size, "files": sorted(hashes), "sha256": hashes})
                if pending.best is not None:
                    write_text_atomic(self.root / "best.json", json.dumps(pending.best) + "\n")
                self.prune()
            except OSError as exc:
                error = exc
        self._check_all(error, pending.final, pending.tmp)
        return pending.final

    def abandon(self) -> None:
        """Wait for the write in flight to end and leave it incomplete (a run stopped by an error: its
        last checkpoint must not be marked complete, and no thread may write into a directory a
        resumed run will reuse)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.handle is not None:
            try:
                pending.handle.result()
            except Exception:  # noqa: BLE001 - it is being discarded anyway
                pass

    def _check_all(self, error: BaseException | None, final: Path, tmp: Path | None = None) -> None:
        """Every rank learns whether any rank failed; all raise the same CheckpointError if so."""
        failed = all_reduce_sum(0.0 if error is None else 1.0, self.dist)
        if not failed.item():
            return
        if tmp is not None and self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = self.newest_complete()
        raise _write_failed(final, error, previous)

    def mark_best(self, path: Path, metric: str, value: float, step: int) -> None:
        record = {"checkpoint": path.name, "metric": metric, "value": value, "step": step}
        if self._pending is not None and self._pending.final == path:
            self._pending.best = record  # still being written: best.json may name it once it is complete
        elif self.dist.is_main:
            write_text_atomic(self.root / "best.json", json.dumps(record) + "\n")

    def best(self) -> dict | None:
        try:
            return json.loads((self.root / "best.json").read_text())
        except (OSError, ValueError):
            return None

    def prune(self) -> None:
        complete = [p for p in self.list_steps() if self.read_meta(p) is not None]
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
    def read_meta(path: Path) -> dict | None:
        """meta.json of a finished checkpoint directory, or None (never finished, or unreadable)."""
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("files") else None

    def complete_newest_first(self) -> list[Path]:
        """Finished checkpoints, the one `latest` names first, then the rest from newest to oldest.

        Finished means meta.json was written; whether every file is intact is checked by `load`."""
        found = [p for p in reversed(self.list_steps()) if self.read_meta(p) is not None]
        try:
            named = self.root / (self.root / "latest").read_text().strip()
        except OSError:
            return found
        return [named] + [p for p in found if p != named] if named in found else found

    def agreed_newest_first(self) -> list[Path]:
        """Collective: rank 0's `complete_newest_first`, on every rank. A shared file system can show the
        ranks different listings for a while (NFS caches directory entries for seconds): ranks that each
        chose their own checkpoint would resume at different steps, or one would start fresh."""
        return broadcast_object(self.complete_newest_first() if self.dist.is_main else None, self.dist)

    def newest_complete(self) -> Path | None:
        """`latest` if it names a finished checkpoint, else the newest finished one on disk."""
        found = self.complete_newest_first()
        return found[0] if found else None

    def load(self, path: Path, model_only: bool = False) -> Loaded:
        """Collective: every rank calls it. This rank's part of a checkpoint, its bytes checked first;
        with `model_only` a torch-format optim.pt is neither read nor checked (`optim` is None).

        Each file under state/ is checked by one rank only, so no rank may go on alone: one all-reduce
        says whether every rank could load its part, and if not every rank raises the same
        CheckpointError, naming the damaged file whichever rank found it."""
        try:
            loaded, problem = self._load_here(Path(path), model_only), None
        except CheckpointError as exc:
            loaded, problem = None, str(exc)
        if all_reduce_sum(0.0 if problem is None else 1.0, self.dist).item():
            found = [p for p in gather_objects(problem, self.dist) if p]  # only on failure: a second collective
            raise CheckpointError("; ".join(dict.fromkeys(found)))
        return loaded

    def _load_here(self, path: Path, model_only: bool = False) -> Loaded:
        meta = self.read_meta(path)
        if meta is None:
            raise CheckpointError(
                f"{path} is not a complete dtrain checkpoint ({path / 'meta.json'} is missing or unreadable)"
            )
        kind, world = meta.get("kind", "torch"), meta["world_size"]
        if world != self.dist.world_size and kind == "deepspeed":
            raise CheckpointError(
                f"{path} is a DeepSpeed checkpoint written by {world} ranks and this run has "
                f"{self.dist.world_size}; resume it with {world} processes (a world-size change is supported "
                "for strategies ddp and fsdp)"
            )
        sums = meta.get("sha256", {})
        for name in meta["files"]:  # a missing part is named before anything is read
            if not (path / name).is_file():
                raise CheckpointError(f"checkpoint file {path / name} is missing (listed in {path / 'meta.json'})")
        _verify_state_files(path, meta, self.dist.rank, self.dist.world_size)
        part = lambda name: load_file(path / name, sums.get(name))  # noqa: E731
        torch_format = kind == "torch"
        return Loaded(
            path=path,
            model=part("model.pt") if torch_format else None,
            optim=part("optim.pt") if torch_format and not model_only else None,
            train_state=part("train_state.pt"),
            rng=part(f"rng_rank{self.dist.rank}.pt") if world == self.dist.world_size else None,
            world_size=world,
            kind=kind,
        )


def _write_failed(final: Path, error: BaseException | None, previous: Path | None) -> CheckpointError:
    """The error every rank raises once they agree a write failed; a rank that only learned it from the
    others is marked `echo`, and `dtrain` leaves the saying to the rank(s) that hit it."""
    if isinstance(error, OSError):
        cause = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
    else:
        cause = str(error) if error is not None else "another rank could not write its part"
    exc = CheckpointError(f"writing checkpoint {final} failed: {cause}; nothing was marked complete and "
                          f"{previous or 'no earlier checkpoint'} is intact. Free space or fix the directory, "
                          "then rerun with checkpoint.resume=auto")
    exc.echo = error is None
    return exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Per-rank files under state/, by the names their writers give them: DCP's FileSystemWriter writes
# `__<rank>_<n>.distcp` (rank in the checkpoint group, which spans every rank), DeepSpeed
# `[bf16_]zero_pp_rank_<dp rank>_mp_rank_<mp>_{optim,model}_states.pt` (dtrain has no model parallelism:
# dp rank = rank). Everything else is shared: written by rank 0 (DCP's .metadata, DeepSpeed's
# mp_rank_00_model_states.pt and recovery scripts, dtrain's model.safetensors) or of a layout unknown
# here - hashed by rank 0 then, which stays correct, only not spread over the ranks.
_RANK_FILE = re.compile(r"^__(\d+)_\d+\.distcp$|^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_")


def _writer(name: str) -> int | None:
    """The rank that wrote a file under state/ (by its name), or None for a shared file."""
    m = _RANK_FILE.match(Path(name).name)
    return None if m is None else int(m.group(1) or m.group(2))


def _hash_own(state: Path, rank: int) -> dict[str, str]:
    """sha256 of the files under `state` this rank wrote (rank 0: and the shared ones), by their name in
    meta.json. Run once the write has ended on every rank: listing the directory reads no file."""
    hashes = {}
    for p in sorted(state.rglob("*")):
        writer = _writer(p.name)
        if p.is_file() and (writer == rank or (writer is None and rank == 0)):
            hashes[f"state/{p.relative_to(state)}"] = _sha256(p)
    return hashes


def _wait_then_hash(write: Future, state: Path, rank: int) -> dict[str, str]:
    write.result()
    return _hash_own(state, rank)


def _checked_here(names: list[str], rank: int, world: int) -> list[str]:
    """The files under state/ that `rank` of `world` checks: those written by the saving ranks it stands
    for (rank, rank + world, ...: its own shards when the world size is unchanged, and every shard still
    checked by someone after a change), and every world-th shared file. Each file by exactly one rank."""
    state = sorted(n for n in names if n.startswith("state/"))
    checker = {n: i % world for i, n in enumerate(n for n in state if _writer(n) is None)}
    checker.update({n: w % world for n in state if (w := _writer(n)) is not None})
    return [n for n in state if checker[n] == rank]


def _verify_state_files(path: Path, meta: dict, rank: int = 0, world: int = 1) -> None:
    """Files under state/ are read by DCP / DeepSpeed, not by `load_file`: check their bytes first -
    this rank's share of them (see `_checked_here`); all of them in a single process (world 1)."""
    sums = meta.get("sha256", {})
    for name in _checked_here(meta["files"], rank, world):
        if name in sums and _sha256(path / name) != sums[name]:
            raise CheckpointError(f"checkpoint file {path / name} is corrupted: its sha256 does not match meta.json")


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's whole model weights (fp32 master weights where training kept them), whatever its
    format; `checkpoint` is one checkpoint or a run's checkpoints/ directory (then its newest)."""
    checkpoint = Path(checkpoint)
    if checkpoint.name == "checkpoints" or (checkpoint / "latest").is_file():
        latest = CheckpointManager(checkpoint, None).newest_complete()  # type: ignore[arg-type]
        if latest is None:
            raise CheckpointError(f"{checkpoint} holds no complete checkpoint")
        checkpoint = latest
    meta = CheckpointManager.read_meta(checkpoint)
    if meta is None:
        raise CheckpointError(f"{checkpoint} is not a complete dtrain checkpoint (no readable meta.json)")
    sums, kind = meta.get("sha256", {}), meta.get("kind", "torch")
    _verify_state_files(checkpoint, meta)
    if kind == "dcp":  # every rank's shard, joined into whole tensors
        from dtrain.dcp import UnsafeCheckpointError, read_full_model

        try:
            state = read_full_model(checkpoint / "state")
        except UnsafeCheckpointError as exc:
            raise CheckpointError(str(exc)) from None
    elif kind == "deepspeed":  # whole fp32 weights, written beside DeepSpeed's shards at save time
        from safetensors.torch import load_file as load_safetensors

        state = load_safetensors(str(checkpoint / "state" / "model.safetensors"))  # hash checked above
    else:
        state = load_file(checkpoint / "model.pt", sums.get("model.pt"))
    return state


def export_model(checkpoint: Path, out: Path) -> int:
    """Write a checkpoint's model weights as one safetensors file; returns the number of tensors."""
    from safetensors.torch import save_file as save_safetensors

    state = read_weights(checkpoint)
    # clone(): safetensors refuses tensors that share storage (tied weights).
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_safetensors(tensors, str(tmp), metadata={"source": str(checkpoint)})
    os.replace(tmp, out)
    return len(tensors)
