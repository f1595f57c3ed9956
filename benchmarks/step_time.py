"""Step time of the same workload under a hand-written PyTorch DDP loop, dtrain, Accelerate and Lightning.

    python benchmarks/step_time.py                       # both workloads, 5 rounds, 2 ranks (GPUs if any)
    python benchmarks/step_time.py --workload mlp --rounds 7 --out benchmarks/results/step_time_HOST_DATE.md

Each (round, variant) is its own torchrun job of `--nproc` ranks; variants are interleaved
(raw dtrain accelerate lightning raw dtrain ...) so drift on a shared machine hits all alike. Every
variant trains the same model from the same seed on the same data with the same global batch,
AdamW, warmup + cosine LR, grad clipping at 1.0, and all-reduces the loss for a log line every
`--log-every` steps; each records the time at those log points, and a run's step time is the median
over its log intervals after warm-up of the interval's time per step. The report gives the median
over rounds, its ratio to the raw loop's median, and the median of the per-round ratios; and rank
0's CPU time per step (process time: less sensitive than wall time to other processes on the host).

Workloads: `mlp` (recipes/mlp, small: overhead-bound) and `ticket_router` (MiniLM-L6 encoder,
compute-bound; batches padded to max_length so every variant does the same arithmetic whatever
order its sampler draws) and `vision` (config_fashion_mnist.yaml's ResNet on Fashion-MNIST with its
augmentation applied on the device by the recipe's train_transform in every variant; dtrain draws each
sample's parameters from its own seed, the others get the identity parameters: the same arithmetic).
Peers missing from the environment (pip install -e '.[bench]') are skipped
and say so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hostinfo import describe  # noqa: E402

VARIANTS = ("raw", "dtrain", "accelerate", "lightning")
PEER_PACKAGE = {"accelerate": "accelerate", "lightning": "lightning"}

WORKLOADS = {
    # steps, warm-up steps, steps between log lines, micro-batch per rank, lr, recipe's task section
    "mlp": dict(steps=300, warmup=50, log_every=10, batch=32, lr=1e-3,
                task={"num_train": 32768, "num_val": 0, "in_dim": 32, "hidden": 256, "depth": 3}),
    "ticket_router": dict(steps=12, warmup=3, log_every=1, batch=16, lr=1e-4,
                          task={"max_length": 32}),
    # config_fashion_mnist.yaml's network and augmentation on Fashion-MNIST (Debian's IDX files)
    "vision": dict(steps=80, warmup=20, log_every=5, batch=64, lr=1e-3,
                   task={"dataset": "fashion_mnist", "root": os.environ.get("FASHION_MNIST_DIR"), "image_size": 28, "widths": [32, 64, 128],
                         "blocks_per_stage": 2, "crop_padding": 2, "flip": True, "erase_p": 0.25,
                         "channels_last": True}),
}


# ============================================================================ the workload, shared by all


def build_task(workload: str, rank: int, world: int):
    """The recipe's Task (model, data, loss), built the same way in every variant."""
    import torch

    from dtrain.checkpoint import seed_everything
    from dtrain.config import build_dataclass
    from dtrain.dist import DistState
    from dtrain.model_init import ModelSource
    from dtrain.recipe import BuildContext, resolve_recipe

    recipe = resolve_recipe(workload)
    problems: list[str] = []
    cfg = build_dataclass(recipe.Config, WORKLOADS[workload]["task"], "task.", problems)
    assert not problems, problems
    seed_everything(0)
    ds = DistState(rank, world, rank, world, torch.device("cpu"), "torchrun")
    task = recipe.build(cfg, BuildContext(dist=ds, seed=0, output_dir=Path(tempfile.mkdtemp(prefix="bench-"))))
    if workload == "ticket_router":
        task.collate_fn = FixedPad(task.collate_fn.pad_id, cfg.max_length)
    # Every variant gets the same built model (dtrain's own builds it from this function the same way).
    task.model = ModelSource.of(task.model, task.model_skeleton, seed=0).full()
    # from_pretrained returns a model in eval mode: train mode (dropout on) in every variant alike.
    task.model.train()
    return task


