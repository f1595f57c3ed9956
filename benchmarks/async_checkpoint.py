"""Training step time while a checkpoint is written: no save vs synchronous save vs async save.

    python benchmarks/async_checkpoint.py [--hidden 2048] [--depth 8] [--batch 64] [--steps 8] [--rounds 5]

A window is `--steps` optimizer steps of an MLP (dtrain's own strategy, optimizer and CheckpointManager,
one process); a save, if any, starts at the window's first step and must be complete (meta.json,
`latest`) by its end - an async write still running then is waited for, inside the window. Each round
runs the three variants back to back in a rotated order, so machine noise hits all alike; the report
gives medians over rounds of the mean step time per window, the time the save call blocked the loop,
and ratios against the no-save baseline. Writes benchmarks/results/async_checkpoint_<machine>_<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hostinfo import device_name  # noqa: E402

from dtrain.checkpoint import CheckpointManager  # noqa: E402
from dtrain.config import load_config  # noqa: E402
from dtrain.dist import destroy_distributed, ensure_process_group, init_distributed  # noqa: E402
from dtrain.precision import Precision  # noqa: E402
from dtrain.strategies import build_strategy  # noqa: E402
from dtrain.recipe import Task  # noqa: E402
from dtrain.optim import build_optimizer  # noqa: E402

VARIANTS = ("no save", "sync save", "async save")


def mlp(width: int, hidden: int, depth: int, classes: int) -> nn.Module:
    layers, w = [], width
    for _ in range(depth):
        layers += [nn.Linear(w, hidden), nn.GELU()]
        w = hidden
    return nn.Sequential(*layers, nn.Linear(w, classes))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per window")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (one more is run first, as warm-up)")
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: a temp dir under runs/)")
    ap.add_argument("--out", default=None, help="report path (default: benchmarks/results/...)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for training (default: torch's); fewer leaves cores to the writer, "
                         "as a GPU run does")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = load_config(None, ["recipe=mlp", "optim.warmup_steps=0", "train.grad_clip=1.0"], raw={})
    dist = init_distributed("cpu", env={})
    ensure_process_group(dist)  # the checkpoint group of an async save needs one, even alone
    model = mlp(256, args.hidden, args.depth, 10)
    task = Task(model=model, train_data=[], loss_fn=None)
    strategy = build_strategy(cfg, dist, Precision("fp32", dist.device), task)
    strategy.setup(model, lambda m: build_optimizer(m, cfg.optim))
    x, y = torch.randn(args.batch, 256), torch.randint(0, 10, (args.batch,))
    n_params = sum(p.numel() for p in model.parameters())

    def train_step() -> None:
        loss = F.cross_entropy(strategy.train_model(x), y)
        strategy.backward(loss)
        strategy.step(guard_enabled=True)
        strategy.zero_grad()

    (ROOT / "runs").mkdir(exist_ok=True)
    root = Path(args.dir or tempfile.mkdtemp(prefix="async-ckpt-", dir=ROOT / "runs"))
    manager = CheckpointManager(root / "checkpoints", dist, keep_last=1)
    step = 0
    results = {v: {"step_s": [], "blocked_s": []} for v in VARIANTS}
    for rnd in range(args.rounds + 1):
        order = VARIANTS[rnd % 3 :] + VARIANTS[: rnd % 3]
        for variant in order:
            t0 = time.perf_counter()
            blocked = 0.0
            if variant != "no save":
                async_save = variant == "async save"
                manager.begin_save(step, {"step": step}, lambda d: strategy.save_state(d, async_save), "dcp")
                blocked = time.perf_counter() - t0
            for _ in range(args.steps):
                manager.poll(manager.written)  # one process: its own answer is the agreement
                train_step()
                step += 1
            manager.finish()  # the checkpoint is complete inside the window
            window = time.perf_counter() - t0
            if rnd > 0:
                results[variant]["step_s"].append(window / args.steps)
                results[variant]["blocked_s"].append(blocked)
            print(f"round {rnd} {variant:10s} {window / args.steps * 1e3:8.1f} ms/step  save call {blocked * 1e3:7.1f} ms",
                  flush=True)
    size = sum(p.stat().st_size for p in (root / "checkpoints").rglob("*") if p.is_file())
    strategy.close()
    destroy_distributed()
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)

    base = statistics.median(results["no save"]["step_s"])
    name = device_name()
    slug = "-".join(re.sub(r"[^a-z0-9 ]", "", re.sub(r"\((r|tm)\)", "", name.lower())).split()[:2]) or "unknown"
    today = datetime.date.today().isoformat()
    lines = [
        f"# Async checkpoint: step time while a save runs — {name}, {today}",
        "",
        f"Machine: {name}; {os.cpu_count()} logical CPUs; torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"python {sys.version.split()[0]}.",
        f"Workload: MLP 256-{args.hidden}x{args.depth}-10 ({n_params / 1e6:.1f}M parameters, fp32, AdamW), batch {args.batch}, "
        f"1 process, strategy ddp with the dcp format; checkpoint {size / 2**20:.0f} MiB (weights + AdamW state); "
        f"window of {args.steps} steps starting with the save, {args.rounds} measured rounds (+1 warm-up), "
        "variants rotated each round.",
        "",
        "| variant | median step time ms (window mean) | vs no save | median time the save call blocked the loop ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for v in VARIANTS:
        med = statistics.median(results[v]["step_s"])
        lines.append(f"| {v} | {med * 1e3:.1f} | {med / base:.2f}x | {statistics.median(results[v]['blocked_s']) * 1e3:.1f} |")
    threads = f" --threads {args.threads}" if args.threads else ""
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/async_checkpoint.py --hidden {args.hidden} --depth {args.depth} "
              f"--batch {args.batch} --steps {args.steps} --rounds {args.rounds}{threads}`.", ""]
    suffix = f"_{args.threads}thread" if args.threads else ""
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"async_checkpoint_{slug}_{today}{suffix}.md")
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
