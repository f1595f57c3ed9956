"""The one-GPU device check: every recipe x strategy x precision x compile, each a short real run in one
process group (NCCL on a GPU, at world size 1: the same collectives as at 8 ranks), then a resume of each
strategy compared bit for bit against an unbroken run. Run it through benchmarks/gpu_check.sh.

    python -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/gpu_check.py --out DIR [--dry]

--dry: the CPU-only rehearsal CI runs (gloo, bf16, compile off) so the script is known to work before a
GPU is at hand. Every run is recorded (passed, failed with its error line, or refused by the config with
the config's own line) in DIR/gpu_check.json and a Markdown table; the exit code is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hostinfo import describe, device_name  # noqa: E402
from dtrain.checkpoint import read_weights  # noqa: E402
from dtrain.config import ConfigError, load_config  # noqa: E402
from dtrain.dist import barrier, distributed  # noqa: E402
from dtrain.runner import build_trainer  # noqa: E402
from dtrain.fault_injection import FaultInjected  # noqa: E402

RECIPES = {"mlp": "recipes/mlp/config.yaml", "vision": "recipes/vision/config.yaml",
           "ticket_router": "recipes/ticket_router/config.yaml"}
STRATEGIES = {"ddp": ["strategy=ddp"], "fsdp": ["strategy=fsdp"],
              "zero2": ["strategy=deepspeed", "deepspeed.stage=2"], "zero3": ["strategy=deepspeed", "deepspeed.stage=3"]}
STEPS = 6
SHORT = [f"train.max_steps={STEPS}", "train.eval_every=3", "checkpoint.every_steps=3", "checkpoint.every_epoch=false",
         "train.log_every=3", "logging.progress=lines", "checkpoint.resume=auto"]
RECIPE_ARGS = {"mlp": [], "vision": ["train.batch_size=32"],
               "ticket_router": ["task.max_length=32", "train.batch_size=16", "early_stopping.metric=null"]}


def tiny_text_model(where: Path) -> Path:
    """A 2-layer BERT for the ticket router, made here: the GPU machine has no MiniLM package and nothing may
    be downloaded. Its tokenizer is a word-level vocabulary of the shipped tickets, on every machine, so the
    CPU rehearsal takes the very path the GPU machine takes (a MiniLM-first path once broke only there)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizerFast

    from recipes.ticket_router.data import SHIPPED, load_tickets

    words = sorted({w for t in load_tickets(SHIPPED, None).texts for w in t.lower().split()})
    vocab = where / "vocab.txt"
    vocab.parent.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where


def ask_autocast_as_on_a_gpu() -> None:
    """The rehearsal's autocast, as DeepSpeed sees it on a GPU. DeepSpeed's forward asks
    `torch.is_autocast_enabled()`, which speaks of CUDA alone: on a GPU it finds dtrain's autocast and turns it
    off inside the engine, on a CPU it finds nothing and leaves the CPU autocast alone. Asked here of the CPU,
    the rehearsal meets what a GPU run meets (16-bit weights beside fp32 inputs broke every ZeRO run with
    float inputs on the first H200 check, while this rehearsal passed)."""
    ask = torch.is_autocast_enabled
    torch.is_autocast_enabled = lambda device_type=None: ask(device_type or "cpu")


def matrix(dry: bool) -> list[tuple[str, str, str, bool]]:
    precisions = ["bf16"] if dry else ["bf16", "fp16"]
    compiles = [False] if dry else [False, True]
    return [(r, s, p, c) for r in RECIPES for s in STRATEGIES for p in precisions for c in compiles]


def one_run(name: str, config: str, overrides: list[str], ds, crash: bool = False) -> dict:
    """Train one short run in the shared group; never raises (the next run must still get its turn)."""
    t0 = time.perf_counter()
    record: dict = {"name": name}
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        return {**record, "status": "refused", "detail": "; ".join(exc.problems)}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = None
    try:
        trainer = build_trainer(cfg, ds)
        metrics = trainer.fit()
        record.update(status="passed", val=metrics)
        memory = json.loads((Path(cfg.output_dir) / "memory.json").read_text())["ranks"][0]
        record["peak_mb"] = memory["train"].get("device_peak_mb", memory["train"]["host_peak_mb"])
    except FaultInjected:
        trainer.ckpt.abandon()
        record["status"] = "crashed on purpose"
    except Exception as exc:  # noqa: BLE001 - recorded; the check goes on
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        record.update(status="failed", detail=line, trace=traceback.format_exc(limit=-8))
        print(f"[gpu_check] {name} FAILED: {line}", flush=True)
    finally:
        del trainer
        gc.collect()
        barrier(ds)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu_check] {name}: {record['status']} ({record['seconds']} s)", flush=True)
    return record


