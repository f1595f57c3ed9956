"""DeepSpeed ZeRO stage 1/2/3 through `deepspeed.initialize`, configured from dtrain's own keys.

One source of truth: batch size, accumulation, clipping and precision are written into the DeepSpeed
config from `train.*`; the optimizer is dtrain's torch optimizer (ZeRO partitions its state) and the
learning-rate schedule is dtrain's, stepped by the Trainer. A raw DeepSpeed JSON (`deepspeed.config`)
adds what dtrain does not cover; a key there that contradicts dtrain's value is an error, not a silent
override. `deepspeed` is imported only here, only when this strategy is chosen.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn

from dtrain.checkpoint import CheckpointError
from dtrain.config import ConfigError, RunConfig
from dtrain.dist import ensure_process_group
from dtrain.model_init import SOURCE_RANK, ModelSource, non_persistent_buffers, send_buffers
from dtrain.strategies.base import OptimizerFactory, StepOutcome, Strategy

OWNED = "set it in dtrain's config instead (one source of truth)"


def deepspeed_config(cfg: RunConfig, world_size: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed config dtrain's keys imply, merged with `deepspeed.config` (a conflict is an error).

    `precision` is the resolved mode (Precision.mode), never `auto`: DeepSpeed must run in the precision
    dtrain's autocast uses, or `precision: auto` would keep fp32 weights under bf16 autocast."""
    tc, dc = cfg.train, cfg.deepspeed
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "gradient_accumulation_steps": tc.grad_accum_steps,
        "train_batch_size": tc.batch_size * tc.grad_accum_steps * world_size,
        "gradient_clipping": float(tc.grad_clip or 0.0),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": {"stage": dc.stage},
        # dtrain's torch optimizer is not one DeepSpeed has "tested": it is, here.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # dtrain logs; keep DeepSpeed's own step lines quiet
        "wall_clock_breakdown": False,
    }
    if dc.offload_optimizer:
        ours["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    if dc.offload_params:
        ours["zero_optimization"]["offload_param"] = {"device": "cpu"}
    if dc.config is None:
        return ours
    path = Path(dc.config)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"deepspeed.config: cannot read {path}: {exc.strerror or exc}"]) from None
    except ValueError as exc:
        raise ConfigError([f"deepspeed.config: {path} is not valid JSON ({exc})"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"deepspeed.config: {path} must hold a JSON object"])
    problems = []
    for key in ("optimizer", "scheduler"):
        if key in raw:
            problems.append(f"deepspeed.config: {path} sets {key!r}, which dtrain owns (optim.*); {OWNED}")
    merged = _merge(ours, raw, "", problems, str(path))
    if problems:
        raise ConfigError(problems)
    return merged


def _merge(ours: dict, raw: dict, prefix: str, problems: list[str], source: str) -> dict:
    out = dict(ours)
    for key, value in raw.items():
        if key not in ours:
            out[key] = value
        elif isinstance(ours[key], dict) and isinstance(value, dict):
            out[key] = _merge(ours[key], value, f"{prefix}{key}.", problems, source)
        elif value != ours[key] and value != "auto":
            problems.append(f"deepspeed.config: {source} sets {prefix}{key}={value!r} but dtrain's config gives "
                            f"{ours[key]!r}; remove it from the JSON or {OWNED}")
    return out


def _autocast_inside(module: nn.Module, autocast) -> None:
    """dtrain's autocast around `module`'s own forward, inside the engine's.

    The engine's forward turns off any autocast it did not configure itself (its `torch_autocast` section),
    on a GPU only (it asks `torch.is_autocast_enabled()`, CUDA's): its bf16/fp16 modes keep 16-bit weights,
    which then met fp32 inputs ("mat1 and mat2 must have the same dtype", the first H200 check) and would run
    softmax and norms in 16 bits. dtrain's autocast inside keeps the precision every other strategy has."""
    import functools

    forward = module.forward

    @functools.wraps(forward)
    def forward_in_autocast(*args, **kwargs):
        with autocast():
            return forward(*args, **kwargs)

    module.forward = forward_in_autocast
    # DeepSpeed warns once that it switched the outer autocast off; inside, dtrain's is on again.
    from deepspeed.runtime import torch_autocast

    if hasattr(torch_autocast, "_WARNED_NESTED_AUTOCAST"):
        torch_autocast._WARNED_NESTED_AUTOCAST = True


