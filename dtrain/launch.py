"""Build the torchrun command line for `dtrain launch` (kept pure so tests can read it)."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dtrain.preemption import DONE_FILE, EXIT_PREEMPTED, LAUNCH_ENV, MARKER

EXIT_INTERRUPTED = 130
"""Exit code of `dtrain launch` stopped by Ctrl-C (128 + SIGINT, as shells report it)."""


@dataclass(kw_only=True)
class LaunchSpec:
    config: str
    overrides: list[str]
    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_id: str = "dtrain"
    max_restarts: int = 0


def resolve_nproc(value: str) -> int:
    """'auto' -> every local GPU, or 2 CPU processes over gloo on a machine without one."""
    if value != "auto":
        from dtrain.preflight import PreflightError  # bad input before start: one line, exit 2

        try:
            n = int(value)
        except ValueError:
            raise PreflightError(f"--nproc-per-node must be a positive integer or 'auto', got {value!r}") from None
        if n < 1:
            raise PreflightError(f"--nproc-per-node must be >= 1, got {n}")
        return n
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def torchrun_argv(spec: LaunchSpec) -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={spec.nproc_per_node}"]
    if spec.nnodes == 1 and spec.rdzv_endpoint is None:
        # --standalone: a private rendezvous on a free local port, so two jobs on one box never clash.
        argv.append("--standalone")
    else:
        if spec.rdzv_endpoint is None:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the first node's address)")
        argv += [
            f"--nnodes={spec.nnodes}",
            f"--node-rank={spec.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={spec.rdzv_endpoint}",
            f"--rdzv-id={spec.rdzv_id}",
        ]
    argv.append(f"--max-restarts={spec.max_restarts}")
    argv += ["-m", "dtrain.cli", "run", spec.config, *spec.overrides]
    return argv


class _Interrupts:
    """Ctrl-C and SIGTERM to `dtrain launch`.

    The first asks every rank to stop at its next step boundary with a checkpoint, through the
    `<output_dir>/PREEMPT` marker a Slurm batch script uses too (torchrun would only forward the
    signal, which ends the ranks at once); the second stops them at once, through torchrun's own
    shutdown (SIGTERM to the ranks, SIGKILL after its grace period)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run_dir: Path):
        self.marker = run_dir / MARKER
        self.first: signal.Signals | None = None
        self.wrote_marker = False

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        sig = signal.Signals(signum)
        if self.first is not None:
            from torch.distributed.elastic.multiprocessing import SignalException

            raise SignalException(f"second {sig.name}", sigval=signal.SIGTERM)
        self.first = sig
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"dtrain launch (pid {os.getpid()}) got {sig.name}\n")
            self.wrote_marker = True
        except OSError as exc:  # nowhere to ask: stop at once rather than not at all
            from torch.distributed.elastic.multiprocessing import SignalException

            raise SignalException(f"cannot write {self.marker}: {exc.strerror}", sigval=signal.SIGTERM) from None
        again = "Ctrl-C" if sig == signal.SIGINT else "send it"
        # os.write, not print: printing in a handler while torchrun prints raises "reentrant call".
        os.write(2, f"\n[dtrain] {sig.name}: every rank stops at its next step boundary and saves a checkpoint; "
                    f"{again} again to stop at once\n".encode())

    def forget_marker(self) -> None:
        """A request nobody read (the run ended first) must not stop the next run."""
        if self.wrote_marker:
            self.marker.unlink(missing_ok=True)


def _stopped_step(run_dir: Path, since: float) -> int | None:
    """The step of a checkpointed stop on request made by this launch (rank 0 writes PREEMPTED)."""
    done = run_dir / DONE_FILE
    try:
        if done.stat().st_mtime >= since:
            return int(done.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_torchrun(torchrun_args: list[str], run_dir: str | Path) -> int:
    """Run torchrun in this process (its agent is this process, so the ranks are its children) and
    turn what ended the group into one line and the README's exit code: 0 done; 130 stopped by Ctrl-C
    (75 by SIGTERM or another stop request) with a checkpoint; the first failed rank's code otherwise."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    run_dir = Path(run_dir)
    # torchrun shares its rendezvous TCPStore with the workers by default, and keys left by a killed
    # attempt survive into the restarted one: its gloo/NCCL bootstrap can read the dead rank's address
    # and fail with "Connection refused" (pytorch/pytorch#135712). Opting out gives every restart a
    # fresh store on a fresh port.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # torchrun turns SIGINT/SIGTERM into "kill the ranks now"; dtrain asks for a checkpoint first. The
    # ranks exit 0 after a stop on request under `dtrain launch` (LAUNCH_ENV), so torchrun does not
    # restart them, and this process reports the stop.
    args = parse_args(torchrun_args)
    args.signals_to_handle = "SIGHUP,SIGQUIT"  # torchrun >= 2.7 reads it; older ones kill at once, as before
    started = time.time()
    os.environ[LAUNCH_ENV] = repr(started)
    interrupts = _Interrupts(run_dir)
    interrupts.install()
    sys.stdout.flush()
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        print(f"dtrain: error: rank {rank} {how} (its own message is above); the job has stopped",
              file=sys.stderr, flush=True)
        return code if 0 < code < 256 else 1
    except SignalException as exc:
        sig = interrupts.first or exc.sigval
        kept = _newest_checkpoint(run_dir)
        print(f"dtrain: stopped at once on {sig.name}; "
              + (f"a rerun of the same command continues from {kept}" if kept else "no checkpoint was saved"),
              file=sys.stderr, flush=True)
        return 128 + int(sig)
    finally:
        for sig in _Interrupts.SIGNALS:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        interrupts.forget_marker()
    step = _stopped_step(run_dir, started)
    if step is None:
        if interrupts.first:
            print("[dtrain] the run ended before its ranks next agreed on a stop: it is complete",
                  file=sys.stderr, flush=True)
        return 0
    why = interrupts.first.name if interrupts.first else "a stop request"
    print(f"dtrain: stopped on {why} after step {step} with a checkpoint; run the same command to continue",
          file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED if interrupts.first == signal.SIGINT else EXIT_PREEMPTED


def _newest_checkpoint(run_dir: Path) -> str | None:
    try:
        return (run_dir / "checkpoints" / "latest").read_text().strip() or None
    except OSError:
        return None
