"""Sharded data sets larger than memory: a directory or glob of JSONL, CSV, Parquet or plain-text shards,
read lazily. A one-time index per shard (the byte offset of every row, cached in `cache_dir`: by default
beside the shards or, where their folder is read-only, in the user's cache; rebuilt when the shard's size
or mtime changes; for Parquet, the row groups' row counts from the file's own footer) gives random access
to sample i without reading the ones before it. What a process holds does not grow with the number of
shards: a data file is opened per read, a row's offsets are read from its index with one pread, and a
data set keeps at most `OPEN_INDEXES` open indexes and `ROW_GROUPS_KEPT` decoded Parquet row groups, over
all its shards together.

`ShardedDataset` is an ordinary map-style `Dataset`, so the samplers, DataLoader workers and checkpoints
work with it as with an in-memory list. `BlockShuffle` is a permutation of its indices for (seed, epoch)
held in memory proportional to the number of blocks and one window, not to the number of samples.
"""

from __future__ import annotations

import array
import csv
import errno
import glob
import hashlib
import io
import json
import mmap
import os
import secrets
import socket
import sys
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

INDEX_VERSION = 1
KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "text", ".parquet": "parquet", ".tar": "tar"}

# Both bounds follow BlockShuffle's window: 8 blocks of consecutive samples are read mixed together, and a
# block lies within at most 2 shards (or 2 equal row groups: a Parquet set's block is its largest group),
# so a window's reads touch about 16 shards or groups, and all of them stay held while it is read. Fewer
# kept row groups decode a group again for nearly every row (8 kept: 16.4k -> 0.6k samples/s on
# benchmarks/data_loading.py's Parquet set, one process); a file's short last group can put 3 groups in a
# block, which costs a few repeat decodes (31 instead of 27 per 100k samples there), not throughput. With
# shards smaller than a block a window touches more shards: a read then opens the index anew (~5 us).
OPEN_INDEXES = 16
ROW_GROUPS_KEPT = 16


class Recent:
    """At most `size` values by key, the least recently used dropped first (`drop` is called on a value
    that goes). A data set owns one for its open indexes and one for its decoded row groups, shared by all
    its shards, so the bound holds over the shards together. It is emptied in a new process: a DataLoader
    worker, forked or spawned, starts with nothing held (a pickled one carries no descriptor or group).
    Threads may share it: a value is made outside the lock (row groups decode in parallel), and `use`
    runs under it, so a descriptor is not closed by another thread's eviction while it is read."""

    def __init__(self, size: int, drop: Callable[[Any], None] | None = None):
        self.size, self.drop = size, drop
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._pid, self._lock = os.getpid(), threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any], use: Callable[[Any], Any] | None = None) -> Any:
        """The value of `key` (made if it is not held), or `use(value)` if `use` is given."""
        if self._pid != os.getpid():  # a forked worker: its copies of the parent's values are not to keep
            self._pid, self._lock = os.getpid(), threading.Lock()  # (another thread may have held the old)
            self.clear()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return use(self._items[key]) if use else self._items[key]
            self._shrink(self.size - 1)  # room first: one process never holds size + 1 at once
        value = make()
        with self._lock:
            if key in self._items:  # another thread made it meanwhile: keep one
                self._dropped(value)
                value = self._items[key]
            else:
                self._shrink(self.size - 1)
                self._items[key] = value
            return use(value) if use else value

    def _shrink(self, size: int) -> None:
        while self._items and len(self._items) > max(size, 0):
            self._dropped(self._items.popitem(last=False)[1])

    def clear(self) -> None:
        """Let every value go (descriptors closed)."""
        with self._lock:
            self._shrink(0)

    def _dropped(self, value: Any) -> None:
        if self.drop is not None:
            self.drop(value)

    def __len__(self) -> int:
        return len(self._items) if self._pid == os.getpid() else 0

    def __del__(self) -> None:
        try:
            self.clear()  # the descriptors it holds
        except Exception:  # at interpreter exit the modules may be gone; the process closes them then
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "drop": self.drop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["size"], state["drop"])


