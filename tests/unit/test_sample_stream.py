"""The sampler side of issue 14's stream guarantee, in one process and for many random cases: the global
stream (position p of an epoch goes to rank p % world) is the same whatever the world size at each
resume, and each sample's randomness depends on (seed, epoch, index) alone."""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from torch.utils.data import DataLoader

from dtrain.data import SeededSamples, TrainSampler, mix_seed, sample_rng, sample_seed


def _global(n: int, seed: int, epoch: int, start: int, world: int, block: bool, stop: int) -> list[int]:
    """Positions start..stop of the epoch as `world` ranks draw them, put back in global order."""
    ranks = []
    for r in range(world):
        s = TrainSampler(n, r, world, seed, block_order=block)
        s.set_epoch(epoch, start)
        ranks.append(list(s))
    out = []
    for k in range((stop - start) // world):
        out += [ranks[r][k] for r in range(world)]
    return out


@pytest.mark.parametrize("case", range(40))
def test_the_global_stream_survives_any_sequence_of_world_sizes(case):
    rnd = random.Random(case)
    n, seed, block = 6 * rnd.randint(2, 400), rnd.randint(0, 10**6), rnd.choice([False, True, 64])
    for epoch in (0, 1):
        whole = _global(n, seed, epoch, 0, 1, block, n)
        assert sorted(whole) == list(range(n))
        pos, got = 0, []
        while pos < n:  # stops at multiples of 6 (the global batch), each leg on a random world size
            stop = min(n, pos + 6 * rnd.randint(1, n // 6))
            got += _global(n, seed, epoch, pos, rnd.choice([1, 2, 3]), block, stop)
            pos = stop
        assert got == whole, (case, epoch)


def test_a_sample_seed_is_set_only_while_a_training_sample_is_fetched():
    class Probe(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            rng = sample_rng()
            return torch.tensor([i, sample_seed() or -1, -1 if rng is None else int(torch.randint(0, 10**9, (1,), generator=rng))])

    data = SeededSamples(Probe(), seed=3)
    assert sample_seed() is None and data[5][1] == -1  # a bare index (evaluation): no seed
    a = data[(5, 0)]
    assert a[1] == mix_seed(3, 0, 5) and sample_seed() is None  # set for the fetch, reset after
    assert torch.equal(data[(5, 0)], a)  # the same sample, epoch and seed: the same draw
    assert data[(5, 1)][2] != a[2] and data[(4, 0)][2] != a[2]  # another epoch or sample: another one
    assert SeededSamples(Probe(), seed=4)[(5, 0)][2] != a[2]  # another run seed: another one
    sampler = TrainSampler(8, 0, 1, seed=3, keyed=True)
    sampler.set_epoch(1)
    keys = list(sampler)
    assert [k[1] for k in keys] == [1] * 8 and pickle.loads(pickle.dumps(keys)) == keys
    # DataLoader workers see the same draws as the main process
    rows = [DataLoader(data, sampler=sampler, batch_size=4, num_workers=w) for w in (0, 2)]
    assert torch.equal(torch.cat(list(rows[0])), torch.cat(list(rows[1])))


def test_mix_seed_spreads_neighbouring_inputs():
    seeds = {mix_seed(0, e, i) for e in range(4) for i in range(1000)}
    assert len(seeds) == 4000 and all(0 <= s < 2**63 for s in seeds)
