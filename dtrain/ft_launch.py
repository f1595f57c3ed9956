"""`dtrain launch --replica-groups R`: a fault-tolerant job on this node (dtrain.ft).

This process supervises two kinds of children: the torchft Lighthouse (its own process, restarted on the
same port if it dies; the groups retry their quorum requests meanwhile, `ft.quorum_retries`) and R replica
groups (`dtrain run` with ft.enabled), each restarted when it dies, up to `ft.max_restarts` times; a
restarted group heals from a live one, or, with none left, resumes from the newest checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dtrain.config import FtConfig
from dtrain.ft import FtUnavailable
from dtrain.launch import EXIT_INTERRUPTED
from dtrain.preemption import ATTEMPT_ENV, DONE_FILE, EXIT_PREEMPTED, MARKER

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "SLURM_PROCID", "SLURM_STEP_ID", "SLURM_LOCALID")
"""What dtrain.dist reads to place a process among ranks (dtrain.dist.read_env)."""

LIGHTHOUSE_PID = ".ft_lighthouse"
"""<output_dir>/.ft_lighthouse: the Lighthouse's pid (what a chaos test strikes)."""


class Lighthouse:
    """The torchft Lighthouse as a child process on a fixed port: restarted where it was if it dies."""

    def __init__(self, ft: FtConfig, run_dir: Path, port: int | None = None):
        if port is None:
            with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
                s.bind(("", 0))
                port = s.getsockname()[1]
        self.port = port
        self.host = socket.gethostname()
        # torchft's own console script: its Rust entry point reads the process's argv, not sys.argv.
        beside = Path(sys.executable).parent / "torchft_lighthouse"
        binary = str(beside) if beside.exists() else shutil.which("torchft_lighthouse")
        if binary is None:
            raise FtUnavailable("torchft_lighthouse (installed with torchft) is not on PATH; reinstall dtrain[ft]")
        self.argv = [binary, "--bind", f"[::]:{self.port}", "--min_replicas", str(ft.min_replicas),
                     "--join_timeout_ms", str(int(ft.join_timeout_s * 1000)),
                     "--heartbeat_timeout_ms", str(ft.heartbeat_timeout_ms)]
        self.pid_file = run_dir / LIGHTHOUSE_PID
        self.restarts = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        env = {**os.environ}
        env.setdefault("RUST_LOG", "warn")  # at info it logs every quorum request
        proc = subprocess.Popen(self.argv, env=env)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the torchft Lighthouse exited with code {self.proc.returncode} at start "
                               f"(port {self.port}; is it in use?)")
        wait_listening(self.host, self.port, timeout_s)

    def keep_alive(self) -> None:
        if self.proc.poll() is not None:
            self.restarts += 1
            print(f"[dtrain] the Lighthouse exited ({self.proc.returncode}); restarted on port {self.port} "
                  f"(restart {self.restarts})", file=sys.stderr, flush=True)
            self.proc = self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.pid_file.unlink(missing_ok=True)


def wait_listening(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the torchft Lighthouse at {host}:{port} did not answer within {timeout_s:.0f} s; on "
                       "node rank 0 it starts with the job: is that node's launcher running?")


