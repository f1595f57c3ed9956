"""Serving path: export the best checkpoint (Hugging Face directory + ONNX, parity-checked) and predict.

    dtrain export RUN_DIR OUT_DIR            # OUT_DIR/hf/ (safetensors + tokenizer), OUT_DIR/model.onnx
    dtrain predict OUT_DIR "my card was charged twice"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dtrain.checkpoint import read_weights
from dtrain.serving import run_checkpoint, staged_dir
from recipes.ticket_router.data import TicketDataError
from dtrain.config import load_config
from recipes.ticket_router import load_model, load_tokenizer, resolve_model_path
from recipes.ticket_router.abstain import NEEDS_REVIEW
from recipes.ticket_router.data import SHIPPED, decode_utf8, load_tickets, read_rows, split

PARITY_ATOL = 1e-3
"""Max |logit difference| allowed between ONNX Runtime and eager PyTorch (fp32)."""
PARITY_MIN_AGREEMENT = 0.995
"""Share of tickets that must get the same predicted class from both."""


class ExportError(RuntimeError):
    pass


def load_trained(run_dir: Path, which: str = "best"):
    """(model in eval mode, tokenizer, label names, cfg, abstention or None) from a run's checkpoint."""
    cfg = load_config(run_dir / "config.yaml")
    model_dir = resolve_model_path(cfg.task.model_path)
    names = json.loads((run_dir / "split.json").read_text())["labels"]
    model = load_model(model_dir, names, cfg.task.pooling)
    checkpoint = run_checkpoint(run_dir, which)
    # Any format the run wrote: model.pt (ddp), dcp shards joined in this one process (fsdp, async
    # saves), or the whole fp32 weights DeepSpeed checkpoints carry; every file checked against meta.json.
    model.load_state_dict(read_weights(checkpoint))
    return model.eval(), load_tokenizer(model_dir), names, cfg, abstention(run_dir, checkpoint, cfg.task.out_of_scope)


def abstention(run_dir: Path, checkpoint: Path, out_of_scope: str | None) -> dict | None:
    """What serving needs to send tickets to a person: the threshold chosen for `checkpoint` on the
    validation split (test_report.json; None for another checkpoint, or without task.abstain), and the
    out-of-scope label, whose tickets go to a person at any confidence."""
    report_path = run_dir / "test_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    # "step_00000040 (final)" where the run kept no best checkpoint: the step directory is what counts.
    tested = str(report.get("checkpoint", "")).split(" ")[0]
    chosen = report.get("abstain") if tested == checkpoint.name else None
    if chosen is None and out_of_scope is None:
        return None
    return {"threshold": chosen["threshold"] if chosen else 0.0, "top_k": chosen["top_k"] if chosen else 3,
            "target": chosen["target"] if chosen else None, "out_of_scope": out_of_scope}


def _batches(texts: Sequence[str], tokenizer, max_length: int, size: int = 32):
    """int64 numpy feeds (input_ids, attention_mask) for ONNX Runtime or torch.from_numpy."""
    for i in range(0, len(texts), size):
        enc = tokenizer(list(texts[i : i + size]), truncation=True, max_length=max_length, padding=True,
                        return_tensors="np")
        yield {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def parity(model, session, tokenizer, texts: Sequence[str], max_length: int) -> dict:
    """ONNX Runtime vs eager PyTorch over `texts`: max |logit diff| and share of equal predictions."""
    max_diff, same = 0.0, 0
    for feeds in _batches(texts, tokenizer, max_length):
        got = session.run(["logits"], feeds)[0]
        with torch.inference_mode():
            ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        same += int((got.argmax(-1) == ref.argmax(-1)).sum())
    return {"tickets": len(texts), "max_abs_logit_diff": max_diff, "agreement": same / max(len(texts), 1),
            "atol": PARITY_ATOL, "min_agreement": PARITY_MIN_AGREEMENT}


def export_onnx(model, tokenizer, path: Path, metadata: dict[str, str] | None = None) -> None:
    """ONNX graph with dynamic batch and sequence axes (TorchScript exporter: needs no onnxscript).
    `metadata` goes into the model's metadata_props: labels and threshold travel with the graph."""
    sample = tokenizer(["a ticket to trace the graph", "another"], padding=True, return_tensors="pt")
    torch.onnx.export(
        model.eval(), (sample["input_ids"], sample["attention_mask"]), str(path),
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                      "logits": {0: "batch"}},
        opset_version=17, dynamo=False,
    )
    if metadata:
        import onnx

        graph = onnx.load(str(path))
        for key, value in metadata.items():
            graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.save(graph, str(path))


def validation_texts(cfg, limit: int = 512) -> list[str]:
    """The run's validation tickets (up to `limit` from shards), for the ONNX parity check."""
    from recipes.ticket_router import is_sharded, open_shards

    t = cfg.task
    columns = (t.text_column, t.label_column)
    if is_sharded(t.val_path):
        rows = open_shards(t, t.val_path, "val_path")
        return [str(rows[i][t.text_column]) for i in range(min(len(rows), limit))]
    if t.val_path is not None:
        return load_tickets(t.val_path, None, columns=columns).texts[:limit]
    tickets = load_tickets(t.data_path or SHIPPED, t.labels, columns=columns)
    return [tickets.texts[i] for i in split(tickets, t.val_fraction, t.test_fraction, cfg.seed)["val"]]


