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


def _run(path, curve, test, head_init=None, seed=0):
    import json

    import yaml

    path.mkdir(parents=True)
    path.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({"kind": "eval", "epoch": e, "accuracy": a / 100}) + "\n" for e, a in enumerate(curve, 1)))
    path.joinpath("test_report.json").write_text(json.dumps({"accuracy": test / 100}))
    task = {"pooling": "mean"} if head_init is None else {"pooling": "mean", "head_init": head_init}
    path.joinpath("config.yaml").write_text(yaml.safe_dump({"seed": seed, "task": task}))
    return path


def test_head_init_is_judged_by_the_same_rule_and_old_runs_count_as_random(tmp_path):
    from recipes.ticket_router.sweep import head_init_table, run_head_init, seed_table

    random = {"x": _run(tmp_path / "r" / "x", [90.0, 95.0], 91.0), "y": _run(tmp_path / "r" / "y", [93.0, 94.0], 90.0)}
    probe = {"x": _run(tmp_path / "p" / "x", [95.3, 95.1], 92.0, "probe"),
             "y": _run(tmp_path / "p" / "y", [93.9, 93.5], 92.5, "probe")}
    assert run_head_init(random["x"]) == "random"  # written before task.head_init existed
    lines, chosen = head_init_table({"random": random, "probe": probe}, ["x", "y"])
    assert chosen == "probe"  # worst-set regret 0.1 (y) against 0.3 (x): test accuracy plays no part
    assert "| 0.30 |" in lines[2] and "| 0.10 |" in lines[3] and "(**95.30**, epoch 1)" in lines[3]
    again = _run(tmp_path / "s1" / "y", [94.4, 94.0], 93.0, "probe", seed=1)
    assert seed_table([again, probe["y"]])[2:] == ["| y | probe | 0 | 93.90 (1) | 92.50 |",
                                                   "| y | probe | 1 | 94.40 (1) | 93.00 |"]