def _devices() -> list[str]:
    """This node's GPUs as CUDA_VISIBLE_DEVICES entries (the ones Slurm gave the job, if it did)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_replica_groups(config: str, overrides: list[str], ft: FtConfig, output_dir: str | Path, *,
                       nnodes: int = 1, node_rank: int = 0, endpoint: str | None = None) -> int:
    """Run this node's replica groups (g = node_rank, node_rank + nnodes, ...) to the job's end; node rank 0
    runs the Lighthouse, at `endpoint` (HOST:PORT, which every node must reach) or on a free local port.
    Each group gets one of the node's GPUs. Exit: 0 when the job finished (a group that failed for good on
    the way is said); 2 for bad input (a group exiting 2 stops the job: a restart would fail the same way);
    130 / 75 after a stop on request (Ctrl-C, SIGTERM: forwarded to every group; or the PREEMPT marker; the
    quorum's first member saves); otherwise the code of the group that failed last."""
    from dtrain.ft import GROUP_ENV, JOB_ENV, LIGHTHOUSE_ENV, require_torchft

    require_torchft()
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if node_rank == 0 and ATTEMPT_ENV not in os.environ:  # a batch script clears them itself, per attempt
        for stale in (MARKER, DONE_FILE):  # a stop request of an earlier start is not one for this one
            (run_dir / stale).unlink(missing_ok=True)
    host, _, port = (endpoint or "").rpartition(":")
    lighthouse = Lighthouse(ft, run_dir, int(port) if port else None) if node_rank == 0 else None
    if lighthouse is not None:
        host = host or lighthouse.host
        port = str(lighthouse.port)
    groups = ft.replica_groups
    mine = list(range(node_rank, groups, nnodes))
    devices = _devices()
    # The groups' start barrier (dtrain.ft) is per job: the Slurm job and attempt, or this Lighthouse.
    job = f"{os.environ.get('SLURM_JOB_ID', 'local')}-{os.environ.get('SLURM_RESTART_COUNT', '0')}-{host}-{port}"
    # A group is a process of its own, never a rank of the srun step or torchrun job that started this
    # launcher: without these, dtrain.dist would join the groups into one process group over the nodes.
    inherited = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    base = {**inherited, LIGHTHOUSE_ENV: f"http://{host}:{port}", JOB_ENV: job,
            "TORCHFT_QUORUM_RETRIES": str(ft.quorum_retries)}
    base.setdefault("RUST_LOG", "warn")
    argv = [sys.executable, "-m", "dtrain.cli", "run", config, *overrides, "ft.enabled=true",
            f"ft.replica_groups={groups}"]

    def start(g: int, attempt: int) -> subprocess.Popen:
        extra = ["checkpoint.resume=auto"] if attempt else []  # a restart continues; never a fresh start
        env = {**base, GROUP_ENV: str(g), "TORCHELASTIC_RESTART_COUNT": str(attempt)}
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[mine.index(g) % len(devices)]
        return subprocess.Popen(argv + extra, env=env)

    procs: dict[int, subprocess.Popen] = {}
    restarts = dict.fromkeys(mine, 0)
    codes: dict[int, int] = {}
    stop: list[signal.Signals] = []

    def forward(signum, frame):
        stop.append(signal.Signals(signum))
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    finished_at = None  # when a group finished the job: the others get ft.finish_grace_s, then go
    try:
        if lighthouse is not None:
            lighthouse.wait_ready()
        else:
            wait_listening(host, int(port), ft.join_timeout_s)
        print(f"[dtrain] fault-tolerant job: {groups} replica group(s), here {mine}; Lighthouse at {host}:{port}, "
              f"heartbeat timeout {ft.heartbeat_timeout_ms} ms, up to {ft.max_restarts} restart(s) per group",
              flush=True)
        procs.update({g: start(g, 0) for g in mine})
        while procs:
            time.sleep(0.1)
            if lighthouse is not None:
                lighthouse.keep_alive()
            if finished_at is not None and time.monotonic() - finished_at > ft.finish_grace_s:
                for g, p in procs.items():  # hung (SIGSTOP, a wedged device): the job is done without it
                    print(f"[dtrain] replica group {g} has not finished {ft.finish_grace_s:.0f} s after the job "
                          "did; killed", file=sys.stderr, flush=True)
                    p.kill()
                    p.wait()
                    codes[g] = -signal.SIGKILL
                break
            for g, p in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                del procs[g]
                if code == 0 and finished_at is None:
                    finished_at = time.monotonic()
                if code in (0, 2, EXIT_PREEMPTED, EXIT_INTERRUPTED) or stop or finished_at is not None:
                    codes[g] = code
                    if code == 2:
                        forward(signal.SIGTERM, None)
                elif restarts[g] < ft.max_restarts:
                    restarts[g] += 1
                    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                    print(f"[dtrain] replica group {g} {how}; restart {restarts[g]} of {ft.max_restarts} (it heals "
                          "from a live group)", file=sys.stderr, flush=True)
                    procs[g] = start(g, restarts[g])
                else:
                    codes[g] = code
                    print(f"[dtrain] replica group {g} failed (code {code}) and has no restarts left; the other "
                          "groups go on without it", file=sys.stderr, flush=True)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        if lighthouse is not None:
            lighthouse.stop()
    return _job_code(codes, restarts, bool(stop))


def _job_code(codes: dict[int, int], restarts: dict[int, int], stopped: bool) -> int:
    if all(c == 0 for c in codes.values()):
        print(f"[dtrain] every replica group finished ({sum(restarts.values())} restart(s))", flush=True)
        return 0
    if 2 in codes.values():
        return 2
    asked = [c for c in codes.values() if c in (EXIT_PREEMPTED, EXIT_INTERRUPTED)]
    if asked and stopped:
        return asked[0]
    failed = {g: c for g, c in codes.items() if c != 0}
    if len(failed) < len(codes):  # some group finished the job: the run is complete
        print(f"dtrain: the job finished, but replica group(s) {sorted(failed)} failed for good along the way",
              file=sys.stderr, flush=True)
        return 0
    code = list(failed.values())[-1]
    return code if 0 < code < 256 else 1
