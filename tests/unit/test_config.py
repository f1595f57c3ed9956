"""Config: typed loading, overrides, and one clear line per problem (read by the tests)."""

from __future__ import annotations

import pytest

from dtrain.config import ConfigError, dump_yaml, load_config, parse_override

VISION = "recipes/vision/config.yaml"


def problems(path, *overrides):
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return info.value.problems


def test_loads_and_types_overrides():
    cfg = load_config(VISION, ["optim.lr=1e-4", "train.compile=true", "train.max_steps=7", "task.widths=[8,16]"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.train.compile is True and cfg.train.max_steps == 7
    assert cfg.task.widths == (8, 16)
    assert load_config(VISION, ["train.compile=max-autotune"]).train.compile == "max-autotune"
    assert load_config(VISION, ["train.grad_clip=null"]).train.grad_clip is None


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(VISION, ["train.batch_size=5"])
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(cfg))
    assert load_config(saved) == cfg


def test_unknown_key_suggests_the_right_one():
    assert problems(VISION, "train.batch_sise=4") == [
        "train.batch_sise: unknown key; did you mean train.batch_size?"]
    assert problems(VISION, "task.widht=[4]") == ["task.widht: unknown key; did you mean task.widths?"]


def test_wrong_types_name_the_key():
    assert problems(VISION, "train.batch_size=abc") == ["train.batch_size: expected int, got 'abc'"]
    assert problems(VISION, "train.batch_size=2.5") == ["train.batch_size: expected int, got 2.5"]
    assert problems(VISION, "train.precision=fp8") == [
        "train.precision: must be one of 'fp32', 'bf16', 'fp16', 'auto', got 'fp8'"]
    assert problems(VISION, "optim.betas=[0.9]") == ["optim.betas: expected 2 values, got 1"]


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: must be > 0, got 0"),
    ("train.batch_size=-3", "train.batch_size: must be > 0, got -3"),
    ("train.grad_accum_steps=0", "train.grad_accum_steps: must be > 0, got 0"),
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=-1e-3", "optim.lr: must be > 0, got -0.001"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last: must be >= 1, got 0"),
    ("train.compile=fastest", "train.compile: unknown mode 'fastest'; use true, false or one of "
                              "['default', 'max-autotune', 'max-autotune-no-cudagraphs', 'reduce-overhead']"),
    ("task.val_fraction=1.5", "task.val_fraction: must be between 0 and 1, got 1.5"),
])
def test_impossible_values(override, message):
    assert problems(VISION, override) == [message]


def test_every_problem_is_reported_at_once():
    found = problems(VISION, "train.batch_size=0", "optim.lr=-1", "train.epocs=3")
    assert len(found) == 3
    assert any(p.startswith("train.epocs: unknown key; did you mean train.epochs?") for p in found)


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: vision\ntrain:\n  batch_size: [1, 2\n")
    [msg] = problems(bad)
    assert str(bad) in msg and "malformed YAML" in msg and "line" in msg


def test_missing_file_and_missing_recipe(tmp_path):
    assert problems(tmp_path / "nope.yaml") == [f"config file {tmp_path / 'nope.yaml'} does not exist"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("seed: 1\n")
    assert problems(empty) == ["recipe: missing; name the recipe to run, e.g. recipe: vision"]
    [msg] = problems(VISION, "recipe=visoin")
    assert msg.startswith("recipe: cannot load 'visoin'")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("train.batch_size")


def test_yaml_is_read_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("recipe: !!python/object/apply:os.system ['echo pwned']\n")
    [msg] = problems(evil)
    assert "malformed YAML" in msg


def test_unexpected_errors_are_said_without_exception_class_names(tmp_path):
    from dtrain.messages import plain

    missing = tmp_path / "gone.csv"
    try:
        open(missing)
    except OSError as exc:
        assert plain(exc) == f"no such file or directory ({missing})"
    line = plain(KeyError("x"))
    assert "KeyError" not in line and "--debug" in line
    from dtrain.checkpoint import CheckpointError

    assert plain(CheckpointError("checkpoint x is corrupted")) == "checkpoint x is corrupted"  # dtrain's own: as is


def test_a_config_path_that_is_a_directory_or_not_utf8_is_one_plain_line(tmp_path):
    from dtrain.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="is a directory; give the YAML file"):
        load_config(str(tmp_path), [])
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"recipe: mlp\n\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 12\)"):
        load_config(str(bad), [])


def test_every_shipped_config_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    configs = sorted(root.glob("recipes/*/config*.yaml")) + sorted(root.glob("examples/*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        if "own_recipe" in path.name:
            continue  # its recipe module lives beside it, imported by path at run time
        cfg = load_config(path)
        assert cfg.recipe and cfg.output_dir, path
