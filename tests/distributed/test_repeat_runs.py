"""Several runs in one process (a notebook, a sweep script): every strategy runs any number of times,
each run as if it were the first (issue 13, item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, child_env

SCRIPT = textwrap.dedent('''
    import json, os, sys
    from dtrain.config import load_config
    from dtrain.runner import train

    out, results = sys.argv[1], {}
    for strategy in (["strategy=ddp"], ["strategy=fsdp"], ["strategy=deepspeed", "deepspeed.stage=2"],
                     ["strategy=deepspeed", "deepspeed.stage=3"]):
        for attempt in range(2):
            name = "_".join(s.split("=")[1] for s in strategy) + f"_{attempt}"
            cfg = load_config("recipes/mlp/config.yaml", [*strategy, "train.max_steps=3", "dist.device=cpu",
                                                           f"output_dir={out}/{name}"])
            results[name] = train(cfg)
            leaked = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR") if k in os.environ]
            assert not leaked, f"{name} left {leaked} in the environment"
    print("RESULTS " + json.dumps(results))
''')


@pytest.mark.slow
def test_every_strategy_runs_twice_in_one_process_with_the_same_result(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    for name in ("ddp", "fsdp", "deepspeed_2", "deepspeed_3"):
        assert results[f"{name}_0"] == results[f"{name}_1"], name
