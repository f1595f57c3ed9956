"""`dtrain plan`: memory per GPU and checkpoint cost of a config at a given scale, before anything is queued.

The recipe's own model is built on the meta device and given fake storage (FakeTensorMode): a 70B model
costs its shapes, never its weights. What torch's tools can measure they measure, on one training step
(forward, backward, dtrain's clip-and-step) of that fake model at the configured micro-batch and precision:

- ddp: `torch.distributed._tools.MemTracker` over the plain model. DDP itself cannot wrap fake tensors (its
  C++ reducer needs real storage), so its gradient buckets are emulated by keeping the gradients allocated
  between steps (`zero_grad(set_to_none=False)`): with `gradient_as_bucket_view` the gradients are the buckets.
- fsdp: dtrain's own `FSDPStrategy.setup` shards the model over a fake process group of the planned world
  size (`torch.testing._internal.distributed.fake_pg`), and `FSDPMemTracker` measures the step: shards,
  gathered units, all-gather and reduce-scatter buffers, activations, optimizer state.
- ZeRO 1/2/3: arithmetic (DeepSpeed cannot run on fake tensors): DeepSpeed's partitioning applied to the
  parameter count (checked against real gloo runs on CPUs in fp32, see README); activations measured by
  MemTracker over a forward+backward of the model with DeepSpeed's 16-bit weights (fp32: ddp's step).
- Checkpoint staging, checkpoint bytes and save/load times: arithmetic from what dtrain's writers do
  (dtrain/checkpoint.py, the strategies), with the optimizer-state bytes of the measured fake optimizer.

Each strategy's `how` lists which rows are measured and which are arithmetic; the CLI prints it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from dtrain.config import RunConfig

DEFAULT_GPU_MEMORY = "80GB"
DEFAULT_FS_BANDWIDTH = "1GB/s"
STRATEGIES = ("ddp", "fsdp", "zero1", "zero2", "zero3")
# DeepSpeed's defaults for the buffers ZeRO sizes by element count (deepspeed/runtime/zero/config.py),
# used unless deepspeed.config sets them.
DS_REDUCE_BUCKET = int(5e8)
DS_MAX_LIVE = int(1e9)


class PlanError(ValueError):
    """Input `dtrain plan` cannot use; the message names the flag or key (exit 2, like a config error)."""

    bad_input = True


# --------------------------------------------------------------------------- the cluster and its units

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)\s*$", re.IGNORECASE)


def parse_size(text: str, flag: str) -> int:
    """'80GB' -> 80e9 bytes (GB = 10^9, GiB = 2^30). A unit is required: a bare '80' is ambiguous."""
    m = _SIZE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise PlanError(f"{flag}: cannot read {text!r} as a size; write it with a unit, e.g. 80GB or 141GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_bandwidth(text: str, flag: str) -> float:
    """'2GB/s' -> 2e9 bytes per second ('/s' may be left out)."""
    body = text.strip()
    body = body[:-2] if body.lower().endswith("/s") else body
    m = _SIZE.match(body)
    if not m or float(m.group(1)) <= 0:
        raise PlanError(f"{flag}: cannot read {text!r} as a bandwidth; write it like 2GB/s or 500MB/s")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def _count(value: int | str, flag: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise PlanError(f"{flag}: expected a whole number, got {value!r}") from None
    if n < 1:
        raise PlanError(f"{flag}: must be at least 1, got {n}")
    return n


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    """Ranks per node (one per GPU; with device cpu, processes per node)."""
    memory: int
    """Bytes of memory per GPU (device cpu: per rank)."""
    fs_bandwidth: float
    """Bytes per second each node reads or writes checkpoints at."""
    fs_bandwidth_given: bool = False
    device: str = "cuda"
    """cuda: rows are GPU memory, staging in host memory is listed apart. cpu: every row is the rank's
    own host memory, so host staging counts in the total (how the plan is checked on CPUs)."""

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @classmethod
    def parse(cls, nodes: int | str, gpus_per_node: int | str, memory: str | None, bandwidth: str | None,
              device: str = "cuda") -> "Cluster":
        nodes, gpus_per_node = _count(nodes, "--nodes"), _count(gpus_per_node, "--gpus-per-node")
        return cls(nodes, gpus_per_node, parse_size(memory or DEFAULT_GPU_MEMORY, "--gpu-memory"),
                   parse_bandwidth(bandwidth or DEFAULT_FS_BANDWIDTH, "--fs-bandwidth"),
                   fs_bandwidth_given=bandwidth is not None, device=device)


# --------------------------------------------------------------------------- what the plan reports


@dataclass
class Estimate:
    """One strategy at the planned world size; bytes are the worst rank's (rank 0) unless named."""

    name: str
    refused: str | None = None
    """Why dtrain refuses this strategy with this config (then nothing else is filled)."""
    rows: dict[str, int] = field(default_factory=dict)
    """The training step's peak, split by what holds the memory (they add up to `step_peak`)."""
    step_peak: int = 0
    staging: int = 0
    """Extra memory while a checkpoint is written, on the device named by `staging_on`."""
    staging_on: str = "host"
    steady: int = 0
    """What stays allocated between steps (the state a checkpoint save adds its staging to)."""
    total: int = 0
    """Rank 0's peak per GPU: the step's peak, or the steady state plus device staging if larger."""
    total_other_ranks: int = 0
    host: dict[str, int] = field(default_factory=dict)
    """Host memory of rank 0 outside the GPU: the model built at set-up, checkpoint staging."""
    ckpt_rank0: int = 0
    ckpt_other: int = 0
    ckpt_total: int = 0
    save_s: float = 0.0
    load_s: float = 0.0
    how: dict[str, str] = field(default_factory=dict)
    """Row -> 'measured (tool)' or 'arithmetic (...)'."""


