"""Chaos trials: a real 2-rank job struck by one fault at a chosen instant, recovered the way a user
would (the same command again, or torchrun's own restart), then checked against an unbroken run.

    python benchmarks/chaos.py [--trials 50] [--seed 0] [--kinds ctrl_c,kill9_job,...] [--work DIR]
                               [--out benchmarks/results/chaos_HOST_DATE.md]
    python benchmarks/chaos.py --ft [--trials 20] ...   (replica groups: benchmarks/ft_chaos.py)

Each trial draws a fault kind (in turn through --kinds), an instant (a phase of a random optimizer step:
data, forward, backward, optimizer, evaluation, synchronous save, async save in flight, epoch
boundary), whether checkpoints are written in the background, and whether wandb (offline) logs too.
The job is `dtrain launch --nproc-per-node 2` of the mlp recipe (dropout and input noise on, so every
RNG stream matters); the rank to be struck pauses at the instant (`fault_injection.hold_at`) and the
harness strikes while it stands there. A trial has *recovered bitwise* when the recovered run's final
checkpoint (weights, optimizer state, RNG states, loop state) is byte for byte the unbroken run's, and
has *lost* something when any complete checkpoint left on disk differs from the unbroken run's of the
same step, metrics.jsonl misses or repeats a step or has a broken line, the wandb run id changed, ranks
outlived a killed launcher, or a command did not end with the exit code the README states.

Trials are appended to <work>/trials.jsonl as they finish: rerunning the command continues where it
stopped. The report is a table per fault kind. The disk-full fault mounts a small tmpfs (needs root).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("kill9_job", "kill9_rank_restart", "sigterm_rank", "sigusr1_rank", "ctrl_c", "ctrl_c_twice",
         "sigterm_launch", "disk_full", "ckpt_damaged", "second_command")
PHASES = ("data", "forward", "backward", "optimizer", "eval", "checkpoint", "async_save", "epoch_boundary")
CONFIG = "recipes/mlp/config.yaml"
STEPS_PER_EPOCH, EPOCHS, SAVE_EVERY, EVAL_EVERY = 8, 3, 3, 4
TOTAL = STEPS_PER_EPOCH * EPOCHS
GLOBAL_BATCH = 32
JOB = [  # 256 samples, 32 a step (2 ranks x 16; --world 4: 4 x 8): 8 steps per epoch
    "task.num_train=256", "task.num_val=64", "task.dropout=0.1", "task.input_noise=0.05",
    f"train.epochs={EPOCHS}", "train.batch_size=16", "train.log_every=2", f"train.eval_every={EVAL_EVERY}",
    f"checkpoint.every_steps={SAVE_EVERY}", "checkpoint.keep_last=100", "logging.progress=lines",
    # ~0.1 s a step, as a real job's steps are: ranks agree on stop requests about once a second, so
    # without it a 24-step job would be over before its first meeting.
    "fault_injection.step_sleep_s=0.1",
]
# What each strike must end with (the README's exit codes), before any recovery.
EXPECTED_RC = {"ctrl_c": 130, "ctrl_c_twice": 130, "sigterm_launch": 75, "sigusr1_rank": 75,
               "kill9_rank_restart": 0, "second_command": 0}
ORPHAN_LIMIT_S = 5.0


def child_env(**extra: str) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", PYTHONFAULTHANDLER="1", **extra)
    return env


# ------------------------------------------------------------------ one job
class Job:
    """`dtrain launch` in a session of its own, as a terminal runs a foreground command."""

    def __init__(self, out: Path, variant: list[str], log: Path, restarts: int = 0, world: int = 2):
        self.argv = [sys.executable, "-m", "dtrain.cli", "launch", f"--nproc-per-node={world}",
                     f"--max-restarts={restarts}", CONFIG, *JOB, *variant, f"output_dir={out}"]
        self.log = log
        with open(log, "ab") as f:
            f.write(f"$ {' '.join(self.argv[1:])}\n".encode())
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # A hung job: every process prints its Python stacks into the log (faulthandler, on SIGABRT)
            # before it is killed, so the trial's log says where it stood.
            for pid in [self.proc.pid, *self.ranks()]:
                try:
                    os.kill(pid, signal.SIGABRT)
                except ProcessLookupError:
                    pass
            time.sleep(3)
            self.kill_all()
            self.proc.wait()
            with open(self.log, "a") as f:
                f.write(f"[chaos] no exit within {timeout:g}s: stacks above, then killed\n")
            return -999

    def ranks(self) -> list[int]:
        return children(self.proc.pid)

    def kill_all(self) -> None:
        pids = self.ranks()
        for pid in [self.proc.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(path: Path, job: Job, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if job.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------ checks
def file_hashes(ckpt: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint, but meta.json (it names the files and their hashes) and
    DCP's .metadata (it records the directory it was written to): those two are checked by `intact`."""
    out = {}
    for p in sorted(ckpt.rglob("*")):
        if p.is_file() and p.name not in ("meta.json", ".metadata"):
            out[str(p.relative_to(ckpt))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def intact(ckpt: Path) -> bool:
    """Every file meta.json lists is there with the sha256 it records."""
    meta = json.loads((ckpt / "meta.json").read_text())
    return all((ckpt / name).is_file() and hashlib.sha256((ckpt / name).read_bytes()).hexdigest() == sha
               for name, sha in meta.get("sha256", {}).items())


def complete_checkpoints(run: Path) -> dict[str, Path]:
    root = run / "checkpoints"
    found = {}
    for p in sorted(root.glob("step_*")) if root.is_dir() else []:
        try:
            if json.loads((p / "meta.json").read_text()).get("files"):
                found[p.name] = p
        except (OSError, ValueError):
            continue
    return found


def metric_steps(run: Path) -> tuple[dict[str, list[int]], list[str]]:
    steps: dict[str, list[int]] = collections.defaultdict(list)
    problems = []
    path = run / "metrics.jsonl"
    if not path.is_file():
        return steps, ["metrics.jsonl missing"]
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            problems.append(f"metrics.jsonl line {n} is not JSON: {line[:60]!r}")
            continue
        if isinstance(rec, dict) and "step" in rec:
            steps[rec.get("kind", "train")].append(rec["step"])
    return steps, problems


def compare(run: Path, ref: Path, wandb_id: str | None, skip: set[str] = frozenset()) -> tuple[bool, list[str]]:
    """(final checkpoint bitwise equal to the reference's, what was lost)."""
    lost = []
    ref_ckpts, ckpts = complete_checkpoints(ref), complete_checkpoints(run)
    final = f"step_{TOTAL:08d}"
    bitwise = final in ckpts and file_hashes(ckpts[final]) == file_hashes(ref_ckpts[final]) and intact(ckpts[final])
    for name, path in ckpts.items():
        if name in skip:  # the trial damaged it on purpose; it must not be the one `latest` names
            continue
        if name not in ref_ckpts:
            lost.append(f"{name}: a checkpoint the unbroken run does not have")
        elif file_hashes(path) != file_hashes(ref_ckpts[name]) or not intact(path):
            lost.append(f"{name}: differs from the unbroken run's")
    latest = (run / "checkpoints" / "latest")
    if latest.is_file() and latest.read_text().strip() in skip:
        lost.append(f"latest names the damaged {latest.read_text().strip()}")
    got, problems = metric_steps(run)
    want, _ = metric_steps(ref)
    lost += problems
    for kind in sorted(set(want) | set(got)):
        if sorted(got.get(kind, [])) != sorted(want.get(kind, [])):
            extra = collections.Counter(got.get(kind, [])) - collections.Counter(want.get(kind, []))
            missing = collections.Counter(want.get(kind, [])) - collections.Counter(got.get(kind, []))
            lost.append(f"metrics.jsonl {kind}: repeated {sorted(extra.elements())}, missing {sorted(missing.elements())}")
    if wandb_id is not None:
        now = (run / "wandb_run_id").read_text().strip() if (run / "wandb_run_id").is_file() else None
        runs = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
        if now != wandb_id or runs != {wandb_id}:
            lost.append(f"wandb run id {wandb_id} not kept: now {now}, offline runs {sorted(runs)}")
    return bitwise, lost


# ------------------------------------------------------------------ a trial
def draw(rng: random.Random, kind: str, world: int = 2) -> dict:
    phase = rng.choice(PHASES)
    async_save = phase == "async_save" or (phase != "checkpoint" and rng.random() < 0.4)
    if phase in ("data", "forward", "backward", "optimizer"):
        step, at = rng.randint(2, TOTAL - 1), phase
    elif phase == "eval":
        step, at = rng.choice(range(EVAL_EVERY, TOTAL, EVAL_EVERY)), "eval"
    elif phase == "checkpoint":
        step, at = rng.choice(range(SAVE_EVERY, TOTAL, SAVE_EVERY)), "checkpoint"
    elif phase == "async_save":
        step, at = rng.choice(range(SAVE_EVERY, TOTAL - 1, SAVE_EVERY)) + 1, "forward"
    else:  # the first micro-batch of a new epoch
        step, at = rng.choice(range(STEPS_PER_EPOCH + 1, TOTAL, STEPS_PER_EPOCH)), "data"
    if kind == "ckpt_damaged":
        step = max(step, SAVE_EVERY + 1)  # a checkpoint exists to damage
    plan = {"kind": kind, "phase": phase, "step": step, "at": f"{step}:{at}", "rank": rng.randint(0, 1),
            "async": async_save, "wandb": rng.random() < 0.3, "damage": rng.choice(["truncate", "delete"])}
    if world != 2:  # (2-rank plans keep their keys: trials.jsonl of earlier runs still matches them)
        plan.update(world=world, rank=rng.randint(0, world - 1))
    return plan


def variant_of(t: dict) -> list[str]:
    v = [f"checkpoint.async={str(t['async']).lower()}"]
    if t.get("world", 2) != 2:  # the same global batch, so the same steps, at another world size
        v.append(f"train.batch_size={GLOBAL_BATCH // t['world']}")
    if t["wandb"]:
        v.append("logging.wandb=true")
    return v


def reference(work: Path, t: dict) -> Path:
    """The unbroken run of this trial's variant (made once per variant). It saves after every step, so
    that any checkpoint a trial leaves (a stop on request saves where it stops) has its twin here:
    saving reads the training state and changes none of it."""
    ref = work / ("ref-" + "-".join(v.replace("=", "_").replace(".", "_") for v in variant_of(t)))
    if not (ref / "checkpoints" / "latest").is_file():
        shutil.rmtree(ref, ignore_errors=True)
        rc = Job(ref, [*variant_of(t), "checkpoint.every_steps=1"], work / f"{ref.name}.log",
                 world=t.get("world", 2)).wait()
        if rc != 0:
            raise SystemExit(f"chaos: the unbroken reference run failed (exit {rc}); see {work / ref.name}.log")
    return ref


def run_trial(work: Path, index: int, t: dict) -> dict:
    d = work / f"trial_{index:03d}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log = d / "log.txt"
    out = d / "run"
    mounted = False
    if t["kind"] == "disk_full":
        out.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(out)],
                                 capture_output=True).returncode == 0
        if not mounted:
            return {**t, "trial": index, "ran": False, "why": "mounting a tmpfs needs root"}
    try:
        return {**t, "trial": index, "ran": True, **strike_and_recover(work, t, out, log)}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(out)], capture_output=True)


