"""A rank under torchrun stops when its launcher dies.

torchrun starts every rank in a session of its own, so when the launcher is killed outright
(`kill -9`, the OOM killer) nothing reaches the ranks: they would train on unseen, writing checkpoints
beside the rerun the user starts next. The kernel reparents an orphan, so a rank whose parent pid
changes has lost its launcher. (PR_SET_PDEATHSIG would fire when the launcher's *thread* that started
the rank ends, and needs ctypes; a poll twice a second costs nothing.)
"""

from __future__ import annotations

import os
import sys
import threading
import time

EXIT_ORPHANED = 1


def stop_with_launcher(rank: int, poll_s: float = 0.5) -> threading.Thread:
    """Watch, from a daemon thread, for this process's parent (the torchrun agent) to go; then exit at
    once. Checkpoints are written whole or not at all, so the newest complete one is what a rerun uses."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"dtrain: error: rank {rank}: its launcher (torchrun, pid {parent}) has gone; stopping. "
                      "Run the same command to continue from the newest complete checkpoint",
                      file=sys.stderr, flush=True)
                os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=watch, name="dtrain-lifeline", daemon=True)
    thread.start()
    return thread
