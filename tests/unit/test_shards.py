"""Sharded sources read lazily by byte offset, and a shuffle that never holds n numbers (issue 14)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from dtrain.shards import BlockShuffle, ShardedDataset, ShardError, content_digest
from tests.conftest import write_tar


def _write(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = [{"text": f"ticket {i}" + (", with a comma" if i % 3 == 0 else ""), "label": f"l{i % 4}"} for i in range(7)]
    (d / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n\n")  # a blank line at the end
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["text", "label"])
    w.writeheader()
    w.writerows([*rows[4:], {"text": 'two\nlines and "quotes"', "label": "l9"}])
    (d / "b.csv").write_text(buf.getvalue())
    (d / "c.txt").write_text("first line\nsecond line")  # no newline at the end
    return d, rows


def test_random_access_equals_reading_every_shard_in_order(tmp_path):
    d, rows = _write(tmp_path)
    ds = ShardedDataset(d, cache_dir=tmp_path / "cache")
    expected = rows[:4] + rows[4:] + [{"text": 'two\nlines and "quotes"', "label": "l9"}] + \
        [{"text": "first line"}, {"text": "second line"}]
    assert len(ds) == len(expected) == 10
    assert [ds[i] for i in (9, 0, 7, 3, 5)] == [expected[i] for i in (9, 0, 7, 3, 5)]  # any order
    assert [ds[i] for i in range(len(ds))] == expected
    assert [s[:3] for s in ds.fingerprint()["shards"]] == [["a.jsonl", (d / "a.jsonl").stat().st_size, 4],
                                                           ["b.csv", (d / "b.csv").stat().st_size, 4], ["c.txt", 22, 2]]
    assert [s[3] for s in ds.fingerprint()["shards"]] == [content_digest(d / n) for n in ("a.jsonl", "b.csv", "c.txt")]


def test_the_index_is_built_once_and_rebuilt_when_a_shard_changes(tmp_path):
    d, _ = _write(tmp_path)
    cache = tmp_path / "cache"
    ShardedDataset(d, cache_dir=cache)
    index = next(cache.glob("a.jsonl.*.idx.npy"))
    built = index.stat().st_mtime_ns
    assert len(ShardedDataset(d, cache_dir=cache)) == 10 and index.stat().st_mtime_ns == built  # reused
    with open(d / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "new", "label": "l0"}) + "\n")
    ds = ShardedDataset(d, cache_dir=cache)
    assert len(ds) == 11 and ds[4] == {"text": "new", "label": "l0"}


def test_bad_shards_are_one_line_naming_shard_and_row(tmp_path):
    d, _ = _write(tmp_path)
    (d / "d.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\nnot json\n')
    ds = ShardedDataset(d, cache_dir=tmp_path / "cache")
    with pytest.raises(ShardError, match=r"d.jsonl row 2: not UTF-8 \(byte 0xe9\)"):
        ds[11]
    with pytest.raises(ShardError, match=r"d.jsonl row 3: not a JSON object"):
        ds[12]
    (d / "d.jsonl").unlink()
    with pytest.raises(ShardError, match=r"d.jsonl: cannot be read .*moved or deleted"):
        ds[11]
    (d / "c.txt").write_text("first line\nsecond line, longer now\n")
    with pytest.raises(ShardError, match=r"c.txt changed since it was indexed"):
        ds[9]
    (d / "e.csv").write_text('text,label\n"never closed,l1\n')
    with pytest.raises(ShardError, match=r"e.csv: a quoted field opened at byte 11 is never closed"):
        ShardedDataset(d / "e.csv", cache_dir=tmp_path / "cache")


def test_parquet_shards_read_any_row_through_their_row_groups(tmp_path):
    pa = pytest.importorskip("pyarrow")  # in dtrain[dev]: installed wherever `make test` runs
    import pyarrow.parquet as pq

    d = tmp_path / "pq"
    d.mkdir()
    rows = [{"text": f"t{i}", "label": i % 3, "score": i / 10} for i in range(25)]
    pq.write_table(pa.Table.from_pylist(rows[:17]), d / "a.parquet", row_group_size=5)  # 4 row groups
    pq.write_table(pa.Table.from_pylist(rows[17:]), d / "b.parquet")
    ds = ShardedDataset(d, columns=["text", "label"])  # only these columns are read
    assert len(ds) == 25
    want = [{"text": r["text"], "label": r["label"]} for r in rows]
    order = np.random.default_rng(0).permutation(25).tolist()
    assert [ds[i] for i in order] == [want[i] for i in order]
    assert ds.fingerprint()["shards"][0][:3] == ["a.parquet", (d / "a.parquet").stat().st_size, 17]
    assert ShardedDataset(d)[3] == rows[3]  # every column without `columns`
    with pytest.raises(ShardError, match=r"a.parquet: no column 'category' \(it has text, label, score\)"):
        ShardedDataset(d, columns=["text", "category"])
    (d / "c.parquet").write_bytes((d / "a.parquet").read_bytes()[:300])  # truncated: no footer
    with pytest.raises(ShardError, match=r"c.parquet: not a readable Parquet file .*truncated"):
        ShardedDataset(d)


def test_a_missing_column_is_named_with_its_shard_and_row(tmp_path):
    d, _ = _write(tmp_path)
    with pytest.raises(ShardError, match=r"b.csv: no column 'category' \(it has text, label\)"):
        ShardedDataset(d / "b.csv", cache_dir=tmp_path / "cache", columns=["category"])
    (d / "f.jsonl").write_text('{"text": "a", "category": "x"}\n{"text": "b"}\n')
    ds = ShardedDataset(d / "f.jsonl", cache_dir=tmp_path / "cache", columns=["text", "category"])
    assert ds[0]["category"] == "x"
    with pytest.raises(ShardError, match=r"f.jsonl row 2: no column 'category' \(it has text\)"):
        ds[1]


@pytest.mark.parametrize("n, block, window", [(1, 4, 2), (10, 4, 2), (1000, 64, 3), (4097, 512, 8), (64, 64, 1)])
def test_block_shuffle_is_a_permutation_fixed_by_seed_and_epoch(n, block, window):
    order = BlockShuffle(n, seed=3, epoch=1, block=block, window=window)
    seen = [order[p] for p in range(n)]
    assert sorted(seen) == list(range(n))
    assert seen == [BlockShuffle(n, seed=3, epoch=1, block=block, window=window)[p] for p in range(n)]
    if n >= 1000:
        assert seen != [BlockShuffle(n, seed=3, epoch=2, block=block, window=window)[p] for p in range(n)]
        assert seen != list(range(n))
    # rank r of W reads positions r, r + W, ...: together the ranks read the epoch once
    world = 3
    parts = [list(order.positions(r, world)) for r in range(world)]
    assert sorted(i for part in parts for i in part) == list(range(n))


def test_block_shuffle_of_a_billion_samples_holds_no_billion_numbers():
    n = 1_000_000_000
    order = BlockShuffle(n, seed=0, epoch=0)  # 65536-sample blocks, windows of 8
    held = order.blocks.nbytes + order.window_ends.nbytes
    assert held < 200_000  # bytes: ~15k block numbers, not 8 GB of indices
    first, last = order[0], order[n - 1]
    assert 0 <= first < n and 0 <= last < n and order._cached[1].nbytes <= 8 * 65536 * 8  # one window
    assert isinstance(order[123_456_789], int)
    assert np.unique([order[p] for p in range(0, 2000)]).size == 2000


def test_tar_shards_in_webdataset_layout_read_any_sample(tmp_path):
    d = tmp_path / "tars"
    d.mkdir()
    samples = [(f"img/{i:04d}", {"png": bytes([i]) * (100 + i), "cls": str(i % 3).encode()}) for i in range(9)]
    write_tar(d / "a.tar", samples[:5])
    write_tar(d / "b.tar", samples[5:] + [("img/extra", {"png": b"x"})])  # a sample with no label
    ds = ShardedDataset(d, cache_dir=tmp_path / "cache")
    assert len(ds) == 10
    for i in (7, 0, 4, 9, 3):
        assert ds[i] == (samples[i][1] if i < 9 else {"png": b"x"})
    assert ds.shards[0].labels().tolist() == [0, 1, 2, 0, 1] and ds.shards[1].labels().tolist() == [2, 0, 1, 2, -1]
    (d / "c.tar").write_bytes((d / "a.tar").read_bytes()[:700])  # cut inside the second member
    with pytest.raises(ShardError, match=r"c.tar: not a readable uncompressed tar .*truncated"):
        ShardedDataset(d / "c.tar", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_an_edit_that_keeps_size_and_rows_changes_the_fingerprint(tmp_path, kind):
    """A label fixed in place (same bytes, same rows) is other data: a resume on it must be refused."""
    from dtrain.shards import ShardedDataset, describe_data

    d = tmp_path / "data"
    d.mkdir()
    path = d / f"part-0.{kind}"

    def write(label: int):
        rows = [{"text": f"ticket {i}", "label": label if i == 3 else i % 2} for i in range(50)]
        if kind == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path, compression="none")

    write(0)
    before = ShardedDataset(d).fingerprint()
    size = path.stat().st_size
    write(1)  # one digit of one row
    assert path.stat().st_size == size
    after = ShardedDataset(d).fingerprint()
    assert after != before
    assert describe_data(before, after) == [
        f"part-0.{kind}: its content changed (same {size} bytes and 50 rows; crc32 "
        f"{before['shards'][0][3]} -> {after['shards'][0][3]})"]
    # a checkpoint written before the digest (name, size, rows) still resumes on unchanged data
    old = {**before, "shards": [s[:3] for s in before["shards"]]}
    assert describe_data(old, before) == []


def test_distinct_values_are_read_once_kept_with_the_index_and_read_again_when_a_shard_changes(tmp_path):
    d, rows = _write(tmp_path)
    (d / "c.txt").unlink()  # a .txt shard has only "text"
    cache = tmp_path / "cache"
    ds = ShardedDataset(d, cache_dir=cache, columns=["text", "label"])
    assert ds.distinct("label") == ["l0", "l1", "l2", "l3", "l9"]
    meta = next(cache.glob("a.jsonl.*.json"))
    assert json.loads(meta.read_text())["distinct"] == {"label": ["l0", "l1", "l2", "l3"]}
    meta.write_text(meta.read_text().replace('"l3"', '"cached"'))  # the kept values are what a second reader gets
    assert "cached" in ShardedDataset(d, cache_dir=cache).distinct("label")
    with open(d / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "new", "label": " l7 "}) + "\n")
    assert ShardedDataset(d, cache_dir=cache).distinct("label") == ["l0", "l1", "l2", "l3", "l7", "l9"]


def test_parquet_distinct_reads_one_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "x", "label": k % 3} for k in range(50)]), tmp_path / "p.parquet",
                   row_group_size=16)
    assert ShardedDataset(tmp_path / "p.parquet").distinct("label") == ["0", "1", "2"]


def test_a_held_out_split_depends_on_row_identity_only_and_the_rest_is_its_complement(tmp_path):
    from dtrain.shards import RowSubset, held_out_rows

    d = tmp_path / "data"
    d.mkdir()
    for n, count in (("a", 700), ("b", 300), ("c", 1)):
        (d / f"{n}.jsonl").write_text("".join(json.dumps({"text": f"{n}{i}", "label": "x"}) + "\n" for i in range(count)))
    ds = ShardedDataset(d, cache_dir=tmp_path / "cache")
    held = held_out_rows(ds, 0.2)
    assert 150 < len(held) < 250 and np.all(np.diff(held) > 0)
    assert np.array_equal(held, held_out_rows(ShardedDataset(sorted(d.glob("*.jsonl")), cache_dir=tmp_path / "c2"), 0.2))
    assert not np.array_equal(held, held_out_rows(ds, 0.2, seed=1))
    # without shard a, b's held-out rows are the same rows (by name and row), shifted
    only_b = held_out_rows(ShardedDataset(d / "b.jsonl", cache_dir=tmp_path / "c3"), 0.2)
    assert np.array_equal(only_b + 700, held[(held >= 700) & (held < 1000)])
    val, train = RowSubset(ds, held, name="val"), RowSubset(ds, held, complement=True, name="train")
    assert len(val) + len(train) == len(ds)
    texts = [train[i]["text"] for i in range(len(train))] + [val[i]["text"] for i in range(len(val))]
    assert sorted(texts) == sorted(ds[i]["text"] for i in range(len(ds)))  # each row in exactly one part
    assert train.locate(0) == ds.locate(train.row(0)) and train.block_order == ds.block_order
    assert train.fingerprint()["subset"] == {"name": "train", "held_out": len(held), "complement": True}
    with pytest.raises(IndexError):
        train[len(train)]
