"""Memory per rank that must not grow with the whole model.

Shard before placing: under fsdp only rank 0 (the source of the weights) ever holds the whole model;
every other rank builds an empty skeleton and receives just its shard.

Measured as each rank's peak resident memory at the end of set-up (model built, sharded and placed,
optimizer made: `train.max_steps=0`, memory.json), 2 gloo ranks, a 1.7 GB fp32 MLP against the same job
with a tiny one. A rank that built the whole model (as every rank did before) exceeds the tiny job by
about 1.07x the parameter bytes; one that holds its half-shard by about 0.5x.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env, launch
from tests.memtrack import MALLOC_ENV

CFG = "recipes/mlp/config.yaml"
HIDDEN, DEPTH, IN_DIM, CLASSES = 4096, 26, 16, 4
COMMON = ["strategy=fsdp", "train.max_steps=0", "task.num_train=64", "task.num_val=0", f"task.in_dim={IN_DIM}",
          f"task.num_classes={CLASSES}", "dist.watchdog_timeout_s=null"]


def param_bytes(hidden: int, depth: int) -> int:
    params = IN_DIM * hidden + hidden + (depth - 1) * (hidden * hidden + hidden) + hidden * CLASSES + CLASSES
    return 4 * params


def setup_peaks(run_dir) -> dict[int, float]:
    report = json.loads((run_dir / "memory.json").read_text())
    assert report["strategy"] == "fsdp"
    return {r["rank"]: r["setup"]["host_peak_mb"] for r in report["ranks"]}


@pytest.mark.slow
def test_fsdp_ranks_that_are_not_the_source_never_hold_the_whole_model(tmp_path):
    big_bytes = param_bytes(HIDDEN, DEPTH)
    assert big_bytes >= 1.5 * 2**30
    launch(2, CFG, *COMMON, f"task.hidden={HIDDEN}", f"task.depth={DEPTH}", f"output_dir={tmp_path / 'big'}",
           timeout=600)
    launch(2, CFG, *COMMON, "task.hidden=8", "task.depth=1", f"output_dir={tmp_path / 'tiny'}")
    big, tiny = setup_peaks(tmp_path / "big"), setup_peaks(tmp_path / "tiny")
    excess = {r: (big[r] - tiny[r]) * 2**20 / big_bytes for r in big}
    print("set-up peak above the tiny job, in parameter bytes:", {r: round(x, 3) for r, x in excess.items()})
    # The source builds the whole model on the CPU: proof that the model really is this big.
    assert excess[0] > 1.0, excess
    assert excess[1] < 0.75, f"rank 1 held {excess[1]:.2f}x the parameter bytes at the end of set-up"


# ------------------------------------------------------------------ memory that grew with the model (issue 22)
# One 2-rank gloo job measures every phase (tests/distributed/memory_worker.py; ~25 s): each rank's peak
# resident memory above its level at the phase's start, in units of what the phase is about. Measured on
# the 2-core CI VM, 33 MB fp32 MLP of 33 layers, before -> after the fixes: ZeRO-3 save on rank 1 1.08x ->
# 0.11x the fp32 model; fsdp accumulation window 1.12x -> 0.64x the parameters; ddp async save 1.04x ->
# 0.53x the model + AdamW state.


@pytest.fixture(scope="module")
def phases(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("memory")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "tests/distributed/memory_worker.py", str(tmp / "result.json"), str(tmp / "runs")],
                          cwd=ROOT, env=child_env(**MALLOC_ENV), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads((tmp / "result.json").read_text())
    print(json.dumps(result, indent=1))
    return result


@pytest.mark.slow
def test_zero3_save_holds_at_most_one_whole_parameter_on_a_rank_that_does_not_write(phases):
    r = phases["ds3_save"]
    excess = [peak / r["param_bytes"] for peak in r["peak_save"]]
    print("ZeRO-3 save peak, in fp32 model bytes, per rank:", [round(x, 3) for x in excess])
    # Rank 0 writes model.safetensors, so it holds the whole fp32 model: proof that it really is this big.
    assert excess[0] > 1.0, excess
    assert excess[1] < 0.5, f"rank 1 held {excess[1]:.2f}x the fp32 model while saving"


@pytest.mark.slow
def test_zero3_frozen_parameters_are_saved_and_loaded_with_their_values(phases):
    for name in ("ds3_save", "ds3_frozen"):
        r = phases[name]
        assert r["frozen_saved_shape"] != [0] and r["saved_equal"] is True, (name, r)  # was an empty tensor
    r = phases["ds3_frozen"]
    assert r["frozen"] and r["tied_saved"] and r["loaded_equal"] is True, r


@pytest.mark.slow
def test_fsdp_accumulation_keeps_only_this_ranks_share_of_the_gradients(phases):
    r = phases["fsdp_accum"]
    share = {mode: [peak / r["param_bytes"] for peak in peaks] for mode, peaks in r["peak_window"].items()}
    print("accumulation window peak, in parameter bytes, per rank:", share)
    # fsdp.sync_every_microbatch=false keeps every unsharded gradient: the measurement sees them...
    assert min(share["false"]) > 1.0, share
    # ...the default keeps the rank's half (0.5x) and a few layers in flight, whatever the depth.
    assert max(share["true"]) < 0.75, share
    assert r["grads_close"], "reducing per micro-batch changed the gradients beyond float rounding"


@pytest.mark.slow
def test_ddp_async_save_stages_only_this_ranks_share_of_the_replica(phases):
    r = phases["ddp_async"]
    share = [peak / r["state_bytes"] for peak in r["peak_save"]]
    print("ddp async save peak, in model + AdamW bytes, per rank:", [round(x, 3) for x in share])
    assert max(share) < 0.75, share
    assert r["reloaded_equal"] and r["one_process_equal"], r  # every tensor whole: loads at any world size