def resume_check(strategy: str, base: list[str], tmp: Path, ds) -> dict:
    """Unbroken vs stopped at step 3 and resumed: the final weights must be equal bit for bit."""
    args = [*base, *STRATEGIES[strategy], "train.precision=bf16", "train.deterministic=true"]
    name = f"resume/{strategy}"
    whole = one_run(f"{name}/unbroken", RECIPES["mlp"], [*args, f"output_dir={tmp / name / 'a'}"], ds)
    one_run(f"{name}/first", RECIPES["mlp"], [*args, f"output_dir={tmp / name / 'b'}",
                                              "fault_injection.crash_after_step=3"], ds)
    resumed = one_run(f"{name}/resumed", RECIPES["mlp"], [*args, f"output_dir={tmp / name / 'b'}"], ds)
    record = {"name": name, "status": "failed"}
    if whole["status"] == resumed["status"] == "passed":
        a = read_weights(tmp / name / "a" / "checkpoints")
        b = read_weights(tmp / name / "b" / "checkpoints")
        same = set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        worst = max(((a[k].double() - b[k].double()).abs().max().item() for k in a if k in b), default=0.0)
        record.update(status="passed" if same else "failed", detail=f"max |diff| {worst:.3g}")
    else:
        record["detail"] = f"unbroken: {whole['status']}, resumed: {resumed['status']}"
    print(f"[gpu_check] {name}: {record['status']} ({record.get('detail')})", flush=True)
    return record


def report(records: list[dict], dry: bool) -> str:
    today = datetime.date.today().isoformat()
    lines = [f"# GPU check ({'dry run, CPU' if dry else 'one GPU'}), {today}", "",
             f"Machine: {describe()}. Device: {device_name()}. One rank, "
             f"{'gloo' if not torch.cuda.is_available() else 'NCCL'} process group; {STEPS} steps per run.", "",
             "| run | status | seconds | peak MiB | detail |", "| --- | --- | --- | --- | --- |"]
    for r in records:
        detail = r.get("detail") or ", ".join(f"{k}={v:.4g}" for k, v in (r.get("val") or {}).items()
                                              if isinstance(v, float))
        lines.append(f"| {r['name']} | {r['status']} | {r.get('seconds', '')} | {r.get('peak_mb', '')} | {detail} |")
    counts = {s: sum(r["status"] == s for r in records) for s in ("passed", "failed", "refused", "skipped")}
    lines += ["", f"{counts['passed']} passed, {counts['failed']} failed, {counts['refused']} refused by the config, "
                  f"{counts['skipped']} skipped (time)"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry", action="store_true", help="CPU rehearsal: gloo, bf16 only, compile off")
    parser.add_argument("--only", default="", help="run only the runs whose name contains this")
    args = parser.parse_args()
    if args.dry:
        ask_autocast_as_on_a_gpu()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name, \
            distributed("cpu" if args.dry else "cuda", timeout_s=300) as ds:
        tmp = Path(tmp_name)
        text_model = tiny_text_model(tmp / "tiny_bert") if ds.is_main else None
        barrier(ds)
        text_model = text_model or tmp / "tiny_bert"
        budget = float(os.environ.get("GPU_CHECK_BUDGET_S", "1e9"))
        deadline = time.monotonic() + budget
        jobs = [("run", r) for r in matrix(args.dry) if not r[3]] + [("resume", s) for s in STRATEGIES]
        # Compiles last (the slowest), one of each strategy first: a budget that ends early still saw each.
        order = {name: i for i, name in enumerate(RECIPES)}
        jobs += sorted((("run", r) for r in matrix(args.dry) if r[3]), key=lambda j: (j[1][2], order[j[1][0]]))
        for kind, job in jobs:
            name = f"resume/{job}" if kind == "resume" else "/".join(job[:3]) + ("/compile" if job[3] else "")
            if args.only not in name:
                continue
            if time.monotonic() > deadline:
                records.append({"name": name, "status": "skipped", "detail": f"past the {budget:.0f} s budget"})
            elif kind == "resume":
                records.append(resume_check(job, SHORT, tmp, ds))
            else:
                recipe, strategy, precision, compiled = job
                overrides = [*SHORT, *RECIPE_ARGS[recipe], *STRATEGIES[strategy], f"train.precision={precision}",
                             f"train.compile={str(compiled).lower()}", f"output_dir={tmp / name}"]
                if recipe == "ticket_router":
                    overrides.append(f"task.model_path={text_model}")
                records.append(one_run(name, RECIPES[recipe], overrides, ds))
    if ds.is_main:
        (out / "gpu_check.json").write_text(json.dumps({"machine": describe(), "device": device_name(),
                                                        "dry": args.dry, "runs": records}, indent=1) + "\n")
        (out / "gpu_check.md").write_text(report(records, args.dry))
        print(report(records, args.dry), flush=True)
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
