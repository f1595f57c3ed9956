"""A training step does what a careful hand-written loop does, and no more: counted on the CPU.

Host syncs (`.item()`, `bool(t)`, `float(t)`: what stops a GPU's host) and collectives are counted with a
TorchDispatchMode (dtrain/synccount.py) over real 2-rank gloo runs, per kind of step. In a "plain" step
(no log line, evaluation, checkpoint or stop-request meeting), with the non-finite guard on, clipping,
accumulation 2 and, for ddp and fsdp, an async checkpoint in flight:
  * dtrain's own code issues no host sync at all;
  * torch's own syncs are no more than the hand-written loop's (on the CPU those are AdamW's step
    counters, which dtrain's fused AdamW does not read on the host);
  * ddp issues exactly the raw loop's collectives (its gradient buckets), fsdp only its gathers and
    reduce-scatters plus the clip norm's one all-reduce, and DeepSpeed none from dtrain's code.
The counts and the source line of every sync are printed, so a regression names itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

COMMON = ["train.max_steps=8", "train.grad_accum_steps=2", "train.batch_size=8", "train.grad_clip=1.0",
          "train.on_nonfinite=skip", "train.log_every=100", "checkpoint.every_steps=3", "checkpoint.every_epoch=false",
          "task.num_val=32", "checkpoint.resume=none", "dist.watchdog_timeout_s=null"]
ASYNC = ["checkpoint.async=true"]
CONFIGS = {
    "ddp_bf16": ["strategy=ddp", "train.precision=bf16", *ASYNC],
    "ddp_fp16": ["strategy=ddp", "train.precision=fp16", *ASYNC],
    "fsdp_bf16": ["strategy=fsdp", "train.precision=bf16", *ASYNC],
    "deepspeed_bf16": ["strategy=deepspeed", "deepspeed.stage=2", "train.precision=bf16"],
}
GATHER_SCATTER = {"c10d._allgather_base_", "c10d.allgather_", "c10d.allgather_into_tensor_coalesced_",
                  "c10d._reduce_scatter_base_", "c10d.reduce_scatter_", "c10d.reduce_scatter_tensor_coalesced_"}


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("syncs")
    configs = [{"name": n, "overrides": [*COMMON, *o, f"output_dir={tmp / n}"]} for n, o in CONFIGS.items()]
    out = tmp / "counts.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "tests/distributed/sync_worker.py", str(out), json.dumps(configs)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(out.read_text())
    for name, kinds in result.items():  # the report a regression names itself in
        for kind, c in sorted(kinds.items()):
            per = {op: n / c["steps"] for op, n in c["collectives"].items()}
            print(f"{name:15s} {kind:22s} steps={c['steps']} syncs={c['syncs_by_owner']} collectives/step={per}")
            for where, n in c["sync_sites"].items():
                print(f"{'':38s} {n:3d} x sync at {where}")
    return result


def _plain(counts, name):
    plain = counts[name].get("plain")
    assert plain and plain["steps"] >= 2, f"{name}: too few plain steps to count: {counts[name].keys()}"
    return plain


def _per_step(c: dict, key: str) -> dict:
    return {k: v / c["steps"] for k, v in c[key].items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_plain_step_has_no_host_sync_of_dtrains_own(counts, name):
    plain = _plain(counts, name)
    mine = {w: n for w, n in plain["sync_sites"].items() if "/dtrain/" in w or "/recipes/" in w}
    assert not mine, f"{name}: host syncs in dtrain's own code in plain steps: {mine}"
    raw = _per_step(_plain(counts, "raw"), "syncs_by_owner").get("torch", 0)
    assert _per_step(plain, "syncs_by_owner").get("torch", 0) <= raw, (name, plain["sync_sites"])


@pytest.mark.slow
def test_ddp_issues_exactly_the_raw_loops_collectives(counts):
    raw = _per_step(_plain(counts, "raw"), "collectives")
    assert raw, "the raw DDP loop all-reduces its gradient buckets"
    for name in ("ddp_bf16", "ddp_fp16"):
        assert _per_step(_plain(counts, name), "collectives") == raw, name


@pytest.mark.slow
def test_fsdp_issues_only_gathers_scatters_and_the_clip_norms_all_reduce(counts):
    per = _per_step(_plain(counts, "fsdp_bf16"), "collectives")
    assert per.pop("_c10d_functional.all_reduce", 0) == 1, per  # DTensor's reduction of the clipping norm
    assert per and set(per) <= GATHER_SCATTER, per


@pytest.mark.slow
def test_steps_that_log_checkpoint_or_meet_are_where_the_syncs_go(counts):
    """The guard's flags, the loss and grad norm are read at log steps: syncs are there, not gone."""
    kinds = counts["ddp_bf16"]
    logged = [c for kind, c in kinds.items() if "log" in kind]
    assert logged and any("/dtrain/" in w for c in logged for w in c["sync_sites"])
