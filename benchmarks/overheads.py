"""What dtrain costs outside the steady-state step: start-up, `--help`, checkpoint stalls, waiting for data.

    python benchmarks/overheads.py [--repeats 5] [--out benchmarks/results/overheads_HOST_DATE.md]

- `dtrain --help` wall time (and a bare `python -c pass` for the interpreter's share);
- command to first step: from starting `dtrain run` (1 process), `dtrain launch` (2 ranks) and a raw
  torchrun DDP script (benchmarks/step_time.py's raw loop, 2 ranks) to the end of their first step;
- checkpoint stall: how much longer a step that saves a checkpoint takes than one that does not, for a
  ~12.6 M-parameter MLP (model + AdamW state ~150 MB), synchronous and - when the config has an
  asynchronous save - asynchronous;
- data-wait fraction (the log lines' `data_wait`) of the vision recipe with 0 and with N DataLoader workers.
Every number is the median over `--repeats` runs, the variants interleaved.
"""

from __future__ import annotations

import argparse
import datetime
import json
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

MLP = "recipes/mlp/config.yaml"
BIG_MLP = ["task.in_dim=32", "task.hidden=2048", "task.depth=4", "task.num_train=4096", "task.num_val=0",
           "train.batch_size=32"]
# Keys under which an asynchronous checkpoint save may be switched on (the first the config accepts is used).
ASYNC_KEYS = ("checkpoint.async=true", "checkpoint.async_save=true")


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    e["PYTHONPATH"] = str(ROOT)
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def dtrain_cmd() -> list[str]:
    script = Path(sys.executable).with_name("dtrain")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dtrain.cli"]


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env(), check=True, capture_output=True)
    return time.perf_counter() - t


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == kind]


def first_step_dtrain(launch: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = dtrain_cmd() + (["launch", "--nproc-per-node=2"] if launch else ["run"]) + [
            MLP, f"output_dir={tmp}/run", "train.max_steps=2", "train.log_every=1", "checkpoint.every_epoch=false"]
        t = time.time()
        subprocess.run(cmd, cwd=ROOT, env=env(), check=True, capture_output=True)
        return records(Path(tmp) / "run")[0]["time"] - t


def first_step_raw() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(ROOT / "benchmarks/step_time.py"), "--worker", "raw", "--workload", "mlp", "--steps", "2",
               "--log-every", "1", "--result", str(result)]
        t = time.time()
        subprocess.run(cmd, cwd=ROOT, env=env(), check=True, capture_output=True)
        return json.loads(result.read_text())["points"][0][2] - t


def async_override() -> str | None:
    from dtrain.config import ConfigError, load_config

    for key in ASYNC_KEYS:
        try:
            load_config(ROOT / MLP, [key])
            return key
        except ConfigError:
            continue
    return None


def checkpoint_stall(extra: list[str]) -> float:
    """Median extra seconds of a step that saves, over the saves at steps 5, 10, 15 of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = dtrain_cmd() + ["run", MLP, f"output_dir={tmp}/run", "train.max_steps=21", "train.log_every=1",
                              "checkpoint.every_steps=5", "checkpoint.every_epoch=false", "checkpoint.keep_last=2",
                              *BIG_MLP, *extra]
        subprocess.run(cmd, cwd=ROOT, env=env(), check=True, capture_output=True)
        t = {r["step"]: r["time"] for r in records(Path(tmp) / "run")}
        gaps = {s: t[s + 1] - t[s] for s in range(2, 20)}
        plain = statistics.median(g for s, g in gaps.items() if s % 5)
        return statistics.median(gaps[s] - plain for s in (5, 10, 15))


def data_wait(workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = dtrain_cmd() + ["run", "recipes/vision/config.yaml", f"output_dir={tmp}/run", "train.max_steps=40",
                              "train.log_every=10", f"train.num_workers={workers}", "checkpoint.every_epoch=false",
                              "train.eval_every=1000"]
        subprocess.run(cmd, cwd=ROOT, env=env(), check=True, capture_output=True)
        return statistics.median(r["data_wait"] for r in records(Path(tmp) / "run")[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="N of the data-wait comparison")
    p.add_argument("--only", help="run only the probes whose name contains this text, e.g. 'checkpoint'")
    p.add_argument("--out")
    args = p.parse_args()

    akey = async_override()
    probes = {
        "python -c pass": lambda: timed([sys.executable, "-c", "pass"]),
        "dtrain --help": lambda: timed(dtrain_cmd() + ["--help"]),
        "command to first step: dtrain run (1 process)": lambda: first_step_dtrain(False),
        "command to first step: dtrain launch (2 ranks)": lambda: first_step_dtrain(True),
        "command to first step: raw torchrun DDP script (2 ranks)": first_step_raw,
        "checkpoint stall, synchronous save": lambda: checkpoint_stall([]),
        "data_wait fraction, vision, 0 workers": lambda: data_wait(0),
        f"data_wait fraction, vision, {args.workers} workers": lambda: data_wait(args.workers),
    }
    if akey:
        probes[f"checkpoint stall, asynchronous save ({akey})"] = lambda: checkpoint_stall([akey])
    if args.only:
        probes = {k: v for k, v in probes.items() if args.only in k}
    values: dict[str, list[float]] = {k: [] for k in probes}
    for r in range(args.repeats):
        for name, probe in probes.items():
            values[name].append(probe())
            print(f"round {r + 1} {name}: {values[name][-1]:.4f}", flush=True)

    lines = ["# dtrain overheads", "", f"{datetime.date.today()}, {describe()}; median of {args.repeats} interleaved runs.", "",
             "| what | median | runs |", "| --- | --- | --- |"]
    for name, vals in values.items():
        unit = "" if "fraction" in name else " s"
        lines.append(f"| {name} | {statistics.median(vals):.3f}{unit} | {', '.join(f'{v:.3f}' for v in vals)} |")
    if not akey:
        lines += ["", "No asynchronous checkpoint save in this version's config: only the synchronous stall is measured."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
