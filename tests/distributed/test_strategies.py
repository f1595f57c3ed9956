"""FSDP2 and DeepSpeed ZeRO proofs on CPU over real gloo: 2 ranks = 1 rank, exact resume, a resume on
another world size that neither repeats nor skips a sample, and async saves a crash cannot complete.

All runs share one set-up (three interpreter start-ups: 1 rank, 2 ranks under torchrun, 1 rank), made
once for the module by `runs`; each test reads its part. Data: 96 samples, micro-batch 8; 2 ranks x
accumulation 1 and 1 rank x accumulation 2 both take 16 samples a step, 6 steps an epoch, 2 epochs.
Tolerance for "equal" across world sizes: rtol 1e-5, atol 1e-6 (fp32; the only difference is the order
in which the two ranks' gradient halves are summed). Same world size: bitwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtrain.dcp import read_full_model
from tests.conftest import ROOT, child_env, load_pt

N = 96
BASE = [
    "recipe=tests.distributed.sample_recipe", f"task.num_train={N}", "task.num_val=17", "task.dropout=0.0",
    "task.input_noise=0.0", "train.epochs=2", "train.batch_size=8", "train.log_every=100", "optim.lr=1e-2",
    "optim.weight_decay=0.1", "train.grad_clip=0.5", "checkpoint.every_steps=2", "checkpoint.resume=auto",
]
ONE, TWO = ["train.grad_accum_steps=2"], ["train.grad_accum_steps=1"]  # same global batch
# Resuming on another number of ranks with the accumulation changed to keep the global batch: a change
# of settings the user states (a checkpoint refuses a resume with other settings otherwise).
ALLOW = ["checkpoint.allow_changes=true"]
ASYNC = ["checkpoint.async=true"]
CRASH = ["fault_injection.crash_after_step=4"]  # right after the async save of step 4 started
RTOL, ATOL = 1e-5, 1e-6


def _phase(tmp: Path, nproc: int, steps: list[dict]) -> str:
    for s in steps:
        if "overrides" in s:
            s["overrides"] = [*BASE, *s["overrides"], f"output_dir={tmp / s['name']}"]
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run([*prefix, "tests/distributed/strategy_worker.py", json.dumps(steps)], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def _crashed_then_resumed(name: str, overrides: list[str]) -> list[dict]:
    """Run `name` until it crashes right after step 4 (CRASH), then the same command again: it resumes."""
    return [{"name": name, "overrides": [*overrides, *CRASH], "crash": True}, {"name": name, "overrides": overrides}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strategies")
    out = _phase(tmp, 1, [
        {"name": "ref", "overrides": ["strategy=ddp", *ONE]},
        {"name": "init", "overrides": ["strategy=ddp", *ONE, "train.max_steps=1", "optim.lr=1e-12"]},
        {"name": "ddp_1to2", "overrides": ["strategy=ddp", *ONE, *ASYNC, *CRASH], "crash": True},
        {"name": "ref24", "overrides": ["strategy=ddp", "train.grad_accum_steps=3"]},  # 3 ranks' global batch
    ])
    fsdp, ds3 = ["strategy=fsdp", *TWO, *ASYNC], ["strategy=deepspeed", "deepspeed.stage=3", *TWO]
    ddp_dcp = ["strategy=ddp", *TWO, "checkpoint.format=dcp"]  # sharded format, synchronous saves
    out += _phase(tmp, 2, [
        {"name": "fsdp", "overrides": fsdp},
        {"name": "fsdp_resumed", "overrides": [*fsdp, *CRASH], "crash": True},
        {"copy": [str(tmp / "fsdp_resumed"), str(tmp / "fsdp_2to1")]},
        {"name": "fsdp_resumed", "overrides": fsdp},
        {"name": "ddp_1to2", "overrides": ["strategy=ddp", *TWO, *ASYNC, *ALLOW]},
        {"name": "fsdp_bf16", "overrides": ["strategy=fsdp", *TWO, "train.precision=bf16",
                                            "fsdp.activation_checkpointing=true", "fsdp.reshard_after_forward=false"]},
        *({"name": f"ds{s}", "overrides": ["strategy=deepspeed", f"deepspeed.stage={s}", *TWO]} for s in (1, 2, 3)),
        *({"name": f"ds{s}_bf16", "overrides": ["strategy=deepspeed", f"deepspeed.stage={s}", *TWO,
                                                 "train.precision=bf16"]} for s in (2, 3)),
        *_crashed_then_resumed("ds3_resumed", ds3),
        *(item for s in (1, 2)
          for item in _crashed_then_resumed(f"ds{s}_resumed", ["strategy=deepspeed", f"deepspeed.stage={s}", *TWO])),
        {"name": "ddp_dcp", "overrides": ddp_dcp},
        *_crashed_then_resumed("ddp_dcp_resumed", ddp_dcp),
    ])
    out += _phase(tmp, 1, [{"name": "fsdp_2to1", "overrides": ["strategy=fsdp", *ONE, *ASYNC, *ALLOW]}])
    # 3 and 4 ranks, where the order of a sum over ranks matters ((a+b)+c != a+(b+c)) and a validation
    # set can be smaller than the world. 4 ranks x micro-batch 4 = the 16 of `ref`; 3 x 8 = `ref24`'s 24.
    four = [*TWO, "train.batch_size=4"]
    fsdp4, ds3_4 = ["strategy=fsdp", *four, *ASYNC], ["strategy=deepspeed", "deepspeed.stage=3", *four]
    out += _phase(tmp, 4, [
        {"name": "ddp4", "overrides": ["strategy=ddp", *four, "train.log_every=3"]},
        {"name": "fsdp4", "overrides": fsdp4},
        *_crashed_then_resumed("fsdp4_resumed", fsdp4),
        *({"name": f"ds{s}_4", "overrides": ["strategy=deepspeed", f"deepspeed.stage={s}", *four]} for s in (1, 2)),
        {"name": "ds3_4", "overrides": ds3_4},
        *_crashed_then_resumed("ds3_4_resumed", ds3_4),
        {"name": "fsdp4_sgd", "overrides": ["strategy=fsdp", *four, "optim.name=sgd", "train.max_steps=2",
                                            "checkpoint.every_steps=100"]},
        # 3 validation samples for 4 ranks: rank 3 has none, yet must run the forwards the others gather
        # parameters for (sanity evaluation, evaluations and the best-checkpoint test)
        *({"name": f"{n}_tinyval", "overrides": [*o, "task.num_val=3", "train.max_steps=4", "train.sanity_eval_batches=2",
                                                   "checkpoint.every_steps=2", "checkpoint.best_metric=val_loss"]}
          for n, o in (("fsdp4", fsdp4), ("ds3_4", ds3_4))),
    ])
    fsdp3, ds2_3 = ["strategy=fsdp", *TWO, *ASYNC], ["strategy=deepspeed", "deepspeed.stage=2", *TWO]
    out += _phase(tmp, 3, [
        {"name": "ddp3", "overrides": ["strategy=ddp", *TWO]},
        {"name": "fsdp3", "overrides": fsdp3},
        *_crashed_then_resumed("fsdp3_resumed", fsdp3),
        {"name": "ds2_3", "overrides": ds2_3},
        *_crashed_then_resumed("ds2_3_resumed", ds2_3),
    ])
    return tmp, out


def _final(run: Path) -> Path:
    ckpts = run / "checkpoints"
    return ckpts / (ckpts / "latest").read_text().strip()


def weights(run: Path) -> dict[str, torch.Tensor]:
    """Whole fp32 model weights of a run's last checkpoint, whatever its format."""
    ck = _final(run)
    kind = json.loads((ck / "meta.json").read_text()).get("kind", "torch")
    if kind == "dcp":
        return read_full_model(ck / "state")
    if kind == "deepspeed":
        return load_file(str(ck / "state" / "model.safetensors"))
    return load_pt(ck / "model.pt")


