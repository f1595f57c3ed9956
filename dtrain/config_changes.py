"""A resume continues the run its checkpoint came from, so it must use that run's settings.

Every checkpoint records the settings that decide its numbers (`result_settings`); a start that
would resume it with other values is refused in one line listing them (old -> new), unless
`checkpoint.allow_changes: true` says the change is meant (extending a finished run, a new learning
rate). Settings that only decide where and how results are written or watched (below) may change
freely; a resume names the ones that did.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dtrain.checkpoint import CheckpointError, CheckpointManager, load_file
from dtrain.config import RunConfig, to_dict
from dtrain.redact import redact

# Dotted keys (or their prefixes) that leave every weight and every metric of the run as it was.
FREE_TO_CHANGE = (
    "output_dir", "checkpoint.", "logging.", "profile.", "fault_injection.", "dist.timeout_s",
    "dist.watchdog_timeout_s", "train.log_every", "train.sanity_eval_batches",
    # How faults are detected and survived; ft.enabled and ft.replica_groups decide the batches: recorded.
    "ft.min_replicas", "ft.heartbeat_timeout_ms", "ft.join_timeout_s", "ft.timeout_s", "ft.quorum_timeout_s",
    "ft.quorum_retries", "ft.max_restarts", "ft.finish_grace_s", "ft.record_steps",
)


class SettingsChanged(CheckpointError):
    """A resume with settings that change results, not allowed: bad input (exit 2)."""

    bad_input = True


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _free(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in FREE_TO_CHANGE)


def all_settings(cfg: RunConfig) -> dict[str, Any]:
    """Every setting as {dotted key: value}, secrets masked."""
    return _flat(redact(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg))


def result_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings that decide the run's numbers (what a checkpoint records)."""
    return {k: v for k, v in all_settings(cfg).items() if not _free(k)}


def _show(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def describe(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key old -> new' for every key whose value differs (or that only one side has)."""
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if key.startswith("data.") and isinstance(a, dict) and isinstance(b, dict):  # a sharded data set
            from dtrain.shards import describe_data

            lines += [f"{key}: {change}" for change in describe_data(a, b)]
        elif a != b:
            lines.append(f"{key} {'(unset)' if a is missing else _show(a)} -> {'(unset)' if b is missing else _show(b)}")
    return lines


def check_resume(path: Path, recorded: dict[str, Any] | None, settings: dict[str, Any], allow: bool,
                 is_main: bool) -> list[str]:
    """The settings that differ from those checkpoint `path` recorded, if `allow`; else, if any differ,
    raise one error naming them (old -> new). A checkpoint that recorded none (older) passes. A key it did
    not record (added to dtrain since) counts as recorded at its default: a new key alone must not refuse
    every older run."""
    if recorded is not None:
        defaults = {k: v for k, v in result_settings(RunConfig(recipe="-")).items() if not k.startswith("task")}
        recorded = {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded}
    changed = describe(recorded, settings) if recorded is not None else []
    if changed and not allow:
        exc = SettingsChanged(
            f"{path} was written with other settings: {'; '.join(changed)}. Resume with the settings that wrote "
            "it, add checkpoint.allow_changes=true to go on with the new ones, or choose another output_dir")
        exc.echo = not is_main  # rank 0 says it for every rank
        raise exc
    return changed


def record_config(run_dir: Path, cfg: RunConfig) -> list[str]:
    """config.yaml: the config the run now goes on with; configs/start_NNN.yaml: every start's, kept
    (a start that resumes never overwrites the record of the settings that wrote the checkpoints).
    Returns the free settings that changed since the previous start ('key old -> new')."""
    from dtrain.config import dump_yaml, read_yaml

    text = dump_yaml(cfg)
    current = run_dir / "config.yaml"
    changed = []
    if current.is_file():
        try:
            before = all_settings(read_yaml(current))
        except Exception:  # an unreadable old record is replaced; it decides nothing
            before = {}
        now = all_settings(cfg)
        changed = describe({k: v for k, v in before.items() if _free(k) and k != "output_dir"},
                           {k: v for k, v in now.items() if _free(k) and k != "output_dir"})
    history = run_dir / "configs"
    history.mkdir(parents=True, exist_ok=True)
    n = 1 + sum(1 for _ in history.glob("start_*.yaml"))
    (history / f"start_{n:03d}.yaml").write_text(text, encoding="utf-8")
    current.write_text(text, encoding="utf-8")
    return changed


def check_before_start(cfg: RunConfig) -> None:
    """Preflight: the checkpoint a start would resume agrees with its settings (one line, before any
    process starts). The trainer checks again what it really loads; a damaged file is its to report."""
    resume = cfg.checkpoint.resume
    if resume == "none" or cfg.checkpoint.allow_changes:
        return
    path = (CheckpointManager(Path(cfg.output_dir) / "checkpoints", None).newest_complete()  # type: ignore[arg-type]
            if resume == "auto" else Path(resume))
    if path is None:
        return
    try:
        meta = CheckpointManager.read_meta(path) or {}
        recorded = load_file(path / "train_state.pt", meta.get("sha256", {}).get("train_state.pt")).get("config")
    except (CheckpointError, AttributeError):
        return
    recorded = {k: v for k, v in (recorded or {}).items() if not k.startswith("data.")}  # the trainer checks data
    check_resume(path, recorded, result_settings(cfg), False, True)
