"""strategy / fsdp / deepspeed keys: unsupported combinations refused in one line each, and dtrain's keys
mapped onto the DeepSpeed config with a raw JSON that may add to them but never contradict them."""

from __future__ import annotations

import json

import pytest
import torch

from dtrain.config import ConfigError, load_config
from dtrain.precision import Precision
from dtrain.strategies.deepspeed import cpu_adam_kwargs, deepspeed_config

CFG = "recipes/mlp/config.yaml"


def problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(CFG, list(overrides))
    return info.value.problems


@pytest.mark.parametrize("overrides, expected", [
    (["strategy=fsdp", "train.precision=fp16"], "train.precision: fp16 with strategy fsdp"),
    (["strategy=fsdp", "checkpoint.format=torch"], "checkpoint.format: torch cannot hold fsdp shards"),
    (["strategy=deepspeed", "checkpoint.async=true"], "checkpoint.async: not available with strategy deepspeed"),
    (["strategy=deepspeed", "deepspeed.offload_params=true"], "deepspeed.offload_params: needs deepspeed.stage=3"),
    (["deepspeed.config=ds.json"], "deepspeed.config: given, but strategy is ddp"),
    (["checkpoint.async=true", "checkpoint.format=torch"], "checkpoint.async: needs checkpoint.format dcp"),
    (["strategy=zero"], "strategy: must be one of 'ddp', 'fsdp', 'deepspeed'"),
    (["strategy=deepspeed", "deepspeed.stage=4"], "deepspeed.stage: must be one of 1, 2, 3"),
    (["strategy=deepspeed", "deepspeed.offload_optimizer=true", "optim.name=sgd"],
     "deepspeed.offload_optimizer: steps DeepSpeed's CPU Adam, but optim.name is 'sgd'"),
])
def test_unsupported_combinations_are_refused_in_one_line(overrides, expected):
    found = problems(*overrides)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_checkpoint_format_follows_strategy_and_async():
    fmt = lambda *o: load_config(CFG, list(o)).checkpoint_format  # noqa: E731
    assert (fmt(), fmt("checkpoint.async=true"), fmt("strategy=fsdp"), fmt("strategy=deepspeed")) == (
        "torch", "dcp", "dcp", "deepspeed")
    assert load_config(CFG, ["checkpoint.async=true"]).checkpoint.async_save is True


def test_dtrain_keys_become_the_deepspeed_config(tmp_path):
    cfg = load_config(CFG, ["strategy=deepspeed", "deepspeed.stage=3", "deepspeed.offload_params=true",
                            "deepspeed.offload_optimizer=true", "train.batch_size=4", "train.grad_accum_steps=3",
                            "train.grad_clip=0.5", "train.precision=bf16"])
    ds = deepspeed_config(cfg, world_size=2, precision="bf16")
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 3, 24)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                       "offload_param": {"device": "cpu"}}
    assert "optimizer" not in ds and "scheduler" not in ds  # dtrain's own optimizer and schedule


def test_deepspeed_runs_in_the_precision_dtrain_resolved(monkeypatch):
    """`precision: auto` (both ticket-router configs) is bf16 on a GPU with bf16 units; DeepSpeed must get
    that resolved mode, not the literal `auto` (which enabled neither bf16 nor fp16: fp32 weights under
    dtrain's bf16 autocast)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cfg = load_config(CFG, ["strategy=deepspeed", "train.precision=auto"])
    mode = Precision(cfg.train.precision, torch.device("cuda", 0)).mode
    assert mode == "bf16"
    ds = deepspeed_config(cfg, world_size=8, precision=mode)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert deepspeed_config(cfg, world_size=8, precision="fp16")["fp16"] == {"enabled": True}


def test_offloaded_optimizer_is_deepspeeds_cpu_adam_with_dtrains_settings():
    cfg = load_config(CFG, ["strategy=deepspeed", "deepspeed.offload_optimizer=true", "optim.lr=3e-4",
                            "optim.betas=[0.8,0.95]"])
    ds = deepspeed_config(cfg, world_size=1, precision="fp32")
    # DeepSpeed then insists on its own CPU optimizer (its default), rather than stepping torch's AdamW there.
    assert "zero_force_ds_cpu_optimizer" not in ds
    assert cpu_adam_kwargs(cfg) == {"lr": 3e-4, "betas": (0.8, 0.95), "adamw_mode": True}


def _with_json(tmp_path, raw) -> list[str]:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(raw) if not isinstance(raw, str) else raw)
    cfg = load_config(CFG, ["strategy=deepspeed", f"deepspeed.config={path}", "train.batch_size=4"])
    with pytest.raises(ConfigError) as info:
        deepspeed_config(cfg, world_size=1, precision="fp32")
    return info.value.problems


def test_raw_json_adds_but_never_contradicts(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": "auto",
                                "zero_optimization": {"stage": 2, "overlap_comm": True}, "communication_data_type": "fp32"}))
    cfg = load_config(CFG, ["strategy=deepspeed", f"deepspeed.config={path}", "train.batch_size=4"])
    ds = deepspeed_config(cfg, world_size=1, precision="fp32")
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True} and ds["communication_data_type"] == "fp32"
    assert ds["gradient_accumulation_steps"] == 1  # "auto" takes dtrain's value

    found = _with_json(tmp_path, {"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 3}})
    assert len(found) == 2
    assert "sets train_micro_batch_size_per_gpu=16 but dtrain's config gives 4" in found[0]
    assert "sets zero_optimization.stage=3 but dtrain's config gives 2" in found[1]
    assert "sets 'optimizer', which dtrain owns" in _with_json(tmp_path, {"optimizer": {"type": "Adam"}})[0]
    assert "is not valid JSON" in _with_json(tmp_path, "{not json")[0]