def _release(index: int | np.ndarray) -> None:
    """An open index leaves the data set's Recent: a descriptor is closed; a mapping goes with its last
    reference."""
    if isinstance(index, int):
        os.close(index)


def user_cache_dir() -> Path:
    """Where indexes go when the shards' folder is read-only: $XDG_CACHE_HOME/dtrain/shard-index, or
    ~/.cache/dtrain/shard-index."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dtrain" / "shard-index"


def _publish(target: Path, write: Callable[[Path], None]) -> None:
    """`write` a temporary beside `target`, then rename it over `target` (atomic: a reader sees the old file
    or the whole new one). Ranks on several nodes may index the same shard at once on a shared file system,
    and pids repeat across nodes: the temporary's name has the host, the pid and a random part, so two
    writers never write into the same half-written file."""
    tmp = target.with_name(f"{target.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                           f"{target.suffix}")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class ShardError(ValueError):
    """A shard that cannot be read as its kind; the message names the shard and the row."""


def _row_starts(path: Path, kind: str) -> tuple[np.ndarray, bytes | None]:
    """Byte offsets of every row's start plus the end of the last one (n + 1 numbers), and the CSV
    header line. Blank lines are no rows. CSV rows may span lines inside quotes (RFC 4180): a row ends
    at a newline only where the quotes so far are balanced."""
    starts = array.array("q")  # 8 bytes a row while indexing (a list would hold ~36 per row)
    header: bytes | None = None
    wants_header = kind == "csv"
    pos, open_quotes, row_start, header_parts = 0, False, None, []
    with open(path, "rb") as f:
        for line in f:
            if row_start is None:
                if not line.strip():
                    pos += len(line)
                    continue
                row_start = pos
            if kind == "csv":
                open_quotes ^= line.count(b'"') % 2 == 1
            if wants_header:
                header_parts.append(line)
            pos += len(line)
            if not open_quotes:
                if wants_header:
                    header, wants_header = b"".join(header_parts), False
                else:
                    starts.append(row_start)
                row_start = None
    if open_quotes:
        raise ShardError(f"{path}: a quoted field opened at byte {row_start} is never closed (a truncated shard?)")
    if row_start is not None:  # a last row without a newline
        starts.append(row_start)
    starts.append(pos)
    return np.frombuffer(starts, dtype=np.int64), header


def content_digest(path: Path, tail_only: bool = False) -> str:
    """crc32 of the file's bytes (hex), read in large blocks: what a checkpoint's data fingerprint holds
    besides size and rows, so that an edit that keeps both (a label fixed in place) is seen. Computed once,
    when a shard is indexed (the same bytes the index pass just read, from the page cache: ~1 GB/s).
    `tail_only`: the last 64 KiB, for Parquet (no index; its footer holds every column chunk's offsets,
    sizes and statistics, which an edit of the values rewrites)."""
    crc = 0
    with open(path, "rb") as f:
        if tail_only:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


class Shard:
    """One file, its rows found through a cached offset index."""

    def __init__(self, path: Path, kind: str, cache_dir: Path | Sequence[Path], columns: list[str] | None = None,
                 indexes: Recent | None = None):
        """`cache_dir`: where the index is looked for, in order (the first fresh one is used); a new one is
        written to the first of them that is writable. `indexes`: the data set's open indexes (descriptors
        or mappings), shared by its shards."""
        self.path, self.kind, self.columns = path, kind, columns
        self._indexes = indexes if indexes is not None else Recent(OPEN_INDEXES, _release)
        st = path.stat()
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        # Keyed by the resolved path alone: a changed shard's new index replaces its old one (the size and
        # mtime in the meta file say whether it is fresh) instead of piling up in a shared user cache.
        name = f"{path.name}.{hashlib.sha1(f'{path.resolve()}'.encode()).hexdigest()[:16]}.idx.npy"
        dirs = [Path(cache_dir)] if isinstance(cache_dir, (str, Path)) else [Path(d) for d in cache_dir]
        want = {"version": INDEX_VERSION, "size": self.size, "mtime_ns": self.mtime_ns, "kind": kind}
        meta = next((m for m in (self._fresh(d / name, want) for d in dirs) if m is not None), None)
        if meta is None:  # first use, or the shard changed: index it once
            meta = self._write_index(dirs, name, want)
        self.rows = meta["rows"]
        self.digest: str = meta["digest"]
        self._meta = meta
        self._opened(meta)

    def _fresh(self, index_path: Path, want: dict[str, Any]) -> dict[str, Any] | None:
        """The meta of the index at `index_path` if it is there and fresh for this shard (else None); notes
        where the array starts in the .npy, so reads find a row's offsets without parsing its header."""
        try:
            meta = json.loads(index_path.with_suffix(".json").read_text())
            if {k: meta.get(k) for k in want} != want or "digest" not in meta:  # (indexes of before the digest)
                return None
            with open(index_path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                self._layout = (shape, dtype, f.tell(), os.fstat(f.fileno()).st_size)
        except (OSError, ValueError):
            return None
        self.index_path = index_path
        return meta

    def _write_index(self, dirs: list[Path], name: str, want: dict[str, Any]) -> dict[str, Any]:
        table, extra = self._build_index()
        meta = {**want, **extra, "digest": content_digest(self.path)}
        for d in dirs:
            try:
                d.mkdir(parents=True, exist_ok=True)
                _publish(d / name, lambda tmp: np.save(tmp, table))
                _publish((d / name).with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta)))
            except OSError as exc:
                if exc.errno in _UNWRITABLE or isinstance(exc, (FileExistsError, NotADirectoryError)):
                    continue  # a read-only data mount (or a file in the way): the next folder, the user's cache
                raise
            if self._fresh(d / name, want) is None:
                raise ShardError(f"{d / name}: the index of {self.path} was replaced while written (is another "
                                 "process indexing a changed copy?); restart once the shard stays put")
            return meta
        tried = ", ".join(str(d) for d in dirs)
        raise ShardError(f"{self.path}: no writable folder for its index (tried {tried}); "
                         "give ShardedDataset a writable cache_dir, or set XDG_CACHE_HOME to one")

    @property
    def offsets(self) -> np.ndarray:
        """The whole index, memory-mapped (paged in as touched), kept among the data set's open indexes."""
        return self._indexes.get((self.index_path, "map"), self._map_index)

    def _open_index(self) -> int:
        try:
            fd = os.open(self.index_path, os.O_RDONLY)
        except OSError as exc:
            raise ShardError(f"{self.index_path}: the index of {self.path} cannot be read ({exc.strerror}); "
                             "was the index cache cleaned? restart to re-index") from None
        if os.fstat(fd).st_size != self._layout[3]:
            os.close(fd)
            raise ShardError(f"{self.index_path}: the index of {self.path} changed while in use; restart to re-index")
        return fd

    def _map_index(self) -> np.ndarray:
        shape, dtype, start, _ = self._layout
        fd = self._open_index()
        try:
            # Python's mmap keeps a duplicate descriptor until the mapping goes (`trackfd=False` from 3.13
            # drops it): a mapping per shard, as np.load(mmap_mode="r") made, held a descriptor per shard.
            extra = {"trackfd": False} if sys.version_info >= (3, 13) else {}
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ, **extra)
        finally:
            os.close(fd)
        return np.ndarray(shape, dtype, buffer=mapped, offset=start)

    def _build_index(self) -> tuple[np.ndarray, dict[str, Any]]:
        starts, header = _row_starts(self.path, self.kind)
        return starts, {"rows": len(starts) - 1, "header": header.decode("utf-8", "replace") if header else None}

    def _opened(self, meta: dict[str, Any]) -> None:
        self.header = meta.get("header")
        kind, columns, path = self.kind, self.columns, self.path
        self._columns = next(csv.reader([self.header.lstrip("\ufeff")])) if kind == "csv" and self.header else None
        if kind == "csv" and columns:
            _check_columns(path, columns, self._columns or [])

    def _pread(self, spans: list[tuple[int, int]], row: int) -> list[bytes]:
        # Opened per read, not held: a directory of thousands of shards would exhaust the descriptors of
        # every DataLoader worker. One fstat on that descriptor checks it is still the indexed file.
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise ShardError(f"{self.path}: cannot be read ({exc.strerror}); was it moved or deleted?") from None
        try:
            if os.fstat(fd).st_size != self.size:
                raise ShardError(f"{self.path} changed since it was indexed (row {row + 1}); restart to re-index it")
            return [os.pread(fd, size, offset) for offset, size in spans]
        finally:
            os.close(fd)

    def _span(self, row: int) -> tuple[int, int]:
        """Row `row`'s (start, end) bytes: one pread of two numbers on the index's descriptor, held among
        the data set's last OPEN_INDEXES. A mapping per index (`offsets`) would cost a remap on each read
        once a shuffle window spans more shards than are kept (twice this read's time, measured)."""
        _, dtype, start, _ = self._layout
        raw = self._indexes.get((self.index_path, "fd"), self._open_index,
                                lambda fd: os.pread(fd, 2 * dtype.itemsize, start + row * dtype.itemsize))
        first, last = np.frombuffer(raw, dtype).tolist()
        return first, last

    def distinct(self, column: str) -> list[str]:
        """The distinct non-empty values of `column` over this shard's rows, as stripped strings (a
        recipe's labels, found without being listed). Read once, by one pass over the file along its
        index, and kept in the index's meta file: a changed shard is re-indexed, and read again."""
        cached = self._meta.get("distinct", {}).get(column)
        if cached is not None:
            return cached
        found: set[str] = set()
        if self.rows:
            starts = np.asarray(self.offsets).tolist()
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for row in range(self.rows):
                    value = self._decode(data[starts[row]:starts[row + 1]], row).get(column)
                    if value is not None and str(value).strip():
                        found.add(str(value).strip())
        values = sorted(found)
        self._meta = {**self._meta, "distinct": {**self._meta.get("distinct", {}), column: values}}
        try:  # beside the index it was read with; where that cannot be written, found again next time
            _publish(self.index_path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(self._meta)))
        except OSError:
            pass
        return values

    def read(self, row: int) -> dict[str, Any]:
        start, end = self._span(row)
        return self._decode(self._pread([(start, end - start)], row)[0], row)

    def _decode(self, raw: bytes, row: int) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ShardError(f"{self.path} row {row + 1}: not UTF-8 (byte 0x{raw[exc.start]:02x}); "
                             "save the shard as UTF-8") from None
        if self.kind == "jsonl":
            try:
                record = json.loads(text)
            except ValueError as exc:
                raise ShardError(f"{self.path} row {row + 1}: not a JSON object ({exc})") from None
            if not isinstance(record, dict):
                raise ShardError(f"{self.path} row {row + 1}: expected a JSON object, got {type(record).__name__}")
            if self.columns:
                _check_columns(self.path, self.columns, record, f" row {row + 1}")
            return record
        if self.kind == "csv":
            values = next(csv.reader(io.StringIO(text)))
            if len(values) != len(self._columns or []):
                raise ShardError(f"{self.path} row {row + 1}: {len(values)} fields, the header has "
                                 f"{len(self._columns or [])}")
            return dict(zip(self._columns, values))
        return {"text": text.rstrip("\r\n")}


