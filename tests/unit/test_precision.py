from __future__ import annotations

import pytest
import torch

from dtrain.precision import Precision


def test_bf16_autocast_on_cpu():
    p = Precision("bf16", torch.device("cpu"))
    a = torch.randn(4, 4)
    with p.autocast():
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32


def test_fp32_changes_nothing():
    p = Precision("fp32", torch.device("cpu"))
    with p.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert p.scaler is None and p.state_dict() == {}


def test_fp16_scaler_skips_a_non_finite_step_and_unscales_before_clipping():
    p = Precision("fp16", torch.device("cpu"))
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=1.0)
    scale = p.scaler.get_scale()
    p.backward((w * torch.tensor([1.0, 2.0, 3.0])).sum())
    p.unscale_(opt)
    assert torch.equal(w.grad, torch.tensor([1.0, 2.0, 3.0]))  # true magnitudes before clipping
    p.step(opt)
    assert torch.equal(w.detach(), torch.tensor([0.0, -1.0, -2.0]))
    opt.zero_grad()
    p.backward((w * float("inf")).sum())
    before = w.detach().clone()
    p.step(opt)  # skipped, scale backed off
    assert torch.equal(w.detach(), before) and p.scaler.get_scale() < scale


@pytest.mark.parametrize("capability, mode", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((8, 9), "bf16"),
                                              ((9, 0), "bf16")])
def test_auto_takes_bf16_only_where_the_gpu_has_it(monkeypatch, capability, mode):
    # V100 (7.0) and T4 (7.5) only emulate bf16, yet torch.cuda.is_bf16_supported() says True there.
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert Precision("auto", torch.device("cuda", 0)).mode == mode


def test_auto_is_fp32_on_the_cpu():
    assert Precision("auto", torch.device("cpu")).mode == "fp32"


def test_a_skip_flag_skips_a_fused_step_on_the_device_without_a_host_sync():
    """The non-finite guard's decision stays a tensor: the fused optimizer reads it, nobody calls .item()."""
    from dtrain.synccount import SyncCounter

    p = Precision("fp32", torch.device("cpu"))
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)
    w.grad = torch.ones(3)
    with SyncCounter() as counter:
        p.step(opt, skip=torch.ones(()))
        assert torch.equal(w.detach(), torch.ones(3)) and not hasattr(opt, "found_inf")
        p.step(opt, skip=torch.zeros(()))
    assert not torch.equal(w.detach(), torch.ones(3))
    assert opt.state[w]["step"].item() == 1  # the skipped step did not count
    assert not [e for e in counter.events if e.kind == "sync"], counter.events