def strike_and_recover(work: Path, t: dict, out: Path, log: Path) -> dict:
    ref = reference(work, t)
    hold = ["fault_injection.hold_at=" + t["at"], f"fault_injection.hold_rank={t['rank']}", "fault_injection.hold_s=2"]
    variant = variant_of(t) + hold
    kind = t["kind"]
    world = t.get("world", 2)
    job = Job(out, variant, log, restarts=1 if kind == "kill9_rank_restart" else 0, world=world)
    notes, lost, skip = [], [], set()
    started = time.monotonic()
    if not wait_for(out / ".hold", job):
        rc = job.wait()
        return {"rc": rc, "recovered": False, "lost": [f"the job ended (exit {rc}) before the instant"], "notes": []}
    held_pid = int((out / ".hold").read_text())
    (out / ".hold").unlink()
    wandb_id = None
    if t["wandb"]:  # rank 0 writes the id when it logs first (at the first log step, before any hold of step >= 2)
        for _ in range(100):
            if (out / "wandb_run_id").is_file() and (out / "wandb_run_id").read_text().strip():
                wandb_id = (out / "wandb_run_id").read_text().strip()
                break
            time.sleep(0.05)
    ranks = job.ranks()
    pgid = job.proc.pid
    filler = out / "filler"
    if kind == "kill9_job":
        os.killpg(pgid, signal.SIGKILL)
    elif kind == "kill9_rank_restart":
        os.kill(held_pid, signal.SIGKILL)
    elif kind == "sigterm_rank":
        os.kill(held_pid, signal.SIGTERM)
    elif kind == "sigusr1_rank":
        os.kill(held_pid, signal.SIGUSR1)
    elif kind == "ctrl_c":
        os.killpg(pgid, signal.SIGINT)
    elif kind == "ctrl_c_twice":
        os.killpg(pgid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(pgid, signal.SIGINT)
    elif kind == "sigterm_launch":
        os.kill(job.proc.pid, signal.SIGTERM)
    elif kind == "disk_full":
        with open(filler, "wb") as f:  # another process takes every free byte
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
    elif kind == "ckpt_damaged":
        ckpts = complete_checkpoints(out)
        victim_dir = ckpts[sorted(ckpts)[-1]]
        files = sorted(p for p in victim_dir.rglob("*") if p.is_file() and p.name != "meta.json")
        victim = random.Random(t["step"]).choice(files)
        if t["damage"] == "truncate":
            victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 2)])
        else:
            victim.unlink()
        skip.add(victim_dir.name)
        notes.append(f"{t['damage']} {victim.relative_to(out)}")
        os.killpg(pgid, signal.SIGKILL)  # and then the job dies: the rerun must not trust that checkpoint
    elif kind == "second_command":
        second = Job(out, variant, log, world=world)
        rc2 = second.wait(120)
        text = log.read_text(errors="replace")
        if rc2 != 2 or "is in use by a running job" not in text:
            lost.append(f"second command: exit {rc2}, expected 2 with 'in use by a running job'")
    rc = job.wait()
    notes.append(f"strike ended with exit {rc} after {time.monotonic() - started:.1f}s")
    if kind in ("kill9_job", "ckpt_damaged"):
        deadline = time.monotonic() + ORPHAN_LIMIT_S
        while any(alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in ranks if alive(p)]
        if left:
            lost.append(f"ranks {left} outlived their killed launcher by more than {ORPHAN_LIMIT_S:g}s")
            for p in left:
                os.kill(p, signal.SIGKILL)
    expected = EXPECTED_RC.get(kind)
    finished = (out / "checkpoints" / f"step_{TOTAL:08d}").is_dir()
    if rc == 0 and finished and expected not in (None, 0):
        notes.append("the run ended before its ranks next agreed on a stop: nothing to stop")
    elif expected is not None and rc != expected:
        lost.append(f"the struck command exited {rc}, expected {expected}")
    if expected is None and rc == 0 and kind != "disk_full":
        lost.append("the struck command exited 0 although the job did not finish")
    if kind == "disk_full":
        filler.unlink(missing_ok=True)  # the user frees space, then reruns
    recovery_rc = None
    if rc != 0 or not finished:
        for leftover in (out / ".hold",):
            leftover.unlink(missing_ok=True)
        recovery_rc = Job(out, variant, log, world=world).wait()  # the same command again, at once
        if recovery_rc != 0:
            lost.append(f"the rerun exited {recovery_rc}")
    bitwise, compared = compare(out, ref, wandb_id, skip)
    lost += compared
    return {"rc": rc, "recovery_rc": recovery_rc, "recovered": bitwise and not lost, "bitwise": bitwise,
            "lost": lost, "notes": notes, "seconds": round(time.monotonic() - started, 1)}


