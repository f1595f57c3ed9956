"""Checks that run before any process starts, so bad input costs one line, not a crashed job.

`dtrain run` (as a single process), `dtrain launch` and `dtrain slurm submit` call these after the
config has been read; under torchrun every rank would otherwise report the same problem at once.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import tempfile
from pathlib import Path

from dtrain.config import RunConfig
from dtrain.messages import plain


class PreflightError(RuntimeError):
    """Input that cannot run; the message names what to fix."""


def check_output_dir(output_dir: str | Path) -> None:
    """The run directory exists and is writable, or can be created: checked by writing a probe file
    into it or its nearest existing parent (root ignores permission bits), creating nothing."""
    path = Path(output_dir).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{probe} is a file, not a directory")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".dtrain-write-test-"):
            pass
    except OSError as exc:
        raise PreflightError(
            f"output_dir {output_dir} is not writable ({exc.strerror or exc}); "
            "set output_dir= to a directory you can write to"
        ) from None


def check_recipe_data(cfg: RunConfig) -> None:
    """The recipe's own cheap input checks (data files, columns, labels), if it defines `preflight`."""
    from dtrain.recipe import resolve_recipe

    recipe = resolve_recipe(cfg.recipe)
    if hasattr(recipe, "preflight"):
        try:
            recipe.preflight(cfg.task)
        except (OSError, ValueError) as exc:
            raise PreflightError(plain(exc) if isinstance(exc, OSError) else str(exc)) from None


def check_resume_path(cfg: RunConfig) -> None:
    """checkpoint.resume, when it is a path, names a directory (whether that holds a complete, intact
    checkpoint is for the trainer's load to say, naming the damaged file)."""
    resume = cfg.checkpoint.resume
    if resume in ("auto", "none"):
        return
    path = Path(resume)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise PreflightError(
            f"checkpoint.resume: {path} {what}; give auto (the newest checkpoint in output_dir), "
            "none (start fresh), or an existing checkpoint directory (output_dir/checkpoints/step_*)"
        )


def check_nproc(nproc: int, gpus: int) -> None:
    """One process per GPU at most: two ranks on one GPU would share it and NCCL refuses that."""
    if gpus and nproc > gpus:
        raise PreflightError(
            f"--nproc-per-node={nproc} but this node has {gpus} GPU(s); start at most one process per GPU "
            "(--nproc-per-node auto takes them all)"
        )


def check_device_support(cfg) -> None:
    """What the device cannot run, found before any process starts."""
    import torch

    on_cpu = cfg.dist.device == "cpu" or not torch.cuda.is_available()
    if cfg.strategy == "deepspeed" and cfg.train.precision == "fp16" and on_cpu:
        raise PreflightError("train.precision: fp16 with strategy deepspeed needs a GPU (DeepSpeed has no fp16 on "
                             "the CPU); use bf16 or fp32 here")


def check_rendezvous_port(endpoint: str | None, node_rank: int) -> None:
    """The rendezvous port is free where this node must host it (node rank 0, on this machine)."""
    if endpoint is None or node_rank != 0:
        return
    host, _, port_text = endpoint.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise PreflightError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT, e.g. node0:29400") from None
    if not host or not _is_local(host):
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As torchrun's store binds: a port whose only sockets are a dead job's connections in TIME_WAIT
        # is free for it (a rerun right after a crash); one that something listens on is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PreflightError(
                    f"rendezvous port {port} on {host} is already in use (another job, or a stale torchrun?); "
                    f"pick a free one with --rdzv-endpoint {host}:PORT"
                ) from None
            raise


def _is_local(host: str) -> bool:
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    local = {"127.0.0.1", "::1"}
    try:
        local |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except socket.gaierror:
        pass
    return any(a in local or ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def safe_umask() -> None:
    """Keep the user's umask, but never create world-writable files in a run directory."""
    old = os.umask(0)
    os.umask(old | 0o002)
