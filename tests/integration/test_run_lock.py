"""One writer per run directory: the same command started while the first still runs is refused before
it writes anything, naming the first; after the first is killed (-9) the same command takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, child_env, dtrain
from tests.distributed.test_resume import CFG, COMMON
from tests.integration.test_bad_input import one_line


@pytest.mark.slow
def test_a_second_job_on_the_same_output_dir_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    args = [*COMMON, f"output_dir={out}", "train.epochs=2", "fault_injection.step_sleep_s=0.5"]
    first = subprocess.Popen([sys.executable, "-m", "dtrain.cli", "run", CFG, *args], cwd=ROOT, env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "config.yaml").is_file():  # the first job holds the directory and has begun
            assert first.poll() is None and time.monotonic() < deadline, "the first job did not start"
            time.sleep(0.2)
        before = (out / "config.yaml").read_bytes()
        second = dtrain("run", CFG, *args, "train.max_steps=1", check=False)
        one_line(second, 2, f"output_dir {out} is in use by a running job (pid {first.pid} on ",
                 "choose another output_dir")
        launched = dtrain("launch", "--nproc-per-node=2", CFG, *args, check=False)
        one_line(launched, 2, f"pid {first.pid}")
        assert first.poll() is None and (out / "config.yaml").read_bytes() == before  # the first is untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The lock died with its holder: the same command takes the directory over and finishes the run.
    had_checkpoint = (out / "checkpoints" / "latest").is_file()
    again = dtrain("run", CFG, *COMMON, f"output_dir={out}", "train.epochs=2", check=False)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout or not had_checkpoint
