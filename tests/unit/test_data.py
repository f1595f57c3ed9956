"""Samplers: which rank sees which sample, exactly once, and where a resume picks up."""

from __future__ import annotations

import pytest
import torch

from dtrain.config import ConfigError
from dtrain.data import (
    EvalSampler, TrainSampler, accumulation_windows, length_groups, micro_batch_sizes, stratified_split,
)


def epoch(num, world, seed=0, ep=0, start=0, **order):
    out = []
    for r in range(world):
        s = TrainSampler(num, r, world, seed, **order)
        s.set_epoch(ep, start=start)
        out.append(list(s))
    return out


def test_train_ranks_are_disjoint_and_drop_only_the_tail():
    shards = epoch(103, 4)
    flat = [i for s in shards for i in s]
    assert all(len(s) == 25 for s in shards)
    assert len(set(flat)) == len(flat) == 100  # 3 samples left out, none duplicated


def test_global_step_holds_the_same_samples_whatever_the_world_size():
    b, n = 4, 64
    two = epoch(n, 2)
    one = epoch(n, 1)[0]
    for step in range(n // (4 * b)):
        # 2 ranks x micro-batch b x accumulation 2  vs  1 rank x micro-batch b x accumulation 4
        got = {i for r in range(2) for i in two[r][step * 2 * b:(step + 1) * 2 * b]}
        assert got == set(one[step * 4 * b:(step + 1) * 4 * b])


def test_epochs_shuffle_differently_and_reproducibly():
    assert epoch(50, 1, ep=0) != epoch(50, 1, ep=1)
    assert epoch(50, 1, ep=1) == epoch(50, 1, ep=1)
    assert epoch(50, 1, seed=1) != epoch(50, 1, seed=2)


def test_resume_start_continues_with_the_next_sample():
    full = epoch(40, 2, ep=3)[1]
    s = TrainSampler(40, 1, 2, 0)
    s.set_epoch(3, start=16)  # a global position: 8 samples from each of the 2 ranks
    assert list(s) == full[8:] and len(s) == 12


@pytest.mark.parametrize("before, after, pos, n", [(2, 1, 16, 60), (1, 2, 12, 60), (2, 3, 10, 60), (4, 2, 24, 60),
                                                   # 8 nodes x 8 GPUs, and losing one node or one GPU
                                                   (64, 56, 640, 5000), (64, 63, 1280, 5000), (8, 64, 512, 5000)])
def test_resume_on_another_world_size_neither_repeats_nor_skips(before, after, pos, n):
    seen = []
    for r in range(before):  # the first `pos` global samples, drawn by `before` ranks
        s = TrainSampler(n, r, before, 0)
        s.set_epoch(2)
        seen += list(s)[: pos // before]
    for r in range(after):
        s = TrainSampler(n, r, after, 0)
        s.set_epoch(2, start=pos)
        seen += list(s)
        assert s.end() == pos + len(s) * after
    assert len(set(seen)) == len(seen) and n - len(seen) < after  # no repeats; only the tail left out


def grouped(num, world, lengths, window, start=0):
    return epoch(num, world, start=start, lengths=lengths, group_by_length=window)


def test_length_grouping_sorts_within_windows_and_keeps_each_step_at_any_world_size():
    n, window = 1000, 256
    lengths = torch.randint(1, 40, (n,), generator=torch.Generator().manual_seed(1))
    one = grouped(n, 1, lengths, window)[0]
    assert sorted(one) == list(range(n)) and one != epoch(n, 1)[0]  # a permutation, not the ungrouped one
    for w in range(0, n, window):  # longest first within each window of the epoch's order
        got = [int(lengths[i]) for i in one[w:w + window]]
        assert got == sorted(got, reverse=True)
    # A global step of 32 samples: 1 rank x 32, 2 ranks x 16, 4 ranks x 8 hold the same samples, and the
    # samples of one step have about one length (padding to the longest wastes little).
    two, four = grouped(n, 2, lengths, window), grouped(n, 4, lengths, window)
    pad_grouped, pad_random, plain = 0, 0, epoch(n, 1)[0]
    for step in range(n // 32):
        want = set(one[step * 32:(step + 1) * 32])
        assert {i for r in range(2) for i in two[r][step * 16:(step + 1) * 16]} == want
        assert {i for r in range(4) for i in four[r][step * 8:(step + 1) * 8]} == want
        pad_grouped += 32 * max(int(lengths[i]) for i in want) - sum(int(lengths[i]) for i in want)
        batch = plain[step * 32:(step + 1) * 32]
        pad_random += 32 * max(int(lengths[i]) for i in batch) - sum(int(lengths[i]) for i in batch)
    assert pad_grouped < pad_random / 5
    # A resume at a global position on another world size goes on with the same samples.
    resumed = grouped(n, 3, lengths, window, start=96)
    assert sorted(i for r in resumed for i in r) == sorted(one[96:96 + 3 * len(resumed[0])])


@pytest.mark.parametrize("window", [0, 8])
def test_head_is_the_start_of_iter_for_one_sampler_reused_across_quorums(window):
    """The fault-tolerant trainer draws each step with head() from one sampler whose rank and world change
    with the quorum: it must be what a fresh sampler's iter would begin with, and keep one order per epoch."""
    import itertools

    n = 101
    lengths = torch.randint(1, 50, (n,), generator=torch.Generator().manual_seed(2))
    reused = TrainSampler(n, 0, 1, 3, keyed=True, lengths=lengths, group_by_length=window)
    for epoch in (0, 1):
        for world in (1, 2, 3, 4):
            for rank in range(world):
                for start in (0, 5, n - 3, n):
                    fresh = TrainSampler(n, rank, world, 3, keyed=True, lengths=lengths, group_by_length=window)
                    fresh.set_epoch(epoch, start=start)
                    reused.rank, reused.world_size = rank, world
                    reused.set_epoch(epoch, start=start)
                    for k in (1, 4, 100):
                        assert reused.head(k) == list(itertools.islice(iter(fresh), k))
        assert reused._order[0] == epoch  # kept for the epoch, not rebuilt per step


def test_length_grouping_refuses_data_without_lengths_and_sharded_data():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 4

    assert length_groups(Plain(), 0, False) == {}
    with pytest.raises(ConfigError, match="train.group_by_length: 64 needs the training data's sample lengths"):
        length_groups(Plain(), 64, False)
    Plain.lengths = [3, 1, 2, 5]
    assert length_groups(Plain(), 64, False)["group_by_length"] == 64
    with pytest.raises(ConfigError, match="sharded data"):
        length_groups(Plain(), 64, 65536)


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (2, 4), (0, 2), (9, 1)])
def test_eval_sampler_neither_pads_nor_duplicates(n, world):
    seen = [i for r in range(world) for i in EvalSampler(n, r, world)]
    assert sorted(seen) == list(range(n))


def test_windows_and_short_last_window():
    sizes = micro_batch_sizes(50, 8)
    assert sizes == [8, 8, 8, 8, 8, 8, 2]
    assert accumulation_windows(sizes, 3) == [[8, 8, 8], [8, 8, 8], [2]]


def test_stratified_split_is_reproducible_and_proportional():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, val = stratified_split(labels, 0.2, seed=7)
    assert (train, val) == stratified_split(labels, 0.2, seed=7)
    assert (train, val) != stratified_split(labels, 0.2, seed=8)
    assert not set(train) & set(val) and len(train) + len(val) == 100
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [10, 6, 4]


def test_namedtuples_mappings_and_batch_objects_move_and_count():
    from collections import UserDict, namedtuple

    import torch

    from dtrain.data import batch_len, move_to
    from dtrain.recipe import RecipeError

    Sample = namedtuple("Sample", "x y")
    moved = move_to(Sample(torch.zeros(3, 2), torch.ones(3)), torch.device("meta"))
    assert type(moved) is Sample and moved.x.device.type == "meta" and batch_len(moved) == 3

    class Encoding(UserDict):  # a Mapping that is no dict, as Hugging Face's BatchEncoding
        pass

    assert batch_len(Encoding(ids=torch.zeros(5, 7))) == 5
    assert move_to(Encoding(ids=torch.zeros(5, 7)), torch.device("meta"))["ids"].device.type == "meta"

    class Batch:  # the user's own batch: it knows its length and how to move
        def __init__(self, t):
            self.t = t

        def __len__(self):
            return len(self.t)

        def to(self, device):
            return Batch(self.t.to(device))

    moved = move_to(Batch(torch.zeros(4)), torch.device("meta"))
    assert isinstance(moved, Batch) and moved.t.device.type == "meta" and batch_len(moved) == 4
    with pytest.raises(RecipeError, match="cannot tell how many samples a batch of type object holds: give it __len__"):
        batch_len(object())


class _WorkerSeed(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor([torch.initial_seed() % 2**31, int(torch.randint(0, 2**31, ()))])


def test_loader_workers_draw_differently_on_each_rank():
    """A worker seeds torch from the loader's generator: one generator for all ranks made every rank's
    worker draw the same 'random' augmentation."""
    from dtrain.data import make_loader
    from dtrain.dist import DistState

    def first_batch(rank):
        state = DistState(rank, 4, rank, 4, torch.device("cpu"), "torchrun")
        return next(iter(make_loader(_WorkerSeed(), EvalSampler(2, 0, 1), 2, state, num_workers=1)))

    seen = [first_batch(r) for r in range(4)]
    assert len({tuple(b[0].tolist()) for b in seen}) == 4  # worker seeds differ by rank
    assert torch.equal(first_batch(2), seen[2])  # and stay reproducible
