"""On a real 2-node Slurm cluster (.ci/slurm/up.sh with DTRAIN_SLURM_NODES=2: two slurmd on this host):
both multi-node templates train 2 ranks over 2 nodes to the same weights as 2 ranks on one node, each rank
bound to the CPUs the job asked for."""

from __future__ import annotations

import os
import re

import pytest
import torch

from tests.conftest import dtrain, final_checkpoint, launch
from tests.slurm.test_cluster import layout, logs, slurm, submit, wait_done  # noqa: F401  (slurm: the fixture)

MLP = "recipes/mlp/config.yaml"
COMMON = ["task.num_train=256", "task.dropout=0.1", "train.epochs=2", "train.batch_size=16", "train.log_every=4",
          "checkpoint.every_epoch=true"]


@pytest.fixture(scope="module")
def two_nodes(slurm):  # noqa: F811
    nodes, _ = layout()
    if nodes < 2:
        message = f"the Slurm cluster has {nodes} node; start 2 with DTRAIN_SLURM_NODES=2 bash .ci/slurm/up.sh"
        if os.environ.get("DTRAIN_SLURM_NODES", "1") != "1" and os.environ.get("DTRAIN_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def one_node_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_node")
    launch(2, MLP, f"output_dir={out}", *COMMON)
    return weights(out)


def weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    dtrain("checkpoint", "export", str(final_checkpoint(run_dir)), str(run_dir / "final.safetensors"))
    return load_file(run_dir / "final.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("launcher, template", [("torchrun", "multi_node"), ("srun", "srun_tasks")])
def test_two_nodes_train_to_the_weights_of_one(two_nodes, one_node_weights, tmp_path, launcher, template):
    run_dir = tmp_path / template
    job = submit(MLP, f"output_dir={run_dir}", *COMMON, spec=["--nodes=2", "--procs-per-node=1"], launcher=launcher)
    state = wait_done(job)
    text = logs(run_dir, job)
    assert state == "COMPLETED", f"job {job} ({template}.sbatch over n[1-2]) ended {state}:\n{text}"
    script = (run_dir / "job.sbatch").read_text()
    assert ("--rdzv-backend=c10d" in script) == (launcher == "torchrun") and "#SBATCH --nodes=2" in script
    assert "2 rank(s) on cpu" in text and "1 CPU(s) per rank" in text, text  # the binding, from each rank
    nodes = re.search(r"ranks per node: (\S+=\[\d\]), (\S+=\[\d\])", text)
    assert nodes and {n.split("=")[0] for n in nodes.groups()} == {"n1", "n2"}, text
    got = weights(run_dir)
    assert got.keys() == one_node_weights.keys()
    differ = [k for k in got if not torch.equal(got[k], one_node_weights[k])]
    assert not differ, f"{template}.sbatch over 2 nodes: {differ} differ from 2 ranks on one node"
