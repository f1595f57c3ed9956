"""Count what makes a training step slow on a GPU without showing on a CPU: host syncs and collectives.

A host sync is any op that needs a tensor's value on the host: `.item()`, `bool(t)`, `float(t)`,
`if t:` all dispatch to `aten._local_scalar_dense`. On a GPU each one stops the host until the device
has caught up, and the GPU then idles while the next kernels are launched. A collective is any c10d op
(DDP's buckets, FSDP's gathers, an all-reduce). Both pass through PyTorch's dispatcher on any device, so
a TorchDispatchMode sees them on the CPU exactly as on a GPU: the count is a property of the code.

Each sync is attributed to the innermost Python frame outside PyTorch's dispatch machinery, so a sync
inside `torch.optim` counts as torch's and one in `dtrain/strategies/base.py` as dtrain's.
"""

from __future__ import annotations

import collections
import os
import sys
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OP = "aten._local_scalar_dense"
COLLECTIVE_PREFIXES = ("c10d.", "_c10d_functional.", "c10d_functional.")  # dispatcher ops, not gloo/nccl's own
NOT_COLLECTIVES = ("wait_tensor", "_wrap_tensor_autograd")  # bookkeeping of a collective, not another one
_TORCH_DIR = os.path.dirname(torch.__file__)
# Frames that only route a call to its kernel: a sync is never "theirs".
_MACHINERY = tuple(os.path.join(_TORCH_DIR, p) for p in (
    "_ops.py", "utils/_python_dispatch.py", "_dynamo", "_compile.py", "overrides.py", "_tensor.py",
    "utils/_contextlib.py", "autograd/", "nn/modules/module.py", "_decomp", "_prims", "_refs"))


@dataclass
class Event:
    kind: str  # "sync" or "collective"
    op: str
    where: str  # file:line of the innermost frame outside PyTorch's dispatch machinery
    tag: object = None  # whatever the caller set with `tag` (e.g. the step number)


class SyncCounter(TorchDispatchMode):
    """`with SyncCounter() as c: ...`; then `c.events`. Set `c.tag` to label what follows (e.g. a step).

    Syncs are seen by this dispatch mode, each with the Python line that asked for it. Collectives are
    read from the profiler's record of dispatcher calls instead: a dispatch mode does not see the ops
    a tensor subclass issues inside its own handling (DTensor's all-reduce of a sharded norm)."""

    def __init__(self):
        super().__init__()
        self.events: list[Event] = []
        self._tag = None
        self._range = None
        self._ranges: list[tuple[str, object]] = []  # (range name, tag) in order
        self._profiler = None

    @property
    def tag(self):
        return self._tag

    @tag.setter
    def tag(self, value) -> None:
        self._tag = value
        if self._profiler is not None:
            self._close_range()
            name = f"synccount:{len(self._ranges)}"
            self._ranges.append((name, value))
            self._range = torch.profiler.record_function(name)
            self._range.__enter__()

    def _close_range(self) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._profiler = profile(activities=[ProfilerActivity.CPU])
        self._profiler.__enter__()
        self.tag = self._tag
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._close_range()
        self._profiler.__exit__(None, None, None)
        self._collect_collectives()
        self._profiler = None
        return out

    def _collect_collectives(self) -> None:
        tags = dict(self._ranges)
        spans = sorted((e.time_range.start, e.time_range.end, tags[e.name]) for e in self._profiler.events()
                       if e.name in tags)
        for e in self._profiler.events():
            if _is_collective(e.name) and not _inside_collective(e):  # one count per call, not per layer
                tag = next((t for start, end, t in spans if start <= e.time_range.start <= end), None)
                self.events.append(Event("collective", e.name.replace("::", "."), "", tag))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket._qualified_op_name == "aten::_local_scalar_dense":
            self.events.append(Event("sync", SYNC_OP, _where(), self._tag))
        return func(*args, **(kwargs or {}))

    def summary(self, tags=None) -> dict[str, collections.Counter]:
        """Counts by kind: {'sync': Counter(where -> n), 'collective': Counter(op -> n)} over `tags`."""
        out = {"sync": collections.Counter(), "collective": collections.Counter()}
        for e in self.events:
            if tags is None or e.tag in tags:
                out[e.kind][e.where if e.kind == "sync" else e.op] += 1
        return out


def _is_collective(name: str) -> bool:
    name = name.replace("::", ".")
    return name.startswith(COLLECTIVE_PREFIXES) and not name.endswith(NOT_COLLECTIVES)


def _inside_collective(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _is_collective(parent.name):
            return True
        parent = parent.cpu_parent
    return False


def owner(where: str) -> str:
    """Whose code a `where` is: 'torch', 'dtrain', 'recipes', or the top-level package it lies in."""
    path = where.rsplit(":", 1)[0]
    if path.startswith(_TORCH_DIR):
        return "torch"
    for part in ("dtrain", "recipes", "deepspeed", "accelerate", "lightning", "transformers"):
        if f"{os.sep}{part}{os.sep}" in path:
            return part
    return os.path.basename(path)


def _where() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_MACHINERY) or path == __file__):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"
