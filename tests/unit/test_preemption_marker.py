"""Which PREEMPT markers a starting run keeps: a stale one (an earlier attempt's) goes; one the batch script
wrote while this attempt's ranks started up is a request, and stays."""

from __future__ import annotations

import os
import time

import pytest
import torch

from dtrain.dist import DistState
from dtrain.preemption import ATTEMPT_ENV, LAUNCH_ENV, MARKER, StopRequest


@pytest.mark.parametrize("written_after_start, kept", [(False, False), (True, True)])
def test_marker_from_this_sbatch_attempt_survives_start_up(tmp_path, monkeypatch, written_after_start, kept):
    monkeypatch.delenv(LAUNCH_ENV, raising=False)
    started = time.time()
    monkeypatch.setenv(ATTEMPT_ENV, repr(started))  # as the sbatch templates export it
    marker = tmp_path / MARKER
    marker.write_text("USR1\n")
    mtime = started + 5 if written_after_start else started - 5
    os.utime(marker, (mtime, mtime))
    state = DistState(0, 1, 0, 1, torch.device("cpu"), "slurm")
    stop = StopRequest(tmp_path, state)
    try:
        stop.clear_stale_marker()
        assert marker.exists() == kept
    finally:
        stop.done()  # gives the signal handlers back
