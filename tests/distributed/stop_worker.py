"""torchrun worker for test_stop_agreement: rank 1 is asked to stop at step 30; both ranks must stop on
the same step, meeting far less often than once per step."""

import json
import sys
import time
from pathlib import Path

import torch

from dtrain.dist import distributed
from dtrain.preemption import StopRequest

out = Path(sys.argv[1])
with distributed("cpu") as ds:
    req = StopRequest(out, ds, check_every_s=0.2)
    stopped = None
    for step in range(1, 400):
        time.sleep(0.01)
        if ds.rank == 1 and step == 30:
            req.received = "SIGUSR1"
        reason = req.agreed(torch.device("cpu"), step)
        if reason:
            stopped = (step, reason)
            break
    req.done()
    (out / f"rank{ds.rank}.json").write_text(json.dumps({"step": stopped[0], "reason": stopped[1],
                                                         "meetings": req.meetings}))
