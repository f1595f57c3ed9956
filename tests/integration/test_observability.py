"""What a run tells while it runs: log-line metrics, wandb (real, offline), TensorBoard, the progress bar,
the profiler trace, `dtrain plot`, `dtrain env`, and a `dtrain --help` that imports nothing heavy."""

from __future__ import annotations

import glob
import json
import os
import pty
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env, dtrain

MLP = "recipes/mlp/config.yaml"
SECRET = "sekrit-wandb-key-6f1e"


def _records(run_dir, kind="train"):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_wandb_tensorboard_profile_and_resume_keep_one_wandb_run(tmp_path):
    out = tmp_path / "run"
    env = child_env(WANDB_MODE="offline", WANDB_API_KEY=SECRET, WANDB_SILENT="true")
    common = [MLP, f"output_dir={out}", "train.max_steps=12", "train.log_every=3", "checkpoint.every_steps=3",
              "logging.wandb=true", "logging.tensorboard=true", "logging.tags=[ci,observability]",
              "logging.run_name=obs-test", "train.peak_flops=1e9", "profile.start=2", "profile.steps=2"]
    first = dtrain("run", *common, "fault_injection.crash_after_step=7", env=env, check=False)
    assert first.returncode == 1 and "crash after step 7" in first.stderr
    run_id = (out / "wandb_run_id").read_text().strip()
    dtrain("run", *common, env=env)
    assert (out / "wandb_run_id").read_text().strip() == run_id

    # Every train line carries the speed and cost columns; MFU follows from TFLOP/s and the configured peak.
    train = _records(out)
    assert [r["step"] for r in train] == [3, 6, 9, 12]  # step 9 logged once: the crashed run's lines were dropped
    for r in train:
        assert {"loss", "lr", "grad_norm", "samples_per_s", "tflops", "mfu", "data_wait", "peak_mem_mb"} <= set(r)
        assert r["samples_per_s"] > 0 and 0 <= r["data_wait"] < 1 and r["peak_mem_mb"] > 10
        assert r["mfu"] == pytest.approx(r["tflops"] * 1e12 / 1e9)

    # wandb: both starts wrote into the same run id (resume), with metrics, config and tags, and no secret.
    runs = sorted(glob.glob(str(out / "wandb" / "offline-run-*")))
    assert len(runs) == 2 and all(r.endswith("-" + run_id) for r in runs)
    data = b"".join(open(f, "rb").read() for f in glob.glob(str(out / "wandb" / "offline-run-*" / "*.wandb")))
    for needle in (b"train/loss", b"train/samples_per_s", b"eval/accuracy", b"grad_accum_steps", b"observability",
                   b"obs-test"):
        assert needle in data, needle
    for path in glob.glob(str(out / "**"), recursive=True):
        if os.path.isfile(path):
            assert SECRET.encode() not in open(path, "rb").read(), path

    # TensorBoard: readable event files; the resumed start purged the steps after its checkpoint (6).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [3, 6, 9, 12]
    assert loss[-1].value == pytest.approx(train[-1]["loss"], rel=1e-6)
    assert "eval/accuracy" in acc.Tags()["scalars"]

    # Profiler: one Chrome trace of steps 2-3 (from the first start; the second started past the window).
    traces = list((out / "profile").glob("trace_rank0_steps2-3.json"))
    assert len(traces) == 1 and "traceEvents" in json.loads(traces[0].read_text())

    # dtrain plot: one PNG per quantity, and a comparison of two runs.
    pngs = dtrain("plot", str(out)).stdout.split()
    names = {os.path.basename(p) for p in pngs}
    assert {"train_loss.png", "train_lr.png", "eval_accuracy.png", "eval_val_loss.png"} <= names
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in pngs)
    other = tmp_path / "other"
    dtrain("run", MLP, f"output_dir={other}", "train.max_steps=6", "train.log_every=3", "optim.lr=0.01")
    compared = dtrain("plot", str(out), str(other), "--out", str(tmp_path / "cmp")).stdout.split()
    assert (tmp_path / "cmp" / "train_loss.png").is_file() and len(compared) >= 4
    missing = dtrain("plot", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 1 and "metrics.jsonl does not exist" in missing.stderr


def _read_pty(cmd, env) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_plain_lines_otherwise(tmp_path):
    args = ["run", MLP, "train.max_steps=24", "train.log_every=8", "fault_injection.step_sleep_s=0.03"]
    tty = _read_pty([sys.executable, "-m", "dtrain.cli", *args, f"output_dir={tmp_path / 'tty'}"], child_env())
    assert "\r" in tty and "step 24/24" in tty and "ETA" in tty and "samples/s" in tty
    assert "[train]" not in tty  # train records go to the bar, not to lines
    assert "[eval]" in tty and "[dtrain] done" in tty  # other messages are printed above the bar

    plain = dtrain(*args, f"output_dir={tmp_path / 'plain'}").stdout
    assert "\r" not in plain and "ETA" not in plain
    lines = [line for line in plain.splitlines() if line.startswith("[train]")]
    assert [line.split()[1] for line in lines] == ["step=8", "step=16", "step=24"]
    assert all("samples_per_s=" in line and "data_wait=" in line for line in lines)


def test_env_prints_versions_and_masks_secrets():
    env = child_env(WANDB_API_KEY=SECRET, MASTER_PORT="29555", NCCL_DEBUG="INFO")
    text = dtrain("env", env=env).stdout
    import torch

    assert f"torch        {torch.__version__}" in text and ("GPUs" in text or "GPU 0" in text)
    assert "MASTER_PORT=29555" in text and "NCCL_DEBUG=INFO" in text and "WANDB_API_KEY=***" in text
    assert SECRET not in text
    info = json.loads(dtrain("env", "--json", env=env).stdout)
    assert info["packages"]["torch"] == torch.__version__ and info["env"]["WANDB_API_KEY"] == "***"
    assert {"deepspeed", "transformers", "wandb"} <= set(info["packages"])


HEAVY = ("deepspeed", "wandb", "transformers", "onnx", "tensorboard", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["env"]])
def test_help_and_env_import_nothing_heavy(argv):
    code = (
        "import sys, contextlib, io\n"
        "from dtrain.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