class FixedPad:
    """Pad every batch to max_length: the same FLOPs per step whichever tickets a sampler draws."""

    def __init__(self, pad_id: int, length: int):
        self.pad_id, self.length = pad_id, length

    def __call__(self, items):
        import torch

        ids = torch.full((len(items), self.length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), self.length), dtype=torch.long)
        for row, (tokens, _) in enumerate(items):
            ids[row, : len(tokens)] = torch.tensor(tokens[: self.length])
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([label for _, label in items])}


def lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return f


def device_of(local_rank: int):
    import torch

    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


class Clock:
    """Time at each log point (after the loss all-reduce has synchronised the ranks). With a SyncCounter,
    what follows a mark is tagged with its step: the counted run's syncs and collectives per interval."""

    def __init__(self, counter=None):
        self.points: list[tuple[int, float, float, float]] = []
        self.counter = counter

    def mark(self, step: int) -> None:
        self.points.append((step, time.perf_counter(), time.time(), time.process_time()))
        if self.counter is not None:
            self.counter.tag = step


# ============================================================================ the four variants


def run_raw(workload: str, spec: dict, clock: Clock) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = device_of(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    task = build_task(workload, rank, world)
    model = task.model.to(device)
    ddp = DDP(model, device_ids=[local] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec["steps"], 5))
    sampler = DistributedSampler(task.train_data, num_replicas=world, rank=rank, seed=0, drop_last=True)
    loader = DataLoader(task.train_data, batch_size=spec["batch"], sampler=sampler, collate_fn=task.collate_fn,
                        drop_last=True)
    step, window = 0, torch.zeros((), device=device)
    for batch in loader:
        batch = move(batch, device)
        batch = task.train_transform(batch) if task.train_transform else batch
        loss = task.loss_fn(task.forward(ddp, batch), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window += loss.detach()
        step += 1
        if step % spec["log_every"] == 0:
            dist.all_reduce(window)
            _ = window.item()
            window.zero_()
            clock.mark(step)
        if step == spec["steps"]:
            break
    dist.destroy_process_group()


def run_dtrain(workload: str, spec: dict, clock: Clock, run_dir: str) -> None:
    from dtrain.checkpoint import seed_everything
    from dtrain.config import load_config
    from dtrain.dist import distributed
    from dtrain.trainer import Trainer

    raw = {"recipe": workload, "output_dir": run_dir, "seed": 0, "task": WORKLOADS[workload]["task"],
           "train": {"max_steps": spec["steps"], "batch_size": spec["batch"], "log_every": spec["log_every"],
                     "grad_clip": 1.0, "precision": "fp32", "num_workers": 0},
           "optim": {"lr": spec["lr"], "warmup_steps": 5, "schedule": "cosine"},
           "checkpoint": {"every_epoch": False, "resume": "none"}}
    cfg = load_config(None, raw=raw)
    with distributed(cfg.dist.device, cfg.dist.timeout_s) as ds:
        task = build_task(workload, ds.rank, ds.world_size)
        seed_everything(ds.rank)
        trainer = Trainer(cfg, ds, task)
        log = trainer.logger.log

        def timed_log(record, kind="train"):
            if kind == "train":
                clock.mark(record["step"])
            log(record, kind)

        trainer.logger.log = timed_log  # only to read the clock at the same points as the others
        trainer.val_loader = trainer.test_loader = None  # no evaluation: the loops compared have none
        trainer.fit()


def run_accelerate(workload: str, spec: dict, clock: Clock) -> None:
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    acc = Accelerator(cpu=not torch.cuda.is_available())
    task = build_task(workload, acc.process_index, acc.num_processes)
    opt = torch.optim.AdamW(task.model.parameters(), lr=spec["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec["steps"], 5))
    loader = DataLoader(task.train_data, batch_size=spec["batch"], shuffle=True, collate_fn=task.collate_fn,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    model, opt, loader, sched = acc.prepare(task.model, opt, loader, sched)
    step, window = 0, torch.zeros((), device=acc.device)
    for batch in loader:
        batch = task.train_transform(batch) if task.train_transform else batch
        loss = task.loss_fn(task.forward(model, batch), batch)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window += loss.detach()
        step += 1
        if step % spec["log_every"] == 0:
            _ = acc.reduce(window, "sum").item()
            window.zero_()
            clock.mark(step)
        if step == spec["steps"]:
            break
    acc.end_training()


def run_lightning(workload: str, spec: dict, clock: Clock) -> None:
    import lightning as L
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    world = int(os.environ["WORLD_SIZE"])
    task = build_task(workload, int(os.environ["RANK"]), world)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = task.model
            self.window = None

        def training_step(self, batch, batch_idx):
            batch = task.train_transform(batch) if task.train_transform else batch
            loss = task.loss_fn(task.forward(self.model, batch), batch)
            self.window = loss.detach() if self.window is None else self.window + loss.detach()
            return loss

        def on_train_batch_end(self, outputs, batch, batch_idx):
            step = self.trainer.global_step
            if step % spec["log_every"] == 0:
                dist.all_reduce(self.window)
                _ = self.window.item()
                self.window = None
                clock.mark(step)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.model.parameters(), lr=spec["lr"])
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec["steps"], 5))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    loader = DataLoader(task.train_data, batch_size=spec["batch"], shuffle=True, collate_fn=task.collate_fn,
                        drop_last=True)
    gpu = torch.cuda.is_available()
    trainer = L.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=int(os.environ["LOCAL_WORLD_SIZE"]), strategy="ddp",
        max_steps=spec["steps"], gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, precision="32-true",
    )
    trainer.fit(Module(), loader)


