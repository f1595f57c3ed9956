"""Peak resident memory of one phase of a process, for the memory tests (Linux only).

A peak is VmHWM after resetting it (`/proc/self/clear_refs`, 5) at the phase's start, minus VmRSS then:
the memory the phase added at its worst moment, whoever allocated it (torch, DeepSpeed, DCP, pickle).
Run the process with `MALLOC_ENV`: glibc's dynamic mmap threshold otherwise serves blocks up to 32 MB
from a heap whose freed pages stay resident, and a later allocation that reuses them never shows.
"""

from __future__ import annotations

import re

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # every block >= 128 KiB mapped, and returned when freed


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


class Peak:
    """Bytes this process's resident memory rose above its level at `__enter__`, at the worst moment."""

    bytes: int

    def __enter__(self) -> "Peak":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        self.base = _status("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = _status("VmHWM") - self.base
