"""Run by test_step_syncs under torchrun: train each configuration of argv[2] (a JSON list of
{"name", "overrides"}) under a SyncCounter, and a hand-written DDP loop as the baseline; rank 0 writes the
counts per step kind to argv[1] as JSON.

A step's kind says what its end did besides training: "plain" (nothing: no log line, evaluation,
checkpoint or stop-request meeting), else the sorted names of what it did, e.g. "log+save".
"""

import collections
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dtrain.config import load_config
from dtrain.dist import barrier, distributed
from dtrain.runner import build_trainer
from dtrain.synccount import SyncCounter, owner

STEPS = 8


def counted_fit(trainer) -> tuple[SyncCounter, dict[int, set]]:
    counter, kinds = SyncCounter(), collections.defaultdict(set)
    step_fn, after_fn = trainer._train_step, trainer._after_step
    marks = {"_log_train": "log", "evaluate": "eval", "save_checkpoint": "save"}

    def train_step(batches, window):
        counter.tag = trainer.step + 1
        return step_fn(batches, window)

    def after_step(window):
        meetings = trainer.stop_request.meetings
        out = after_fn(window)
        if trainer.stop_request.meetings != meetings:
            kinds[counter.tag].add("meet")
        return out

    def mark(name, fn):
        def wrapped(*a, **k):
            kinds[counter.tag].add(marks[name])
            return fn(*a, **k)
        return wrapped

    trainer._train_step, trainer._after_step = train_step, after_step
    for name in marks:
        setattr(trainer, name, mark(name, getattr(trainer, name)))
    with counter:
        trainer.fit()
    return counter, kinds


def per_kind(counter: SyncCounter, kinds: dict[int, set]) -> dict:
    steps = sorted({e.tag for e in counter.events if isinstance(e.tag, int)} | set(range(1, STEPS + 1)))
    by_kind = collections.defaultdict(list)
    for s in steps:
        by_kind["+".join(sorted(kinds.get(s, ()))) or "plain"].append(s)
    out = {}
    for kind, tagged in by_kind.items():
        c = counter.summary(set(tagged))
        syncs = collections.Counter()
        for where, n in c["sync"].items():
            syncs[owner(where)] += n
        out[kind] = {"steps": len(tagged), "sync_sites": dict(c["sync"]), "syncs_by_owner": dict(syncs),
                     "collectives": dict(c["collective"])}
    return out


def raw_loop(ds, overrides: list[str]) -> dict:
    """The hand-written DDP loop a careful user writes: same model, data, AdamW, clipping, accumulation 2."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = load_config("recipes/mlp/config.yaml", overrides)
    torch.manual_seed(cfg.seed)
    from recipes.mlp import MLP, make_data

    x, y = make_data(cfg.task)
    model = DDP(MLP(cfg.task))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    counter = SyncCounter()
    per_rank = cfg.train.batch_size
    with counter:
        for step in range(1, STEPS + 1):
            counter.tag = step
            for micro in range(2):
                lo = ((step * 2 + micro) * ds.world_size + ds.rank) * per_rank % (len(x) - per_rank)
                ctx = model.no_sync() if micro == 0 else torch.enable_grad()
                with ctx, torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x[lo:lo + per_rank]).float(), y[lo:lo + per_rank]) / 2
                    loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return per_kind(counter, {1: {"warmup"}, 2: {"warmup"}})  # DDP rebuilds its buckets in the first two


out_path, configs = sys.argv[1], json.loads(sys.argv[2])
results = {}
with distributed("cpu") as ds:
    for item in configs:
        cfg = load_config("recipes/mlp/config.yaml", item["overrides"])
        counter, kinds = counted_fit(build_trainer(cfg, ds))
        results[item["name"]] = per_kind(counter, kinds)
        barrier(ds)
    results["raw"] = raw_loop(ds, configs[0]["overrides"])
if ds.is_main:
    Path(out_path).write_text(json.dumps(results, indent=1))