def move(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return [t.to(device) for t in batch]


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    spec = dict(WORKLOADS[args.workload])
    spec["log_every"] = args.log_every or spec["log_every"]
    spec["steps"] = args.steps or spec["steps"]
    from dtrain.synccount import SyncCounter

    # Counting runs apart from timed ones: the dispatch mode sees every op, and would slow them.
    counter = SyncCounter() if args.count else None
    if counter is not None:
        import torch.distributed as dist

        destroy = dist.destroy_process_group

        def destroy_after_gloo_settles(*a, **k):
            # Tensors that passed through the dispatch mode have Python objects; gloo's worker thread needs
            # the GIL to free its last work item, and tearing the group down holds the GIL while joining that
            # thread: a deadlock. A moment without the GIL first lets the thread finish.
            time.sleep(0.2)
            return destroy(*a, **k)

        dist.destroy_process_group = destroy_after_gloo_settles
    clock = Clock(counter)
    run = {"raw": run_raw, "dtrain": run_dtrain, "accelerate": run_accelerate, "lightning": run_lightning}
    extra = (args.run_dir,) if args.worker == "dtrain" else ()
    with counter if counter is not None else contextlib.nullcontext():
        run[args.worker](args.workload, spec, clock, *extra)
    result = {"points": clock.points}
    if counter is not None:  # per step over the timed log intervals (the log steps' syncs included)
        timed = [p[0] for p in clock.points if p[0] >= spec["warmup"]]
        tags = set(timed[:-1])
        steps = timed[-1] - timed[0]
        events = [e for e in counter.events if e.tag in tags]
        result["syncs_per_step"] = sum(e.kind == "sync" for e in events) / steps
        result["collectives_per_step"] = sum(e.kind == "collective" for e in events) / steps
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.result).write_text(json.dumps(result))


# ============================================================================ the orchestrator


def step_time(points: list, warmup: int, clock: int = 1) -> float:
    """Median over the log intervals after warm-up of (interval time / its steps): a stall caused by another
    process on a shared machine moves one interval, not the result. clock 1: wall time; 3: rank 0's CPU time."""
    after = [p for p in points if p[0] >= warmup]
    return statistics.median((b[clock] - a[clock]) / (b[0] - a[0]) for a, b in zip(after, after[1:]))