class TarShard(Shard):
    """One uncompressed tar in webdataset's layout: consecutive members `key.ext` with the same key are one
    sample, read as {ext: bytes} (e.g. {"png": ..., "cls": b"3"}). The index holds each member's (sample,
    offset, size, extension) and, for `.cls` members, the integer they hold, so the class list is known
    without reading the samples."""

    def _build_index(self) -> tuple[np.ndarray, dict[str, Any]]:
        import tarfile

        rows, exts, last_key, sample = [], {}, None, -1
        try:
            with tarfile.open(self.path, "r:") as tar:  # "r:": a compressed tar cannot be read at an offset
                for m in tar:
                    if not m.isfile():
                        continue
                    folder, _, base = m.name.rpartition("/")
                    stem, _, ext = base.partition(".")  # webdataset: the key ends at the first dot
                    key = f"{folder}/{stem}"
                    if key != last_key:
                        sample, last_key = sample + 1, key
                    value = -1
                    if ext == "cls":
                        text = tar.extractfile(m).read().strip()
                        value = int(text) if text.isdigit() else -1
                    rows.append((sample, m.offset_data, m.size, exts.setdefault(ext, len(exts)), value))
        except (tarfile.TarError, EOFError) as exc:
            raise ShardError(f"{self.path}: not a readable uncompressed tar ({exc}); a truncated or compressed "
                             "shard? (tar shards must be plain .tar)") from None
        return np.asarray(rows, dtype=np.int64).reshape(-1, 5), {"rows": sample + 1, "extensions": list(exts)}

    def _opened(self, meta: dict[str, Any]) -> None:
        self.extensions = meta["extensions"]

    def labels(self) -> np.ndarray:
        """The `.cls` value of every sample (-1 where it has none): from the index, no sample read."""
        out = np.full(self.rows, -1, dtype=np.int64)
        table = self.offsets
        cls = [i for i, e in enumerate(self.extensions) if e == "cls"]
        if cls:
            mine = table[table[:, 3] == cls[0]]
            out[mine[:, 0]] = mine[:, 4]
        return out

    def read(self, row: int) -> dict[str, Any]:
        table = self.offsets
        lo = int(np.searchsorted(table[:, 0], row, side="left"))
        hi = int(np.searchsorted(table[:, 0], row, side="right"))
        members = [(int(o), int(n), self.extensions[int(e)]) for _, o, n, e, _ in table[lo:hi]]
        data = self._pread([(o, n) for o, n, _ in members], row)
        return {ext: raw for (_, _, ext), raw in zip(members, data)}


