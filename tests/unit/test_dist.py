"""Where a process sits in the job, from torchrun's or Slurm's variables, or neither."""

from __future__ import annotations

import os

import pytest
import torch

from dtrain.dist import describe_cpus, first_slurm_host, init_distributed, pick_device, read_env, usable_cpus


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("gpu[003-005,9]", "gpu003"), ("gpu[12,15],cpu1", "gpu12"),
    ("a-b-[01-02]", "a-b-01"), ("x1,x2", "x1"),
])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_torchrun_env():
    e = read_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                  "MASTER_ADDR": "h", "MASTER_PORT": "29500", "SLURM_PROCID": "0"})
    assert (e.rank, e.world_size, e.local_rank, e.local_world_size, e.launcher) == (3, 8, 1, 2, "torchrun")


def test_srun_env_without_torchrun():
    e = read_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
                  "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"})
    assert (e.rank, e.world_size, e.local_rank, e.local_world_size) == (5, 8, 1, 4)
    assert (e.master_addr, e.master_port, e.launcher) == ("gpu07", 24242, "slurm")


def test_batch_script_itself_is_not_a_rank():
    # sbatch's own shell has SLURM_PROCID=0 but no step: it must not try to join a group.
    assert read_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}).launcher == "single"


def test_plain_process_is_a_world_of_one():
    state = init_distributed("cpu", env={})
    assert (state.rank, state.world_size, state.is_main, state.is_distributed) == (0, 1, True, False)
    assert state.device == torch.device("cpu") and not torch.distributed.is_initialized()


def test_bad_env_value_is_named():
    with pytest.raises(RuntimeError, match="RANK='x'"):
        read_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="dist.device=cuda but CUDA is not available"):
        init_distributed("cuda", env={})


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this process sees `n` GPUs (no GPU needed)."""
    def see(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return see


def test_each_rank_takes_the_gpu_at_its_local_rank(gpus):
    gpus(4)
    assert pick_device("auto", 3, "torchrun") == torch.device("cuda", 3)
    assert pick_device("cuda", 2, "slurm") == torch.device("cuda", 2)
    assert pick_device("cpu", 3, "slurm") == torch.device("cpu")


def test_srun_task_with_its_own_gpu_uses_cuda_0(gpus):
    # srun --gpus-per-task=1: local rank 3 sees one GPU, its own.
    gpus(1)
    assert pick_device("auto", 3, "slurm") == torch.device("cuda", 0)


def test_torchrun_rank_without_a_gpu_of_its_own_is_refused(gpus):
    # Every torchrun worker sees all the node's GPUs: a fallback to cuda:0 would put two ranks on one GPU.
    gpus(1)
    with pytest.raises(RuntimeError, match=r"local rank 1 has no GPU: 1 visible; start at most 1 processes per node"):
        pick_device("auto", 1, "torchrun")
    gpus(2)
    with pytest.raises(RuntimeError, match=r"local rank 2 has no GPU: 2 visible; .*srun --gpus-per-task=1"):
        pick_device("auto", 2, "slurm")


def test_no_gpu_means_cpu_for_auto(gpus):
    gpus(0)
    assert pick_device("auto", 5, "slurm") == torch.device("cpu")


def test_cpus_per_rank_come_from_the_affinity_mask(monkeypatch):
    state = init_distributed("cpu", env={})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)  # bound to 2 CPUs by Slurm
    assert usable_cpus() == 2 and describe_cpus(state) == "2 CPU(s) per rank"
    monkeypatch.setattr("dtrain.dist.gather_objects", lambda obj, state: [(2, "a"), (1, "a"), (2, "a")])
    assert describe_cpus(state) == "CPU(s) per rank, rank 0 first: 2, 1, 2"
    monkeypatch.setattr("dtrain.dist.gather_objects", lambda obj, state: [(1, "n1"), (1, "n2"), (1, "n1")])
    assert describe_cpus(state) == "1 CPU(s) per rank; ranks per node: n1=[0,2], n2=[1]"


def test_a_vanished_peer_is_one_plain_line_naming_this_rank_and_node():
    from dtrain.messages import plain

    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[10.1.2.3]:27015. This is typically caused by a remote worker crashing. GLHF!")
    line = plain(gloo)
    assert "gloo" not in line and "unexpected" not in line and "at 10.1.2.3:27015" in line
    from dtrain.messages import lost_peer

    assert lost_peer(str(gloo), {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0",
                                     "SLURMD_NODENAME": "n7"}).startswith(
        "rank 3 on n7 lost its connection to another rank (at 10.1.2.3:27015)")
