"""Shared helpers: run dtrain as real processes (plain, or under real torchrun) and read results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores: no oversubscription
    env.update(extra)
    return env


def dtrain(*args: str, timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m dtrain.cli ARGS` in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "dtrain.cli", *args],
        cwd=ROOT, env=env or child_env(), capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dtrain {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def launch(nproc: int, config: str, *overrides: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Real torchrun with `nproc` processes over gloo, through `dtrain launch`."""
    return dtrain("launch", f"--nproc-per-node={nproc}", config, *overrides, check=check, timeout=timeout)


def run(config: str, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """The single-process debugging run: `dtrain run` with no launcher."""
    return dtrain("run", config, *overrides, check=check)


def final_checkpoint(run_dir: Path) -> Path:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return run_dir / "checkpoints" / latest


def load_pt(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bitwise_equal(a, b, where: str = "") -> None:
    """Recursive equality of nested state dicts; tensors must match bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}: max |diff| {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(autouse=True)
def _no_leaks():
    """Like Lightning's fixtures: no test may leave a process group or launcher variables behind."""
    before = {k: os.environ.get(k) for k in LAUNCHER_VARS}
    yield
    import torch.distributed as dist

    leaked_group = dist.is_available() and dist.is_initialized()
    if leaked_group:
        dist.destroy_process_group()
    after = {k: os.environ.get(k) for k in LAUNCHER_VARS}
    assert not leaked_group, "a test left a process group initialised"
    assert before == after, f"a test changed launcher environment variables: {before} -> {after}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_tar(path: Path, samples) -> None:
    """A tar shard in webdataset's layout: `samples` is [(key, {ext: bytes})], each member `key.ext`."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
