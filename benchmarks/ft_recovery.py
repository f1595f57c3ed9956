"""What a lost rank costs a job, with and without fault tolerance (issue 25), side by side on one machine.

    python benchmarks/ft_recovery.py --out benchmarks/results/ft_recovery_<machine>_<date>.md [--rounds 3]

The same job both ways: the mlp recipe, 2 replicas (2 ddp ranks under torchrun, or 2 replica groups of
one process under `dtrain launch --replica-groups 2`), each step padded to --step-s seconds
(fault_injection.step_sleep_s: a real model's step time, so that redone steps cost what they would), a
checkpoint every --every steps. The fault: replica 1 SIGKILLed right after step --kill-at (mid-way between
two checkpoints), or, with FT, also while the other is inside the gradient reduction.

* without FT, torchrun restarts the whole group (--max-restarts 1), every rank reloads the newest
  checkpoint and redoes the steps since it: the cost is the restart plus those steps;
* with FT the other group carries on alone after the heartbeat timeout (at most one step discarded), the
  launcher restarts the lost one and it heals from the survivor while the job goes on.

Reported per way (median of --rounds): steps redone or discarded; seconds the job made no progress
(without FT: from the fault to the restarted job passing the fault's step again; with FT: the survivor's
stall); the whole job's wall time against a clean run of the same way; with FT, seconds until the lost
group was back in the quorum.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hostinfo import describe  # noqa: E402


def job(way: str, out: Path, args, fault: str | None) -> tuple[float, str]:
    shutil.rmtree(out, ignore_errors=True)
    common = ["recipes/mlp/config.yaml", f"output_dir={out}", f"train.epochs={args.epochs}", "train.log_every=1",
              "train.sanity_eval_batches=0", f"checkpoint.every_steps={args.every}", "checkpoint.keep_last=3",
              f"fault_injection.step_sleep_s={args.step_s}", "checkpoint.best_metric=null"]
    if fault == "kill":
        common += [f"fault_injection.kill_at_step={args.kill_at}", "fault_injection.kill_rank=1"]
    elif fault == "kill_in_reduce":
        common += [f"fault_injection.kill_in_reduce_at_step={args.kill_at}", "fault_injection.kill_rank=1"]
    if way == "ft":
        # The step records (and their weight digests) only where a fault is measured: a clean run shows
        # what ft itself costs.
        cmd = ["launch", "--replica-groups=2", *common, f"ft.record_steps={'true' if fault else 'false'}",
               "ft.heartbeat_timeout_ms=1000"]
    else:
        cmd = ["launch", "--nproc-per-node=2", "--max-restarts=1", *common]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dtrain.cli", *cmd], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{way} {fault}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def ddp_fault(out: Path, kill_at: int, log: str) -> dict:
    """Steps redone: from the checkpoint the restart resumed ("resumed from ... at step N") to the fault.
    Seconds without progress: metrics.jsonl keeps one line a step (a resume drops the lines after its
    checkpoint), so the fault's instant is the resumed step's time plus the steps done since at the median
    step time, and the job is back where it was when it passes the fault's step again."""
    import re

    resumed = int(re.search(r"resumed from \S+ at step (\d+)", log).group(1))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    t = {r["step"]: r["time"] for r in rows if r["kind"] == "train"}
    step_s = statistics.median(t[s + 1] - t[s] for s in range(1, resumed) if s + 1 in t)
    fault = t[resumed] + (kill_at - resumed) * step_s
    return {"redone": kill_at - resumed, "no_progress_s": t[kill_at] - fault}


def ft_fault(out: Path, kill_at: int) -> dict:
    recs = {g: [json.loads(x) for x in (out / f"replica_{g}" / "ft_steps.jsonl").read_text().splitlines()]
            for g in (0, 1)}
    survivor = recs[0]
    discarded = [r for r in survivor if not r["committed"]]
    # the survivor's stall: its steps from the fault until it committed without the lost group, beyond a step's time
    around = [r for r in survivor if kill_at <= r["step"] <= kill_at + 2]
    stall = max(r["seconds"] for r in around)
    # The fault's instant: the lost group's record of the step it died after, or (killed inside the
    # reduction, before recording) the start of the survivor's discarded step.
    died = next((r["time"] for r in recs[1] if r["step"] == kill_at), None)
    if died is None:
        died = discarded[0]["time"] - discarded[0]["seconds"]
    back = [r["time"] for r in recs[1] if r["time"] > died + 1e-3]
    rejoin = back[0] - died if back else float("nan")
    return {"redone": len(discarded), "no_progress_s": stall, "rejoined_s": rejoin}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--step-s", type=float, default=0.2, help="each step padded to this (a real step's time)")
    ap.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    ap.add_argument("--kill-at", type=int, default=30, help="replica 1 dies after this step")
    ap.add_argument("--work", default="/tmp/dtrain-ft-bench")
    args = ap.parse_args()
    work = Path(args.work)
    cases = [("ddp", None), ("ddp", "kill"), ("ft", None), ("ft", "kill"), ("ft", "kill_in_reduce")]
    walls: dict = {c: [] for c in cases}
    faults: dict = {c: [] for c in cases if c[1]}
    for r in range(args.rounds):  # interleaved, so drift hits every case alike
        for way, fault in cases:
            out = work / f"{way}-{fault or 'clean'}"
            wall, log = job(way, out, args, fault)
            walls[(way, fault)].append(wall)
            if fault:
                faults[(way, fault)].append(ddp_fault(out, args.kill_at, log) if way == "ddp" else ft_fault(out, args.kill_at))
            print(f"[ft_recovery] round {r + 1} {way} {fault or 'clean'}: {wall:.1f} s "
                  f"{faults[(way, fault)][-1] if fault else ''}", flush=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    lines = [f"# Recovery from a lost replica, with and without fault tolerance ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {describe()}. `python benchmarks/ft_recovery.py --rounds {args.rounds} --epochs {args.epochs} "
             f"--step-s {args.step_s} --every {args.every} --kill-at {args.kill_at}`: mlp recipe, 2 replicas, steps "
             f"padded to {args.step_s} s, checkpoint every {args.every} steps, replica 1 SIGKILLed after step "
             f"{args.kill_at}; medians of {args.rounds} interleaved rounds.", "",
             "| way | fault | steps redone or discarded | seconds without progress | lost replica back in (s) "
             "| job wall time (s) | vs clean run (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for way, fault in cases:
        wall = med(walls[(way, fault)])
        clean = med(walls[(way, None)])
        if fault:
            f = faults[(way, fault)]
            redone = med([x["redone"] for x in f])
            stall = med([x["no_progress_s"] for x in f])
            rejoin = med([x.get("rejoined_s", float("nan")) for x in f]) if way == "ft" else None
            lines.append(f"| {'dtrain ddp + torchrun restart' if way == 'ddp' else 'dtrain ft (torchft)'} | "
                         f"{fault.replace('_', ' ')} | {redone:g} | {stall:.2f} | "
                         f"{'-' if rejoin is None else f'{rejoin:.1f}'} | {wall:.1f} | {wall - clean:+.1f} |")
        else:
            lines.append(f"| {'dtrain ddp' if way == 'ddp' else 'dtrain ft (torchft)'} | none | 0 | 0 | - | "
                         f"{wall:.1f} | |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
