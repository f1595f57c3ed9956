"""bf16, torch.compile and deterministic kernels through the whole Trainer on CPU; the CUDA variants are marked gpu."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import child_env, dtrain, final_checkpoint, launch, load_pt, run

MLP = "recipes/mlp/config.yaml"
SHORT = ["train.max_steps=4", "task.num_val=32", "checkpoint.resume=none"]


def _weights(path):
    return load_pt(final_checkpoint(path) / "model.pt")


@pytest.mark.slow
def test_compile_matches_eager_on_cpu(tmp_path):
    """Also: compiling counts as slow under the hang watchdog. Its limit here is 1 s, far below the
    seconds each compile takes (step 2's forward and backward, then evaluation's recompile)."""
    run(MLP, *SHORT, f"output_dir={tmp_path}/eager")
    proc = dtrain("run", MLP, *SHORT, f"output_dir={tmp_path}/compiled", "train.compile=true",
                  "dist.watchdog_timeout_s=1", env=child_env(TORCH_LOGS="recompiles"))
    # It really compiled (the FLOP count of step 1 once kept it eager for good), evaluation included.
    assert "Recompiling function forward" in proc.stderr
    assert not (tmp_path / "compiled" / "hang_report.json").exists()
    eager, compiled = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert list(eager) == list(compiled)  # compiled in place: no _orig_mod. prefixes in checkpoints
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5)


def test_bf16_trains_close_to_fp32_on_cpu(tmp_path):
    run(MLP, *SHORT, f"output_dir={tmp_path}/fp32")
    run(MLP, *SHORT, f"output_dir={tmp_path}/bf16", "train.precision=bf16")
    a, b = _weights(tmp_path / "fp32"), _weights(tmp_path / "bf16")
    assert all(b[k].dtype == torch.float32 for k in b)  # master weights stay fp32
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert 0 < diff < 5e-2  # bf16 really ran (not bit-identical) and stayed close


def test_deterministic_run_trains_on_cpu(tmp_path):
    run(MLP, *SHORT, f"output_dir={tmp_path}/d", "train.deterministic=true")
    assert final_checkpoint(tmp_path / "d").name == "step_00000004"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision(tmp_path, precision):
    run(MLP, *SHORT, f"output_dir={tmp_path}/fp32", "dist.device=cuda")
    run(MLP, *SHORT, f"output_dir={tmp_path}/mp", "dist.device=cuda", f"train.precision={precision}")
    a, b = _weights(tmp_path / "fp32"), _weights(tmp_path / "mp")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-2
    if precision == "fp16":
        state = load_pt(final_checkpoint(tmp_path / "mp") / "train_state.pt")
        assert state["scaler"]["scale"] > 0  # the GradScaler's state is checkpointed


@pytest.mark.gpu
def test_cuda_compile(tmp_path):
    run(MLP, *SHORT, f"output_dir={tmp_path}/c", "dist.device=cuda", "train.compile=true", "train.precision=bf16")
    assert final_checkpoint(tmp_path / "c").name == "step_00000004"


@pytest.mark.gpu
def test_nccl_ddp_on_all_gpus(tmp_path):
    n = torch.cuda.device_count()
    proc = launch(n, MLP, *SHORT, f"output_dir={tmp_path}/nccl", "dist.device=cuda")
    assert f"{n} rank(s) on cuda" in proc.stdout
