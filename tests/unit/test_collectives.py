"""Every collective goes through dtrain/dist.py, which puts its tensor on the compute device and runs
whenever a process group exists (also at world size 1). What only NCCL would reject is caught here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

import dtrain.dist as ddist
from dtrain.dist import DistState, all_reduce_max, all_reduce_sum, backend_for, broadcast_, gather_objects

ROOT = Path(__file__).resolve().parents[2]
COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all", "all_to_all_single",
    "broadcast", "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather",
    "gather_object", "scatter", "scatter_object_list", "barrier", "monitored_barrier", "send", "recv", "isend",
    "irecv", "batch_isend_irecv", "all_reduce_coalesced", "_all_gather_base", "_reduce_scatter_base",
}
ALLOWED = {Path("dtrain/dist.py")}


def direct_collectives(source: str) -> list[str]:
    """`name(line)` of every torch.distributed collective a module's source calls itself."""
    tree = ast.parse(source)
    dist_names: set[str] = set()  # names bound to torch.distributed
    torch_names: set[str] = set()  # names bound to torch
    direct: set[str] = set()  # collectives imported by name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in ("torch.distributed", "torch.distributed.distributed_c10d") and a.asname:
                    dist_names.add(a.asname)
                elif a.name.split(".")[0] == "torch":
                    torch_names.add(a.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if node.module == "torch" and a.name == "distributed":
                    dist_names.add(a.asname or a.name)
                elif node.module.startswith("torch.distributed") and a.name in COLLECTIVES:
                    direct.add(a.asname or a.name)
                elif node.module == "torch.distributed" and a.name == "distributed_c10d":
                    dist_names.add(a.asname or a.name)

    def is_dist(expr: ast.expr) -> bool:
        if isinstance(expr, ast.Name):
            return expr.id in dist_names
        return (isinstance(expr, ast.Attribute) and expr.attr in ("distributed", "distributed_c10d")
                and (is_dist(expr.value) or isinstance(expr.value, ast.Name) and expr.value.id in torch_names))

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in COLLECTIVES and is_dist(f.value):
            found.append(f"{f.attr}({node.lineno})")
        elif isinstance(f, ast.Name) and f.id in direct:
            found.append(f"{f.id}({node.lineno})")
    return found


@pytest.mark.parametrize("snippet", [
    "import torch.distributed as tdist\ntdist.all_reduce(t)",
    "import torch\ntorch.distributed.broadcast(t, 0)",
    "from torch import distributed as dist\ndist.all_gather_object(out, x)",
    "from torch.distributed import barrier\nbarrier()",
    "import torch.distributed.distributed_c10d as c10d\nc10d.all_reduce(t)",
])
def test_the_rule_sees_a_direct_collective(snippet):
    assert direct_collectives(snippet), snippet


def test_the_rule_leaves_other_calls_alone():
    assert not direct_collectives("import torch.distributed as tdist\ntdist.is_initialized()\nself.engine.barrier()")


def test_no_module_but_dist_calls_a_collective():
    offenders = {}
    for path in sorted([*ROOT.glob("dtrain/**/*.py"), *ROOT.glob("recipes/**/*.py")]):
        rel = path.relative_to(ROOT)
        if rel not in ALLOWED and (calls := direct_collectives(path.read_text(encoding="utf-8"))):
            offenders[str(rel)] = calls
    assert not offenders, (f"collectives outside dtrain/dist.py (on GPUs they must see tensors on the group's "
                           f"device; use the functions there): {offenders}")


def _state(device: str = "cpu") -> DistState:
    return DistState(0, 1, 0, 1, torch.device(device), "single")


def test_a_number_or_a_cpu_tensor_is_reduced_on_the_compute_device():
    # On a GPU the compute device is cuda:N and NCCL refuses CPU tensors; the meta device stands in for
    # "not the CPU" here (no group: the move is what is checked).
    state = _state("meta")
    for value in (3, 2.5, torch.tensor([1.0, 2.0]), torch.tensor(7)):
        assert all_reduce_sum(value, state).device.type == "meta"
        assert all_reduce_max(value, state).device.type == "meta"
    with pytest.raises(ValueError, match="needs a tensor on meta"):
        broadcast_(torch.zeros(2), state)


def test_the_callers_tensor_is_not_changed():
    t = torch.tensor([1.0])
    out = all_reduce_sum(t, _state())
    out += 1
    assert t.item() == 1.0 and out.item() == 2.0


@pytest.fixture
def one_rank_group():
    state = _state()
    ddist.ensure_process_group(state)
    yield state
    ddist.destroy_distributed()


def test_collectives_run_at_world_size_one_when_a_group_exists(one_rank_group, monkeypatch):
    calls = []
    for name in ("all_reduce", "all_gather_object", "broadcast", "barrier"):
        real = getattr(tdist, name)
        monkeypatch.setattr(tdist, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    state = one_rank_group
    assert all_reduce_sum(torch.tensor([2.0]), state).tolist() == [2.0]
    assert all_reduce_max(5, state).item() == 5
    assert gather_objects({"a": 1}, state) == [{"a": 1}]
    broadcast_(torch.ones(3), state)
    ddist.barrier(state)
    assert calls == ["all_reduce", "all_reduce", "all_gather_object", "broadcast", "barrier"]


def test_a_gpu_group_has_a_cpu_backend_too(monkeypatch):
    """FSDP's CPU offload reduces CPU gradients and DCP gathers CPU objects: NCCL alone would refuse."""
    assert backend_for(torch.device("cuda", 0)) == "cuda:nccl,cpu:gloo"
    assert backend_for(torch.device("cpu")) == "gloo"
    seen = {}
    monkeypatch.setattr(ddist, "pick_device", lambda *a, **k: torch.device("cuda", 1))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault("set_device", d))
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, **k: seen.update(backend=backend, **k))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    env = {"RANK": "1", "WORLD_SIZE": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    ddist.init_distributed("auto", env=env)
    assert seen["backend"] == "cuda:nccl,cpu:gloo" and seen["device_id"] == torch.device("cuda", 1)
    assert seen["set_device"] == torch.device("cuda", 1)  # before the group: NCCL binds to it


def test_the_cpu_backend_reduces_cpu_tensors():
    """The `cpu:gloo` half of a GPU run's backend string, on its own: a group made with it reduces CPU tensors."""
    tdist.init_process_group("cpu:gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        t = torch.ones(2)
        tdist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0]
    finally:
        ddist.destroy_distributed()
