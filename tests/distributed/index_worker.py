"""Run by test_many_ranks under torchrun: every rank opens the same shards (no index yet) with its
DistState; prints, on rank 0, how many indexes each rank built, whether all ranks read the same rows, and
which shards each rank read to find the distinct labels (and what it found)."""

import json
import sys

from dtrain import shards
from dtrain.dist import distributed, gather_objects

built = []
original = shards.Shard._build_index


def counting(self):
    built.append(self.path.name)
    return original(self)


shards.Shard._build_index = counting
read_labels = []
original_distinct = shards.Shard.distinct


def counting_distinct(self, column):
    read_labels.append(self.path.name)
    return original_distinct(self, column)


shards.Shard.distinct = counting_distinct
with distributed("cpu") as ds:
    data = shards.ShardedDataset(sys.argv[1], cache_dir=sys.argv[2], dist=ds)
    labels = data.distinct("label", ds)
    every = gather_objects({"built": built, "rows": len(data), "last": data[len(data) - 1], "labels": labels,
                            "read_labels": read_labels}, ds)
    if ds.is_main:
        print(json.dumps(every), flush=True)
