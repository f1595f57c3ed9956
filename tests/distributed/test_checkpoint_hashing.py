"""Sharded checkpoints are hashed by the ranks that wrote them, and verified on load by one rank per
file, on real torchrun processes: no rank reads another rank's shard for its checksum, and a damaged
shard is still caught and named on every rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, child_env


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("hashing")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(ROOT / "tests/distributed/ckpt_hash_worker.py"), str(out)],
                          cwd=ROOT, env=child_env(), timeout=180, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _names(records: list) -> list[str]:
    return [Path(p).name for p, _, _ in records]


def _foreign_shards(records: list, rank: int) -> list[str]:
    return [n for n in _names(records) if n.endswith(".distcp") and not n.startswith(f"__{rank}_")]


@pytest.mark.slow
def test_each_rank_hashes_only_what_it_wrote_and_async_hashing_is_in_the_background(ranks):
    out, (r0, r1) = ranks
    for phase in ("sync_save", "async_save"):
        assert sorted(_names(r0[phase])) == [".metadata", "__0_0.distcp"], phase
        assert _names(r1[phase]) == ["__1_0.distcp"], phase
    # the async save's files are hashed off the training thread, on every rank
    assert all(thread != "MainThread" for r in (r0, r1) for _, _, thread in r["async_save"])
    meta = json.loads((out / "checkpoints" / "step_00000002" / "meta.json").read_text())  # everyone's digests
    assert {"state/.metadata", "state/__0_0.distcp", "state/__1_0.distcp", "train_state.pt", "rng_rank0.pt",
            "rng_rank1.pt"} <= set(meta["files"]) == set(meta["sha256"])


@pytest.mark.slow
def test_on_load_no_rank_hashes_another_ranks_shard(ranks):
    _, (r0, r1) = ranks
    assert _foreign_shards(r0["load"], 0) == [] and _foreign_shards(r1["load"], 1) == []
    assert "__1_0.distcp" in _names(r1["load"]) and "__0_0.distcp" in _names(r0["load"])
    # each file of state/ is hashed by one rank: the bytes hashed per rank are about its share, not the
    # whole (train_state.pt, which every rank reads whole anyway, is checked by each as it loads it)
    state = [(p, size) for r in (r0, r1) for p, size, _ in r["load"] if Path(p).parent.name == "state"]
    assert state and sum(size for _, size in state) == sum(dict(state).values())


@pytest.mark.slow
def test_a_damaged_shard_of_rank_1_is_named_on_every_rank(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert r["error"] and "__1_0.distcp is corrupted" in r["error"], r["error"]
    assert _foreign_shards(r0["damaged_load"], 0) == []  # rank 0 learnt it from rank 1, without reading it
