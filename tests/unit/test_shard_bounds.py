"""Issue 22, memory that grows with the data: what a process holds for a sharded set is bounded over all
its shards (decoded Parquet row groups, open descriptors), indexes go to the user's cache when the data's
folder is read-only, concurrent indexing never writes into another writer's temporary, and the vision
recipe's tar labels are one int64 array."""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from dtrain.shards import OPEN_INDEXES, ROW_GROUPS_KEPT, ShardedDataset
from tests.conftest import ROOT, child_env, write_tar

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _parquet(d, files: int = 30, groups: int = 4, rows_per_group: int = 8, pad: int = 2000):
    pa = pytest.importorskip("pyarrow")  # in dtrain[dev]: installed wherever `make test` runs
    import pyarrow.parquet as pq

    d.mkdir()
    rows = []
    for f in range(files):
        first = len(rows)
        mine = [{"id": first + i, "text": f"{first + i:06d}" + "x" * pad} for i in range(groups * rows_per_group)]
        pq.write_table(pa.Table.from_pylist(mine), d / f"part-{f:03d}.parquet", row_group_size=rows_per_group)
        rows += mine
    return rows


def _jsonl(d, shards: int, rows: int = 3) -> None:
    d.mkdir()
    for k in range(shards):
        (d / f"p{k:04d}.jsonl").write_text("".join(json.dumps({"id": k * rows + r}) + "\n" for r in range(rows)))


def test_decoded_row_groups_are_bounded_over_all_parquet_shards(tmp_path):
    """30 files x 4 row groups read in a shuffled order: the process holds at most ROW_GROUPS_KEPT decoded
    groups in all (it held up to 16 per file: all 120 here), counted by pyarrow's own allocator."""
    import pyarrow as pa

    rows = _parquet(tmp_path / "pq")
    ds = ShardedDataset(tmp_path / "pq")
    one = ds.shards[0]._open().read_row_group(0).nbytes  # ~16 KB: one decoded group
    before = pa.total_allocated_bytes()
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    assert all(ds[i] == rows[i] for i in order)
    held = pa.total_allocated_bytes() - before
    assert held <= (ROW_GROUPS_KEPT + 1) * one * 1.5, f"{held} bytes held: {held / one:.0f} groups"
    assert len(ds.row_groups) == ROW_GROUPS_KEPT


