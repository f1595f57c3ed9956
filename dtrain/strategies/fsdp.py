"""FSDP2 (`torch.distributed.fsdp.fully_shard`): each recipe block is one unit of sharding.

Parameters are DTensors sharded over the ranks' mesh; a unit's parameters are all-gathered just before
its forward (and backward) and freed after, gradients are reduce-scattered. The recipe chooses the
units with `Task.shard_units(model)` (each transformer layer, each ResNet stage); the root module is
always a unit too, for whatever the blocks leave out.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn

from dtrain.dist import ensure_process_group
from dtrain.model_init import SOURCE_RANK, ModelSource, non_persistent_buffers, send_buffers
from dtrain.strategies.base import OptimizerFactory, Strategy


class FSDPStrategy(Strategy):
    name = "fsdp"
    lockstep_eval = True

    def __init__(self, *args, shard_units: Callable[[nn.Module], list[nn.Module]] | None = None):
        super().__init__(*args)
        self.shard_units = shard_units

    def setup(self, source: ModelSource, make_optimizer: OptimizerFactory) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        fc, device = self.cfg.fsdp, self.dist.device
        if fc.cpu_offload and device.type != "cuda":
            raise ValueError("fsdp.cpu_offload=true needs CUDA (on the CPU everything already is in CPU memory); "
                             "set fsdp.cpu_offload=false")
        ensure_process_group(self.dist, self.cfg.dist.timeout_s)
        mesh = init_device_mesh(device.type, (self.dist.world_size,))
        # Shard before placing: every rank shards an empty skeleton and only shards get memory; rank 0's
        # whole CPU model is the source of the weights (a prebuilt module is sharded as it is: fully_shard
        # moves one unit at a time to the device).
        deferred = source.can_defer
        model = source.skeleton() if deferred else source.prebuilt
        kwargs: dict = {"mesh": mesh, "reshard_after_forward": fc.reshard_after_forward}
        if self.precision.mode == "bf16":
            # Compute in bf16, reduce gradients and keep the sharded master weights in fp32.
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if fc.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        units = list(self.shard_units(model)) if self.shard_units else []
        if fc.activation_checkpointing:
            from torch.distributed._composable import checkpoint

            for unit in units or [model]:
                checkpoint(unit)
        if "mp_policy" in kwargs:
            # Batch norm keeps fp32 running statistics, and CPU kernels refuse bf16 weights next to
            # them: each norm layer is a unit of its own that computes in fp32 (inputs cast up, back
            # down by the next bf16 unit).
            fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    fully_shard(m, **{**kwargs, "mp_policy": fp32})
        for unit in units:
            fully_shard(unit, **kwargs)
        fully_shard(model, **kwargs)
        if deferred:
            self._load_source_weights(model, source, offload=fc.cpu_offload)
        self.model = self.train_model = model
        self.optimizer = make_optimizer(model)  # after sharding: it must hold the DTensor shards

    def _load_source_weights(self, model: nn.Module, source: ModelSource, offload: bool) -> None:
        """Give the sharded skeleton memory and fill it with rank 0's weights, one tensor at a time."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        device = self.dist.device
        # With CPU offload the parameters live in CPU memory; buffers are used in forward, on the GPU.
        model.to_empty(device="cpu" if offload else device)
        if offload:
            for module in model.modules():
                for name, buf in module._buffers.items():
                    if buf is not None:
                        module._buffers[name] = buf.to(device)
        full = source.full() if self.dist.rank == SOURCE_RANK else None
        set_model_state_dict(model, full.state_dict() if full is not None else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True))
        send_buffers(non_persistent_buffers(model), dict(full.named_buffers()) if full is not None else None, self.dist)

    def sync(self, last: bool) -> ContextManager:
        # fsdp.sync_every_microbatch (the default): reduce-scatter after every micro-batch and accumulate
        # the sharded gradients, params/ranks of memory per rank. Else: skip the reduce-scatter until the
        # window's last backward, which keeps every parameter's unsharded fp32 gradient on every rank
        # through the window (less communication, DDP's gradient memory). Both sum the same terms.
        self.model.set_requires_gradient_sync(last or self.cfg.fsdp.sync_every_microbatch)
        return contextlib.nullcontext()

    def global_norm(self, local_norms: torch.Tensor) -> torch.Tensor:
        # The per-parameter norms are DTensors over each rank's shards: full_tensor() is the norm's one
        # all-reduce, after which every rank holds the same global norm.
        norm = super().global_norm(local_norms)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