@dataclass
class Plan:
    config: str
    recipe: str
    cluster: Cluster
    precision: str
    batch_size: int
    params: int
    trainable: int
    param_bytes: int
    buffer_bytes: int
    estimates: list[Estimate]
    notes: list[str]


# --------------------------------------------------------------------------- building the fake model


def resolve_precision(mode: str, device: str) -> str:
    """`auto` as dtrain resolves it on the planned device: bf16 on GPUs (the plan assumes GPUs with bf16
    units: A100, H100 and later), fp32 on CPUs."""
    if mode != "auto":
        return mode
    return "bf16" if device == "cuda" else "fp32"


def build_task(cfg: RunConfig, cluster: Cluster):
    """The recipe's Task as rank 0 of the planned job would build it (into a scratch output_dir: the plan
    writes nothing into the run directory)."""
    from dtrain.dist import DistState
    from dtrain.recipe import BuildContext, Task, resolve_recipe

    state = DistState(rank=0, world_size=cluster.world, local_rank=0, local_world_size=cluster.gpus_per_node,
                      device=torch.device("cpu"), launcher="single")
    with tempfile.TemporaryDirectory(prefix="dtrain-plan-") as scratch:
        try:
            task = resolve_recipe(cfg.recipe).build(cfg.task, BuildContext(dist=state, seed=cfg.seed,
                                                                            output_dir=Path(scratch)))
        except Exception as exc:  # the recipe's own message says what is wrong with its keys
            raise PlanError(f"recipe {cfg.recipe!r} could not build its task from this config: "
                            f"{_one_line(exc)}") from None
    if not isinstance(task, Task):
        raise PlanError(f"recipe {cfg.recipe!r}: build() returned {type(task).__name__}, not a Task")
    return task


def meta_model(task) -> nn.Module:
    """The model on the meta device: the skeleton fsdp builds, or a prebuilt module moved there."""
    from dtrain.model_init import ModelSource

    source = ModelSource.of(task.model, task.model_skeleton, 0)
    if not source.can_defer:  # built in build() already, weights and all: this process may drop them
        return source.prebuilt.to("meta")
    try:
        return source.skeleton()
    except Exception as exc:
        raise PlanError(f"the recipe's model cannot be built on the meta device: {_one_line(exc)}") from None


