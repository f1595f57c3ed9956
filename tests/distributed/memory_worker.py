"""Run by test_memory under torchrun: per-rank peak host memory of one phase of a real run (a save, an
accumulation window), measured against the resident memory just before it. argv[1] is the JSON file rank 0
writes, argv[2] the output directory, argv[3] a JSON list of scenarios to run (default: all).

Peaks as tests/memtrack.py measures them (run it with its MALLOC_ENV). Every rank measures its own; the
ranks meet before and after each phase so none measures another's work.

    ds3_save   ZeRO-3 save of a 33 MB MLP (one layer frozen): `peak_save` in bytes per rank, and
               whether model.safetensors holds the frozen layer's real values.
    ds3_frozen ZeRO-3 with a frozen layer, tied to another, small: save, scramble, `load_model`, every
               weight back exact.
    fsdp_accum one accumulation window (2 micro-batches) under fsdp, with and without
               fsdp.sync_every_microbatch: `peak_window` per rank, and the two gradients compared.
    ddp_async  an async (dcp) save under ddp: `peak_save` per rank, the state's bytes, and a reload.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dtrain.checkpoint import read_weights
from dtrain.config import RunConfig, load_config
from dtrain.dcp import read_full_model
from dtrain.dist import DistState, barrier, distributed, gather_objects
from dtrain.recipe import BuildContext, Task
from dtrain.runner import build_trainer, resolve_recipe
from dtrain.trainer import Trainer
from tests.memtrack import Peak

CFG = "recipes/mlp/config.yaml"
MLP_TASK = ["task.in_dim=16", "task.num_classes=4", "task.num_train=64", "task.num_val=0"]
BIG = (512, 32)  # 33 MB of fp32 parameters in 33 layers: one layer is 0.03x of the model
BIG_TASK = [f"task.hidden={BIG[0]}", f"task.depth={BIG[1]}"]
QUIET = ["train.log_every=1000", "dist.watchdog_timeout_s=null", "checkpoint.resume=none",
         "checkpoint.every_epoch=false", "train.batch_size=4"]


def mlp_param_bytes(cfg: RunConfig) -> int:
    t = cfg.task
    return 4 * (t.in_dim * t.hidden + t.hidden + (t.depth - 1) * (t.hidden**2 + t.hidden) + t.hidden * t.num_classes
                + t.num_classes)


def trainer_for(ds: DistState, out: Path, name: str, overrides: list[str]) -> tuple[RunConfig, Trainer]:
    cfg = load_config(CFG, [*MLP_TASK, *QUIET, *overrides, f"output_dir={out / name}"])
    return cfg, build_trainer(cfg, ds)


FROZEN = "net.3"
"""The second Linear (hidden x hidden): above ZeRO-3's persistence threshold (1e5 elements), so partitioned.
A smaller parameter stays whole on every rank and would not show how frozen ones are saved."""


TIED = "net.6"
"""With depth >= 3, a hidden x hidden Linear whose weight is tied to FROZEN's (as an LM head to its embedding)."""


