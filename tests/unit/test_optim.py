from __future__ import annotations

import math

import pytest
import torch

from dtrain.config import OptimConfig
from dtrain.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_then_cosine_to_the_floor():
    f = lambda s: lr_factor(s, warmup=10, total=110, schedule="cosine", min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_linear_and_constant():
    assert lr_factor(50, warmup=0, total=100, schedule="linear", min_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(99, warmup=0, total=100, schedule="constant", min_ratio=0.0) == 1.0


def test_scheduler_steps_per_optimizer_step_and_state_is_plain_data(tmp_path):
    model = torch.nn.Linear(3, 2)
    cfg = OptimConfig(lr=0.1, warmup_steps=2, schedule="cosine")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.05, 0.1])
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["last_epoch"] == 3
    # no weight decay on biases
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]
    assert math.isclose(build_optimizer(model, OptimConfig(weight_decay=0.5)).param_groups[0]["weight_decay"], 0.5)


def test_lr_scale_gives_a_head_its_own_rate_and_the_schedule_scales_every_group():
    body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    model = torch.nn.ModuleDict({"body": body, "classifier": head})
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=0, schedule="linear")
    plain = build_optimizer(model, cfg)
    assert len(plain.param_groups) == 2  # the layout of runs without lr_scale, as checkpoints hold it
    opt = build_optimizer(model, cfg, lambda name: 10.0 if name.startswith("classifier.") else 1.0)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(head.weight)]["lr"] == pytest.approx(1e-2) and by_param[id(head.weight)]["weight_decay"] == 0.1
    assert by_param[id(head.bias)]["lr"] == pytest.approx(1e-2) and by_param[id(head.bias)]["weight_decay"] == 0.0
    assert by_param[id(body.weight)]["lr"] == pytest.approx(1e-3) and by_param[id(body.bias)]["weight_decay"] == 0.0
    sched = build_scheduler(opt, cfg, total_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert by_param[id(head.weight)]["lr"] == pytest.approx(10 * by_param[id(body.weight)]["lr"]) == pytest.approx(5e-3)