def _check_columns(path: Path, wanted: list[str], present, where: str = "") -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ShardError(f"{path}{where}: no column {missing[0]!r} (it has {', '.join(map(str, present)) or 'none'}); "
                         "fix the shard or name the column the data has")


class ParquetShard:
    """One Parquet file: rows found through its row groups (their row counts are in the file's footer, so
    no index is built). A read decodes the row's whole row group, kept among the data set's last
    `ROW_GROUPS_KEPT` decoded groups, over all its shards: the block shuffle's blocks are row-group sized
    (ShardedDataset.block_order), so a window of 8 blocks stays within the kept groups and each group is
    decoded about once an epoch per worker. Keep row groups small (up to ~64k rows; `row_group_size` when
    writing): a worker holds 16 decoded, whatever the number of files."""

    kind = "parquet"

    def __init__(self, path: Path, columns: list[str] | None = None, keep: int = ROW_GROUPS_KEPT,
                 groups: Recent | None = None):
        """`groups`: the data set's decoded row groups, shared by its shards (a shard alone keeps `keep`)."""
        self.path, self.columns = path, columns
        self._groups = groups if groups is not None else Recent(keep)
        st = path.stat()
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        meta = self._open().metadata
        names = meta.schema.names
        if columns:
            _check_columns(path, columns, names)
        self.group_rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.ends = np.cumsum(self.group_rows, dtype=np.int64)
        self.rows = int(self.ends[-1]) if len(self.ends) else 0
        self.digest = content_digest(path, tail_only=True)

    def _open(self):
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except (OSError, pyarrow.ArrowException) as exc:
            raise ShardError(f"{self.path}: not a readable Parquet file ({str(exc).splitlines()[0]}); "
                             "a truncated or unfinished shard?") from None

    def distinct(self, column: str) -> list[str]:
        """As Shard.distinct: one column read (Parquet stores it apart), nothing cached."""
        import pyarrow.compute as pc

        values = pc.unique(self._open().read(columns=[column]).column(0)).to_pylist()
        return sorted({str(v).strip() for v in values if v is not None and str(v).strip()})

    def read(self, row: int) -> dict[str, Any]:
        g = int(np.searchsorted(self.ends, row, side="right"))
        table = self._groups.get((self.path, g), lambda: self._decode(g, row))
        first = int(self.ends[g - 1]) if g else 0
        return table.slice(row - first, 1).to_pylist()[0]

    def _decode(self, g: int, row: int):
        try:
            size = os.stat(self.path).st_size
        except OSError as exc:
            raise ShardError(f"{self.path}: cannot be read ({exc.strerror}); was it moved or deleted?") from None
        if size != self.size:
            raise ShardError(f"{self.path} changed since it was indexed (row {row + 1}); restart to re-index it")
        # Opened per row group, not held (thousands of shards, every worker); the file is not mapped.
        return self._open().read_row_group(g, columns=self.columns)


