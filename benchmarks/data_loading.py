"""Reading sharded data: dtrain's ShardedDataset against the loaders a team would otherwise reach for, on
the same generated rows (each peer in the format it needs), with the same tokenizing transform; and the
time to resume at sample 10 million.

    python benchmarks/data_loading.py --out benchmarks/results/data_loading_<machine>_<date>.md

Peers (each optional: one that is not installed or fails is reported as such, the rest still run):
HF `datasets` streaming (JSONL and Parquet, shuffle buffer 10k), torchdata's `StatefulDataLoader` over HF's
memory-mapped Arrow table, Mosaic Streaming (MDS, converted here) and Lightning's LitData (its chunks,
converted here). Throughput: samples/s over the first --read samples of a shuffled epoch, batch 64,
--workers DataLoader workers, median of --rounds rounds. Resume: seconds from building the loader with a
saved position (10M) to its first batch; a skip-based replay (Accelerate's skip_first_batches: decode and
drop) is extrapolated from its measured rate, and said so. Conversion times are reported apart.
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import statistics
import sys
import time
import traceback
import zlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hostinfo import describe  # noqa: E402
from dtrain.data import TrainSampler  # noqa: E402
from dtrain.shards import ShardedDataset  # noqa: E402

WORDS = [f"w{i}" for i in range(5000)]
BATCH = 64


def tokenize(text: str) -> list[int]:
    """The shared transform: hashed word ids, at most 64."""
    return [zlib.crc32(w.encode()) % 30522 for w in text.split()[:64]]


def collate(items: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(ids) for ids, _ in items)
    out = torch.zeros(len(items), longest, dtype=torch.long)
    for row, (ids, _) in enumerate(items):
        out[row, : len(ids)] = torch.tensor(ids)
    return out, torch.tensor([label for _, label in items])


def generate(d: Path, rows: int, files: int, words: int, parquet: bool) -> None:
    """`files` JSONL shards of `rows` rows in all ({"id", "text", "label"}), and the same as Parquet."""
    if (d / "done").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    per = -(-rows // files)
    for f in range(files):
        ids = range(f * per, min(rows, (f + 1) * per))
        lines = [{"id": i, "text": " ".join(rnd.choices(WORDS, k=words)), "label": i % 7} for i in ids]
        with open(d / f"part-{f:03d}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in lines)
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            (d / "parquet").mkdir(exist_ok=True)
            pq.write_table(pa.Table.from_pylist(lines), d / "parquet" / f"part-{f:03d}.parquet", row_group_size=8192)
    (d / "done").write_text("")


class Tokenized(Dataset):
    """Any map-style set of rows -> (ids, label)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        return tokenize(row["text"]), int(row["label"])


def drain(loader, samples: int, max_s: float = 40.0) -> float:
    """Samples per second over the first `samples` of `loader` (worker start-up included), or over what it
    gave in `max_s` seconds if it is slower."""
    t0, n = time.perf_counter(), 0
    for ids, _ in loader:
        n += len(ids)
        if n >= samples or time.perf_counter() - t0 > max_s:
            break
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ the loaders
def dtrain_loader(source: Path, workers: int, start: int = 0):
    data = ShardedDataset(source)
    sampler = TrainSampler(len(data), 0, 1, seed=0, block_order=data.block_order)
    sampler.set_epoch(0, start)
    return DataLoader(Tokenized(data), batch_size=BATCH, sampler=sampler, num_workers=workers, collate_fn=collate)


def _hf_row(r: dict) -> dict:
    return {"ids": tokenize(r["text"]), "label": r["label"]}


def _hf_collate(rows: list[dict]):
    return collate([(r["ids"], r["label"]) for r in rows])


def hf_stream(files: list[str], kind: str, workers: int):
    from datasets import load_dataset

    ds = load_dataset(kind, data_files=files, split="train", streaming=True).shuffle(seed=0, buffer_size=10_000)
    ds = ds.map(_hf_row, remove_columns=["id", "text"])
    return ds, DataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=_hf_collate)


