"""Run by test_strategies under torchrun (or alone): several training runs in one process group, so a
proof needs one interpreter start-up per world size, not one per run.

argv[1] is a JSON list of steps, each {"name", "overrides", "crash": bool} (a run; with crash, the
fault-injected error is caught and the async write in flight is left incomplete, as a crashed process
leaves it) or {"copy": [src, dst]} (rank 0 copies a run directory; the others wait)."""

import json
import shutil
import sys
from pathlib import Path

from dtrain.config import load_config
from dtrain.dist import barrier, distributed
from dtrain.runner import build_trainer
from dtrain.fault_injection import FaultInjected

with distributed("cpu") as ds:
    for item in json.loads(sys.argv[1]):
        if "copy" in item:
            if ds.is_main:
                shutil.copytree(*item["copy"])
            barrier(ds)
            continue
        cfg = load_config("recipes/mlp/config.yaml", item["overrides"])
        trainer = build_trainer(cfg, ds)
        try:
            trainer.fit()
            assert not item.get("crash"), f"{item['name']} was meant to crash"
        except FaultInjected:
            assert item.get("crash"), f"{item['name']} crashed"
            assert not trainer.ckpt.pending, "fit() raised with an async write still in flight"
            root = Path(cfg.output_dir) / "checkpoints"
            if ds.is_main:  # what a crashed run leaves: the test checks that the last write is incomplete
                left = sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))
                print(f"[worker] {item['name']} crashed: latest={(root / 'latest').read_text().strip()} "
                      f"incomplete={','.join(left)}", flush=True)
        barrier(ds)
        print(f"[worker] {item['name']} done", flush=True)