def assert_close_to(name: str, got: dict, want: dict) -> None:
    assert set(got) == set(want), name
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=RTOL, atol=ATOL, msg=lambda m: f"{name} {k}: {m}")


@pytest.mark.slow
def test_two_ranks_equal_one_rank_for_fsdp_and_deepspeed_stages(runs):
    tmp, _ = runs
    ref, init = weights(tmp / "ref"), weights(tmp / "init")
    # the runs really trained: weights moved far beyond the tolerance
    assert max((ref[k] - init[k]).abs().max().item() for k in ref) > 1e-2
    for name in ("fsdp", "ds1", "ds2", "ds3"):
        assert load_pt(_final(tmp / name) / "train_state.pt")["step"] == 12, name
        assert_close_to(name, weights(tmp / name), ref)


@pytest.mark.slow
def test_resume_is_bitwise_for_fsdp_and_deepspeed(runs):
    tmp, out = runs
    # A crash right after an async save started leaves that save incomplete; the previous one is latest.
    assert "fsdp_resumed crashed: latest=step_00000002 incomplete=.tmp-step_00000004" in out
    assert "ds3_resumed crashed: latest=step_00000004 incomplete=\n" in out  # deepspeed saves synchronously
    # fsdp: every tensor of the checkpoint (sharded model and AdamW state), bit for bit
    a, b = (read_full_model(_final(tmp / n) / "state", prefix="") for n in ("fsdp", "fsdp_resumed"))
    assert set(a) == set(b) and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # ddp in the sharded format (synchronous): model and AdamW state, bit for bit
    assert "ddp_dcp_resumed crashed: latest=step_00000004 incomplete=\n" in out
    a, b = (read_full_model(_final(tmp / n) / "state", prefix="") for n in ("ddp_dcp", "ddp_dcp_resumed"))
    assert set(a) == set(b) and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for stage in (1, 2, 3):  # DeepSpeed's own save/load, every ZeRO stage: the weights, bit for bit
        a, b = weights(tmp / f"ds{stage}"), weights(tmp / f"ds{stage}_resumed")
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), stage


