import json
import subprocess
import sys

from tests.conftest import ROOT, child_env


def test_ranks_agree_on_the_stop_step_without_a_collective_every_step(tmp_path):
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(ROOT / "tests/distributed/stop_worker.py"), str(tmp_path)],
                   cwd=ROOT, env=child_env(), check=True, timeout=120, capture_output=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["step"] == r1["step"] and 30 <= r0["step"] <= 30 + 60  # within ~0.2 s worth of steps
    assert r0["reason"] == "another rank" and r1["reason"] == "SIGUSR1"
    assert r0["meetings"] == r1["meetings"] < r0["step"] / 3
