"""Fault tolerance's bad input (issue 25): refused in one line each, before anything starts."""

from __future__ import annotations

import sys

import pytest

from dtrain.config import load_config
from dtrain.ft import FtUnavailable, require_torchft
from tests.conftest import dtrain

CFG = "recipes/mlp/config.yaml"


def problems(*overrides: str) -> list[str]:
    from dtrain.config import ConfigError

    try:
        load_config(CFG, list(overrides))
    except ConfigError as exc:
        return exc.problems
    return []


def test_what_a_replica_group_does_not_do_is_refused_by_key():
    assert problems("ft.enabled=true") == []
    assert any(p.startswith("strategy: fsdp inside a replica group") for p in problems("ft.enabled=true", "strategy=fsdp"))
    assert any(p.startswith("early_stopping.metric:") for p in problems("ft.enabled=true", "early_stopping.metric=accuracy"))
    assert any(p.startswith("checkpoint.format:") for p in problems("ft.enabled=true", "checkpoint.async=true"))
    assert any(p.startswith("ft.min_replicas:") for p in problems("ft.replica_groups=2", "ft.min_replicas=3"))
    assert any(p.startswith("ft.heartbeat_timeout_ms:") for p in problems("ft.heartbeat_timeout_ms=0"))
    assert problems("strategy=fsdp", "checkpoint.format=dcp") == []  # without ft nothing changes


def test_without_torchft_one_line_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchft", None)  # an import of it fails, as where it is not installed
    with pytest.raises(FtUnavailable, match=r"pip install 'dtrain\[ft\]'"):
        require_torchft()


def test_a_replica_group_outside_the_launcher_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("torchft")
    proc = dtrain("run", CFG, f"output_dir={tmp_path}", "ft.enabled=true", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["dtrain: error: ft.enabled: start the job with `dtrain launch --replica-groups R CONFIG`, which "
                     "runs the Lighthouse and the groups"], proc.stderr


def test_replica_group_flags_are_checked_before_anything_starts(tmp_path):
    proc = dtrain("launch", "--replica-groups=2", "--nnodes=2", CFG, f"output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "needs --rdzv-endpoint HOST:PORT" in proc.stderr, proc.stderr
    proc = dtrain("launch", "--replica-groups=2", CFG, f"output_dir={tmp_path}", "strategy=fsdp", check=False)
    assert proc.returncode == 2 and "strategy: fsdp inside a replica group" in proc.stderr, proc.stderr
