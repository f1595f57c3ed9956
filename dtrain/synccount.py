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
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OP = "aten._local_scalar_dense"
COLLECTIVE_PREFIXES = ("c10d.", "_c10d_functional.", "c10d_functional.")
NOT_COLLECTIVES = ("wait_tensor",)  # completing a collective is not a second one
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


@dataclass
class SyncCounter(TorchDispatchMode):
    """`with SyncCounter() as c: ...`; then `c.events`. Set `c.tag` to label what follows."""

    events: list[Event] = field(default_factory=list)
    tag: object = None

    def __post_init__(self):
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket._qualified_op_name).replace("::", ".")
        if name == SYNC_OP:
            self.events.append(Event("sync", name, _where(), self.tag))
        elif name.startswith(COLLECTIVE_PREFIXES) and not name.endswith(NOT_COLLECTIVES):
            self.events.append(Event("collective", name, _where(), self.tag))
        return func(*args, **(kwargs or {}))

    def summary(self, tags=None) -> dict[str, collections.Counter]:
        """Counts by kind: {'sync': Counter(where -> n), 'collective': Counter(op -> n)} over `tags`."""
        out = {"sync": collections.Counter(), "collective": collections.Counter()}
        for e in self.events:
            if tags is None or e.tag in tags:
                out[e.kind][e.where if e.kind == "sync" else e.op] += 1
        return out


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