class ShardedDataset(Dataset):
    """Every row of every shard matched by `source` (a directory, a glob, a file, or a list of them),
    shards in sorted order, rows in file order: sample i is a dict (JSONL object, CSV row by header,
    Parquet row by column, {"text": line}). The Trainer shuffles it by blocks (`block_order`) and records
    its `fingerprint` in
    every checkpoint: a resume on changed data is refused, naming the shard."""

    def __init__(self, source: str | Path | list, cache_dir: str | Path | None = None,
                 columns: list[str] | None = None, dist=None):
        """`columns`: the keys every sample must have (checked per file for CSV and Parquet, per row for
        JSONL, a missing one named with its shard); Parquet reads only these. `cache_dir`: where the shards'
        indexes go; by default `<shards>/.dtrain-index`, or `user_cache_dir()` where that cannot be written.
        `dist` (a DistState, e.g. BuildContext.dist; every rank must pass it): the ranks index the shards in
        turns instead of each indexing all of them."""
        files = _expand(source)
        if not files:
            raise ShardError(f"no JSONL, CSV, Parquet, .txt or .tar shards found at {source}")
        # Beside the shards by default; where that folder cannot be written (a read-only data mount) new
        # indexes go to the user's cache, while ones already beside the shards are still read.
        cache = [Path(cache_dir)] if cache_dir else [files[0].parent / ".dtrain-index", user_cache_dir()]
        self.open_indexes = Recent(OPEN_INDEXES, _release)
        """The shards' indexes this process holds open (at most OPEN_INDEXES descriptors or mappings, over
        all shards; a data file is opened per read)."""
        self.row_groups = Recent(ROW_GROUPS_KEPT)
        """The decoded Parquet row groups this process holds (at most ROW_GROUPS_KEPT, over all shards)."""
        for path in files:
            if KINDS.get(path.suffix.lower()) is None:
                raise ShardError(f"{path}: unknown shard kind (use .jsonl, .csv, .parquet, .txt or .tar)")
        if dist is not None and dist.world_size > 1:
            _index_in_turns(files, cache, columns, dist)
        self.shards: list[Shard | ParquetShard] = [self._shard(p, cache, columns) for p in files]
        self.ends = np.cumsum([s.rows for s in self.shards])
        groups = [g for s in self.shards if isinstance(s, ParquetShard) for g in s.group_rows]
        self.block_order: int = min(65536, max(groups)) if groups else 65536
        """The shuffle's block (see BlockShuffle): 65,536 samples, or with Parquet shards their largest row
        group, so a window of blocks touches few row groups (each read decodes a whole one)."""

    def _shard(self, path: Path, cache: list[Path], columns: list[str] | None) -> Shard | ParquetShard:
        kind = KINDS[path.suffix.lower()]
        if kind == "parquet":
            return ParquetShard(path, columns, groups=self.row_groups)
        return (TarShard if kind == "tar" else Shard)(path, kind, cache, columns, indexes=self.open_indexes)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        k = int(np.searchsorted(self.ends, i, side="right"))
        return self.shards[k].read(i - (int(self.ends[k - 1]) if k else 0))

    def locate(self, i: int) -> tuple[Path, int]:
        """(shard, 1-based row) of sample i: for messages that name where a bad sample is."""
        k = int(np.searchsorted(self.ends, i, side="right"))
        return self.shards[k].path, i - (int(self.ends[k - 1]) if k else 0) + 1

    def distinct(self, column: str, dist=None) -> list[str]:
        """The sorted distinct non-empty values of `column` over every shard (e.g. the labels a recipe
        trains on, when nobody listed them): one pass per shard the first time, then kept with its index.
        With `dist` (every rank must pass it) the ranks read the shards in turns, as they index them, and
        share what they found."""
        if any(s.kind == "tar" for s in self.shards):
            raise ShardError("distinct values are read from JSONL, CSV and Parquet shards; tar shards hold their "
                             "classes in .cls members (TarShard.labels)")
        if dist is None or dist.world_size == 1:
            return sorted(set().union(*(s.distinct(column) for s in self.shards)))
        return sorted(set().union(*_in_turns(self.shards, lambda shard: shard.distinct(column), dist)))

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data for a checkpoint: every shard's name, size, rows and content digest (small)."""
        return {"index_version": INDEX_VERSION,
                "shards": [[s.path.name, s.size, s.rows, s.digest] for s in self.shards]}