def fake_storage(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Give a meta model's parameters and buffers fake CPU storage (call under FakeTensorMode), in place;
    floating-point parameters in `dtype` if given. By hand rather than `to_empty`: swapping a meta
    parameter for a fake one is refused. Tied weights stay tied (one new tensor per original)."""
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                if id(p) not in made:
                    cast = dtype if dtype is not None and p.is_floating_point() else p.dtype
                    made[id(p)] = nn.Parameter(torch.empty_like(p, device="cpu", dtype=cast),
                                               requires_grad=p.requires_grad)
                module._parameters[name] = made[id(p)]
        for name, b in module._buffers.items():
            if b is not None:
                if id(b) not in made:
                    made[id(b)] = torch.empty_like(b, device="cpu")
                module._buffers[name] = made[id(b)]
    return model


def sample_batch(task, size: int) -> Any:
    """A micro-batch of `size` from the training data, collated as the DataLoader would (small and real:
    it is faked only inside the measurement). Short data sets are cycled to fill it."""
    from torch.utils.data import IterableDataset, default_collate

    data = task.train_data
    if isinstance(data, IterableDataset):
        items = list(itertools.islice(itertools.cycle(iter(data)), size))
    else:
        items = [data[i % len(data)] for i in range(size)]
    return (task.collate_fn or default_collate)(items)


def _fake_batch(batch: Any, fake) -> Any:
    from torch.utils._pytree import tree_map_only

    from dtrain.data import move_to

    batch = move_to(batch, torch.device("cpu"))  # a BatchEncoding or namedtuple stays what it is
    if isinstance(batch, torch.Tensor):
        return fake.from_tensor(batch)
    if hasattr(batch, "data") and isinstance(batch.data, dict):  # Hugging Face BatchEncoding: a UserDict
        batch.data = tree_map_only(torch.Tensor, fake.from_tensor, batch.data)
        return batch
    return tree_map_only(torch.Tensor, fake.from_tensor, batch)


def _tensors(batch: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    data = batch.data if hasattr(batch, "data") and isinstance(batch.data, dict) else batch
    return [t for t in tree_leaves(data) if isinstance(t, torch.Tensor)]


@contextlib.contextmanager
def fake_world(world: int) -> Iterator[None]:
    """A fake process group of `world` ranks in this one process, as rank 0: collectives return at once and
    move no data, so FSDP shards as it would at that size."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if dist.is_initialized():
        raise PlanError("dtrain plan runs outside a training job; start it without torchrun or srun")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the measurements


@dataclass
class Measured:
    rows: dict[str, int]
    peak: int
    steady: int
    optimizer_bytes: int
    """Bytes of the optimizer's state tensors on this rank (fake tensors: their sizes, no data)."""


def _precision(mode: str):
    from dtrain.precision import Precision

    precision = Precision(mode, torch.device("cpu"))
    # fp16's GradScaler reads its overflow flag on the host, which a fake tensor has no value for; its
    # own tensors are a few scalars, so the step is measured without it.
    precision.scaler = None
    return precision


def _strategy_state(cluster: Cluster):
    from dtrain.dist import DistState

    return DistState(rank=0, world_size=cluster.world, local_rank=0, local_world_size=cluster.gpus_per_node,
                     device=torch.device("cpu"), launcher="single")


def _make_optimizer(task, cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    from dtrain.optim import build_optimizer

    return task.optimizer(model) if task.optimizer else build_optimizer(model, cfg.optim, task.lr_scale)


def _train_step(strategy, task, batch, keep_grads: bool, guard: bool, micro_batches: int,
                between: Callable[[], None] | None = None) -> None:
    """One optimizer step as the Trainer runs it: per micro-batch the strategy's sync context, autocast
    forward and loss, backward; then dtrain's clip-and-step (Strategy.step) and zero_grad. Two micro-batches
    stand for any accumulation: what a window holds between them (fsdp without a reduce-scatter per
    micro-batch keeps whole gradients) is there from the second on. `between` runs between micro-batches
    (MemTracker refuses a module called twice unless its per-module stats are reset; its peak stays)."""
    for i in range(micro_batches):
        if i and between is not None:
            between()
        with strategy.sync(last=i == micro_batches - 1):
            with strategy.precision.autocast():
                outputs = task.forward(strategy.model, batch)
                loss = task.loss_fn(outputs, batch)
            loss.backward()
    strategy.step(guard)
    strategy.optimizer.zero_grad(set_to_none=not keep_grads)


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.untyped_storage().nbytes()
    return total


def measure_replica(task, cfg: RunConfig, cluster: Cluster, mode: str, batch: Any, base: nn.Module) -> Measured:
    """MemTracker over one step of the whole model (ddp; the activations ZeRO's arithmetic uses).
    The second step is the one measured: the first creates the optimizer state (lazily, in its step)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType as T

    from dtrain.strategies.base import Strategy

    strategy = Strategy(cfg, _strategy_state(cluster), _precision(mode))
    model = copy.deepcopy(base)  # outside the fake mode: copying there would clone into fake tensors
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        model = fake_storage(model)
        model.train()
        strategy.model, strategy.optimizer = model, _make_optimizer(task, cfg, model)
        fake_batch = _fake_batch(batch, fake)
        guard = cfg.train.on_nonfinite != "off"
        micro = min(cfg.train.grad_accum_steps, 2)
        _train_step(strategy, task, fake_batch, keep_grads=True, guard=guard, micro_batches=1)
        tracker = MemTracker()
        tracker.track_external(model, strategy.optimizer, *_tensors(fake_batch))
        with tracker:
            _train_step(strategy, task, fake_batch, keep_grads=True, guard=guard, micro_batches=micro,
                        between=tracker.reset_mod_stats)
        snap = next(iter(tracker.get_tracker_snapshot("peak").values()))
        params = sum(p.untyped_storage().nbytes() for p in model.parameters())
        buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
        opt = _state_bytes(strategy.optimizer)
    rows = {
        "parameters": snap.get(T.PARAM, 0) + snap.get(T.BUFFER, 0),
        "gradients": snap.get(T.GRAD, 0),
        "optimizer state": snap.get(T.OPT, 0),
        "gathered + buffers": 0,
        "activations + temps": snap.get(T.ACT, 0) + snap.get(T.TEMP, 0) + snap.get(T.OTH, 0),
    }
    # Between steps DDP keeps its weights, gradient buckets (the gradients) and the optimizer state.
    return Measured(rows, snap["Total"], steady=params + buffers + params + opt, optimizer_bytes=opt)


def measure_activations(task, cfg: RunConfig, mode: str, batch: Any, base: nn.Module) -> int:
    """MemTracker's peak above the weights over one forward+backward of the model with 16-bit weights,
    as DeepSpeed holds them under bf16/fp16 (no fp32 weights for autocast to copy, unlike ddp's step).
    Each gradient is dropped once accumulated, as ZeRO copies it into its reduce bucket (counted apart):
    the peak is then the activations' and temporaries', not a whole set of gradients'."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType as T

    precision = _precision(mode)
    model = copy.deepcopy(base)
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        model = fake_storage(model, dtype=precision.dtype)
        model.train()
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        fake_batch = _fake_batch(batch, fake)
        tracker = MemTracker()
        tracker.track_external(model, *_tensors(fake_batch))
        with tracker, warnings.catch_warnings():
            # The tracker's own gradient hook runs after ours and finds the gradient gone: it says so.
            warnings.filterwarnings("ignore", message="Expected a tensor or a traceable wrapper-subclass")
            with precision.autocast():
                loss = task.loss_fn(task.forward(model, fake_batch), fake_batch)
            loss.backward()
        snap = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return snap["Total"] - snap.get(T.PARAM, 0) - snap.get(T.BUFFER, 0)


def measure_fsdp(task, cfg: RunConfig, cluster: Cluster, mode: str, batch: Any, base: nn.Module) -> Measured:
    """FSDPMemTracker over one step of the model sharded by dtrain's own FSDPStrategy over a fake group
    of the planned world size (rank 0's shard: the largest when sizes do not divide evenly)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType as T

    from dtrain.model_init import ModelSource
    from dtrain.strategies.fsdp import FSDPStrategy

    # CPU offload needs CUDA to run; measured without it, then its rows are moved to the host (plan()).
    probe_cfg = dataclasses.replace(cfg, fsdp=dataclasses.replace(cfg.fsdp, cpu_offload=False))
    strategy = FSDPStrategy(probe_cfg, _strategy_state(cluster), _precision(mode), shard_units=task.shard_units)
    with fake_world(cluster.world):
        # A prebuilt meta module: sharded exactly as a real run shards its skeleton, no weights sent.
        strategy.setup(ModelSource(None, None, cfg.seed, prebuilt=copy.deepcopy(base)), lambda model: None)
        model = strategy.model
        with FakeTensorMode(allow_non_fake_inputs=True) as fake:
            model.to_empty(device="cpu")
            strategy.optimizer = _make_optimizer(task, cfg, model)
            fake_batch = _fake_batch(batch, fake)
            guard = cfg.train.on_nonfinite != "off"
            micro = min(cfg.train.grad_accum_steps, 2)
            _train_step(strategy, task, fake_batch, keep_grads=False, guard=guard, micro_batches=1)
            tracker = FSDPMemTracker(model, strategy.optimizer)
            tracker.track_inputs(tuple(_tensors(fake_batch)))
            with tracker:
                _train_step(strategy, task, fake_batch, keep_grads=False, guard=guard, micro_batches=micro)
            snap = next(iter(tracker.get_tracker_snapshot("peak").values()))
            shards = sum(p.to_local().untyped_storage().nbytes() if hasattr(p, "to_local")
                         else p.untyped_storage().nbytes() for p in model.parameters())
            buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
            opt = _state_bytes(strategy.optimizer)
    rows = {
        "parameters": snap.get(T.SHARDED_PARAM, 0) + snap.get(T.BUFFER, 0),
        "gradients": snap.get(T.SHARDED_GRAD, 0) + snap.get(T.UNSHARDED_GRAD, 0),
        "optimizer state": snap.get(T.OPT, 0),
        "gathered + buffers": sum(snap.get(k, 0) for k in (T.UNSHARDED_PARAM, T.ALL_GATHER, T.REDUCE_SCATTER)),
        "activations + temps": sum(snap.get(k, 0) for k in (T.ACT, T.TEMP, T.INP)),
    }
    # Between steps: the shards and the optimizer state (gradients are freed by zero_grad).
    return Measured(rows, snap["Total"], steady=shards + buffers + opt, optimizer_bytes=opt)


# --------------------------------------------------------------------------- arithmetic


@dataclass(frozen=True)
class ModelFacts:
    params: int
    trainable: int
    param_bytes: int
    """As built (fp32 for dtrain's models: ddp and fsdp keep fp32 weights under any precision)."""
    buffer_bytes: int
    largest_unit: int
    """Parameters of the largest shard unit (what ZeRO-3 gathers at once, at least)."""
    largest_param: int
    """Elements of the largest single parameter."""


def model_facts(task, model: nn.Module) -> ModelFacts:
    units = list(task.shard_units(model)) if task.shard_units else []
    largest = max((sum(p.numel() for p in u.parameters()) for u in units), default=0)
    # What the units leave out (embeddings, heads) belongs to the root unit, gathered alone.
    in_units = {id(p) for u in units for p in u.parameters()}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in in_units)
    return ModelFacts(
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        largest_unit=max(largest, rest),
        largest_param=max((p.numel() for p in model.parameters()), default=0),
    )


def _shard(n: int, world: int) -> int:
    return math.ceil(n / world)


def zero_estimate(stage: int, facts: ModelFacts, cfg: RunConfig, cluster: Cluster, mode: str,
                  replica: Measured | None, activations: int | None) -> Estimate:
    """ZeRO per rank, arithmetic from DeepSpeed 0.19's partitioning (stage_1_and_2.py, stage3.py):

    - weights: the module's, 16-bit under bf16/fp16 (fp32 otherwise); whole for stages 1/2, a 1/N
      partition for stage 3 plus the gathered parameters it keeps live, up to
      `stage3_max_live_parameters` (1e9 elements; at least the largest unit), also between steps;
    - optimizer: an fp32 master partition (DeepSpeed clones one even in fp32) plus the torch
      optimizer's state for it (bytes per parameter as measured on the fake optimizer);
    - gradients: each parameter's gradient (module dtype) is held until its reduce bucket is reduced, so
      up to a bucket's worth (the whole model when it is smaller than the bucket); under bf16/fp16 the
      step copies this rank's partition to fp32; stage 3 also keeps a 16-bit partition between steps;
    - buffers: the reduce bucket, `reduce_bucket_size` elements made with torch.empty (fp32 for stage 1,
      16-bit otherwise; two with overlap_comm). On a GPU the caching allocator holds all of it; on a
      CPU only the pages a model's gradients touch become resident, so it counts up to the model's size."""
    world, p, t = cluster.world, facts.params, facts.trainable
    width = 2 if mode in ("bf16", "fp16") else 4
    ds = _ds_settings(cfg, cluster, mode, stage)
    per_param = (replica.optimizer_bytes / max(t, 1)) if replica else _arith_optimizer(facts, cfg) / max(t, 1)
    part = _shard(t, world)
    optimizer = 4 * part + int(per_param * part)
    held = min(t, ds["reduce_bucket"]) * width  # gradients waiting for their bucket's reduction
    grads = held + (4 * part if width == 2 else 0) + (part * width if stage == 3 else 0)
    if stage < 3:
        params, gathered = p * width, 0
    else:
        params = _shard(p, world) * width
        gathered = min(p, max(ds["max_live"], facts.largest_unit)) * width
    bucket_elems = ds["reduce_bucket"] if cluster.device == "cuda" else min(t, ds["reduce_bucket"])
    buckets = 2 if ds["overlap_comm"] and stage < 3 else 1
    bucket = buckets * bucket_elems * (4 if stage == 1 else width)
    est = Estimate(name=f"zero{stage}", staging_on="gpu")
    est.how = {"parameters": f"arithmetic ({'whole' if stage < 3 else '1/N'} x {width} bytes)",
               "gradients": "arithmetic (held until reduced, up to a bucket; fp32 partition at the step"
               + (", 16-bit partition)" if stage == 3 else ")"),
               "optimizer state": "arithmetic (fp32 master + optimizer state, 1/N)",
               "gathered + buffers": "arithmetic (reduce bucket"
               + ("; live gathered parameters)" if stage == 3 else ")"),
               "activations + temps": "measured (MemTracker, forward+backward with the module's weights)"
               if activations is not None else "not measured"}
    if cfg.deepspeed.offload_optimizer:  # ZeRO-Offload: master, state, fp32 gradients and the step on the CPU
        est.host["optimizer offload"] = optimizer + 4 * part
        optimizer, grads = 0, grads - (4 * part if width == 2 else 0)
        est.how["optimizer state"] = "arithmetic (offloaded to host memory)"
    if cfg.deepspeed.offload_params and stage == 3:
        est.host["parameter offload"], params = params, 0
    acts = activations or 0
    est.rows = {"parameters": params, "gradients": grads, "optimizer state": optimizer,
                "gathered + buffers": gathered + bucket, "activations + temps": acts}
    est.step_peak = sum(est.rows.values())
    # Kept from step to step: the bucket; under stage 3 also the live gathered weights and the 16-bit
    # gradient partition (measured on CPUs: a save's peak includes them).
    est.steady = params + optimizer + bucket + (gathered + part * width if stage == 3 else 0)
    # dtrain's DeepSpeed save (DeepSpeedStrategy._full_weights) assembles each parameter's fp32 master whole
    # on every rank's GPU, one at a time: rank 0 moves it to host memory and keeps it until
    # model.safetensors is written (the whole fp32 model), the others drop it before the next.
    est.staging = 4 * facts.largest_param
    est.host["checkpoint staging (rank 0)"] = 4 * p + facts.buffer_bytes
    est.how["checkpoint staging"] = ("arithmetic (one whole fp32 parameter on the GPU at a time; rank 0 keeps "
                                     "the whole fp32 model in host memory)")
    return est


def _ds_settings(cfg: RunConfig, cluster: Cluster, mode: str, stage: int) -> dict[str, int]:
    """Bucket sizes (elements) and overlap_comm from deepspeed.config when it sets them, else DeepSpeed's
    defaults (overlap_comm: on for stage 3 only)."""
    zero: dict = {}
    if cfg.deepspeed.config:
        from dtrain.strategies.deepspeed import deepspeed_config

        zero = deepspeed_config(cfg, cluster.world, mode).get("zero_optimization", {})
    return {"reduce_bucket": int(zero.get("reduce_bucket_size", DS_REDUCE_BUCKET)),
            "max_live": int(zero.get("stage3_max_live_parameters", DS_MAX_LIVE)),
            "overlap_comm": bool(zero.get("overlap_comm", stage == 3))}


def checkpoint_costs(est: Estimate, strategy: str, facts: ModelFacts, cfg: RunConfig, cluster: Cluster,
                     mode: str, optimizer_bytes_full: int) -> None:
    """Bytes each rank writes, and the save and load times at the node's file-system bandwidth (all ranks
    of a node share it; nodes write in parallel, so the busiest node sets the time). Arithmetic."""
    world, gpn = cluster.world, cluster.gpus_per_node
    model_file = facts.param_bytes + facts.buffer_bytes
    fmt = _checkpoint_format(cfg, strategy)
    if strategy.startswith("zero"):
        stage, width = int(strategy[-1]), (2 if mode in ("bf16", "fp16") else 4)
        partition = 4 * _shard(facts.trainable, world) + _shard(optimizer_bytes_full, world)  # master + state
        module_file = facts.params * width if stage < 3 else 0  # ZeRO-3's module file holds empty partitions
        # Rank 0 adds DeepSpeed's module file and dtrain's whole fp32 model.safetensors (for export).
        est.ckpt_rank0 = partition + module_file + model_file
        est.ckpt_other = partition
        read_per_rank = partition + module_file  # every rank loads its partition and the module file
        read_node = gpn * read_per_rank
    elif fmt == "torch":  # rank 0 writes model.pt and optim.pt; every rank reads both on resume
        est.ckpt_rank0, est.ckpt_other = model_file + optimizer_bytes_full, 0
        read_node = gpn * est.ckpt_rank0
    else:  # dcp: every rank its shard (replicated ddp state: DCP spreads the writes over the ranks)
        share = _shard(model_file + optimizer_bytes_full, world)
        est.ckpt_rank0 = est.ckpt_other = share
        read_node = gpn * share
    est.ckpt_total = est.ckpt_rank0 + (world - 1) * est.ckpt_other
    write_node0 = est.ckpt_rank0 + (gpn - 1) * est.ckpt_other
    write_node = max(write_node0, gpn * est.ckpt_other)
    est.save_s = write_node / cluster.fs_bandwidth
    est.load_s = read_node / cluster.fs_bandwidth
    est.how["checkpoint bytes and times"] = f"arithmetic ({fmt} format, file-system bandwidth per node)"


def _checkpoint_format(cfg: RunConfig, strategy: str) -> str:
    if strategy.startswith("zero"):
        return "deepspeed"
    return dataclasses.replace(cfg, strategy=strategy).checkpoint_format


def host_staging(strategy: str, cfg: RunConfig, facts: ModelFacts, cluster: Cluster,
                 optimizer_bytes_rank: int, optimizer_bytes_full: int, shard_bytes: int) -> int:
    """Host memory rank 0 needs on top while it saves (arithmetic from dtrain's writers)."""
    fmt = _checkpoint_format(cfg, strategy)
    if fmt == "torch":
        # dtrain.checkpoint.save_file serialises each file in memory first (model.pt, then optim.pt):
        # the larger of the two.
        return max(facts.param_bytes + facts.buffer_bytes, optimizer_bytes_full)
    if cfg.checkpoint.async_save:
        # dcp.async_save stages what this rank writes in host memory (pinned and reused on CUDA): its own
        # shards, and its 1/N share of the replicated tensors (Strategy.save_state hands each to one rank).
        if strategy == "ddp":
            return _shard(facts.param_bytes + facts.buffer_bytes + optimizer_bytes_full, cluster.world)
        return shard_bytes + optimizer_bytes_rank
    # Synchronous dcp writes each tensor from where it lies (on a GPU: one tensor's host copy at a time).
    return 0


# --------------------------------------------------------------------------- the plan


def plan(cfg: RunConfig, cluster: Cluster, config_path: str = "") -> Plan:
    """Every strategy at `cluster`'s world size for `cfg`'s recipe, micro-batch and precision."""
    mode = resolve_precision(cfg.train.precision, cluster.device)
    task = build_task(cfg, cluster)
    base = meta_model(task)  # built once (a big model's skeleton takes seconds); each measurement copies it
    facts = model_facts(task, base)
    notes: list[str] = []
    if cfg.train.precision == "auto":
        where = "GPUs with bf16 units (A100, H100...)" if cluster.device == "cuda" else "CPUs"
        notes.append(f"train.precision auto -> {mode} on {where}")
    if mode in ("bf16", "fp16"):
        notes.append(f"ddp keeps fp32 weights: its activations include autocast's {mode} copies of them, kept for "
                     "backward; fsdp gathers its units in bf16 (gathered + buffers)")
    batch = sample_batch(task, cfg.train.batch_size)
    replica = _attempt(lambda: measure_replica(task, cfg, cluster, mode, batch, base), "ddp step", notes)
    if mode in ("bf16", "fp16"):  # ZeRO's module holds 16-bit weights: measured as such
        zero_acts = _attempt(lambda: measure_activations(task, cfg, mode, batch, base), "ZeRO forward+backward",
                             notes)
    else:  # fp32: the same whole-model step as ddp's
        zero_acts = replica.rows["activations + temps"] if replica else None
    estimates = []
    for name in STRATEGIES:
        refused = _refusal(cfg, name, mode)
        if refused:
            estimates.append(Estimate(name=name, refused=refused))
            continue
        if name == "ddp":
            est = _from_measured(name, replica, facts, cluster, cfg, "MemTracker")
        elif name == "fsdp":
            measured = _attempt(lambda: measure_fsdp(task, cfg, cluster, mode, batch, base), "fsdp step", notes)
            est = _from_measured(name, measured, facts, cluster, cfg, "FSDPMemTracker")
        else:
            est = zero_estimate(int(name[-1]), facts, cfg, cluster, mode, replica, zero_acts)
        opt_full = replica.optimizer_bytes if replica else _arith_optimizer(facts, cfg)
        opt_rank = _shard(opt_full, cluster.world) if name == "fsdp" else opt_full
        if not name.startswith("zero"):
            shard = facts.param_bytes if name == "ddp" else _shard(facts.param_bytes, cluster.world)
            est.staging = host_staging(name, cfg, facts, cluster, opt_rank, opt_full, shard)
            est.staging_on = "host"
            est.how["checkpoint staging"] = "arithmetic (dtrain's checkpoint writer)"
        _setup_memory(est, name, cfg, facts, cluster)
        checkpoint_costs(est, name, facts, cfg, cluster, mode, opt_full)
        _totals(est, name, cluster, cfg)
        estimates.append(est)
    return Plan(config=config_path, recipe=cfg.recipe, cluster=cluster, precision=mode,
                batch_size=cfg.train.batch_size, params=facts.params, trainable=facts.trainable,
                param_bytes=facts.param_bytes, buffer_bytes=facts.buffer_bytes, estimates=estimates, notes=notes)


def _attempt(fn, what: str, notes: list[str]) -> Any:
    """A measurement, or None with a note when the model cannot run on fake tensors (a data-dependent
    branch, a custom kernel): the rows then fall back to arithmetic."""
    try:
        return fn()
    except PlanError:
        raise
    except Exception as exc:
        notes.append(f"{what} could not be measured on fake tensors ({_one_line(exc)}); its rows are arithmetic")
        return None


def _arith_optimizer(facts: ModelFacts, cfg: RunConfig) -> int:
    per = 8 if cfg.optim.name == "adamw" else (4 if cfg.optim.momentum else 0)
    return per * facts.trainable


def _from_measured(name: str, measured: Measured | None, facts: ModelFacts, cluster: Cluster, cfg: RunConfig,
                   tool: str) -> Estimate:
    est = Estimate(name=name)
    if measured is not None:
        est.rows, est.step_peak, est.steady = dict(measured.rows), measured.peak, measured.steady
        est.how = {row: f"measured ({tool})" for row in est.rows}
        return est
    # Fallback: weights, gradients (fp32) and AdamW/SGD state per parameter; no activations.
    world = 1 if name == "ddp" else cluster.world
    params = _shard(facts.param_bytes, world) + facts.buffer_bytes
    grads = _shard(4 * facts.trainable, world)
    opt = _shard(_arith_optimizer(facts, cfg), world)
    gathered = 0 if name == "ddp" else 4 * facts.largest_unit * 2
    est.rows = {"parameters": params, "gradients": grads, "optimizer state": opt,
                "gathered + buffers": gathered, "activations + temps": 0}
    est.step_peak = sum(est.rows.values())
    est.steady = params + opt + (grads if name == "ddp" else 0)
    est.how = {row: "arithmetic (measurement failed)" for row in est.rows}
    est.how["activations + temps"] = "not measured"
    return est


def _setup_memory(est: Estimate, name: str, cfg: RunConfig, facts: ModelFacts, cluster: Cluster) -> None:
    """Host memory of set-up (arithmetic from dtrain/model_init.py): ddp and ZeRO 1/2 build the whole
    model on the CPU on every rank; fsdp and ZeRO-3 on rank 0 only (the source of the weights)."""
    whole = facts.param_bytes + facts.buffer_bytes
    est.host["model built at set-up (rank 0)"] = whole
    est.host["model built at set-up (each other rank)"] = whole if name in ("ddp", "zero1", "zero2") else 0
    if est.staging_on == "host":
        est.host["checkpoint staging (rank 0)"] = est.staging
    if name == "fsdp" and cfg.fsdp.cpu_offload and cluster.device == "cuda":
        # Offloaded shards, gradients and optimizer state live in host memory.
        moved = est.rows["parameters"] + est.rows["gradients"] + est.rows["optimizer state"]
        est.host["fsdp cpu offload"] = moved
        est.rows["parameters"] = est.rows["gradients"] = est.rows["optimizer state"] = 0
        est.step_peak -= moved
        est.steady = 0


def _totals(est: Estimate, name: str, cluster: Cluster, cfg: RunConfig) -> None:
    """Peak per GPU: the step's peak, or what stays allocated between steps plus what a save stages on the
    GPU, whichever is larger. With device cpu host memory is the rank's memory: rank 0's host staging,
    each rank's async staging and the source rank's whole model at set-up count too."""
    gpu_staging = est.staging if est.staging_on == "gpu" else 0
    est.total = est.total_other_ranks = max(est.step_peak, est.steady + gpu_staging)
    if cluster.device != "cpu":
        return
    est.total = max(est.total, est.steady + est.host.get("checkpoint staging (rank 0)", 0))
    if cfg.checkpoint.async_save and name in ("ddp", "fsdp"):  # every rank stages its share
        est.total_other_ranks = max(est.total_other_ranks, est.steady + est.staging)
    shard = est.rows.get("parameters", 0)
    # Set-up: the source rank holds the whole model beside its own copy or shard (freed after).
    source = est.host["model built at set-up (rank 0)"] + (shard if name in ("fsdp", "zero3") else 0)
    est.total = max(est.total, source)


def _refusal(cfg: RunConfig, name: str, mode: str) -> str | None:
    """The config check's own line when dtrain refuses this strategy with these settings."""
    strategy = "deepspeed" if name.startswith("zero") else name
    trial = dataclasses.replace(cfg, strategy=strategy)
    if name.startswith("zero"):
        trial = dataclasses.replace(trial, deepspeed=dataclasses.replace(cfg.deepspeed, stage=int(name[-1])))
    if strategy != "deepspeed" and cfg.deepspeed.config is not None:
        trial = dataclasses.replace(trial, deepspeed=dataclasses.replace(trial.deepspeed, config=None))
    if strategy == "deepspeed" and trial.checkpoint.format != "auto":
        trial = dataclasses.replace(trial, checkpoint=dataclasses.replace(trial.checkpoint, format="auto"))
    if strategy == "fsdp" and mode == "fp16":
        return "fp16 with fsdp needs a sharded grad scaler dtrain does not have"
    problems = trial._check_strategy()
    return problems[0] if problems else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- output


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_seconds(s: float) -> str:
    if s < 1:
        return "<1 s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min"


W = 15  # column width of the table


def render(p: Plan) -> str:
    c = p.cluster
    mem = "memory per rank" if c.device == "cpu" else "GPU memory"
    bw = f"{fmt_bytes(c.fs_bandwidth)}/s per node" + ("" if c.fs_bandwidth_given else " (default; set --fs-bandwidth)")
    lines = [
        f"dtrain plan: {p.config or p.recipe} (recipe {p.recipe}): {p.params / 1e6:,.1f} M parameters "
        f"({fmt_bytes(p.param_bytes)} as built), micro-batch {p.batch_size}, precision {p.precision}",
        f"{c.nodes} node(s) x {c.gpus_per_node} {'GPU(s)' if c.device == 'cuda' else 'process(es)'} = {c.world} ranks; "
        f"{mem} {fmt_bytes(c.memory)}; file system {bw}",
        "",
    ]
    cols = [e.name for e in p.estimates]
    head = f"{'per ' + ('rank' if c.device == 'cpu' else 'GPU') + ', rank 0':<30}" + "".join(f"{n:>{W}}" for n in cols)
    lines.append(head)
    row_names = ["parameters", "gradients", "optimizer state", "gathered + buffers", "activations + temps"]

    def cell(e: Estimate, value: str) -> str:  # a space before each: a value wider than W stays apart
        return f"{' ' + ('-' if e.refused else value):>{W}}"

    for row in row_names:
        lines.append(f"{row:<30}" + "".join(cell(e, fmt_bytes(e.rows.get(row, 0))) for e in p.estimates))
    lines.append(f"{'checkpoint staging, ' + ('GPU' if c.device == 'cuda' else 'device'):<30}" + "".join(
        cell(e, fmt_bytes(e.staging if e.staging_on == "gpu" else 0)) for e in p.estimates))
    lines.append(f"{'total (peak)':<30}" + "".join(cell(e, fmt_bytes(e.total)) for e in p.estimates))
    lines.append(f"{'fits in ' + fmt_bytes(c.memory):<30}" + "".join(
        cell(e, "yes" if e.total <= c.memory else "NO") for e in p.estimates))
    lines.append("")
    lines.append(f"{'host, rank 0: save staging':<30}" + "".join(
        cell(e, fmt_bytes(e.host.get("checkpoint staging (rank 0)", 0))) for e in p.estimates))
    lines.append(f"{'host per node: set-up models':<30}" + "".join(
        cell(e, fmt_bytes(e.host.get("model built at set-up (rank 0)", 0)
                          + (c.gpus_per_node - 1) * e.host.get("model built at set-up (each other rank)", 0)))
        for e in p.estimates))
    lines.append(f"{'checkpoint bytes, rank 0':<30}" + "".join(cell(e, fmt_bytes(e.ckpt_rank0)) for e in p.estimates))
    lines.append(f"{'checkpoint bytes, other rank':<30}" + "".join(
        cell(e, fmt_bytes(e.ckpt_other)) for e in p.estimates))
    lines.append(f"{'checkpoint save / load':<30}" + "".join(
        cell(e, f"{fmt_seconds(e.save_s)}/{fmt_seconds(e.load_s)}") for e in p.estimates))
    lines.append("")
    for e in p.estimates:
        if e.refused:
            lines.append(f"{e.name}: refused by dtrain: {e.refused}")
    lines += [
        "measured with torch's tools on the recipe's model with fake tensors (no memory allocated): ddp: "
        "MemTracker over one training step; fsdp: FSDPMemTracker over one step of dtrain's own sharding on a "
        f"fake process group of {c.world} ranks; ZeRO's activations: MemTracker over a forward+backward with "
        "the module's weights.",
        "arithmetic: ZeRO's weights, gradients, optimizer state and buckets (DeepSpeed's partitioning and "
        "default bucket sizes); checkpoint staging, bytes and save/load times (dtrain's writers; the ranks of "
        "a node share its bandwidth); host memory at set-up (ddp and ZeRO 1/2 build the model on every rank).",
        "total = the larger of the step's peak and what stays allocated between steps plus a save's staging "
        + ("(every row is host memory here, rank 0's save staging and set-up model included)." if c.device == "cpu"
           else "on the GPU (host staging is not in it)."),
    ]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def to_json(p: Plan) -> dict:
    c = p.cluster
    return {
        "config": p.config, "recipe": p.recipe, "precision": p.precision, "batch_size": p.batch_size,
        "nodes": c.nodes, "gpus_per_node": c.gpus_per_node, "world": c.world, "device": c.device,
        "memory": c.memory, "fs_bandwidth": c.fs_bandwidth, "fs_bandwidth_default": not c.fs_bandwidth_given,
        "params": p.params, "trainable": p.trainable, "param_bytes": p.param_bytes, "buffer_bytes": p.buffer_bytes,
        "strategies": {e.name: ({"refused": e.refused} if e.refused else {
            "rows": e.rows, "step_peak": e.step_peak, "steady": e.steady, "staging": e.staging,
            "staging_on": e.staging_on, "total": e.total, "total_other_ranks": e.total_other_ranks,
            "fits": e.total <= c.memory, "host": e.host,
            "checkpoint": {"bytes_rank0": e.ckpt_rank0, "bytes_other": e.ckpt_other, "bytes_total": e.ckpt_total,
                           "save_s": round(e.save_s, 3), "load_s": round(e.load_s, 3)},
            "how": e.how}) for e in p.estimates},
        "notes": p.notes,
    }
