"""The sweep behind config_fashion_mnist.yaml: candidates ranked on a validation split carved from
Fashion-MNIST's training set (6,000 images, stratified), never on the test split.

    python -m recipes.vision.sweep_fashion_mnist [--parallel 4] [--only NAME ...] [--out runs/sweep_fmnist]

Every CPU candidate costs about the same on 2 CPU ranks (~30 minutes: fewer epochs for a larger
network), so the sweep compares what fits the CPU budget. They can be swept anywhere: with the same
global batch a run is the same computation at any world size (dtrain's N = 1 equivalence), so on one GPU
each runs as one rank with the CPU run's global batch, several at once; the chosen one is then measured on
the CPUs. The `gpu_*` candidates are the GPU config's. Each run's test accuracy is recorded too, read only
after the choice. Results: recipes/vision/SWEEP.md, the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONFIG = "recipes/vision/config_fashion_mnist.yaml"
GPU_CONFIG = "recipes/vision/config_fashion_mnist_gpu.yaml"
CPU_BATCH = 128  # the CPU config's global batch: 2 ranks x 64


def _resnet(widths: str, blocks: int, epochs: int, erase: float, lr: str = "4e-3") -> list[str]:
    return [f"task.widths={widths}", f"task.blocks_per_stage={blocks}", f"train.epochs={epochs}",
            f"task.erase_p={erase}", f"optim.lr={lr}"]


SGD = ["optim.name=sgd", "optim.weight_decay=5e-4"]
CANDIDATES: dict[str, tuple[str, list[str]]] = {  # name -> (config, overrides): every swept value stated
    # ~1.2 M training images fit 28 minutes on 2 CPU ranks for [32,64,128] x 1 (700 images/s measured)
    "r32x1_e20": (CONFIG, _resnet("[32,64,128]", 1, 20, 0.0)),
    "r32x1_e20_erase": (CONFIG, _resnet("[32,64,128]", 1, 20, 0.25)),
    "r32x1_e20_erase_lr2e-3": (CONFIG, _resnet("[32,64,128]", 1, 20, 0.25, "2e-3")),
    "r32x1_e20_erase_lr8e-3": (CONFIG, _resnet("[32,64,128]", 1, 20, 0.25, "8e-3")),
    "r32x2_e10_erase": (CONFIG, _resnet("[32,64,128]", 2, 10, 0.25)),
    "r48x1_e9_erase": (CONFIG, _resnet("[48,96,192]", 1, 9, 0.25)),
    "gpu_r96x2_e30": (GPU_CONFIG, []),
    # second round: SGD with Nesterov-free momentum 0.9, L2 5e-4 (the ResNet papers' recipe)
    "r32x2_e10_erase_sgd": (CONFIG, _resnet("[32,64,128]", 2, 10, 0.25, "0.1") + SGD),
    "r32x1_e20_erase_sgd": (CONFIG, _resnet("[32,64,128]", 1, 20, 0.25, "0.1") + SGD),
    "gpu_r96x2_e30_sgd": (GPU_CONFIG, ["optim.lr=0.1", *SGD]),
}


def run_one(name: str, config: str, overrides: list[str], out: Path, extra: list[str], device_batch: bool) -> dict:
    run_dir = out / name
    if not (run_dir / "test_report.json").is_file():
        start = time.time()
        batch = [f"train.batch_size={CPU_BATCH}"] if device_batch and config == CONFIG else []
        cmd = [sys.executable, "-m", "dtrain.cli", "run", config, f"output_dir={run_dir}",
               "checkpoint.keep_last=1", "logging.progress=lines", *batch, *overrides, *extra]
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        (run_dir).mkdir(parents=True, exist_ok=True)
        (run_dir / "sweep_time_s.txt").write_text(f"{time.time() - start:.0f} {rc}\n")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    evals = [r for r in rows if r.get("kind") == "eval"]
    best = max(evals, key=lambda r: r["accuracy"]) if evals else {}
    test = json.loads((run_dir / "test_report.json").read_text()) if (run_dir / "test_report.json").is_file() else {}
    secs, rc = (run_dir / "sweep_time_s.txt").read_text().split()
    return {"config": config, "overrides": " ".join(overrides), "val": best.get("accuracy"),
            "best_step": best.get("step"), "test": test.get("accuracy"), "time_s": int(secs), "rc": int(rc)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/sweep_fmnist")
    ap.add_argument("--only", nargs="*", help="candidate names (default: all)")
    ap.add_argument("--parallel", type=int, default=1, help="candidates trained at once (one GPU holds several)")
    ap.add_argument("--one-rank", action="store_true",
                    help="run each CPU candidate as one rank with the CPU run's global batch (on a GPU)")
    ap.add_argument("--report", default=None, help="write the table here (default: print only)")
    ap.add_argument("overrides", nargs="*", help="added to every run, e.g. task.root=DIR")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in CANDIDATES if not args.only or n in args.only]
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {n: pool.submit(run_one, n, *CANDIDATES[n], out, args.overrides, args.one_rank) for n in names}
        results = {n: f.result() for n, f in futures.items()}
    (out / "sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| candidate | config | overrides | val accuracy % | best at step | test accuracy % | time s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, r in sorted(results.items(), key=lambda kv: -(kv[1]["val"] or 0)):
        pct = lambda v: f"{100 * v:.2f}" if v is not None else f"(failed, exit {r['rc']})"  # noqa: E731
        lines.append(f"| {n} | {Path(r['config']).name} | {r['overrides']} | {pct(r['val'])} | {r['best_step']} | "
                     f"{pct(r['test'])} | {r['time_s']} |")
    table = "\n".join(lines)
    print(table)
    if args.report:
        Path(args.report).write_text(table + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