def _seen(run: Path, world: int, first: int) -> list[int]:
    """The first `first` samples each rank of a `world`-rank attempt drew."""
    out = []
    for r in range(world):
        lines = (run / "samples" / f"w{world}-rank{r}.txt").read_text().split()
        out += [int(i) for i in lines[:first]]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name, before, after", [("fsdp_2to1", 2, 1), ("ddp_1to2", 1, 2)])
def test_resume_on_another_world_size_sees_each_sample_once(runs, name, before, after):
    tmp, out = runs
    run = tmp / name
    assert f"world size {before} -> {after}: the epoch continues at global sample 32" in out
    pos = 32  # step 2's checkpoint: 2 steps x 16 samples
    epoch0 = _seen(run, before, pos // before) + _seen(run, after, (N - pos) // after)
    assert sorted(epoch0) == list(range(N))  # one uninterrupted epoch: every sample once
    assert epoch0 != sorted(epoch0)  # (shuffled: the check is not trivially met)
    state = load_pt(_final(run) / "train_state.pt")
    assert (state["step"], state["world_size"]) == (12, after)
    # same global batch before and after: the weights match an unbroken 1-rank run
    assert_close_to(name, weights(run), weights(tmp / "ref"))


@pytest.mark.slow
def test_fsdp_bf16_keeps_fp32_master_weights_with_activation_checkpointing(runs):
    tmp, _ = runs
    got, ref = weights(tmp / "fsdp_bf16"), weights(tmp / "ref")
    assert all(t.dtype == torch.float32 for t in got.values())  # MixedPrecisionPolicy: bf16 compute only
    diff = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert 0 < diff < 0.05, diff  # bf16 rounding, not a different run


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_bf16_checkpoint_holds_the_fp32_master_weights(runs, stage):
    """`dtrain checkpoint export` reads model.safetensors: under bf16 it must hold the fp32 master weights
    (DeepSpeed's module only has bf16 copies), and model + master started from rank 0's weights."""
    tmp, _ = runs
    got, ref = weights(tmp / f"ds{stage}_bf16"), weights(tmp / "ref")
    assert set(got) == set(ref) and all(t.dtype == torch.float32 for t in got.values())
    # Not bf16 values stored as fp32: most weights are not representable in bf16.
    assert any(not torch.equal(t, t.bfloat16().float()) for t in got.values())
    diff = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert 0 < diff < 0.05, diff  # bf16 rounding, not a different run


@pytest.mark.slow
@pytest.mark.parametrize("world, ref, names", [
    (4, "ref", ["ddp4", "fsdp4", "ds1_4", "ds2_4", "ds3_4"]),
    (3, "ref24", ["ddp3", "fsdp3", "ds2_3"]),
])
def test_n_ranks_equal_one_rank(runs, world, ref, names):
    """N = 1 at 3 and 4 ranks for every strategy: the same global batch, the same weights (rounding apart)."""
    tmp, _ = runs
    want = weights(tmp / ref)
    for name in names:
        state = load_pt(_final(tmp / name) / "train_state.pt")
        assert (state["step"], state["world_size"]) == (12 if world == 4 else 8, world), name
        assert_close_to(name, weights(tmp / name), want)


@pytest.mark.slow
@pytest.mark.parametrize("a, b", [("fsdp4", "fsdp4_resumed"), ("fsdp3", "fsdp3_resumed")])
def test_fsdp_resume_is_bitwise_at_3_and_4_ranks(runs, a, b):
    tmp, out = runs
    assert f"{b} crashed: latest=step_00000002 incomplete=.tmp-step_00000004" in out
    x, y = (read_full_model(_final(tmp / n) / "state", prefix="") for n in (a, b))
    assert set(x) == set(y) and any(k.startswith("optim.") for k in x)
    assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
@pytest.mark.parametrize("a, b", [("ds3_4", "ds3_4_resumed"), ("ds2_3", "ds2_3_resumed")])
def test_deepspeed_resume_is_bitwise_at_3_and_4_ranks(runs, a, b):
    tmp, out = runs
    assert f"{b} crashed: latest=step_00000004 incomplete=\n" in out
    x, y = weights(tmp / a), weights(tmp / b)
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fsdp4_tinyval", "ds3_4_tinyval"])
def test_validation_set_smaller_than_the_world_does_not_hang(runs, name):
    """Rank 3 of 4 holds no validation sample; it ran the forwards the others gathered parameters for."""
    tmp, out = runs
    assert f"[worker] {name} done" in out
    evals = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert evals and all(e["val_loss"] > 0 for e in evals)


@pytest.mark.slow
def test_tokens_per_second_counts_every_rank(runs):
    """The sample recipe counts rank r's samples r + 1 times: 2.5 tokens per sample over 4 ranks."""
    tmp, _ = runs
    logs = [json.loads(line) for line in (tmp / "ddp4" / "metrics.jsonl").read_text().splitlines()
            if "tokens_per_s" in line]
    assert logs
    for rec in logs:
        assert rec["tokens_per_s"] / rec["samples_per_s"] == pytest.approx(2.5, rel=1e-6)


@pytest.mark.slow
def test_fsdp_trains_with_sgd(runs):
    """torch has no sharded fused SGD step: fsdp with optim.name=sgd failed at its first step."""
    tmp, out = runs
    assert "[worker] fsdp4_sgd done" in out
    assert load_pt(_final(tmp / "fsdp4_sgd") / "train_state.pt")["step"] == 2
