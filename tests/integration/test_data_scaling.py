"""Issue 22, memory as slopes: what one process (and its DataLoader worker) holds after a shuffled pass
over K shards, for K = 10 and K = 2,000, and over 10x longer shards. Open descriptors must not grow with K
(each shard's index held one: 2,000 shards failed under the default `ulimit -n` of 1024), peak RSS may grow
by the shards' small bookkeeping only (their paths, sizes and row counts: measured 1.4 KB a shard, was 5.7
with a mapping and a descriptor each; bounded at 3 KB), and 10x longer shards may not grow it beyond a few
MB (measured +2.1 MB: the shuffle window's permutation, which stops growing at 8 x 65,536 samples; no
index is loaded, a row's two offsets are one pread). A Parquet set of 30 files holds at most ROW_GROUPS_KEPT
decoded row groups in each process (was 80 after this pass: up to 16 per file).

Each measurement is a child process: peak RSS (VmHWM) is per process. The shards' indexes are built here,
before, as a first run of a job would, so the children measure reading, not indexing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from dtrain.shards import ROW_GROUPS_KEPT, ShardedDataset
from tests.conftest import ROOT, child_env

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

SAMPLES = 3000  # a fixed number of samples read, whatever K: epochs repeat when the set is smaller

CHILD = textwrap.dedent('''
    import json, os, sys
    import torch
    from dtrain.shards import BlockShuffle, ShardedDataset

    source, cache, samples = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])

    def status():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        kb = lambda key: int(fields[key].split()[0])
        out = {"fds": len(os.listdir("/proc/self/fd")), "rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM")}
        try:
            import pyarrow
            out["arrow_bytes"] = pyarrow.total_allocated_bytes()
        except ImportError:
            pass
        return out

    def shuffled(n, count):  # the trainer's order: block-shuffled, a new order each epoch
        epoch, p = 0, 0
        for _ in range(count):
            if p == n:
                epoch, p = epoch + 1, 0
            if p == 0:
                order = BlockShuffle(n, seed=0, epoch=epoch, block=data.block_order)
            yield order[p]
            p += 1

    def held():
        return {"groups": len(data.row_groups), "indexes": len(data.open_indexes)}

    before = status()
    data = ShardedDataset(source, cache_dir=cache)
    positions = list(shuffled(len(data), samples))
    opened = status()
    for i in positions:
        data[i]
    after = {**status(), **held()}

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    def collate(rows):  # runs in the worker: its own descriptors and peak, after its reads so far
        return {**status(), **held(), "n": len(rows)}

    loader = torch.utils.data.DataLoader(Rows(), batch_size=100, sampler=positions, num_workers=1,
                                         collate_fn=collate, multiprocessing_context="fork")
    batches = list(loader)
    assert sum(b["n"] for b in batches) == samples
    print(json.dumps({"before": before, "opened": opened, "after": after, "worker": batches[-1]}))
''')


def _measure(tmp_path, source, cache) -> dict:
    script = tmp_path / "scaling_child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(source), str(cache or ""), str(SAMPLES)], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _jsonl(d, shards: int, rows: int, cache) -> None:
    d.mkdir()
    text = "w" * 60
    for k in range(shards):
        (d / f"part-{k:05d}.jsonl").write_text(
            "".join(json.dumps({"id": k * rows + r, "text": text}) + "\n" for r in range(rows)))
    ShardedDataset(d, cache_dir=cache)  # the one-time indexes, built before measuring


def test_descriptors_and_peak_memory_do_not_grow_with_the_number_of_shards(tmp_path):
    cache = tmp_path / "index"
    runs = {}
    for k, rows in ((10, 4), (2000, 4), (2000, 40)):
        _jsonl(tmp_path / f"k{k}-r{rows}", k, rows, cache)
        runs[k, rows] = _measure(tmp_path, tmp_path / f"k{k}-r{rows}", cache)
    few, many, longer = runs[10, 4], runs[2000, 4], runs[2000, 40]

    def grown(run, part="after"):  # peak RSS (KB) reached by the pass, over the process before the set
        return run[part]["hwm_kb"] - run["before"]["rss_kb"]

    per_shard_kb = (grown(many) - grown(few)) / 1990
    rows_mb = (grown(longer) - grown(many)) / 1024
    print(f"fds after the pass: K=10 {few['after']['fds']}, K=2000 {many['after']['fds']} "
          f"(worker {few['worker']['fds']}, {many['worker']['fds']}); peak RSS growth: K=10 {grown(few)} KB, "
          f"K=2000 {grown(many)} KB ({per_shard_kb:.2f} KB a shard), 10x rows {grown(longer)} KB ({rows_mb:+.1f} MB)")
    for run in runs.values():
        assert run["opened"]["fds"] == run["before"]["fds"]  # opening the set holds no descriptor
        assert run["after"]["indexes"] <= 16 and run["worker"]["indexes"] <= 16
    # What is held open after the pass may differ by the indexes kept (10 shards: 10; more: 16), no more.
    assert many["after"]["fds"] - few["after"]["fds"] <= 6 and longer["after"]["fds"] == many["after"]["fds"]
    assert many["worker"]["fds"] - few["worker"]["fds"] <= 6
    assert per_shard_kb < 3.0, (grown(few), grown(many))  # was 5.7 KB: an index mapping + descriptor a shard
    assert rows_mb < 4.0, (grown(many), grown(longer))  # the shuffle window's permutation
    worker_per_shard_kb = (many["worker"]["hwm_kb"] - few["worker"]["hwm_kb"]) / 1990
    print(f"worker peak RSS: K=10 {few['worker']['hwm_kb']} KB, K=2000 {many['worker']['hwm_kb']} KB "
          f"({worker_per_shard_kb:.2f} KB a shard)")
    assert worker_per_shard_kb < 3.0 + 1.0, (few["worker"], many["worker"])  # its parent's set too, copied on fork


def test_a_parquet_pass_holds_at_most_the_kept_row_groups_in_each_process(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    d = tmp_path / "pq"
    d.mkdir()
    for f in range(30):  # 30 files x 5 row groups of 40 rows, ~100 KB decoded a group
        rows = [{"id": f * 200 + i, "text": f"{i:05d}" + "x" * 2500} for i in range(200)]
        pq.write_table(pa.Table.from_pylist(rows), d / f"part-{f:02d}.parquet", row_group_size=40)
    group = pq.ParquetFile(d / "part-00.parquet").read_row_group(0).nbytes
    run = _measure(tmp_path, d, None)
    for who in ("after", "worker"):
        assert run[who]["groups"] <= ROW_GROUPS_KEPT
        held = run[who]["arrow_bytes"] - run["before"]["arrow_bytes"]
        print(f"{who}: {run[who]['groups']} groups, {held / group:.1f} groups' bytes held by pyarrow")
        assert held <= 1.5 * ROW_GROUPS_KEPT * group, f"{who}: {held / group:.0f} groups held (150 in all)"