def test_a_worker_or_a_pickled_copy_starts_with_nothing_held(tmp_path):
    """A DataLoader worker (forked) and a pickled copy (spawned workers) start with no decoded group or
    open index, and read the same rows."""
    rows = _parquet(tmp_path / "pq", files=3)
    _jsonl(tmp_path / "js", shards=20)
    for ds in (ShardedDataset(tmp_path / "pq"), ShardedDataset(tmp_path / "js", cache_dir=tmp_path / "cache")):
        first = [ds[i] for i in range(len(ds))]
        held = ds.row_groups if ds.shards[0].kind == "parquet" else ds.open_indexes
        assert len(held) > 0
        copy = pickle.loads(pickle.dumps(ds))
        assert len(copy.row_groups) == len(copy.open_indexes) == 0
        assert [copy[i] for i in range(len(copy))] == first

        class Probe(torch.utils.data.Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                seen = (len(ds.row_groups), len(ds.open_indexes))
                ds[i]
                return torch.tensor(seen)

        loader = torch.utils.data.DataLoader(Probe(), batch_size=1, num_workers=1,
                                             multiprocessing_context="fork")
        assert next(iter(loader)).tolist() == [[0, 0]]
    assert first and rows  # both sets were read


@needs_proc
def test_open_descriptors_do_not_grow_with_the_number_of_shards(tmp_path):
    """Each shard's index was held through np.load(mmap_mode="r"): one descriptor per shard (Python's mmap
    keeps a duplicate), so 1,000 shards exhausted a default `ulimit -n` of 1024. Now opening holds none
    and a shuffled pass holds at most OPEN_INDEXES, whatever the number of shards."""
    _jsonl(tmp_path / "js", shards=50)
    ShardedDataset(tmp_path / "js", cache_dir=tmp_path / "cache")  # indexes built (and let go)
    gc.collect()  # an earlier test's data set, collected mid-test, would close its descriptors under the count
    start = _fds()
    ds = ShardedDataset(tmp_path / "js", cache_dir=tmp_path / "cache")
    assert _fds() == start
    for i in np.random.default_rng(0).permutation(len(ds)).tolist():
        assert ds[i] == {"id": i}
    assert _fds() - start <= OPEN_INDEXES
    del ds
    assert _fds() == start  # a data set let go closes what it held

    d = tmp_path / "tars"
    d.mkdir()
    for k in range(30):
        write_tar(d / f"s{k:02d}.tar", [(f"k{k}_{i}", {"png": b"p" * 10, "cls": str(i % 3).encode()}) for i in range(3)])
    start = _fds()
    tars = ShardedDataset(d, cache_dir=tmp_path / "cache")
    assert sum(len(s.labels()) for s in tars.shards) == 90
    assert all(tars[i]["cls"] == str(i % 3 % 3).encode() for i in np.random.default_rng(1).permutation(90).tolist())
    assert _fds() - start <= OPEN_INDEXES  # tar indexes are mapped: at most OPEN_INDEXES mappings


def test_threads_sharing_a_set_read_the_right_rows(tmp_path):
    """Threads share a set's held index descriptors and each reads its own rows: Recent's lock keeps one
    thread's eviction from closing a descriptor another is reading (a guard; the race is rare to provoke)."""
    _jsonl(tmp_path / "js", shards=60)
    ds = ShardedDataset(tmp_path / "js", cache_dir=tmp_path / "cache")
    wrong = []

    def read(seed):
        for i in np.random.default_rng(seed).permutation(len(ds)).tolist() * 3:
            if ds[i] != {"id": i}:
                wrong.append(i)

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and len(ds.open_indexes) <= OPEN_INDEXES


def test_concurrent_indexing_never_writes_into_another_writers_temporary(tmp_path):
    """Ranks on several nodes indexing the same shards at once: temporaries were named by pid alone, and pids
    repeat across nodes. Threads of one process share a pid, so they are such writers: each must publish
    a whole index (no FileNotFoundError from a rename of a temporary another writer already moved)."""
    d = tmp_path / "js"
    d.mkdir()
    for k in range(12):
        (d / f"p{k:02d}.jsonl").write_text("".join(json.dumps({"id": k * 3000 + r}) + "\n" for r in range(3000)))
    cache, barrier, errors, sizes = tmp_path / "cache", threading.Barrier(6), [], []

    def index():
        try:
            barrier.wait()
            sizes.append(len(ShardedDataset(d, cache_dir=cache)))
        except Exception as exc:  # reported below, with the thread's error
            errors.append(repr(exc))

    threads = [threading.Thread(target=index) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert sizes == [36000] * 6
    ds = ShardedDataset(d, cache_dir=cache)
    assert [ds[i]["id"] for i in (0, 2999, 3000, 35999)] == [0, 2999, 3000, 35999]
    assert not [p.name for p in cache.iterdir() if ".tmp" in p.name]  # every temporary published or removed


READ_ONLY_CHILD = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from dtrain.shards import ShardedDataset, ShardError

    data, xdg, home = map(Path, sys.argv[1:4])
    os.environ["XDG_CACHE_HOME"] = str(xdg)
    ds = ShardedDataset(data)
    out = {"rows": [ds[i]["id"] for i in range(len(ds))],
           "xdg": sorted(p.name.split(".")[0] for p in (xdg / "dtrain" / "shard-index").glob("*.idx.npy"))}
    del os.environ["XDG_CACHE_HOME"]
    os.environ["HOME"] = str(home)
    ds = ShardedDataset(data)
    out["home"] = sorted(p.name.split(".")[0] for p in (home / ".cache/dtrain/shard-index").glob("*.idx.npy"))
    out["home_rows"] = len(ds)
    try:
        ShardedDataset(data, cache_dir=data / "mine")
    except ShardError as exc:
        out["error"] = str(exc)
    print(json.dumps(out))
''')


def test_a_read_only_data_folder_indexes_into_the_users_cache(tmp_path):
    """A read-only data mount: an index already beside the shards is read; a missing one is built into
    $XDG_CACHE_HOME/dtrain/shard-index (or ~/.cache/dtrain/shard-index). Read-only for real: a bind mount
    in a user namespace (`unshare`), else file modes for a user other than root."""
    data = tmp_path / "data"
    _jsonl(data, shards=2)
    ShardedDataset(data / "p0000.jsonl")  # p0000's index built beside it while the folder was writable
    (data / "p0002.jsonl").write_text('{"id": 6}\n')
    script = tmp_path / "child.py"
    script.write_text(READ_ONLY_CHILD)
    argv = [sys.executable, str(script), str(data), str(tmp_path / "xdg"), str(tmp_path / "home")]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode == 0:
        remount = f"mount --bind {data} {data} && mount -o remount,bind,ro {data} && exec \"$@\""
        argv = [unshare, "-rm", "sh", "-c", remount, "sh", *argv]
    elif os.geteuid() != 0:
        data.chmod(0o555)
        (data / ".dtrain-index").chmod(0o555)
    else:
        pytest.skip("root without user namespaces: no way to make a folder read-only here")
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    finally:
        data.chmod(0o755)
        (data / ".dtrain-index").chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["rows"] == list(range(7)) and out["home_rows"] == 7
    assert out["xdg"] == ["p0001", "p0002"] == out["home"]  # p0000's index read from beside the shards
    assert not (data / ".dtrain-index" / "p0001.jsonl").exists()
    assert out["error"].startswith(f"{data / 'p0000.jsonl'}: no writable folder for its index (tried {data / 'mine'})")
    assert out["error"].endswith("give ShardedDataset a writable cache_dir, or set XDG_CACHE_HOME to one")


def test_tar_image_labels_are_one_int64_array(tmp_path):
    """TarImages held a Python list of every label (8 bytes a slot + 28 per int above 256): now 8 bytes a
    sample, and a sample's label is still a plain int."""
    from PIL import Image

    from recipes.vision.data import ImageDataError, TarImages

    buf = io.BytesIO()
    Image.new("L", (4, 4), 200).save(buf, format="PNG")
    d = tmp_path / "tars"
    d.mkdir()
    labels = [300 + (i % 3) for i in range(10)]
    write_tar(d / "a.tar", [(f"a/{i}", {"png": buf.getvalue(), "cls": str(y).encode()}) for i, y in enumerate(labels[:6])])
    write_tar(d / "b.tar", [(f"b/{i}", {"png": buf.getvalue(), "cls": str(y).encode()}) for i, y in enumerate(labels[6:])])
    data = TarImages(str(d), image_size=4, channels=1)
    assert isinstance(data.labels, np.ndarray) and data.labels.dtype == np.int64
    assert data.labels.nbytes == 8 * len(data) and data.labels.tolist() == labels
    assert data.classes == [str(c) for c in range(303)]
    image, label = data[7]
    assert type(label) is int and label == labels[7] and image.shape == (1, 4, 4)

    write_tar(d / "c.tar", [("c/0", {"png": buf.getvalue()})])
    with pytest.raises(ImageDataError, match=r"c.tar sample 1: no integer .cls member"):
        TarImages(str(d), image_size=4, channels=1)
    one = tmp_path / "one"
    one.mkdir()
    write_tar(one / "a.tar", [(f"a/{i}", {"png": buf.getvalue(), "cls": b"5"}) for i in range(3)])
    with pytest.raises(ImageDataError, match=r"needs at least 2 classes, found \[5\]"):
        TarImages(str(one), image_size=4, channels=1)
