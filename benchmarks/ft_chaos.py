"""Chaos trials for fault tolerance (issue 25): `python benchmarks/chaos.py --ft [--trials 20] [--seed 0]`.

Each trial runs `dtrain launch --replica-groups G` (G = 2 or 3, drawn) of the mlp recipe with steps padded
to 0.15 s and strikes once at a random instant: a group SIGKILLed (between steps, at a random time), a group
SIGKILLed while the others are inside the gradient reduction (fault injection at a random step), a group
SIGSTOPped (hung: left behind), or the Lighthouse SIGKILLed. It then checks what the contract promises
(dtrain.ft.audit on the groups' step records): every sample of every epoch trained exactly once across
the groups, every group that committed a step holding the same weights after it; the job exits 0; each
survivor discarded at most one step. Reported per fault kind: trials, kept, the largest number of steps a
survivor discarded, and the median and largest stall (a survivor's longest step from the strike on).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hostinfo import describe  # noqa: E402
from dtrain.ft import audit, read_records  # noqa: E402

KINDS = ("kill9_group", "kill9_in_reduce", "sigstop_group", "kill9_lighthouse")
N_TRAIN, EPOCHS = 512, 2
JOB = [f"task.num_train={N_TRAIN}", f"train.epochs={EPOCHS}", "train.log_every=100", "train.sanity_eval_batches=0",
       "checkpoint.every_steps=10", "fault_injection.step_sleep_s=0.15", "ft.record_steps=true",
       "ft.heartbeat_timeout_ms=1000", "ft.timeout_s=3", "ft.finish_grace_s=3"]


def trial(work: Path, i: int, kind: str, rng: random.Random) -> dict:
    groups = rng.choice((2, 3))
    victim = rng.randrange(groups)
    steps = EPOCHS * -(-N_TRAIN // (groups * 16))  # the job's length with every group alive
    at = rng.randint(2, steps - 4)  # the step (or the victim's records) at which to strike
    out = work / f"trial-{i:03d}"
    shutil.rmtree(out, ignore_errors=True)
    extra = [f"fault_injection.kill_in_reduce_at_step={at}", f"fault_injection.kill_rank={victim}"] \
        if kind == "kill9_in_reduce" else []
    argv = [sys.executable, "-m", "dtrain.cli", "launch", f"--replica-groups={groups}", "recipes/mlp/config.yaml",
            *JOB, *extra, f"output_dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = open(work / f"trial-{i:03d}.log", "w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    struck: dict = {}

    def strike() -> None:
        while proc.poll() is None and len(read_records(out, victim)) < at:
            time.sleep(0.02)
        if proc.poll() is not None:
            return
        time.sleep(rng.uniform(0, 0.15))  # anywhere inside the next step
        struck["time"] = time.time()
        if kind == "kill9_lighthouse":
            os.kill(int((out / ".ft_lighthouse").read_text()), signal.SIGKILL)
        else:
            pid = int((out / f"replica_{victim}" / "pid").read_text())
            os.kill(pid, signal.SIGSTOP if kind == "sigstop_group" else signal.SIGKILL)

    if kind != "kill9_in_reduce":
        threading.Thread(target=strike, daemon=True).start()
    try:
        rc = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -999
    log.close()
    problems = [] if rc == 0 else [f"exit {rc}"]
    if kind != "kill9_in_reduce" and "time" not in struck:
        problems.append("the job ended before the strike")
    problems += audit(out, groups, N_TRAIN, EPOCHS)
    survivors = [g for g in range(groups) if g != victim] if kind != "kill9_lighthouse" else list(range(groups))
    discarded = max(sum(not r["committed"] for r in read_records(out, g)) for g in survivors)
    if discarded > 1:
        problems.append(f"a survivor discarded {discarded} steps")
    since = struck.get("time", 0)
    stall = max((r["seconds"] for g in survivors for r in read_records(out, g) if r["time"] >= since), default=0.0)
    return {"trial": i, "kind": kind, "groups": groups, "victim": victim, "at": at, "rc": rc, "problems": problems,
            "discarded": discarded, "stall_s": round(stall, 3)}


def report(trials: list[dict]) -> str:
    lines = [f"# Fault-tolerance chaos trials ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {describe()}. `python benchmarks/chaos.py --ft`: {len(trials)} trials of "
             f"`dtrain launch --replica-groups 2|3` (mlp recipe, {EPOCHS} epochs of {N_TRAIN} samples, steps "
             "padded to 0.15 s, heartbeat timeout 1 s, collective timeout 3 s), one strike each at a random "
             "instant; kept = exit 0, every sample of every epoch once across the groups, equal weights "
             "in every group after every committed step, at most one step discarded per survivor.", "",
             "| fault | trials | kept | most steps a survivor discarded | stall median (s) | stall max (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind in KINDS:
        ts = [t for t in trials if t["kind"] == kind]
        if not ts:
            continue
        stalls = [t["stall_s"] for t in ts]
        lines.append(f"| {kind} | {len(ts)} | {sum(not t['problems'] for t in ts)} | "
                     f"{max(t['discarded'] for t in ts)} | {statistics.median(stalls):.2f} | {max(stalls):.2f} |")
    bad = [t for t in trials if t["problems"]]
    if bad:
        lines += ["", "Not kept:", ""] + [f"- trial {t['trial']} ({t['kind']}, {t['groups']} groups, victim "
                                          f"{t['victim']} at {t['at']}): {'; '.join(t['problems'])}" for t in bad]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds, drawn in turn")
    ap.add_argument("--work", default="runs/chaos-ft")
    ap.add_argument("--out", help="markdown report (default: print it)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kinds = args.kinds.split(",")
    rng = random.Random(args.seed)
    done = work / "trials.jsonl"
    trials = [json.loads(x) for x in done.read_text().splitlines()] if done.exists() else []
    for i in range(len(trials), args.trials):  # a rerun continues where it stopped
        t = trial(work, i, kinds[i % len(kinds)], random.Random(rng.random() + i))
        trials.append(t)
        with open(done, "a") as f:
            f.write(json.dumps(t) + "\n")
        print(f"[chaos --ft] {json.dumps(t)}", flush=True)
    text = report(trials)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if not any(t["problems"] for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