# Classes DeepSpeed's own checkpoint files hold besides tensors and containers (found by loading them
# with weights_only=True); only these are rebuilt, nothing is unpickled.
def _safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address  # ZeRO 1/2 optimizer shards: (numel, start)

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def cpu_adam_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """DeepSpeedCPUAdam's arguments for dtrain's optim.* (offload_optimizer steps Adam on the CPU, where
    DeepSpeed's vectorised kernel is several times faster than torch's AdamW)."""
    oc = cfg.optim  # optim.name is adamw: the config refuses anything else with offload_optimizer
    return {"lr": oc.lr, "betas": tuple(oc.betas), "adamw_mode": True}


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def setup(self, source: ModelSource, make_optimizer: OptimizerFactory) -> None:
        ensure_process_group(self.dist, self.cfg.dist.timeout_s)
        # DeepSpeed reads its rank from the environment, which only torchrun fills; a single process
        # and an srun task say it here, from the DistState that dtrain found.
        # Taken back in close(): left behind, they would make the next run in this process (a notebook,
        # a sweep) believe it runs under torchrun.
        self._env_set = [key for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE") if key not in os.environ]
        for key, value in (("LOCAL_RANK", self.dist.local_rank), ("RANK", self.dist.rank),
                           ("WORLD_SIZE", self.dist.world_size)):
            os.environ.setdefault(key, str(value))
        import deepspeed

        # DeepSpeed's comm layer wraps dtrain's process group now, before zero.Init: without it zero.Init's
        # DeepSpeedConfig reads world size 1 and refuses the batch sizes, so a fresh ZeRO-3 run on 2+ ranks
        # failed (deepspeed.initialize does this itself, too late for zero.Init; an earlier DeepSpeed run in
        # the same process hid it).
        deepspeed.comm.init_distributed(auto_mpi_discovery=False, verbose=False, dist_init_required=False)
        self.ds_config = deepspeed_config(self.cfg, self.dist.world_size, self.precision.mode)
        stage3 = self.cfg.deepspeed.stage == 3
        if stage3 and source.can_defer:
            model = self._build_partitioned(source, deepspeed)
        else:
            # ZeRO 1/2 keep every parameter whole on every GPU: the CPU model is handed over, and
            # DeepSpeed moves it (a prebuilt module under stage 3 too, whole: give Task.model a function).
            model = source.full()
            if self.precision.mode != "fp32" and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                     for m in model.modules()):
                # DeepSpeed casts parameters to 16 bits but keeps buffers in fp32, and batch norm's kernels
                # refuse a 16-bit weight beside fp32 running statistics (zero.Init casts both, as here).
                self.ds_config.setdefault("data_types", {})["buffer_dtype"] = self.precision.mode
        if self.cfg.deepspeed.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            groups = make_optimizer(model).param_groups  # dtrain's weight-decay groups
            self.optimizer = DeepSpeedCPUAdam([{k: g[k] for k in ("params", "weight_decay", "lr")} for g in groups],
                                              **cpu_adam_kwargs(self.cfg))
        else:
            self.optimizer = make_optimizer(model)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=self.ds_config,
                                               dist_init_required=False)
        self.engine = engine
        if self.precision.dtype is not None:
            _autocast_inside(engine.module, self.precision.autocast)
        self.model = engine.module
        self.train_model = engine
        self.lockstep_eval = self.cfg.deepspeed.stage == 3  # stage 3 gathers parameters in forward
        safe = _safe_globals()

        def load(path: str, map_location=None):  # DeepSpeed's own loader unpickles (weights_only=False)
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location=map_location, weights_only=True)

        engine.checkpoint_engine.load = load

    def _build_partitioned(self, source: ModelSource, deepspeed) -> nn.Module:
        """ZeRO-3: every rank builds the skeleton under zero.Init (each parameter partitioned as soon as
        its module is built), then rank 0's weights are copied in one parameter at a time."""
        # The dtype comes from the config (DeepSpeed's own default picks bf16 on a CPU). No memory-efficient
        # linear: it replaces torch.nn.functional.linear for the rest of the process, other models too.
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config, mem_efficient_linear=False):
            model = source.skeleton(meta=False)
        full = source.full() if self.dist.rank == SOURCE_RANK else None
        # Non-persistent buffers too (a state dict leaves them out): the skeleton's were never initialised.
        weights = {**dict(full.named_buffers()), **full.state_dict()} if full is not None else None
        self._copy_from_source(model, weights, stage3=True, all_buffers=True)
        return model

    def _copy_from_source(self, model: nn.Module, weights: dict[str, torch.Tensor] | None, stage3: bool,
                          all_buffers: bool = False) -> None:
        """Rank 0's whole `weights` (None on the other ranks) into the engine's module, one tensor at a time;
        buffers left out of state dicts only with `all_buffers`."""
        import deepspeed

        for name, param in model.named_parameters():
            if stage3:  # gathered whole for a moment; rank 0's values are partitioned to every rank on exit
                with deepspeed.zero.GatheredParameters([param], modifier_rank=SOURCE_RANK):
                    if weights is not None:
                        param.data.copy_(weights[name])
            else:
                send_buffers({name: param.data}, weights, self.dist)
        # Buffers are not partitioned: each rank has them whole, rank 0's values are sent.
        skip = {} if all_buffers else non_persistent_buffers(model)
        send_buffers({n: b for n, b in model.named_buffers() if n not in skip}, weights, self.dist)

    def sync(self, last: bool) -> ContextManager:
        # DeepSpeed counts micro-steps itself; telling it where dtrain's window ends keeps a short last
        # window of an epoch correct too. ZeRO 2/3 reduce in backward, so this must be set before it.
        self.engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # dtrain already weights each micro-batch by its share of the window; no 1/accum on top.
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, guard_enabled: bool) -> StepOutcome:
        self.engine.step()  # clips, steps and zeroes the gradients at the window's boundary
        norm = self.engine.get_global_grad_norm()  # a number or a tensor, as DeepSpeed's version has it
        norm = torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float64)
        # DeepSpeed applies a fp32/bf16 update whatever the norm; the guard can count it, not veto it.
        # An fp16 overflow DeepSpeed skips itself (was_step_applied is its host-side flag: no sync here).
        bad = None
        if not self.engine.was_step_applied():
            bad = torch.ones((), device=norm.device)
        elif guard_enabled:
            bad = (~torch.isfinite(norm)).float()
        return StepOutcome(norm, bad)

    def zero_grad(self) -> None:
        pass  # engine.step() did it

    # ------------------------------------------------------------------ checkpoints: DeepSpeed's own
    def save_state(self, path: Path, async_save: bool) -> None:
        self.engine.save_checkpoint(str(path.parent), tag=path.name, save_latest=False)
        weights = self._full_weights()
        if weights is not None:  # whole fp32 weights beside the shards: `dtrain checkpoint export` reads these
            from safetensors.torch import save_file

            save_file(weights, str(path / "model.safetensors"))
        return None

    def _full_weights(self) -> dict[str, torch.Tensor] | None:
        """The fp32 master weights, whole, and the buffers, on the writing rank (None on the others);
        under bf16/fp16 the module itself only holds 16-bit copies.

        Collective under ZeRO: each parameter is assembled from its partitions on every rank, one at a
        time. The writing rank moves it to CPU memory and keeps it; every other rank drops it before the
        next one, so a non-writing rank never holds more than one whole parameter (issue 22: all of them
        were kept on every rank, the whole fp32 model on every GPU at every save). A frozen parameter
        has no master copy (DeepSpeed returns None for it); under ZeRO-3 its module tensor is only this
        rank's partition, so it is gathered whole for the moment of the copy."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        module, keep = self.engine.module, self.dist.is_main
        first: dict[int, str] = {}  # by parameter, on every rank: a tied weight is assembled once
        weights: dict[str, torch.Tensor] = {}
        for name, p in module.named_parameters(remove_duplicate=False):
            if id(p) in first:
                if keep:  # safetensors refuses two names on one storage: a tied copy gets its own
                    weights[name] = weights[first[id(p)]].clone()
                continue
            first[id(p)] = name
            master = safe_get_full_fp32_param(p)
            if master is not None:
                whole = master.detach().to("cpu", torch.float32) if keep else None
            elif hasattr(p, "ds_id"):  # ZeRO-3 and frozen: gathered on every rank, copied out by the writer
                with deepspeed.zero.GatheredParameters([p]):
                    whole = p.detach().to("cpu", torch.float32, copy=True) if keep else None
            else:  # ZeRO 1/2 and frozen: the module holds it whole
                whole = p.detach().to("cpu", torch.float32) if keep else None
            del master
            if keep:
                weights[name] = whole.contiguous()
        if not keep:
            return None
        skip = non_persistent_buffers(module)
        weights.update({name: b.detach().to("cpu").contiguous() for name, b in module.named_buffers()
                        if name not in skip})
        return weights

    def load_state(self, path: Path) -> None:
        loaded, _ = self.engine.load_checkpoint(str(path.parent), tag=path.name, load_lr_scheduler_states=False)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load {path}; resume with the same strategy and stage")

    def load_model(self, path: Path) -> None:
        """Only the weights, from the whole fp32 copy written beside the shards (DeepSpeed's own
        load_module_only looks for a `latest` file under ZeRO-3, which dtrain's layout has no use for)."""
        from safetensors.torch import load_file

        weights = load_file(str(path / "model.safetensors")) if self.dist.rank == SOURCE_RANK else None
        self._copy_from_source(self.engine.module, weights, stage3=self.cfg.deepspeed.stage == 3)

    def close(self) -> None:
        # The model may outlive the run (dtrain.fit hands it back): its own forward again, no autocast.
        self.engine.module.__dict__.pop("forward", None)
        self.engine.destroy()
        # DeepSpeed caches the process groups it made (world, data parallel...) in module globals; dtrain
        # destroys the groups after the run, so the next run in this process would meet dead ones
        # ("Group ... is not registered"). Drop them as deepspeed.comm.destroy_process_group does.
        from deepspeed.utils import groups

        release = getattr(groups, "_release_process_group_references", None)
        if release is not None:
            release(None)
        else:  # older DeepSpeed: the same globals by hand
            for name in ("_WORLD_GROUP", "_DATA_PARALLEL_GROUP", "_MODEL_PARALLEL_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP"):
                if hasattr(groups, name):
                    setattr(groups, name, None)
        for key in getattr(self, "_env_set", []):
            os.environ.pop(key, None)
