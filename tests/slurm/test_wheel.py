"""The Slurm path from an installed wheel, as cluster users install a library: not from this checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.slurm.test_cluster import logs, slurm, wait_done  # noqa: F401  (slurm: the fixture)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv holding the built wheel; torch and the other dependencies are this environment's
    (a .pth line), so only dtrain and its recipes come from the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(ROOT)], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("dtrain-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "dtrain.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _site(venv: Path) -> Path:
    return Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())


@pytest.mark.slow
def test_wheel_ships_every_package_and_the_slurm_templates(wheel_venv):
    # pyproject.toml lists the packages (slurm/ is mapped into dtrain): one added without listing it fails here.
    site = _site(wheel_venv)
    packages = [p.parent.relative_to(ROOT) for top in ("dtrain", "recipes") for p in (ROOT / top).rglob("__init__.py")]
    missing = [str(p).replace("/", ".") for p in packages if not (site / p / "__init__.py").is_file()]
    assert not missing, f"packages missing from the wheel: {missing}; add them to [tool.setuptools] packages in pyproject.toml"
    templates = sorted(p.name for p in (ROOT / "slurm").glob("*.sbatch"))
    assert templates and sorted(p.name for p in (site / "dtrain" / "slurm_templates").glob("*.sbatch")) == templates


@pytest.mark.slow
@pytest.mark.parametrize("flags, marker", [
    ([], "--standalone"),                                   # one_node.sbatch
    (["--nodes=2"], "--rdzv-backend=c10d"),                 # multi_node.sbatch
    (["--launcher=srun"], "-m dtrain.cli run"),             # srun_tasks.sbatch
])
def test_installed_wheel_dry_run_renders_outside_a_checkout(wheel_venv, tmp_path, flags, marker):
    """No cluster needed: `dtrain slurm submit --dry-run` reads its template from the installed package."""
    config = tmp_path / "mlp.yaml"
    shutil.copyfile(ROOT / "recipes" / "mlp" / "config.yaml", config)
    dry = _run(wheel_venv, "slurm", "submit", "--dry-run", "--procs-per-node=1", *flags, str(config),
               f"output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("#!/bin/bash") and marker in dry.stdout
    assert str(wheel_venv / "bin" / "python") in dry.stdout


@pytest.mark.slow
def test_installed_wheel_renders_and_runs_a_slurm_job(slurm, wheel_venv, tmp_path):  # noqa: F811
    where = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", "import dtrain, recipes; print(dtrain.__file__, recipes.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(ROOT) not in where and str(wheel_venv) in where, where  # the wheel's code, not the checkout's
    config = tmp_path / "mlp.yaml"
    shutil.copyfile(ROOT / "recipes" / "mlp" / "config.yaml", config)
    run_dir = tmp_path / "run"
    dry = _run(wheel_venv, "slurm", "submit", "--dry-run", "--nodes=2", "--procs-per-node=1", str(config),
               f"output_dir={run_dir}", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "--rdzv-backend=c10d" in dry.stdout and str(wheel_venv / "bin" / "python") in dry.stdout

    proc = _run(wheel_venv, "slurm", "submit", "--launcher=srun", "--procs-per-node=1", "--cpus-per-task=1",
                "--time=5", str(config), f"output_dir={run_dir}", "train.max_steps=4", "train.log_every=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().splitlines()[-1]
    assert wait_done(job) == "COMPLETED", logs(run_dir, job)
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("kind") == "train"]
    assert steps == [2, 4]
