"""Process-group setup: one explicit `DistState` built once and passed to whoever needs it.

Three ways a dtrain process can start, and how its rank/world are found:
  * under torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT (torchrun sets them);
  * as an srun task with no torchrun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the first host of
    SLURM_JOB_NODELIST as the rendezvous address;
  * as a plain process with neither (the single-process debugging run): world size 1, no group.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import re
import socket
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistState:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    launcher: str
    """'torchrun', 'slurm' or 'single': where rank and world came from."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class _Env:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str | None
    master_port: int | None
    launcher: str


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm nodelist: 'gpu[003-005,9],cpu1' -> 'gpu003' (what scontrol would print first)."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not head:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise RuntimeError(f"environment variable {key}={env[key]!r} is not an integer") from None


def read_env(env: Mapping[str, str] = os.environ) -> _Env:
    """Where this process sits in the job, from the launcher's environment variables only."""
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also torchrun inside a Slurm job)
        world = _int_env(env, "WORLD_SIZE")
        return _Env(
            rank=_int_env(env, "RANK"),
            world_size=world,
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            local_world_size=_int_env(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world,
            master_addr=env.get("MASTER_ADDR"),
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else None,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        # srun task without torchrun. SLURM_STEP_ID tells an srun step apart from the batch script
        # itself, which also carries SLURM_PROCID=0 but is not one of the ranks.
        world = _int_env(env, "SLURM_NTASKS")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        return _Env(
            rank=_int_env(env, "SLURM_PROCID"),
            world_size=world,
            local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            local_world_size=_slurm_tasks_on_this_node(env, world),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            # A port derived from the job id keeps two jobs sharing a node from colliding.
            master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else 20000 + job_id % 20000,
            launcher="slurm",
        )
    return _Env(0, 1, 0, 1, None, None, "single")


def _slurm_tasks_on_this_node(env: Mapping[str, str], world: int) -> int:
    # SLURM_TASKS_PER_NODE looks like '2(x3),1'; this node's count is what SLURM_NTASKS_PER_NODE says
    # when the user set it, else the first group (homogeneous allocations, the usual case).
    if "SLURM_NTASKS_PER_NODE" in env:
        return int(env["SLURM_NTASKS_PER_NODE"])
    tpn = env.get("SLURM_TASKS_PER_NODE")
    if tpn:
        return int(re.match(r"\d+", tpn).group(0))
    return world


def pick_device(requested: str, local_rank: int, launcher: str) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK, or cuda:0 for an srun task that sees one GPU only."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("dist.device=cuda but CUDA is not available here; set dist.device=auto or cpu")
    visible = torch.cuda.device_count()
    # srun --gpus-per-task=1 (or --gpu-bind) narrows CUDA_VISIBLE_DEVICES to the task's own GPU, which it
    # sees as cuda:0 whatever its local rank. torchrun workers all see the node's GPUs: one that has
    # no GPU at its local rank would share another rank's, and NCCL cannot run two ranks on one GPU.
    if launcher == "slurm" and visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        how = ("start at most that many tasks per node, or give each task its own GPU (srun --gpus-per-task=1)"
               if launcher == "slurm" else f"start at most {visible} processes per node (--nproc-per-node)")
        raise RuntimeError(f"local rank {local_rank} has no GPU: {visible} visible; {how}")
    return torch.device("cuda", local_rank)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors plus gloo for CPU ones (as torchtitan's init does): FSDP's CPU offload reduces
    CPU gradients and DCP gathers CPU objects, and NCCL alone refuses CPU tensors. Gloo on a CPU run."""
    return "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (what Slurm, taskset or a container allow), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def node_name(env: Mapping[str, str] = os.environ) -> str:
    """This rank's node: Slurm's name for it (several slurmd may share one host), else the host name."""
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def describe_cpus(state: DistState) -> str:
    """One line for rank 0's log: how many CPUs each rank may use and, across nodes, which node holds
    which ranks (a collective: every rank calls it)."""
    found = gather_objects((usable_cpus(), node_name()), state)
    counts = [c for c, _ in found]
    line = f"{counts[0]} CPU(s) per rank" if len(set(counts)) == 1 else \
        "CPU(s) per rank, rank 0 first: " + ", ".join(map(str, counts))
    by_node: dict[str, list[int]] = {}
    for rank, (_, node) in enumerate(found):
        by_node.setdefault(node, []).append(rank)
    if len(by_node) > 1:
        line += "; ranks per node: " + ", ".join(f"{node}=[{','.join(map(str, ranks))}]" for node, ranks in by_node.items())
    return line


def init_distributed(device: str = "auto", timeout_s: float = 600.0, env: Mapping[str, str] = os.environ) -> DistState:
    """Join the process group the launcher describes. Under a launcher the group exists even at world
    size 1, so a one-GPU run goes through every collective an eight-GPU run does; a plain process (the
    debugging run) has none until a strategy asks for one (`ensure_process_group`)."""
    e = read_env(env)
    dev = pick_device(device, e.local_rank, e.launcher)
    if dev.type == "cuda":
        # Before init: NCCL binds each rank's communicator to the current device.
        torch.cuda.set_device(dev)
    if e.launcher != "single" and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        kwargs: dict = {"timeout": timeout, "device_id": dev if dev.type == "cuda" else None}
        if e.launcher != "torchrun":
            kwargs.update(init_method=f"tcp://{e.master_addr}:{e.master_port}", rank=e.rank, world_size=e.world_size)
        dist.init_process_group(backend_for(dev), **kwargs)
    return DistState(e.rank, e.world_size, e.local_rank, e.local_world_size, dev, e.launcher)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    # destroy_process_group only drops c10d's own references; a DDP reducer in a reference cycle keeps
    # the gloo backend (and its worker threads) alive into interpreter shutdown, where tearing it down
    # aborts the process now and then ("terminate called without an active exception"). Collect now,
    # while the interpreter is whole.
    gc.collect()


@contextlib.contextmanager
def distributed(device: str = "auto", timeout_s: float = 600.0) -> Iterator[DistState]:
    """`with distributed() as ds:` — the group is destroyed on exit, also when the body raises."""
    state = init_distributed(device, timeout_s)
    try:
        yield state
    except BaseException:
        destroy_distributed()  # no barrier: the other ranks may be gone
        raise
    # Tear down together: a rank that leaves while its peer still has gloo I/O in flight can make the
    # peer's background thread abort the process at exit ("terminate called without an active exception").
    barrier(state)
    destroy_distributed()


# ---------------------------------------------------------------- collectives
# Every collective dtrain issues goes through these functions (a test checks that no other module calls
# torch.distributed's). Each one runs whenever a process group exists, also at world size 1, and puts
# its tensor on the rank's compute device first: NCCL refuses CPU tensors, and a CPU run cannot show it.


def has_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def _on_device(value, state: DistState, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`value` (a number, or a tensor on any device) as a tensor on the compute device, never an alias
    of the caller's tensor (collectives work in place)."""
    t = torch.as_tensor(value, dtype=dtype)
    moved = t.to(state.device)
    return moved.clone() if moved is value else moved


def all_reduce_sum(value, state: DistState, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The sum over ranks, as a new tensor on the compute device (`value` is not changed)."""
    t = _on_device(value, state, dtype)
    if has_group():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(value, state: DistState, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = _on_device(value, state, dtype)
    if has_group():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_(t: torch.Tensor, state: DistState, src: int = 0) -> torch.Tensor:
    """In place: `src`'s values in `t` on every rank. `t` must already be on the compute device."""
    if t.device != state.device:
        raise ValueError(f"broadcast_ needs a tensor on {state.device}, got one on {t.device}")
    if has_group():
        dist.broadcast(t, src=src)
    return t


def mean_over_ranks_(t: torch.Tensor, group=None, async_op: bool = False):
    """In place: `t` divided by the group's size, then summed over its ranks (DDP's gradient average, in
    the order its built-in reduction uses). With async_op, a future holding `t` once the sum is in."""
    t.div_(dist.get_world_size(group))
    work = dist.all_reduce(t, group=group, async_op=async_op)
    return work.get_future().then(lambda f: f.value()[0]) if async_op else t


def mean_over_replicas_(tensors: list[torch.Tensor], manager) -> None:
    """In place: gradients averaged over the live replica groups of a fault-tolerant job (a torchft
    Manager), as `mean_over_ranks_` does over ranks: divided by the quorum's size, then summed, in one
    flat buffer. A peer lost during the reduction is not raised here: the Manager records it and the step
    is then not committed anywhere (`should_commit`), which is what lets the survivors carry on."""
    from torch.distributed import ReduceOp

    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    flat.div_(max(manager.num_participants(), 1))
    manager.allreduce(flat, reduce_op=ReduceOp.SUM).wait()  # errors: recorded by the Manager, not raised
    at = 0
    for t in tensors:
        t.copy_(flat[at:at + t.numel()].view_as(t))
        at += t.numel()


def barrier(state: DistState) -> None:
    if has_group():
        # device_ids: NCCL otherwise guesses the device from the rank, and warns.
        dist.barrier(device_ids=[state.device.index] if state.device.type == "cuda" else None)


def gather_objects(obj, state: DistState) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not has_group():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, state: DistState, src: int = 0):
    if not has_group():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=state.device)
    return box[0]


def new_gloo_group(timeout_s: float):
    """A gloo group of its own (checkpoint I/O in a background thread must not share the training
    loop's communicator); None without a process group."""
    if not has_group():
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def ensure_process_group(state: DistState, timeout_s: float = 600.0) -> None:
    """A one-rank group for a single process: FSDP's device mesh and DeepSpeed need one even alone.
    In-process store, no port; torn down with the rest by `destroy_distributed`."""
    if not dist.is_initialized():
        dist.init_process_group(backend_for(state.device), store=dist.HashStore(), rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=state.device if state.device.type == "cuda" else None)
