from __future__ import annotations

import time

import torch

from dtrain.dist import DistState
from dtrain.watchdog import Watchdog

ONE_RANK = DistState(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"),
                     launcher="single")


def _warm_watchdog(tmp_path, watch_compiles: bool) -> Watchdog:
    wd = Watchdog(tmp_path, ONE_RANK, timeout_s=30, slow_limit_s=600, watch_compiles=watch_compiles).start()
    wd.beat(1, 0, "forward")
    wd.beat(2, 0, "forward")  # past the first step: the warm limit applies
    return wd


def test_a_compile_gets_the_slow_limit_at_any_step(tmp_path):
    from torch._dynamo.callback import CallbackTrigger, callback_handler

    wd = _warm_watchdog(tmp_path, watch_compiles=True)
    try:
        assert wd._limit() == 30
        # What Dynamo does around every compile and recompile (and a deferred backward compile).
        with callback_handler.install_callbacks(CallbackTrigger.DYNAMO, "0/1"):
            assert wd._limit() == 600
            before_end = time.monotonic()
        assert wd._limit() == 30
        assert wd._last >= before_end  # the clock restarts when the compile ends, not at the last beat
    finally:
        wd.stop()
    assert wd._compile_started not in callback_handler.start_callbacks
    assert wd._compile_ended not in callback_handler.end_callbacks


def test_without_compile_nothing_is_registered(tmp_path):
    from torch._dynamo.callback import CallbackTrigger, callback_handler

    before = (list(callback_handler.start_callbacks), list(callback_handler.end_callbacks))
    wd = _warm_watchdog(tmp_path, watch_compiles=False)
    try:
        assert (callback_handler.start_callbacks, callback_handler.end_callbacks) == before
        with callback_handler.install_callbacks(CallbackTrigger.DYNAMO, "0/0"):
            assert wd._limit() == 30
    finally:
        wd.stop()
