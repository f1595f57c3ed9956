from __future__ import annotations

import os

import pytest
import torch

from dtrain.determinism import make_deterministic


@pytest.fixture
def restore_global_state(monkeypatch):
    """make_deterministic changes process-wide switches: put them back for the tests that follow."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # and restored afterwards
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    enabled, warn_only, cudnn_deterministic, benchmark = before
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, benchmark


def test_make_deterministic_sets_the_switches_and_cublas_workspace(restore_global_state):
    torch.backends.cudnn.benchmark = True
    make_deterministic()
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_workspace_setting_of_the_user_stays(restore_global_state, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    make_deterministic()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