def export(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> dict:
    """Write OUT_DIR/hf and OUT_DIR/model.onnx; fails (writing nothing) unless ONNX matches eager."""
    import onnxruntime as ort

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, tokenizer, names, cfg, abstain = load_trained(run_dir, checkpoint)
    val_texts = validation_texts(cfg)

    with staged_dir(out_dir) as tmp:
        model.save_pretrained(tmp / "hf", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "hf")
        export_onnx(model, tokenizer, tmp / "model.onnx", {
            "dtrain.labels": json.dumps(names), "dtrain.abstain": json.dumps(abstain)})
        session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        result = parity(model, session, tokenizer, val_texts, cfg.task.max_length)
        if result["max_abs_logit_diff"] > PARITY_ATOL or result["agreement"] < PARITY_MIN_AGREEMENT:
            raise ExportError(
                f"ONNX parity failed on {result['tickets']} validation tickets: max |logit diff| "
                f"{result['max_abs_logit_diff']:.2e} (limit {PARITY_ATOL}), same class on "
                f"{result['agreement']:.2%} (need {PARITY_MIN_AGREEMENT:.1%}); nothing was written"
            )
        meta = {"recipe": "ticket_router", "labels": names, "max_length": cfg.task.max_length,
                "source": str(run_checkpoint(run_dir, checkpoint)), "abstain": abstain, "parity": result}
        (tmp / "dtrain_export.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# ------------------------------------------------------------------------------------------ predict


def read_ticket_file(path: Path) -> list[str]:
    """Tickets from a .txt (one per line), .csv (a 'text' column) or .jsonl file."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise TicketDataError(f"ticket file {path} {what}; give --file a .txt, .csv or .jsonl file")
    if path.suffix.lower() in (".csv", ".jsonl", ".json"):
        rows = read_rows(path)
        return [str(row.get("text") or "") for _, row in rows]
    return decode_utf8(path.read_bytes(), path).splitlines()


class Router:
    """Routes ticket texts with an exported directory (ONNX Runtime) or a run directory (PyTorch).

    With abstention (task.abstain, or task.out_of_scope), a ticket predicted out of scope or below the
    threshold gets label needs_review and its top candidate teams, for a person to pick from."""

    def __init__(self, source: str | Path):
        source = Path(source)
        if (source / "dtrain_export.json").is_file():
            import onnxruntime as ort

            meta = json.loads((source / "dtrain_export.json").read_text())
            self.names, self.max_length, self.abstain = meta["labels"], meta["max_length"], meta.get("abstain")
            self.tokenizer = load_tokenizer(source / "hf")
            session = ort.InferenceSession(str(source / "model.onnx"), providers=["CPUExecutionProvider"])
            self._logits = lambda feeds: session.run(["logits"], feeds)[0]
        elif (source / "config.yaml").is_file():
            model, self.tokenizer, self.names, cfg, self.abstain = load_trained(source)
            self.max_length = cfg.task.max_length

            def logits(feeds):
                with torch.inference_mode():
                    return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()

            self._logits = logits
        else:
            raise TicketDataError(
                f"{source} is neither an exported model (dtrain_export.json) nor a run directory (config.yaml)"
            )

    def route(self, probs: np.ndarray) -> dict:
        """One ticket's answer from its class probabilities."""
        k = int(probs.argmax())
        out = {"label": self.names[k], "confidence": round(float(probs[k]), 4)}
        a = self.abstain
        if a is None or (self.names[k] != a["out_of_scope"] and probs[k] >= a["threshold"]):
            return out
        teams = [i for i in np.argsort(-probs, kind="stable") if self.names[i] != a["out_of_scope"]]
        return {"label": NEEDS_REVIEW, "confidence": out["confidence"], "predicted": out["label"],
                "candidates": [{"label": self.names[i], "confidence": round(float(probs[i]), 4)}
                               for i in teams[: a["top_k"]]]}

    def __call__(self, texts: Sequence[str]) -> list[dict]:
        for i, text in enumerate(texts, 1):
            if not text or not text.strip():
                raise TicketDataError(f"ticket {i} is empty; give the ticket's text")
        out = []
        for feeds in _batches(texts, self.tokenizer, self.max_length):
            logits = self._logits(feeds).astype(np.float32)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out.extend(self.route(p) for p in probs)
        return [{"text": t, **o} for t, o in zip(texts, out)]


def predict(source: str | Path, texts: Sequence[str] = (), file: str | Path | None = None) -> list[dict]:
    """Route `texts`, or the tickets of `file`; each result has text, label and confidence (and, for a
    ticket sent to a person, label needs_review with the predicted label and the top candidates)."""
    if file is not None:
        texts = read_ticket_file(Path(file))
    return Router(source)(list(texts))