def hf_arrow(files: list[str], cache: Path):
    from datasets import load_dataset

    return load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache))


def stateful(rows, workers: int):
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(Tokenized(rows), batch_size=BATCH, shuffle=True, num_workers=workers,
                              collate_fn=collate, generator=torch.Generator().manual_seed(0))


def import_streaming():
    """Mosaic Streaming's package imports torchvision at import time, for vision helpers this benchmark does
    not use; PyPI's torchvision does not load beside a CPU build of torch, so where it is missing an empty
    stand-in with the three names that import asks for is registered first (said in the results)."""
    import importlib.machinery
    import importlib.util
    import types

    if "streaming" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import streaming

        return streaming
    tv, tvd, tvt, tvtf = (types.ModuleType(n) for n in ("torchvision", "torchvision.datasets",
                                                         "torchvision.transforms", "torchvision.transforms.functional"))
    tvd.VisionDataset = tvd.CIFAR10 = type("Unused", (), {})
    tvtf.to_tensor = lambda *a: None
    tv.datasets, tv.transforms, tvt.functional = tvd, tvt, tvtf
    for m in (tv, tvd, tvt, tvtf):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
    stand_ins = {m.__name__: m for m in (tv, tvd, tvt, tvtf)}
    sys.modules.update(stand_ins)
    try:
        import streaming
    finally:  # only for that import: other libraries must not find a torchvision
        for name in stand_ins:
            sys.modules.pop(name, None)
    return streaming


def mosaic_convert(files: list[str], out: Path) -> None:
    MDSWriter = import_streaming().MDSWriter

    if (out / "index.json").exists():
        return
    with MDSWriter(out=str(out), columns={"id": "int", "text": "str", "label": "int"}, size_limit="64mb") as w:
        for f in files:
            with open(f) as fh:
                for line in fh:
                    w.write(json.loads(line))


def mosaic_loader(local: Path, workers: int, state: dict | None = None):
    StreamingDataLoader = import_streaming().StreamingDataLoader

    ds = _mosaic_class()(local=str(local), shuffle=True, shuffle_seed=0, batch_size=BATCH)
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=collate)
    if state is not None:
        loader.load_state_dict(state)
    return ds, loader


def _lit_rows(f: str):
    with open(f) as fh:
        for line in fh:
            yield json.loads(line)


def litdata_convert(files: list[str], out: Path) -> None:
    import litdata

    if (out / "index.json").exists():
        return
    litdata.optimize(fn=_lit_rows, inputs=files, output_dir=str(out), chunk_bytes="64MB", num_workers=1)
    # optimize() switches the whole process to the spawn start method: back to Linux's default, fork, so
    # every loader below starts its workers the same way
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)


def litdata_loader(out: Path, workers: int):
    import litdata

    return litdata.StreamingDataLoader(_lit_class()(str(out), shuffle=True, seed=0), batch_size=BATCH,
                                       num_workers=workers, collate_fn=collate)


_CLASSES: dict = {}


def _tokenizing(name: str, base: type) -> type:
    """`base` (a peer's streaming data set) with the shared transform applied to each row it yields; made
    once per name and bound to that name in this module, so spawned workers can unpickle it."""
    if name not in _CLASSES:
        def __getitem__(self, i):
            row = base.__getitem__(self, i)
            return tokenize(row["text"]), int(row["label"])

        cls = type(name, (base,), {"__getitem__": __getitem__, "__module__": __name__})
        globals()[name] = _CLASSES[name] = cls
    return _CLASSES[name]


def _mosaic_class() -> type:
    return _tokenizing("MosaicTokenized", import_streaming().StreamingDataset)


def _lit_class() -> type:
    import litdata

    return _tokenizing("LitTokenized", litdata.StreamingDataset)


