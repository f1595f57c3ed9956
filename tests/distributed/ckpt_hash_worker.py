"""torchrun worker for test_checkpoint_hashing: two ranks save a DCP checkpoint (synchronously, then
asynchronously) whose model is sharded over them, load it, then load it again with rank 1's shard
damaged. Every file the checkpoint code hashes is recorded (path, size, thread) in rank{r}.json."""

import json
import sys
import threading
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import dtrain.checkpoint as ckpt
from dtrain.checkpoint import CheckpointError, CheckpointManager
from dtrain.dist import barrier, distributed, new_gloo_group

out = Path(sys.argv[1])
hashed: list[tuple[str, int, str]] = []
_real_sha256 = ckpt._sha256


def recording_sha256(path: Path) -> str:
    hashed.append((str(path), path.stat().st_size, threading.current_thread().name))
    return _real_sha256(path)


ckpt._sha256 = recording_sha256

with distributed("cpu") as ds:
    group = new_gloo_group(60)
    mesh = init_device_mesh("cpu", (ds.world_size,))
    # 256 KiB per rank, split as FSDP splits a weight; plus a replicated tensor, as optimizer steps are.
    state = {"model": {"w": distribute_tensor(torch.arange(2 * 65536.0), mesh, [Shard(0)])},
             "optim": {"step": torch.tensor(7.0)}}
    manager = CheckpointManager(out / "checkpoints", ds, keep_last=5)
    record: dict = {}

    def write(d: Path) -> None:
        dcp.save(state, checkpoint_id=str(d), process_group=group)

    manager.begin_save(1, {"step": 1}, write, "dcp")
    record["sync_save"], hashed[:] = list(hashed), []
    path = manager.begin_save(2, {"step": 2}, lambda d: dcp.async_save(state, checkpoint_id=str(d),
                                                                         process_group=group), "dcp")
    manager.finish()
    record["async_save"], hashed[:] = list(hashed), []
    manager.load(path)
    record["load"], hashed[:] = list(hashed), []

    barrier(ds)
    if ds.rank == 1:  # one flipped byte in the middle of rank 1's own shard
        shard = path / "state" / "__1_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    barrier(ds)
    try:
        manager.load(path)
        record["error"] = None
    except CheckpointError as exc:
        record["error"] = str(exc)
    record["damaged_load"] = list(hashed)
    barrier(ds)
    (out / f"rank{ds.rank}.json").write_text(json.dumps(record))
