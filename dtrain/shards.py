"""Sharded data sets larger than memory: a directory or glob of JSONL, CSV, Parquet or plain-text shards,
read lazily. A one-time index per shard (the byte offset of every row, cached beside the data's user in
`cache_dir`, memory-mapped, rebuilt when the shard's size or mtime changes; for Parquet, the row groups'
row counts from the file's own footer) gives random access to sample i without reading the ones before
it; a process holds no more than the pages it touches (Parquet: a few decoded row groups).

`ShardedDataset` is an ordinary map-style `Dataset`, so the samplers, DataLoader workers and checkpoints
work with it as with an in-memory list. `BlockShuffle` is a permutation of its indices for (seed, epoch)
held in memory proportional to the number of blocks and one window, not to the number of samples.
"""

from __future__ import annotations

import array
import csv
import glob
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

INDEX_VERSION = 1
KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "text", ".parquet": "parquet", ".tar": "tar"}


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


class Shard:
    """One file, its rows found through a cached offset index."""

    def __init__(self, path: Path, kind: str, cache_dir: Path, columns: list[str] | None = None):
        self.path, self.kind, self.columns = path, kind, columns
        st = path.stat()
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        key = hashlib.sha1(f"{path.resolve()}".encode()).hexdigest()[:16]
        self.index_path = cache_dir / f"{path.name}.{key}.idx.npy"
        meta_path = self.index_path.with_suffix(".json")
        want = {"version": INDEX_VERSION, "size": self.size, "mtime_ns": self.mtime_ns, "kind": kind}
        try:
            meta = json.loads(meta_path.read_text())
            fresh = {k: meta.get(k) for k in want} == want and self.index_path.is_file()
        except (OSError, ValueError):
            fresh = False
        if not fresh:  # first use, or the shard changed: index it once
            table, extra = self._build_index()
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.index_path.with_name(self.index_path.name + f".{os.getpid()}.tmp.npy")
            np.save(tmp, table)
            os.replace(tmp, self.index_path)
            meta_tmp = meta_path.with_name(meta_path.name + f".{os.getpid()}.tmp")
            meta_tmp.write_text(json.dumps({**want, **extra}))
            os.replace(meta_tmp, meta_path)
        meta = json.loads(meta_path.read_text())
        self.offsets = np.load(self.index_path, mmap_mode="r")  # paged in as touched, not held
        self.rows = meta["rows"]
        self._opened(meta)

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

    def read(self, row: int) -> dict[str, Any]:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        raw = self._pread([(start, end - start)], row)[0]
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
        table = np.asarray(self.offsets)
        cls = [i for i, e in enumerate(self.extensions) if e == "cls"]
        if cls:
            mine = table[table[:, 3] == cls[0]]
            out[mine[:, 0]] = mine[:, 4]
        return out

    def read(self, row: int) -> dict[str, Any]:
        lo = int(np.searchsorted(self.offsets[:, 0], row, side="left"))
        hi = int(np.searchsorted(self.offsets[:, 0], row, side="right"))
        members = [(int(o), int(n), self.extensions[int(e)]) for _, o, n, e, _ in self.offsets[lo:hi]]
        data = self._pread([(o, n) for o, n, _ in members], row)
        return {ext: raw for (_, _, ext), raw in zip(members, data)}


def _check_columns(path: Path, wanted: list[str], present, where: str = "") -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ShardError(f"{path}{where}: no column {missing[0]!r} (it has {', '.join(map(str, present)) or 'none'}); "
                         "fix the shard or name the column the data has")