# ------------------------------------------------------------------ report
def report(trials: list[dict], machine: str, seed: int) -> str:
    lines = [f"# Chaos trials: {len(trials)} faults, each recovered as a user would", "",
             f"Machine: {machine}. `python benchmarks/chaos.py --trials {len(trials)} --seed {seed}`; "
             f"{datetime.date.today().isoformat()}. Each trial: a {trials[0].get('world', 2) if trials else 2}-rank `dtrain launch` of the mlp recipe "
             f"({TOTAL} steps, checkpoint every {SAVE_EVERY}, evaluation every {EVAL_EVERY}), one fault at the "
             "instant named, then the same command again (or torchrun's restart), compared with an unbroken run.",
             "", "| fault | trials | recovered bitwise | lost anything | not run |", "| --- | --- | --- | --- | --- |"]
    by_kind = collections.defaultdict(list)
    for t in trials:
        by_kind[t["kind"]].append(t)
    for kind in KINDS:
        ts = by_kind.get(kind, [])
        if not ts:
            continue
        ran = [t for t in ts if t.get("ran")]
        lines.append(f"| {kind} | {len(ts)} | {sum(t['recovered'] for t in ran)} | {sum(bool(t['lost']) for t in ran)} "
                     f"| {len(ts) - len(ran)} |")
    ran = [t for t in trials if t.get("ran")]
    lines += [f"| **all** | {len(trials)} | {sum(t['recovered'] for t in ran)} | {sum(bool(t['lost']) for t in ran)} "
              f"| {len(trials) - len(ran)} |", "", "| phase | trials | recovered bitwise |", "| --- | --- | --- |"]
    for phase in PHASES:
        ts = [t for t in ran if t["phase"] == phase]
        if ts:
            lines.append(f"| {phase} | {len(ts)} | {sum(t['recovered'] for t in ts)} |")
    lines += ["", "## Every trial", "", "| # | fault | instant | async save | wandb | exit | rerun exit | result |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in trials:
        if not t.get("ran"):
            result = "not run: " + t["why"]
        else:
            result = "recovered bitwise" if t["recovered"] else "; ".join(t["lost"]) or "final state differs"
        lines.append(f"| {t['trial']} | {t['kind']} | {t['phase']} (step {t['step']}) | {t['async']} | {t['wandb']} "
                     f"| {t.get('rc', '')} | {t.get('recovery_rc') if t.get('recovery_rc') is not None else ''} | {result} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if "--ft" in sys.argv[1:]:  # replica groups (torchft): their own trials and contract, benchmarks/ft_chaos.py
        from benchmarks.ft_chaos import main as ft_main

        return ft_main([a for a in sys.argv[1:] if a != "--ft"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds, drawn in turn")
    ap.add_argument("--work", default="runs/chaos", help="trial directories and trials.jsonl (resumable)")
    ap.add_argument("--out", help="markdown report (default: print it)")
    ap.add_argument("--world", type=int, default=2, choices=(2, 4), help="ranks of the job (global batch 32)")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        print(f"chaos: unknown fault kind(s) {unknown}; choose from {', '.join(KINDS)}", file=sys.stderr)
        return 2
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    done_path = work / "trials.jsonl"
    done = {}
    if done_path.is_file():
        for line in done_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("seed") == args.seed:
                done[rec["trial"]] = rec
    rng = random.Random(args.seed)
    plans = [draw(rng, kinds[i % len(kinds)], args.world) for i in range(args.trials)]
    results = []
    for i, plan in enumerate(plans):
        if i in done and {k: done[i][k] for k in plan} == plan:
            results.append(done[i])
            continue
        rec = {**run_trial(work, i, plan), "seed": args.seed}
        results.append(rec)
        with open(done_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        verdict = "recovered bitwise" if rec.get("recovered") else ("not run" if not rec.get("ran") else "FAILED: " + "; ".join(rec["lost"]))
        print(f"[chaos] trial {i}: {plan['kind']} at {plan['phase']} (step {plan['step']}): {verdict}", flush=True)
    from benchmarks.hostinfo import device_name

    text = report(results, device_name(), args.seed)
    if args.out:
        Path(args.out).write_text(text)
        print(f"[chaos] wrote {args.out}")
    else:
        print(text)
    failed = [r for r in results if r.get("ran") and not r["recovered"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
