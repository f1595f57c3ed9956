"""Security: nothing is unpickled or YAML-constructed from files a user is handed, secrets never reach
logs or the run directory, and run directories honour the umask without world-writable files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from dtrain.redact import is_secret, redact, redact_env, redact_overrides
from tests.conftest import ROOT, child_env, dtrain, final_checkpoint

CFG = "recipes/mlp/config.yaml"
TINY = ["task.num_train=64", "task.num_val=16", "train.epochs=1", "train.batch_size=16"]


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["WANDB_API_KEY", "HF_TOKEN", "hf_token", "db.password", "AWS_SECRET_ACCESS_KEY",
                                  "GITHUB_PAT_TOKEN", "my-apikey", "private_key", "MLFLOW_TRACKING_PASSWORD"])
def test_secret_names_are_recognised(name):
    assert is_secret(name)


@pytest.mark.parametrize("name", ["max_tokens", "tokenizer", "key_dim", "num_keys", "lr", "PATH", "monkey"])
def test_ordinary_names_are_not_secret(name):
    assert not is_secret(name)


def test_redaction_masks_nested_values_and_overrides():
    assert redact({"a": {"api_key": "s3", "keep": 1}, "l": [{"token": "t"}]}) == {
        "a": {"api_key": "***", "keep": 1}, "l": [{"token": "***"}]}
    assert redact_overrides(["wandb.api_key=s3", "train.lr=1"]) == ["wandb.api_key=***", "train.lr=1"]
    assert redact_env({"HF_TOKEN": "t", "HOME": "/root"}) == {"HF_TOKEN": "***", "HOME": "/root"}


@pytest.mark.slow
def test_checkpoint_carrying_a_pickle_payload_is_refused_and_never_run(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    dtrain("run", CFG, *TINY, f"output_dir={out}")
    ckpt = final_checkpoint(out)
    torch.save({"net.0.weight": _Payload(marker)}, ckpt / "model.pt")
    # Re-sign it: the checksum must not be what saves us, the loader must refuse the pickle itself.
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"]["model.pt"] = hashlib.sha256((ckpt / "model.pt").read_bytes()).hexdigest()
    (ckpt / "meta.json").write_text(json.dumps(meta))
    proc = dtrain("run", CFG, *TINY, f"output_dir={tmp_path}/resumed", f"checkpoint.resume={ckpt}", check=False)
    assert proc.returncode == 1
    assert f"{ckpt / 'model.pt'} cannot be loaded safely" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    # `dtrain checkpoint export` reads the same way
    proc = dtrain("checkpoint", "export", str(ckpt), str(tmp_path / "w.safetensors"), check=False)
    assert proc.returncode != 0 and "cannot be loaded safely" in proc.stderr
    assert not marker.exists() and not (tmp_path / "w.safetensors").exists()


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"recipe: mlp\noutput_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = dtrain("run", str(cfg), check=False)
    assert proc.returncode == 2 and str(cfg) in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_secrets_never_reach_output_logs_or_run_directory(tmp_path):
    secrets = {"WANDB_API_KEY": "wandbsecret1234567890", "HF_TOKEN": "hf_secretvalue987",
               "DB_PASSWORD": "pa55w0rd-secret", "AWS_SECRET_ACCESS_KEY": "aws/secret/xyz"}
    env = child_env(**secrets)
    out = tmp_path / "run"
    texts = []
    procs = [
        dtrain("launch", "--nproc-per-node=2", CFG, *TINY, f"output_dir={out}", env=env),
        # a secret given as an override: refused as unknown key, and the value is not echoed
        dtrain("run", CFG, f"output_dir={out}", "task.hf_token=hf_secretvalue987", env=env, check=False),
        dtrain("launch", "--dry-run", "--nproc-per-node=2", CFG, "wandb.api_key=wandbsecret1234567890", env=env,
               check=False),
    ]
    assert procs[1].returncode == 2 and "task.hf_token" in procs[1].stderr
    assert procs[2].returncode == 2 and "wandb" in procs[2].stderr
    texts += [p.stdout + p.stderr for p in procs]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any(p.name == "metrics.jsonl" for p in files)
    texts += [p.read_bytes().decode("latin-1") for p in files]
    for value in secrets.values():
        assert not any(value in t for t in texts), f"secret value leaked: {value}"


def _run_with_umask(mask: int, out) -> None:
    subprocess.run([sys.executable, "-m", "dtrain.cli", "run", CFG, *TINY, f"output_dir={out}"],
                   cwd=ROOT, env=child_env(), check=True, capture_output=True, preexec_fn=lambda: os.umask(mask))


@pytest.mark.slow
def test_run_directory_honours_umask_and_has_nothing_world_writable(tmp_path):
    _run_with_umask(0o000, tmp_path / "open")
    paths = [tmp_path / "open", *(tmp_path / "open").rglob("*")]
    assert len(paths) > 5
    assert not [p for p in paths if p.lstat().st_mode & stat.S_IWOTH]
    _run_with_umask(0o077, tmp_path / "private")  # a private umask stays private
    paths = [tmp_path / "private", *(tmp_path / "private").rglob("*")]
    assert not [p for p in paths if p.lstat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)]
