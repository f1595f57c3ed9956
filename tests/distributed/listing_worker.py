"""Run by test_many_ranks under torchrun: each rank lists checkpoints through its own view of the run
directory, as ranks on several nodes do on a shared file system whose listings lag. Prints, on rank 0,
what every rank chose."""

import json
import sys
from pathlib import Path

from dtrain.checkpoint import CheckpointManager
from dtrain.dist import distributed, gather_objects

views = json.loads(sys.argv[1])  # one checkpoints directory per rank
with distributed("cpu") as ds:
    ckpt = CheckpointManager(Path(views[ds.rank]), ds)
    own = [p.name for p in ckpt.complete_newest_first()]
    agreed = [str(p) for p in ckpt.agreed_newest_first()]
    every = gather_objects({"own": own, "agreed": agreed}, ds)
    if ds.is_main:
        print(json.dumps(every), flush=True)
