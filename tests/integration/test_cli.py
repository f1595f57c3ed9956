"""The command line end to end: real processes, real torchrun, files on disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, child_env, dtrain, final_checkpoint, launch, load_pt, run

VISION = "recipes/vision/config.yaml"
SMALL_VISION = ["task.widths=[8,16]", "task.blocks_per_stage=1", "train.log_every=2"]


@pytest.mark.slow
def test_launch_trains_vision_on_two_ranks_and_exports(tmp_path):
    out = tmp_path / "run"
    proc = launch(2, VISION, *SMALL_VISION, f"output_dir={out}", "train.max_steps=6", "train.eval_every=3")
    assert "2 rank(s) on cpu" in proc.stdout
    assert (out / "config.yaml").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in evals] == [3, 6]
    assert all({"step", "epoch", "loss", "lr", "samples_per_s"} <= set(r) for r in train)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["val_loss"] > 0 for r in evals)
    ckpt = final_checkpoint(out)
    assert ckpt.name == "step_00000006"
    assert sorted(p.name for p in ckpt.glob("rng_rank*")) == ["rng_rank0.pt", "rng_rank1.pt"]

    from safetensors.torch import load_file

    exported = tmp_path / "model.safetensors"
    dtrain("checkpoint", "export", str(ckpt), str(exported))
    weights, model = load_file(exported), load_pt(ckpt / "model.pt")
    assert set(weights) == set(model) and all(torch.equal(weights[k], model[k]) for k in model)


def _one_clear_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("command", ["run", "launch"])
def test_bad_config_fails_before_anything_starts(tmp_path, command):
    out = tmp_path / "never"
    proc = dtrain(command, VISION, f"output_dir={out}", "train.batch_size=0", check=False)
    _one_clear_line(proc, "train.batch_size: must be > 0, got 0", VISION)
    assert "torch.distributed.run" not in proc.stdout  # no torchrun was started
    assert not out.exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    out = tmp_path / "run"
    run("recipes/mlp/config.yaml", f"output_dir={out}", "train.max_steps=2")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    proc = run("recipes/mlp/config.yaml", f"output_dir={out}", "checkpoint.resume=none", check=False)
    assert proc.returncode == 1 and "already holds checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_launch_dry_run_builds_multinode_torchrun():
    proc = dtrain("launch", "--dry-run", "--nproc-per-node=4", "--nnodes=2", "--node-rank=1",
                  "--rdzv-endpoint=node07:29400", "--rdzv-id=77", "--max-restarts=3", VISION, "seed=3")
    argv = proc.stdout.split()
    for flag in ("--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d",
                 "--rdzv-endpoint=node07:29400", "--rdzv-id=77", "--max-restarts=3"):
        assert flag in argv
    assert argv[-3:] == ["run", VISION, "seed=3"]
    assert "--standalone" not in argv
    single = dtrain("launch", "--dry-run", "--nproc-per-node=2", VISION).stdout.split()
    assert "--standalone" in single and "--nproc-per-node=2" in single


def test_multinode_without_endpoint_is_an_error():
    proc = dtrain("launch", "--dry-run", "--nnodes=2", VISION, check=False)
    assert proc.returncode == 1 and "--rdzv-endpoint" in proc.stderr


def test_help_does_not_import_torch():
    code = "import sys; from dtrain.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'yaml', 'deepspeed', 'wandb', 'transformers', 'onnx') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_version_prints_the_version_without_importing_torch():
    from importlib import metadata

    import dtrain as package

    code = ("import sys\nfrom dtrain.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as exc:\n"
            "    print(exc.code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True, check=True)
    try:
        expected = metadata.version("dtrain")
    except metadata.PackageNotFoundError:
        expected = package.__version__
    assert proc.stdout.splitlines() == [f"dtrain {expected}", "0 False"], proc.stdout + proc.stderr
    assert dtrain("--version").stdout == f"dtrain {expected}\n"  # and as a command: exit 0


def _image_folder(root, broken=False):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = (torch.rand(20, 24, 3, generator=g) * 100 + 120 * c).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    if broken:
        (root / "dog" / "broken.png").write_bytes(b"this is not a png")


def test_vision_recipe_trains_on_an_image_folder(tmp_path):
    _image_folder(tmp_path / "images")
    out = tmp_path / "run"
    run(VISION, *SMALL_VISION, "task.dataset=folder", f"task.root={tmp_path / 'images'}", "task.image_size=16",
        "task.channels=3", "train.batch_size=4", "train.epochs=2", f"output_dir={out}")
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 2 and evals[-1]["accuracy"] >= 0.5