class ShardedView(Dataset):
    """A recipe's view of a ShardedDataset (`self.rows`): it decodes each row its own way in __getitem__
    and forwards what the Trainer asks of sharded data: the length, the `fingerprint` recorded in every
    checkpoint (a resume on changed data is refused) and the shuffle's `block_order`."""

    rows: ShardedDataset

    def __init__(self, rows: ShardedDataset):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> dict[str, Any]:
        return self.rows.fingerprint()

    @property
    def block_order(self) -> int:
        return self.rows.block_order


def held_out_rows(data: ShardedDataset, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of the rows of `data` held out (a validation split of shards that came without one):
    those whose identity, (shard file name, row number), hashes below `fraction` under `seed`. Decided per
    row with no row read, so the same rows at any world size, DataLoader worker count or listing order;
    8 bytes per held-out row."""
    held = []
    start = 0
    for shard in data.shards:
        rows = np.arange(shard.rows, dtype=np.uint64)
        key = np.uint64((zlib.crc32(shard.path.name.encode()) << 32) ^ (seed & 0xFFFFFFFF))
        h = rows ^ key
        with np.errstate(over="ignore"):  # splitmix64's finaliser, wrapping as it should
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
        u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        held.append(np.flatnonzero(u < fraction).astype(np.int64) + start)
        start += shard.rows
    return np.concatenate(held) if held else np.zeros(0, dtype=np.int64)


class RowSubset:
    """Some rows of a ShardedDataset, read through it as a ShardedDataset is read (length, rows, `locate`,
    `fingerprint`, `block_order`): `index` (sorted) itself, or with `complement` every other row. The
    complement maps position i to row i + (held-out rows before it) by a binary search over `index`, so
    it costs nothing beyond `index`."""

    def __init__(self, data: ShardedDataset, index: np.ndarray, complement: bool = False, name: str = ""):
        self.data, self.index, self.complement, self.name = data, index, complement, name
        self._before = index - np.arange(len(index))  # held-out rows' positions among the kept rows
        self.block_order = data.block_order

    def __len__(self) -> int:
        return len(self.data) - len(self.index) if self.complement else len(self.index)

    def row(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        if not self.complement:
            return int(self.index[i])
        return i + int(np.searchsorted(self._before, i, side="right"))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.data[self.row(i)]

    def locate(self, i: int) -> tuple[Path, int]:
        return self.data.locate(self.row(i))

    def fingerprint(self) -> dict[str, Any]:
        return {**self.data.fingerprint(), "subset": {"name": self.name, "held_out": len(self.index),
                                                      "complement": self.complement}}


def _index_in_turns(files: list[Path], cache: list[Path], columns: list[str] | None, dist) -> None:
    """Rank r indexes shards r, r + world, ... that have no fresh index, then every rank waits for all:
    on a shared cache each byte is read by one rank, not by all of them (10^4 shards of 10^9 rows: ~8 min
    for one process at ~2 M rows/s, ~7 s each for 64)."""

    def index(path: Path) -> None:
        kind = KINDS[path.suffix.lower()]
        if kind != "parquet":  # Parquet needs no index
            (TarShard if kind == "tar" else Shard)(path, kind, cache, columns)

    _in_turns(files, index, dist)


def _in_turns(items: list, work, dist) -> list:
    """Rank r runs `work` on items r, r + world, ...; returns every rank's results (rank 0's first). A
    failure on any rank is raised on every rank (a rank that raised alone would leave the others waiting
    in the collective)."""
    from dtrain.dist import gather_objects

    done, problem = [], None
    try:
        done = [work(item) for item in items[dist.rank::dist.world_size]]
    except (ShardError, OSError) as exc:
        problem = str(exc)
    every = gather_objects((done, problem), dist)
    found = [p for _, p in every if p]
    if found:
        raise ShardError(found[0])
    return [result for results, _ in every for result in results]


def _expand(source: str | Path | list) -> list[Path]:
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in _expand(s)]
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in KINDS)
    if path.is_file():
        return [path]
    return sorted(Path(p) for p in glob.glob(str(source)) if Path(p).suffix.lower() in KINDS)


class BlockShuffle:
    """A permutation of range(n) for (seed, epoch) that never materializes n numbers.

    The indices are cut into blocks of `block` consecutive indices (rows of one shard, mostly, so reads
    stay local); the blocks are permuted, and `window` blocks at a time are mixed by a permutation of
    their members. Memory: n / block block numbers and one window's permutation. `order[p]` is the
    sample at global position p, for any p, computed the same on every rank and worker."""

    def __init__(self, n: int, seed: int, epoch: int, block: int = 65536, window: int = 8):
        self.n, self.block, self.window = n, block, window
        self.seed, self.epoch = seed, epoch
        nblocks = -(-n // block)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        self.blocks = torch.randperm(nblocks, generator=g).numpy()
        sizes = np.full(nblocks, block, dtype=np.int64)
        if nblocks:
            sizes[-1] = n - (nblocks - 1) * block
        per_window = [int(sizes[self.blocks[w:w + window]].sum()) for w in range(0, nblocks, window)]
        self.window_ends = np.cumsum(per_window, dtype=np.int64)
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n

    def _members(self, w: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != w:
            ids = [np.arange(b * self.block, min((b + 1) * self.block, self.n), dtype=np.int64)
                   for b in self.blocks[w * self.window:(w + 1) * self.window]]
            members = np.concatenate(ids)
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 7_919 + w + 1)
            self._cached = (w, members[torch.randperm(len(members), generator=g).numpy()])
        return self._cached[1]

    def __getitem__(self, p: int) -> int:
        if not 0 <= p < self.n:
            raise IndexError(f"position {p} of {self.n}")
        w = int(np.searchsorted(self.window_ends, p, side="right"))
        return int(self._members(w)[p - (int(self.window_ends[w - 1]) if w else 0)])

    def positions(self, start: int, step: int, stop: int | None = None) -> Iterator[int]:
        """order[start], order[start + step], ... up to `stop` (rank r of W: start + r, step W)."""
        for p in range(start, self.n if stop is None else stop, step):
            yield self[p]


def describe_data(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, shard by shard ('b.csv: 120 -> 180 bytes')."""
    # [name, size, rows, digest]; checkpoints written before the digest hold three
    before = {s[0]: tuple(s[1:]) for s in old.get("shards", [])}
    after = {s[0]: tuple(s[1:]) for s in new.get("shards", [])}
    lines = [f"{name}: removed" for name in sorted(set(before) - set(after))]
    lines += [f"{name}: added" for name in sorted(set(after) - set(before))]
    for name in sorted(set(before) & set(after)):
        (size_a, rows_a, *dig_a), (size_b, rows_b, *dig_b) = before[name], after[name]
        if (size_a, rows_a) != (size_b, rows_b):
            lines.append(f"{name}: {size_a} -> {size_b} bytes, {rows_a} -> {rows_b} rows")
        elif dig_a and dig_b and dig_a != dig_b:
            lines.append(f"{name}: its content changed (same {size_a} bytes and {rows_a} rows; crc32 "
                         f"{dig_a[0]} -> {dig_b[0]})")
    if old.get("index_version") != new.get("index_version"):
        lines.append(f"index version {old.get('index_version')} -> {new.get('index_version')}")
    return lines
