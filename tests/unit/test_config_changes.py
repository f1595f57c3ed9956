"""Which settings a checkpoint records, and how a changed one is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtrain.config import load_config
from dtrain.config_changes import SettingsChanged, check_resume, describe, result_settings

CFG = "recipes/mlp/config.yaml"


def test_a_checkpoint_records_what_decides_the_numbers_and_nothing_else():
    settings = result_settings(load_config(CFG, ["output_dir=/x", "fault_injection.hold_at=3:data"]))
    assert settings["optim.lr"] == 3.0e-3 and settings["task.hidden"] == 64 and settings["seed"] == 0
    assert settings["train.epochs"] == 3 and "strategy" in settings and "train.precision" in settings
    free = ("output_dir", "checkpoint.keep_last", "checkpoint.every_steps", "logging.wandb", "train.log_every",
            "dist.watchdog_timeout_s", "fault_injection.hold_at", "profile.enabled")
    assert not [k for k in settings if k in free or k.startswith(("checkpoint.", "logging.", "fault_injection."))]


def test_changes_are_named_old_to_new():
    old = result_settings(load_config(CFG, []))
    new = result_settings(load_config(CFG, ["optim.lr=0.01", "train.max_steps=9", "train.log_every=3"]))
    assert describe(old, new) == ["optim.lr 0.003 -> 0.01", "train.max_steps null -> 9"]
    assert describe(old, old) == []
    assert describe({"a": 1}, {"b": "x"}) == ["a 1 -> (unset)", "b (unset) -> 'x'"]


def test_a_changed_resume_is_refused_unless_allowed():
    old = result_settings(load_config(CFG, []))
    new = result_settings(load_config(CFG, ["task.hidden=32"]))
    with pytest.raises(SettingsChanged, match=r"step_7 was written with other settings: task.hidden 64 -> 32\. "
                                              r".*checkpoint.allow_changes=true"):
        check_resume(Path("step_7"), old, new, allow=False, is_main=True)
    assert check_resume(Path("step_7"), old, new, allow=True, is_main=True) == ["task.hidden 64 -> 32"]
    assert check_resume(Path("step_7"), None, new, allow=False, is_main=True) == []  # an older checkpoint


def test_a_key_added_since_the_checkpoint_counts_at_its_default():
    """fsdp.sync_every_microbatch arrived after runs were checkpointed: at its default it changes nothing;
    set otherwise it is named."""
    new = result_settings(load_config(CFG, []))
    old = {k: v for k, v in new.items() if k != "fsdp.sync_every_microbatch"}
    assert check_resume(Path("step_7"), old, new, allow=False, is_main=True) == []
    off = result_settings(load_config(CFG, ["fsdp.sync_every_microbatch=false"]))
    assert check_resume(Path("step_7"), old, off, allow=True, is_main=True) == ["fsdp.sync_every_microbatch True -> False"]
