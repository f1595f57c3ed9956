"""Samplers and loaders: which rank sees which sample, in an order that survives a resume.

Training order is one permutation of the whole data set per epoch, seeded by (seed, epoch) and the
same on every rank; rank r takes every world_size-th index of it. The samples of global optimizer
step s are therefore the same set whatever the world size and accumulation, which is what makes
2 ranks x accumulation 2 equal 1 rank x accumulation 4.

Per-sample randomness (augmentation) follows the same rule: a training sample is fetched with a seed of
(run seed, epoch, sample index) in reach (`sample_seed`, `sample_rng`), so the stream of (sample,
augmentation) does not depend on how many ranks or DataLoader workers drew it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dtrain.dist import DistState


BLOCK_ORDER_ABOVE = 1 << 24
"""Training sets larger than this (16M samples) are shuffled by blocks: a full randperm would hold 8
bytes per sample on every rank (8 GB at a billion)."""


class TrainSampler(Sampler[int]):
    """Shuffled, rank-strided and resumable at a global sample position.

    `start` counts the samples of this epoch's permutation that all ranks together have consumed; the
    rest, order[start:], is strided over the ranks. Position i of that rest goes to rank i % world_size,
    so the position survives a change of world size: resumed on 1 rank or 4, the epoch goes on with the
    same next samples. The tail that does not divide by the world size (at most world_size - 1 samples,
    a different tail each epoch) is left out, so every rank runs the same number of micro-batches and no
    sample is duplicated to pad.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, shuffle: bool = True,
                 block_order: bool | int = False, keyed: bool = False, lengths: torch.Tensor | None = None,
                 group_by_length: int = 0):
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.block_order = block_order
        """A BlockShuffle order (memory per block, not per sample) instead of a full randperm: for sharded
        data sets and anything above BLOCK_ORDER_ABOVE samples. True: blocks of 65,536 samples; a number:
        blocks of that many (a data set says what suits its reads: Parquet, its row groups)."""
        self.keyed = keyed
        """Yield (index, epoch) keys for `SeededSamples` instead of bare indices: the epoch must travel with
        each index, since DataLoader workers outlive epochs and hold their own copy of the data set."""
        self.lengths = lengths
        self.group_by_length = group_by_length
        """> 0: the permutation is sorted by `lengths` (longest first) within each window of this many
        positions (`length_grouped`)."""
        self.epoch = 0
        self.start = 0  # global position in this epoch's permutation
        self._order: tuple[int, torch.Tensor] | None = None
        """(epoch, its permutation), kept by `head` while the epoch lasts: a caller that draws a step at a
        time (a replica group, whose rank and world change with the quorum) must not redo a permutation and
        sort of the whole data set per step. The order depends on neither rank nor world size. `iter`, once
        per epoch, keeps nothing (the DataLoader path holds no extra 8 bytes per sample)."""

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def per_rank(self) -> int:
        """Samples this rank draws from `start` to the end of the epoch."""
        return max(self.num_samples - self.start, 0) // self.world_size

    def end(self) -> int:
        """Global position at which this epoch ends (the undivisible tail left out)."""
        return self.start + self.per_rank() * self.world_size

    def __len__(self) -> int:
        return self.per_rank()

    def __iter__(self) -> Iterator:
        indices = self._indices()
        if not self.keyed:
            return indices
        epoch = self.epoch
        return ((i, epoch) for i in indices)

    def head(self, n: int) -> list:
        """This rank's next `n` samples (fewer at the epoch's end), as `iter` would begin, without walking the
        rest of its share."""
        if self.shuffle and self.block_order:
            return list(itertools.islice(iter(self), n))
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self._epoch_order())
        first = self.start + self.rank
        mine = self._order[1][first : min(self.end(), first + n * self.world_size) : self.world_size].tolist()
        return [(i, self.epoch) for i in mine] if self.keyed else mine

    def _indices(self) -> Iterator[int]:
        if self.shuffle and self.block_order:
            from dtrain.shards import BlockShuffle

            block = 65536 if self.block_order is True else int(self.block_order)
            order = BlockShuffle(self.num_samples, self.seed, self.epoch, block=block)
            return order.positions(self.start + self.rank, self.world_size, self.end())
        return iter(self._epoch_order()[self.start + self.rank : self.end() : self.world_size].tolist())

    def _epoch_order(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.group_by_length and self.lengths is not None:
            order = length_grouped(order, self.lengths, self.group_by_length)
        return order


def length_grouped(order: torch.Tensor, lengths: torch.Tensor, window: int) -> torch.Tensor:
    """`order` sorted by sample length, longest first, within each window of `window` consecutive positions
    (ties keep their shuffled order). A batch then holds samples of about one length, so padding to its
    longest costs little (text: 1.65x the real tokens of random batches of 16 CLINC150 queries, 1.02x
    grouped in windows of 1,024). The windows are counted in samples of the epoch's permutation, not in
    batches, so the order is a function of (seed, epoch) alone and a global step holds the same samples at
    any world size, as without grouping."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    window_id = torch.arange(len(order)) // window
    longest = int(lengths.max()) + 1
    key = window_id * longest + (longest - 1 - lengths[order])
    return order[torch.sort(key, stable=True).indices]


def length_groups(data: Dataset, window: int, block_order: bool | int) -> dict:
    """TrainSampler's length-grouping arguments for train.group_by_length = `window`, checked against the
    data: it must say its samples' lengths, and a block-shuffled (sharded) set cannot be sorted whole."""
    if not window:
        return {}
    from dtrain.config import ConfigError

    lengths = getattr(data, "lengths", None)
    if block_order:
        raise ConfigError([f"train.group_by_length: {window} needs an in-memory training set; sharded data is read "
                           "in shuffled blocks and cannot be sorted by length (set it to 0)"])
    if lengths is None or len(lengths) != len(data):
        raise ConfigError([f"train.group_by_length: {window} needs the training data's sample lengths, and "
                           f"{type(data).__name__} gives none (give it a `lengths` sequence, one per sample, or "
                           "set it to 0)"])
    return {"lengths": torch.as_tensor(lengths, dtype=torch.long), "group_by_length": window}


_SAMPLE_SEED: ContextVar[int | None] = ContextVar("dtrain_sample_seed", default=None)
_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from (seed, epoch, index): splitmix64's finaliser over each part in turn, so nearby
    indices (and epochs) get unrelated streams."""
    h = 0
    for part in (seed, epoch, index):
        h = (h ^ (part & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1


def sample_seed() -> int | None:
    """While dtrain fetches a training sample (in `Dataset.__getitem__`, in any DataLoader worker): the seed
    of this sample's randomness, from (run seed, epoch, sample index) alone, so a resume on another number
    of ranks or workers draws the same augmentation for it. None outside a training fetch (evaluation, a
    direct call): then apply no random augmentation."""
    return _SAMPLE_SEED.get()


def sample_rng() -> torch.Generator | None:
    """`sample_seed()` as a CPU torch.Generator (None outside a training fetch)."""
    seed = _SAMPLE_SEED.get()
    return None if seed is None else torch.Generator().manual_seed(seed)


class SeededSamples(Dataset):
    """The training set as its loader reads it: each (index, epoch) key from a keyed TrainSampler is
    fetched with its sample seed set (`sample_seed`); a bare index (the sanity evaluation) without."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch = key
        token = _SAMPLE_SEED.set(mix_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            _SAMPLE_SEED.reset(token)


class EvalSampler(Sampler[int]):
    """Rank r gets indices r, r + world, ...: every sample exactly once, no padding.

    Shards may differ in length by one; evaluation reduces sums, never per-rank means, so that is fine.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int):
        self.indices = range(rank, num_samples, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def micro_batch_sizes(samples: int, batch_size: int) -> list[int]:
    """Sizes of the micro-batches a rank draws from `samples` samples (the last may be short)."""
    full, rest = divmod(samples, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def accumulation_windows(sizes: Sequence[int], accum: int) -> list[list[int]]:
    """Group an epoch's micro-batch sizes into optimizer steps; the last window may be short."""
    return [list(sizes[i : i + accum]) for i in range(0, len(sizes), accum)]


def steps_per_epoch(num_samples: int, world_size: int, batch_size: int, accum: int) -> int:
    batches = math.ceil((num_samples // world_size) / batch_size)
    return math.ceil(batches / accum)


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    state: DistState,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=state.device.type == "cuda",
        # Workers live as long as the loader: not forked anew for every epoch and every evaluation.
        persistent_workers=num_workers > 0,
        # A private generator: otherwise creating each iterator draws from the global torch RNG,
        # and a run resumed mid-epoch would see a different random stream than an unbroken one. Seeded by
        # rank: workers seed torch and `random` from it, and a recipe that draws there (not through
        # sample_rng) would otherwise make the same draws on every rank.
        generator=torch.Generator().manual_seed(mix_seed(0, state.rank, 0)),
    )


def move_to(batch, device: torch.device):
    """Send tensors in a (nested) batch to `device`; other values pass through. A batch object with its
    own `.to` (a Hugging Face BatchEncoding, your own class) moves itself; namedtuples stay namedtuples."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if callable(getattr(batch, "to", None)) and not isinstance(batch, (str, bytes)):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple takes its fields by position
        return type(batch)(*(move_to(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def batch_len(batch) -> int:
    """Number of samples in a batch: its len() if it says (a batch object), else the first dimension of
    its first tensor (a tensor, or a dict, list or tuple of them)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return batch_len(batch[0])
    if hasattr(batch, "__len__"):
        return len(batch)
    from dtrain.recipe import RecipeError

    raise RecipeError(f"cannot tell how many samples a batch of type {type(batch).__name__} holds: give it "
                      "__len__, or make it a tensor or a dict, list or tuple of tensors")


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val) with each class split in the same proportion; same seed, same split."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    train, val = [], []
    for y in sorted(by_class):
        idx = by_class[y]
        order = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)  # every class on both sides
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)
