"""Run by test_plan under torchrun: several mlp training runs in one process group, each rank's peak
resident memory above what the process held just before that run.

argv[1]: a JSON list of {"name", "overrides"}. Before each run the garbage of the last one is collected
and handed back to the system (malloc_trim), the process's resident set is read (the baseline) and its
high-water mark reset (Linux: `5` into /proc/self/clear_refs); after the run the new high-water mark
minus the baseline is this rank's peak for the run. Rank 0 prints one JSON line per run:
{"name", "world", "peaks_mb": [rank 0, rank 1, ...]}."""

import ctypes
import gc
import json
import sys

from dtrain.config import load_config
from dtrain.dist import barrier, distributed, gather_objects
from dtrain.runner import build_trainer


def status_kb(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def settle() -> int:
    """Free what earlier runs left, reset the high-water mark, and return the resident set in kB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    return status_kb("VmRSS")


with distributed("cpu") as ds:
    for item in json.loads(sys.argv[1]):
        cfg = load_config("recipes/mlp/config.yaml", item["overrides"])
        barrier(ds)
        base = settle()
        trainer = build_trainer(cfg, ds)
        trainer.fit()
        del trainer
        peak_mb = (status_kb("VmHWM") - base) / 1024
        peaks = gather_objects(round(peak_mb, 1), ds)
        if ds.is_main:
            print(json.dumps({"name": item["name"], "world": ds.world_size, "peaks_mb": peaks}), flush=True)
        barrier(ds)