def frozen_layer(task: Task, tie: bool) -> None:
    """The recipe's model with one Linear frozen (a frozen embedding, a frozen backbone), and with `tie`
    another Linear sharing its weight: saved under both names, assembled once."""
    build = task.model

    def model():
        m = build()
        m.get_submodule(FROZEN).requires_grad_(False)
        if tie:
            m.get_submodule(TIED).weight = m.get_submodule(FROZEN).weight
        return m

    task.model = model


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every ZeRO-3 parameter whole (collective), by name: the reference a save must reproduce."""
    import deepspeed

    out = {}
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            out[name] = p.detach().float().clone()
    return out


def ds3(ds: DistState, out: Path, name: str, hidden: int, depth: int, measure: bool) -> dict:
    cfg = load_config(CFG, [*MLP_TASK, *QUIET, f"task.hidden={hidden}", f"task.depth={depth}",
                            "strategy=deepspeed", "deepspeed.stage=3", f"output_dir={out / name}"])
    task = resolve_recipe(cfg.recipe).build(cfg.task, BuildContext(dist=ds, seed=cfg.seed, output_dir=out / name))
    frozen_layer(task, tie=not measure)
    trainer = build_trainer(cfg, ds, task)
    result = {"param_bytes": mlp_param_bytes(cfg)}
    try:
        ref = gathered(trainer.model)
        barrier(ds)
        with Peak() as peak:
            path = trainer.save_checkpoint()
        barrier(ds)
        result["peak_save"] = gather_objects(peak.bytes, ds)
        if ds.is_main:
            saved = read_weights(path)
            result["frozen_saved_shape"] = list(saved[f"{FROZEN}.weight"].shape)
            result["saved_equal"] = all(torch.equal(saved[k], v) for k, v in ref.items())
            if not measure:
                result["tied_saved"] = torch.equal(saved[f"{TIED}.weight"], ref[f"{FROZEN}.weight"])
        if not measure:  # the round trip: scramble every weight, load the saved ones back, compare
            import deepspeed

            for p in trainer.model.parameters():
                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    if ds.is_main:
                        p.data.fill_(7.0)
            try:
                trainer.strategy.load_model(path / "state")
                back = gathered(trainer.model)
                result["loaded_equal"] = all(torch.equal(back[k], v) for k, v in ref.items())
            except RuntimeError as exc:  # an empty saved tensor does not fit
                result["loaded_equal"] = str(exc).splitlines()[0]
            result["frozen"] = not any(p.requires_grad for p in trainer.model.get_submodule(FROZEN).parameters())
    finally:
        trainer.strategy.close()
    return result


def fsdp_accum(ds: DistState, out: Path) -> dict:
    cfg, trainer = trainer_for(ds, out, "fsdp_accum", ["strategy=fsdp", *BIG_TASK,
                                                       "train.grad_accum_steps=2"])
    model, strategy = trainer.model, trainer.strategy
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, cfg.task.in_dim, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)]
    result: dict = {"param_bytes": mlp_param_bytes(cfg), "peak_window": {}}
    grads = {}

    def window() -> None:
        for i, (x, y) in enumerate(batches):  # as Trainer._train_step drives it
            with strategy.sync(last=i == len(batches) - 1):
                loss = torch.nn.functional.cross_entropy(trainer.train_model(x), y) / len(batches)
                strategy.backward(loss)

    window()  # FSDP's lazy initialisation and first buffers are not the window's cost
    strategy.zero_grad()
    for every in (True, False):
        cfg.fsdp.sync_every_microbatch = every
        barrier(ds)
        with Peak() as peak:
            window()
        barrier(ds)
        result["peak_window"][str(every).lower()] = gather_objects(peak.bytes, ds)
        grads[every] = [p.grad.to_local().clone() for p in model.parameters()]
        strategy.zero_grad()
    # The same sum, reduced per micro-batch or once: equal up to the order of float additions.
    result["grads_close"] = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads[True], grads[False]))
    result["grads_close"] = all(gather_objects(result["grads_close"], ds))
    strategy.close()
    return result


def ddp_async(ds: DistState, out: Path) -> dict:
    cfg, trainer = trainer_for(ds, out, "ddp_async", ["strategy=ddp", "checkpoint.async=true", *BIG_TASK,
                                                      "train.max_steps=1"])
    model, optimizer = trainer.model, trainer.optimizer
    x, y = torch.randn(4, cfg.task.in_dim), torch.randint(0, 4, (4,))
    torch.nn.functional.cross_entropy(trainer.train_model(x), y).backward()
    optimizer.step()  # AdamW's state exists: the state is model + 2x model
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state_bytes += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    barrier(ds)
    with Peak() as peak:
        path = trainer.save_checkpoint()
        trainer.ckpt.finish()  # the background write has ended: the staged copy is gone
    barrier(ds)
    result = {"state_bytes": state_bytes, "peak_save": gather_objects(peak.bytes, ds)}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    trainer.strategy.load_state(path / "state")
    result["reloaded_equal"] = all(gather_objects(all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), ds))
    if ds.is_main:  # every tensor whole in the checkpoint, whoever wrote it: one process reads them all
        whole = read_full_model(path / "state")
        result["one_process_equal"] = whole.keys() == before.keys() and all(torch.equal(whole[k], v) for k, v in before.items())
    trainer.strategy.close()
    return result


SCENARIOS = {
    "ds3_save": lambda ds, out: ds3(ds, out, "ds3_save", hidden=BIG[0], depth=BIG[1], measure=True),
    "ds3_frozen": lambda ds, out: ds3(ds, out, "ds3_frozen", hidden=400, depth=3, measure=False),
    "fsdp_accum": fsdp_accum,
    "ddp_async": ddp_async,
}

if __name__ == "__main__":
    target, out = Path(sys.argv[1]), Path(sys.argv[2])
    names = json.loads(sys.argv[3]) if len(sys.argv) > 3 else list(SCENARIOS)
    with distributed("cpu") as ds:
        results = {}
        for name in names:
            results[name] = SCENARIOS[name](ds, out)
            barrier(ds)
            print(f"[memory_worker] {name}: {results[name]}", flush=True)
        if ds.is_main:
            target.write_text(json.dumps(results, indent=1))
