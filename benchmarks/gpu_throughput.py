"""One-GPU throughput of the recipes as dtrain trains them: ticket-router tokens/s and MFU in bf16, with and
without torch.compile, and the vision recipe's images/s.

    python benchmarks/gpu_throughput.py [--steps 80] [--out benchmarks/results/gpu_throughput_<GPU>_<DATE>.md]

Each variant is a `dtrain run` (one process, cuda:0); the numbers are the medians of its log lines
after the first two intervals (warm-up, compilation). MFU uses dtrain's peak table
(dtrain/metrics.py) unless `--peak-flops` is given. Needs a CUDA GPU; says so and exits 2 without one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "ticket_router bf16 eager": ["recipes/ticket_router/config.yaml", "train.compile=false"],
    "ticket_router bf16 compile": ["recipes/ticket_router/config.yaml", "train.compile=true"],
    "vision bf16 eager": ["recipes/vision/config.yaml", "train.compile=false"],
    "vision bf16 compile": ["recipes/vision/config.yaml", "train.compile=true"],
}
COMMON = ["train.precision=bf16", "train.log_every=10", "checkpoint.every_epoch=false", "train.eval_every=100000",
          "early_stopping.metric=null", "checkpoint.best_metric=null", "train.num_workers=2", "dist.device=cuda"]


def run(args_: list[str], steps: int, batch: int, peak: float | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dtrain.cli", "run", *args_, *COMMON, f"output_dir={tmp}/run",
               f"train.max_steps={steps}", "train.epochs=1000", f"train.batch_size={batch}"]
        if peak:
            cmd.append(f"train.peak_flops={peak}")
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        rows = [json.loads(x) for x in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if r["kind"] == "train"][2:]
        keys = ("samples_per_s", "tokens_per_s", "tflops", "mfu", "peak_mem_mb", "data_wait")
        return {k: statistics.median(r[k] for r in train) for k in keys if train and k in train[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--peak-flops", type=float, default=None)
    p.add_argument("--out")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU here; run it on a GPU machine", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    lines = ["# One-GPU throughput (dtrain run, bf16)", "",
             f"{datetime.date.today()}, {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
             f"{args.steps} steps, micro-batch {args.batch_size}; medians of the log lines after the first two.", "",
             "| variant | samples/s | tokens/s | TFLOP/s | MFU | peak MiB |", "| --- | --- | --- | --- | --- | --- |"]
    for name, a in VARIANTS.items():
        r = run(a, args.steps, args.batch_size, args.peak_flops)
        cell = lambda k, f: format(r[k], f) if k in r else "-"  # noqa: E731
        lines.append(f"| {name} | {cell('samples_per_s', '.0f')} | {cell('tokens_per_s', '.0f')} | "
                     f"{cell('tflops', '.1f')} | {cell('mfu', '.3f')} | {cell('peak_mem_mb', '.0f')} |")
        print(lines[-1], flush=True)
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