def run_one(variant: str, workload: str, nproc: int, log_every: int | None, steps: int | None,
            count: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="dtrain-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, "--worker", variant, "--workload", workload, "--result", str(result),
               "--run-dir", str(Path(tmp) / "run")]
        if log_every:
            cmd += ["--log-every", str(log_every)]
        if steps:
            cmd += ["--steps", str(steps)]
        if count:
            cmd += ["--count"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
        if not any(k == "OMP_NUM_THREADS" for k in os.environ):
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // nproc))
        t = time.time()
        for attempt in (1, 2):
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            # Rank 0 writes its result when training is done: a rank that then dies in gloo's teardown
            # ("terminate called without an active exception", now and then) leaves the numbers valid.
            if result.is_file():
                break
            if attempt == 2:
                raise RuntimeError(f"{variant}/{workload} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                   f"{proc.stderr[-3000:]}")
            print(f"{variant}/{workload} failed ({proc.returncode}) before writing its result; once more", flush=True)
        out = json.loads(result.read_text())
        out["wall_s"] = time.time() - t
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--nproc", type=int, default=None, help="ranks (default: GPUs, else 2)")
    p.add_argument("--steps", type=int, default=None, help="override the workload's step count")
    p.add_argument("--log-every", type=int, default=None, help="override the workload's steps between log lines")
    p.add_argument("--out", help="write the markdown report here too")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting rounds after this many seconds")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch

    nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    variants = [v for v in args.variants.split(",") if v]
    missing = [v for v in variants if v in PEER_PACKAGE and importlib.util.find_spec(PEER_PACKAGE[v]) is None]
    variants = [v for v in variants if v not in missing]
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    started = time.monotonic()
    lines = ["# Step time: raw DDP loop vs dtrain vs peers", "",
             f"{datetime.date.today()}, {describe()}; {nproc} ranks "
             f"({'NCCL' if torch.cuda.is_available() else 'gloo'}), {args.rounds} interleaved rounds.", ""]
    if missing:
        lines += [f"Not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]').", ""]
    for workload in workloads:
        spec = WORKLOADS[workload]
        steps = args.steps or spec["steps"]
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        counted = {v: run_one(v, workload, nproc, args.log_every, spec["warmup"] + 4 * (args.log_every or spec["log_every"]),
                              count=True) for v in variants}
        for r in range(args.rounds):
            if args.budget_s and time.monotonic() - started > args.budget_s and r >= 1:
                print(f"{workload}: time budget spent after {r} round(s)", flush=True)
                break
            for v in variants:
                out = run_one(v, workload, nproc, args.log_every, args.steps)
                times[v].append(step_time(out["points"], spec["warmup"]))
                cpu[v].append(step_time(out["points"], spec["warmup"], clock=3))
                print(f"{workload} round {r + 1} {v}: {times[v][-1] * 1e3:.2f} ms/step ({out['wall_s']:.1f} s wall)",
                      flush=True)
        raw = statistics.median(times["raw"]) if "raw" in times else None
        global_batch = spec["batch"] * nproc
        lines += [f"## {workload}: {steps} steps (first {spec['warmup']} not timed), global batch {global_batch}", "",
                  "| variant | median ms/step | ratio to raw (medians) | median per-round ratio | per-round ms "
                  "| rank 0 CPU ms/step | CPU ratio to raw | host syncs/step | collectives/step |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for v in variants:
            med = statistics.median(times[v])
            ratio = f"{med / raw:.3f}" if raw else "-"
            paired = f"{statistics.median(t / r for t, r in zip(times[v], times['raw'])):.3f}" if raw else "-"
            rounds = ", ".join(f"{t * 1e3:.2f}" for t in times[v])
            c = statistics.median(cpu[v])
            cratio = f"{c / statistics.median(cpu['raw']):.3f}" if raw else "-"
            n = counted[v]
            lines.append(f"| {v} | {med * 1e3:.2f} | {ratio} | {paired} | {rounds} | {c * 1e3:.2f} | {cratio} "
                         f"| {n['syncs_per_step']:.2f} | {n['collectives_per_step']:.2f} |")
        lines += ["", "Host syncs (`aten._local_scalar_dense`: `.item()`, `bool(t)`...) and collectives per step are "
                  "counted by dtrain/synccount.py in a separate run of each variant (the counting would slow a timed "
                  "one), rank 0, over the same timed log intervals, the log line's loss all-reduce and `.item()` "
                  "included. On the CPU torch's foreach AdamW reads its step counters with `.item()` (CPU "
                  "tensors: no device sync on a GPU); dtrain's fused AdamW does not.", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
