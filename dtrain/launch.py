"""Build the torchrun command line for `dtrain launch` (kept pure so tests can read it)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


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


def run_torchrun(torchrun_args: list[str]) -> int:
    """Run torchrun in this process (signals reach its agent directly, as with exec) and turn a
    failed group into one line naming the first failed rank, instead of torchrun's traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun shares its rendezvous TCPStore with the workers by default, and keys left by a killed
    # attempt survive into the restarted one: its gloo/NCCL bootstrap can read the dead rank's address
    # and fail with "Connection refused" (pytorch/pytorch#135712). Opting out gives every restart a
    # fresh store on a fresh port.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    sys.stdout.flush()
    try:
        run(parse_args(torchrun_args))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        print(f"dtrain: error: rank {rank} {how} (its own message is above); the job has stopped",
              file=sys.stderr, flush=True)
        return code if 0 < code < 256 else 1
    return 0
