"""The sweep's reading of whole validation curves: where early stopping would have ended a run, what it kept."""

from __future__ import annotations

from recipes.ticket_router.sweep import choose, stopped

HWU64_LR1E4 = [90.26, 91.14, 92.22, 93.8, 92.91, 93.21, 93.6, 94.19, 93.7, 93.8]  # SWEEP.md's whole 10-epoch run


def test_patience_read_off_a_whole_curve():
    assert stopped(HWU64_LR1E4, None) == (94.19, 8, 10)
    assert stopped(HWU64_LR1E4, 2) == (93.8, 4, 6)  # stopped in the plateau, before the decay paid off
    assert stopped(HWU64_LR1E4, 3) == (93.8, 4, 7)
    assert stopped(HWU64_LR1E4, 4) == (94.19, 8, 10)
    assert stopped([1.0, 1.0, 1.0], 2) == (1.0, 1, 3)  # an equal value is no improvement (dtrain's rule)


def test_the_smallest_worst_set_regret_wins():
    acc = {"a": {"x": 95.0, "y": 92.0}, "b": {"x": 94.5, "y": 93.0}, "c": {"x": 94.0, "y": 93.1}}
    chosen, regret = choose(acc)
    assert chosen == "b" and round(regret["a"], 6) == 1.1 and round(regret["c"], 6) == 1.0