class ParquetShard:
    """One Parquet file: rows found through its row groups (their row counts are in the file's footer, so
    no index is built). A read decodes the row's whole row group, and the last 16 decoded are kept: the
    block shuffle's blocks are then row-group sized (ShardedDataset.block_order), so a window of 8 blocks
    stays within the kept groups and each group is decoded about once an epoch per worker. Keep row groups
    small (up to ~64k rows; `row_group_size` when writing): a worker holds 16 decoded."""

    kind = "parquet"

    def __init__(self, path: Path, columns: list[str] | None = None, keep: int = 16):
        self.path, self.columns, self.keep = path, columns, keep
        st = path.stat()
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        meta = self._open().metadata
        names = meta.schema.names
        if columns:
            _check_columns(path, columns, names)
        self.group_rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.ends = np.cumsum(self.group_rows, dtype=np.int64)
        self.rows = int(self.ends[-1]) if len(self.ends) else 0
        self._groups: dict[int, Any] = {}  # row group -> decoded table, oldest first

    def _open(self):
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except (OSError, pyarrow.ArrowException) as exc:
            raise ShardError(f"{self.path}: not a readable Parquet file ({str(exc).splitlines()[0]}); "
                             "a truncated or unfinished shard?") from None

    def read(self, row: int) -> dict[str, Any]:
        g = int(np.searchsorted(self.ends, row, side="right"))
        table = self._groups.pop(g, None)
        if table is None:
            try:
                size = os.stat(self.path).st_size
            except OSError as exc:
                raise ShardError(f"{self.path}: cannot be read ({exc.strerror}); was it moved or deleted?") from None
            if size != self.size:
                raise ShardError(f"{self.path} changed since it was indexed (row {row + 1}); restart to re-index it")
            # Opened per row group, not held (thousands of shards, every worker); the file is not mapped.
            table = self._open().read_row_group(g, columns=self.columns)
            if len(self._groups) >= self.keep:
                self._groups.pop(next(iter(self._groups)))
        self._groups[g] = table
        first = int(self.ends[g - 1]) if g else 0
        return table.slice(row - first, 1).to_pylist()[0]

    def __getstate__(self):  # a worker starts with no decoded groups (they can be large)
        return {**self.__dict__, "_groups": {}}


class ShardedDataset(Dataset):
    """Every row of every shard matched by `source` (a directory, a glob, a file, or a list of them),
    shards in sorted order, rows in file order: sample i is a dict (JSONL object, CSV row by header,
    Parquet row by column, {"text": line}). The Trainer shuffles it by blocks (`block_order`) and records
    its `fingerprint` in
    every checkpoint: a resume on changed data is refused, naming the shard."""

    def __init__(self, source: str | Path | list, cache_dir: str | Path | None = None,
                 columns: list[str] | None = None):
        """`columns`: the keys every sample must have (checked per file for CSV and Parquet, per row for
        JSONL, a missing one named with its shard); Parquet reads only these."""
        files = _expand(source)
        if not files:
            raise ShardError(f"no JSONL, CSV, Parquet, .txt or .tar shards found at {source}")
        cache = Path(cache_dir) if cache_dir else files[0].parent / ".dtrain-index"
        self.shards: list[Shard | ParquetShard] = []
        for path in files:
            kind = KINDS.get(path.suffix.lower())
            if kind is None:
                raise ShardError(f"{path}: unknown shard kind (use .jsonl, .csv, .parquet, .txt or .tar)")
            if kind == "parquet":
                self.shards.append(ParquetShard(path, columns))
            else:
                self.shards.append((TarShard if kind == "tar" else Shard)(path, kind, cache, columns))
        self.ends = np.cumsum([s.rows for s in self.shards])
        groups = [g for s in self.shards if isinstance(s, ParquetShard) for g in s.group_rows]
        self.block_order: int = min(65536, max(groups)) if groups else 65536
        """The shuffle's block (see BlockShuffle): 65,536 samples, or with Parquet shards their largest row
        group, so a window of blocks touches few row groups (each read decodes a whole one)."""

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

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data for a checkpoint: every shard's name, size and rows (small)."""
        return {"index_version": INDEX_VERSION,
                "shards": [[s.path.name, s.size, s.rows] for s in self.shards]}


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
    before = {name: (size, rows) for name, size, rows in old.get("shards", [])}
    after = {name: (size, rows) for name, size, rows in new.get("shards", [])}
    lines = [f"{name}: removed" for name in sorted(set(before) - set(after))]
    lines += [f"{name}: added" for name in sorted(set(after) - set(before))]
    lines += [f"{name}: {before[name][0]} -> {after[name][0]} bytes, {before[name][1]} -> {after[name][1]} rows"
              for name in sorted(set(before) & set(after)) if before[name] != after[name]]
    if old.get("index_version") != new.get("index_version"):
        lines.append(f"index version {old.get('index_version')} -> {new.get('index_version')}")
    return lines