# ------------------------------------------------------------------------------------------ the runs
def attempt(results: dict, name: str, fn) -> None:
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, the others still run
        results[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc()
    print(f"[data_loading] {name}: {results[name]}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/dtrain-data-bench")
    ap.add_argument("--rows", type=int, default=400_000, help="rows of the throughput set")
    ap.add_argument("--read", type=int, default=100_000, help="samples read per throughput round")
    ap.add_argument("--resume-at", type=int, default=10_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated peers to leave out")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work, skip = Path(args.work), set(filter(None, args.skip.split(",")))
    small, big = work / "small", work / "big"
    t0 = time.perf_counter()
    fresh = not (small / "done").exists() or not (big / "done").exists()
    generate(small, args.rows, 8, 24, parquet=True)
    generate(big, args.resume_at + 500_000, 16, 4, parquet=False)
    setup = {"generate both sets": time.perf_counter() - t0 if fresh else "reused (generated by an earlier run)"}
    jsonl, parquet = sorted(glob.glob(str(small / "*.jsonl"))), sorted(glob.glob(str(small / "parquet" / "*.parquet")))

    conversions: dict = {}
    if "mosaic" not in skip:
        attempt(conversions, "Mosaic Streaming: JSONL -> MDS (throughput set)",
                lambda: _converted(work / "mds-small", lambda: mosaic_convert(jsonl, work / "mds-small")))
    if "litdata" not in skip:
        attempt(conversions, "LitData: JSONL -> chunks (throughput set)",
                lambda: _converted(work / "lit-small", lambda: litdata_convert(jsonl, work / "lit-small")))
    arrow: dict = {}
    if "stateful" not in skip:
        attempt(conversions, "HF datasets: Parquet -> Arrow cache (for StatefulDataLoader)",
                lambda: _timed(lambda: arrow.setdefault("rows", hf_arrow(parquet, work / "hf-cache"))))

    peers = {
        "dtrain ShardedDataset, JSONL": lambda: drain(dtrain_loader(small, args.workers), args.read),
        "dtrain ShardedDataset, Parquet": lambda: drain(dtrain_loader(small / "parquet", args.workers), args.read),
        "HF datasets streaming, JSONL": lambda: drain(hf_stream(jsonl, "json", args.workers)[1], args.read),
        "HF datasets streaming, Parquet": lambda: drain(hf_stream(parquet, "parquet", args.workers)[1], args.read),
        "torchdata StatefulDataLoader, HF Arrow": lambda: drain(stateful(arrow["rows"], args.workers), args.read),
        "Mosaic Streaming, MDS": lambda: drain(mosaic_loader(work / "mds-small", args.workers)[1], args.read),
        "LitData, its chunks": lambda: drain(litdata_loader(work / "lit-small", args.workers), args.read),
    }
    keys = {"HF": "hf", "torchdata": "stateful", "Mosaic": "mosaic", "LitData": "litdata", "dtrain": "dtrain"}
    key_of = lambda name: next(v for k, v in keys.items() if name.startswith(k))  # noqa: E731
    rates: dict = {name: [] for name in peers}
    for r in range(args.rounds):  # rounds interleave the peers, so drift hits each alike
        for name, fn in peers.items():
            if key_of(name) in skip or (isinstance(rates[name], str)):
                continue
            got: dict = {}
            attempt(got, f"round {r + 1} {name}", fn)
            value = got[f"round {r + 1} {name}"]
            rates[name] = value if isinstance(value, str) else [*rates[name], value]

    resume: dict = {}
    at = args.resume_at
    resume["dtrain: seek (sampler position, no sample read)"] = _timed(
        lambda: next(iter(dtrain_loader(big, 0, start=at))))
    if "stateful" not in skip:
        attempt(resume, "torchdata StatefulDataLoader: load_state_dict, first batch",
                lambda: _stateful_resume(big, at))
    if "hf" not in skip:
        attempt(resume, "HF datasets streaming: load_state_dict, first batch",
                lambda: _hf_resume(sorted(glob.glob(str(big / "*.jsonl"))), at))
    if "mosaic" not in skip:
        attempt(resume, "Mosaic Streaming: load_state_dict, first batch", lambda: _mosaic_resume(big, work, at))
    replay_rate = drain(DataLoader(Tokenized(ShardedDataset(big)), batch_size=BATCH, num_workers=args.workers,
                                   collate_fn=collate), 200_000)
    resume[f"skip-based replay (decode and drop, {replay_rate:,.0f} samples/s measured on 200k, extrapolated)"] = \
        at / replay_rate

    lines = [f"# Data loading: dtrain vs peers ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {describe()}. {args.workers} DataLoader workers, batch {BATCH}, shuffled, hashed-word "
             f"tokenizer; throughput set {args.rows:,} rows (8 shards, ~24 words a row), {args.read:,} samples a "
             f"round, median of {args.rounds} interleaved rounds. Resume set {at + 500_000:,} rows (16 JSONL shards).",
             "", "| reader | samples/s (median) | rounds |", "| --- | --- | --- |"]
    best = max((statistics.median(v) for v in rates.values() if isinstance(v, list) and v), default=0)
    for name, v in rates.items():
        if isinstance(v, list) and v:
            lines.append(f"| {name} | {statistics.median(v):,.0f} ({statistics.median(v) / best:.0%} of the fastest) "
                         f"| {', '.join(f'{x:,.0f}' for x in v)} |")
        else:
            lines.append(f"| {name} | {v or 'skipped'} | |")
    lines += ["", f"Resume at sample {at:,}: seconds from building the loader to its first batch", "",
              "| how | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.3f}'} |" for k, v in resume.items()]
    lines += ["", "One-time conversions and set-up (seconds)", "", "| step | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.1f}'} |" for k, v in {**setup, **conversions}.items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _converted(out: Path, convert) -> float | str:
    """Seconds a conversion took, or that it was reused (the set is converted once per --work directory)."""
    if (out / "index.json").exists():
        return "reused (converted by an earlier run in --work)"
    return _timed(convert)


def _stateful_resume(big: Path, at: int) -> float:
    """The state of a loader that has yielded `at` samples (made by running its sampler alone, no data
    read), loaded into a fresh loader over the rows; timed to the first batch."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    class Index(Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return [i], 0

    n = len(ShardedDataset(big))
    probe = StatefulDataLoader(Index(n), batch_size=BATCH, shuffle=True, collate_fn=collate,
                               generator=torch.Generator().manual_seed(0))
    it = iter(probe)
    for _ in range(at // BATCH):
        next(it)
    state = probe.state_dict()
    t0 = time.perf_counter()
    loader = StatefulDataLoader(Tokenized(ShardedDataset(big)), batch_size=BATCH, shuffle=True, collate_fn=collate,
                                generator=torch.Generator().manual_seed(0))
    loader.load_state_dict(state)
    next(iter(loader))
    return time.perf_counter() - t0


def _hf_resume(files: list[str], at: int) -> float:
    ds, _ = hf_stream(files, "json", 0)
    it = iter(ds)
    for _ in range(at):
        next(it)
    state = ds.state_dict()
    t0 = time.perf_counter()
    fresh, _ = hf_stream(files, "json", 0)
    fresh.load_state_dict(state)
    next(iter(fresh))
    return time.perf_counter() - t0


def _mosaic_resume(big: Path, work: Path, at: int) -> float:
    mosaic_convert(sorted(glob.glob(str(big / "*.jsonl"))), work / "mds-big")
    ds, _ = mosaic_loader(work / "mds-big", 0)
    state = ds.state_dict(num_samples=at, from_beginning=True)
    t0 = time.perf_counter()
    ds, loader = mosaic_loader(work / "mds-big", 0)
    ds.load_state_dict(state)
    next(iter(loader))
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
