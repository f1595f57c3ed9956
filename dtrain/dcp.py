"""torch.distributed.checkpoint (DCP) without unpickling: a reader and a planner that load only data.

DCP keeps its index in a `.metadata` file that is a pickle, and its stock reader loads it with
`pickle.load`; its default planner unpickles non-tensor values without restriction. Either would run
code from a crafted checkpoint. `SafeReader` unpickles `.metadata` with an allow-list of DCP's own
metadata classes (and the few torch/stdlib types they hold); `SafeLoadPlanner` reads values with
`weights_only=True`. Every dtrain DCP load goes through both.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

_DCP = "torch.distributed.checkpoint"
ALLOWED_GLOBALS = {
    (f"{_DCP}.metadata", name)
    for name in ("Metadata", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "_MEM_FORMAT_ENCODING")
} | {
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout looked up by its name, nothing else
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}
DTYPES = {str(t).removeprefix("torch.") for t in vars(torch).values() if isinstance(t, torch.dtype)}


class UnsafeCheckpointError(RuntimeError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS or (module == "torch" and name in DTYPES):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source} refers to {module}.{name}, which a DCP index never holds; refusing to load it "
            "(the checkpoint is damaged or was crafted to run code)"
        )


def read_metadata_safely(path: Path) -> Metadata:
    """Unpickle a DCP `.metadata` file with the allow-list; anything else is refused unexecuted."""
    with open(path, "rb") as f:
        try:
            meta = _RestrictedUnpickler(f, str(path)).load()
        except UnsafeCheckpointError:
            raise
        except Exception as exc:  # truncated or foreign file
            raise UnsafeCheckpointError(f"{path} is not a readable DCP index ({exc})") from None
    if not isinstance(meta, Metadata):
        raise UnsafeCheckpointError(f"{path} holds a {type(meta).__name__}, not a DCP Metadata")
    return meta


class SafeReader(FileSystemReader):
    """FileSystemReader whose metadata load is the restricted unpickler above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        metadata = read_metadata_safely(path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """Non-tensor values (ints, floats, param-group settings) are read with weights_only=True."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load_into(state: dict, path: Path, process_group=None) -> None:
    """dcp.load `state` in place from `path` through the safe reader and planner."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafeLoadPlanner(), process_group=process_group)


def read_full_model(path: Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Every tensor under `prefix` of a DCP checkpoint, whole (shards joined), in one process.

    No process group needed: the shapes come from the index, and DCP reads each shard into place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = read_metadata_safely(Path(path) / ".metadata")
    state = {
        fqn: torch.empty(m.size, dtype=m.properties.dtype)
        for fqn, m in meta.state_dict_metadata.items()
        if fqn.startswith(prefix) and isinstance(m, TensorStorageMetadata)
    }
    if not state:
        raise UnsafeCheckpointError(f"{path} holds no tensors under {prefix!r}")
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafeLoadPlanner(flatten_state_dict=False),
                 no_dist=True)
    return {fqn[len(prefix):]: t for fqn, t in state.items()}
