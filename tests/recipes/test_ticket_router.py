"""Ticket router: data checks, split, batching, metrics, and train -> export (ONNX parity) -> predict."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch

from dtrain.data import EvalSampler
from recipes.ticket_router.data import SHIPPED, PadCollate, TicketDataError, load_tickets, split
from recipes.ticket_router.metrics import confusion, report
from tests.conftest import dtrain, final_checkpoint, launch, run

CFG = "recipes/ticket_router/config.yaml"


def test_collate_pads_to_the_longest_and_masks():
    batch = PadCollate(pad_id=0)([([101, 7, 8, 102], 2), ([101, 9, 102], 0)])
    assert batch["input_ids"].tolist() == [[101, 7, 8, 102], [101, 9, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [2, 0]
    assert PadCollate(0)([([1, 2], 0)])["input_ids"].shape == (1, 2)  # not padded to max_length


def test_shipped_data_is_big_enough():
    tickets = load_tickets(SHIPPED)
    assert len(tickets.texts) >= 900 and len(tickets.names) >= 4
    assert {"billing", "technical", "account", "shipping"} <= set(tickets.names)


def test_split_is_stratified_reproducible_and_disjoint():
    tickets = load_tickets(SHIPPED)
    a, b = split(tickets, 0.15, 0.15, seed=3), split(tickets, 0.15, 0.15, seed=3)
    assert a == b and a != split(tickets, 0.15, 0.15, seed=4)
    all_idx = a["train"] + a["val"] + a["test"]
    assert sorted(all_idx) == list(range(len(tickets.texts)))
    n = len(tickets.texts)
    assert abs(len(a["val"]) - 0.15 * n) <= len(tickets.names) and abs(len(a["test"]) - 0.15 * n) <= len(tickets.names)
    for k in range(len(tickets.names)):  # every class on every side
        assert all(any(tickets.labels[i] == k for i in a[part]) for part in a)


@pytest.mark.parametrize("content, message", [
    (b"text,category\nhello,billing\n", "no 'label' column"),
    (b"text,label\nhello,billing\n  ,technical\n", "line 3: empty text"),
    (b"text,label\nhello,billing\ncaf\xe9 broken,technical\n", "not UTF-8 text (byte 0xe9 at offset"),
    (b"text,label\nhello,billing\nhi,refunds\n", "line 3: unknown label 'refunds'"),
])
def test_bad_data_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "tickets.csv"
    path.write_bytes(content)
    with pytest.raises(TicketDataError, match=message.replace("(", r"\(")) as info:
        load_tickets(path, ["billing", "technical"] if "refunds" in message else None)
    assert str(path) in str(info.value)


def test_jsonl_is_read(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "refund please", "label": "billing"}\n{"text": "app crash", "label": "technical"}\n')
    t = load_tickets(path)
    assert t.texts == ["refund please", "app crash"] and t.names == ["billing", "technical"] and t.labels == [0, 1]


def test_macro_f1_by_hand_and_over_uneven_shards():
    cm = torch.tensor([[3, 1], [0, 2]])  # class 0: P=1, R=.75 ; class 1: P=2/3, R=1
    f1_0, f1_1 = 2 * 0.75 / 1.75, 2 * (2 / 3) / (5 / 3)
    assert report(cm, ["a", "b"])["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(101, 4, generator=g), torch.randint(0, 4, (101,), generator=g)
    whole = confusion(logits, labels, 4)
    shards = [list(EvalSampler(101, r, 3)) for r in range(3)]  # 34 + 34 + 33
    summed = sum(confusion(logits[s], labels[s], 4) for s in shards)
    assert torch.equal(summed, whole)
    assert report(summed, list("abcd")) == report(whole, list("abcd"))


def test_model_path_without_a_model_is_a_clear_error(tmp_path):
    proc = run(CFG, f"task.model_path={tmp_path}", f"output_dir={tmp_path}/run", check=False)
    assert proc.returncode == 2 and "holds no Hugging Face model (no config.json)" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_export_predict_end_to_end(tmp_path, tiny_model):
    out = tmp_path / "run"
    args = [f"task.model_path={tiny_model}", f"output_dir={out}", "task.max_length=32", "train.max_steps=8",
            "train.eval_every=4", "optim.lr=1e-3", "early_stopping.metric=null"]
    proc = launch(2, CFG, *args)
    assert "2 rank(s) on cpu" in proc.stdout

    split_rec = json.loads((out / "split.json").read_text())
    assert split_rec["sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert sum(sum(c.values()) for c in split_rec["counts"].values()) == len(load_tickets(SHIPPED).texts)
    # Text recipes count tokens: every train line has tokens/s, between 2 (CLS + SEP) and max_length per sample.
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    assert train and all(2 * r["samples_per_s"] <= r["tokens_per_s"] <= 32 * r["samples_per_s"] for r in train)
    report_ = json.loads((out / "test_report.json").read_text())
    assert {"macro_f1", "accuracy", "per_class", "confusion_matrix", "test_loss", "checkpoint"} <= set(report_)
    assert sum(map(sum, report_["confusion_matrix"])) == sum(split_rec["counts"]["test"].values())
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "macro_f1" and report_["checkpoint"] == best["checkpoint"]

    export_dir = tmp_path / "export"
    meta = json.loads(dtrain("export", str(out), str(export_dir)).stdout)
    assert meta["parity"]["agreement"] >= 0.995 and meta["parity"]["max_abs_logit_diff"] <= 1e-3
    assert (export_dir / "model.onnx").is_file() and (export_dir / "hf" / "model.safetensors").is_file()
    assert (export_dir / "hf" / "tokenizer.json").is_file()

    texts = ["I was charged twice this month", "the app crashes on start"]
    from_onnx = [json.loads(x) for x in dtrain("predict", str(export_dir), *texts).stdout.splitlines()]
    from_ckpt = [json.loads(x) for x in dtrain("predict", str(out), *texts).stdout.splitlines()]
    assert [r["label"] for r in from_onnx] == [r["label"] for r in from_ckpt]
    assert all(r["label"] in split_rec["labels"] and 0 < r["confidence"] <= 1 for r in from_onnx)

    tickets = tmp_path / "tickets.txt"
    tickets.write_text("where is my parcel\nreset my password\n")
    assert len(dtrain("predict", str(export_dir), "--file", str(tickets)).stdout.splitlines()) == 2

    # bad input: one clear line, non-zero exit, no traceback
    empty = dtrain("predict", str(export_dir), "   ", check=False)
    assert empty.returncode == 1 and "ticket 1 is empty" in empty.stderr and "Traceback" not in empty.stderr
    tickets.write_bytes(b"ok ticket\n\xff\xfe broken\n")
    binary = dtrain("predict", str(export_dir), "--file", str(tickets), check=False)
    assert binary.returncode == 1 and "not UTF-8" in binary.stderr and str(tickets) in binary.stderr


@pytest.mark.slow
def test_an_fsdp_run_exports_and_predicts(tmp_path, tiny_model):
    """fsdp's dcp shards are read by export and by predict on the run directory, joined in one process
    without a process group (issue 22: serving read only model.pt, so an fsdp run could not be exported)."""
    from safetensors.torch import load_file as load_safetensors

    from dtrain.checkpoint import read_weights

    out = tmp_path / "run"
    launch(2, CFG, f"task.model_path={tiny_model}", f"output_dir={out}", "task.max_length=32", "train.max_steps=2",
           "early_stopping.metric=null", "strategy=fsdp")
    checkpoint = final_checkpoint(out)
    assert json.loads((checkpoint / "meta.json").read_text())["kind"] == "dcp"
    meta = json.loads(dtrain("export", str(out), str(tmp_path / "export")).stdout)
    assert meta["parity"]["agreement"] >= 0.995 and meta["source"] == str(checkpoint)
    # The exported weights are the trained ones, not the pretrained model's.
    trained, exported = read_weights(checkpoint), load_safetensors(tmp_path / "export" / "hf" / "model.safetensors")
    initial = load_safetensors(tiny_model / "model.safetensors")
    assert all(torch.equal(exported[k], trained[k]) for k in exported), "export is not the checkpoint's weights"
    assert any(not torch.equal(initial[k], exported[k]) for k in exported if k in initial), "export is untrained"
    texts = ["I was charged twice this month", "the app crashes on start"]
    from_onnx = [json.loads(x) for x in dtrain("predict", str(tmp_path / "export"), *texts).stdout.splitlines()]
    from_run = [json.loads(x) for x in dtrain("predict", str(out), *texts).stdout.splitlines()]
    assert [r["label"] for r in from_onnx] == [r["label"] for r in from_run]


def test_a_deepspeed_checkpoint_is_read_by_serving(tmp_path, tiny_model):
    """A DeepSpeed checkpoint's whole fp32 weights (state/model.safetensors, written beside its shards) are
    what serving loads. The checkpoint is laid out by hand: a real one is proven to hold the trained
    weights in tests/distributed (test_strategies, test_memory); here only the reading is at stake."""
    import hashlib as hl

    from safetensors.torch import save_file as save_safetensors

    from dtrain.config import dump_yaml, load_config
    from recipes.ticket_router import load_model
    from recipes.ticket_router.serve import load_trained

    run_dir = tmp_path / "run"
    cfg = load_config(CFG, [f"task.model_path={tiny_model}", f"output_dir={run_dir}", "strategy=deepspeed"])
    names = ["account", "billing", "shipping", "technical"]
    ckpt = run_dir / "checkpoints" / "step_00000002"
    (ckpt / "state").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    (run_dir / "split.json").write_text(json.dumps({"labels": names}))
    weights = {k: v + 0.25 for k, v in load_model(tiny_model, names).state_dict().items()}
    save_safetensors({k: v.contiguous() for k, v in weights.items()}, str(ckpt / "state" / "model.safetensors"))
    files = ["state/model.safetensors"]
    sums = {f: hl.sha256((ckpt / f).read_bytes()).hexdigest() for f in files}
    (ckpt / "meta.json").write_text(json.dumps({"format": 2, "kind": "deepspeed", "step": 2, "world_size": 2,
                                                "files": files, "sha256": sums}))
    model = load_trained(run_dir, "latest")[0]
    assert model.state_dict().keys() == weights.keys()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_export_fails_loudly_and_writes_nothing_when_parity_fails(tmp_path, tiny_model, monkeypatch):
    from recipes.ticket_router import serve

    out = tmp_path / "run"
    run(CFG, f"task.model_path={tiny_model}", f"output_dir={out}", "task.max_length=32", "train.max_steps=2")
    monkeypatch.setattr(serve, "PARITY_ATOL", -1.0)  # no export can meet a negative tolerance
    with pytest.raises(serve.ExportError, match="ONNX parity failed"):
        serve.export(out, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    assert not list(tmp_path.glob(".export.*"))


def test_early_stopping_stops_and_resume_does_not_restart(tmp_path, tiny_model):
    out = tmp_path / "run"
    # min_delta so large that nothing after the first evaluation counts as an improvement
    args = [f"task.model_path={tiny_model}", f"output_dir={out}", "task.max_length=32", "train.eval_every=2",
            "train.epochs=5", "early_stopping.metric=val_loss", "early_stopping.patience=2",
            "early_stopping.min_delta=1e9"]
    proc = run(CFG, *args)
    assert "early stop at step 6" in proc.stdout
    assert final_checkpoint(out).name == "step_00000006"
    again = run(CFG, *args)
    assert "resumed from" in again.stdout and "[train]" not in again.stdout


def test_ticket_shards_with_their_own_column_names_train_and_export(tmp_path, tiny_model):
    """A directory of JSONL and Parquet shards whose columns are `body` and `category`: read and tokenized
    in 2 DataLoader workers (issue 14), validated on a CSV, exported with ONNX parity; bad rows and a
    missing setting are one line each."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tickets = load_tickets(SHIPPED)
    rows = [{"body": t, "category": tickets.names[k]} for t, k in zip(tickets.texts, tickets.labels)]
    val, train = rows[:60], rows[60:]
    shards = tmp_path / "shards"
    shards.mkdir()
    half = len(train) // 2
    (shards / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[:half]))
    pq.write_table(pa.Table.from_pylist(train[half:]), shards / "part-1.parquet", row_group_size=64)
    with open(tmp_path / "val.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["body", "category"])
        writer.writeheader()
        writer.writerows(val)
    labels = "[" + ",".join(tickets.names) + "]"
    out = tmp_path / "run"
    args = [f"task.model_path={tiny_model}", f"output_dir={out}", "task.max_length=32", "train.max_steps=6",
            "train.eval_every=3", f"task.data_path={shards}", f"task.val_path={tmp_path / 'val.csv'}",
            "task.text_column=body", "task.label_column=category", f"task.labels={labels}", "train.num_workers=2",
            "early_stopping.metric=null", "checkpoint.best_metric=macro_f1"]
    proc = run(CFG, *args)
    assert "[eval] step=6" in proc.stdout
    record = json.loads((out / "split.json").read_text())
    assert record["counts"] == {"train": len(train), "val": 60}
    assert [s[0] for s in record["shards"]["shards"]] == ["part-0.jsonl", "part-1.parquet"]
    meta = json.loads(dtrain("export", str(out), str(tmp_path / "export")).stdout)
    assert meta["parity"]["tickets"] == 60 and meta["parity"]["agreement"] >= 0.995

    # Neither task.labels nor task.val_path (issue 26): the labels are found by the index pass, sorted, and
    # a share of the shards' rows, chosen by a hash of (shard, row), validates.
    found = run(CFG, *[a for a in args if not a.startswith(("task.labels", "task.val_path"))], "train.max_steps=3",
                "train.eval_every=3", f"output_dir={tmp_path / 'r2'}", "task.val_fraction=0.2")
    assert "[eval] step=3" in found.stdout
    record = json.loads((tmp_path / "r2" / "split.json").read_text())
    assert record["labels"] == sorted(tickets.names) and record["labels_from"] == f"the labels of {shards}"
    assert record["counts"]["train"] + record["counts"]["val"] == len(train)
    assert 0.1 * len(train) < record["counts"]["val"] < 0.3 * len(train)
    meta = json.loads(next((shards / ".dtrain-index").glob("part-0.jsonl.*.json")).read_text())
    assert meta["distinct"]["category"] == sorted({r["category"] for r in train[:half]})  # kept with the index

    # one line each, naming the setting, or the shard and row
    grouped = run(CFG, *args, f"output_dir={tmp_path / 'r4'}", "train.group_by_length=64", check=False)
    assert grouped.returncode == 2 and grouped.stderr.strip().splitlines() == [
        "dtrain: config error: train.group_by_length: 64 needs an in-memory training set; sharded data is read in "
        "shuffled blocks and cannot be sorted by length (set it to 0)"]
    (shards / "part-2.jsonl").write_text(json.dumps({"body": "hello", "category": "refunds"}) + "\n")
    bad = run(CFG, *args, f"output_dir={tmp_path / 'r3'}", "train.max_steps=80", check=False)
    # found in a DataLoader worker mid-run: exit 1 (the run failed), the worker's message alone
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "worker" not in bad.stderr
    assert f"dtrain: error: {shards / 'part-2.jsonl'} row 1: unknown label 'refunds'; task.labels allows" in bad.stderr


# ------------------------------------------------------------------ out of scope, domains, abstention (issue 15)


def test_out_of_scope_and_domain_metrics_by_hand():
    # labels: a, b (domain x), c (domain y), oos
    cm = torch.tensor([[5, 1, 0, 0],   # a: 5 right, 1 to b
                       [0, 3, 0, 1],   # b: 3 right, 1 sent out of scope
                       [0, 0, 4, 0],   # c: 4 right
                       [1, 0, 1, 2]])  # oos: 2 caught, 2 routed to a team
    r = report(cm, ["a", "b", "c", "oos"], oos=3, domains={"x": ["a", "b"], "y": ["c"]})
    assert r["in_scope_accuracy"] == pytest.approx(12 / 14)
    assert r["oos_recall"] == pytest.approx(2 / 4) and r["oos_precision"] == pytest.approx(2 / 3)
    assert r["per_domain_accuracy"] == {"x": round(8 / 10, 4), "y": 1.0}
    assert r["accuracy"] == pytest.approx(14 / 18)


def test_abstention_counts_match_routing_each_ticket_by_hand():
    """confidence_counts + point give, for every threshold, what routing each ticket one by one gives."""
    from recipes.ticket_router.metrics import BINS, choose_threshold, confidence_counts, point

    g = torch.Generator().manual_seed(0)
    logits, labels = 3 * torch.randn(400, 6, generator=g), torch.randint(0, 6, (400,), generator=g)
    oos = 5
    halves = [confidence_counts(logits[s], labels[s], oos) for s in (slice(0, 150), slice(150, None))]
    counts = halves[0] + halves[1]  # sums over batches or ranks: the same as one pass
    assert torch.equal(counts, confidence_counts(logits, labels, oos))
    conf, pred = logits.softmax(-1).max(-1)
    for k in (0, 150, 333, 500, 777, BINS):
        t = k / BINS
        routed = (pred != oos) & (torch.floor(conf * BINS) >= k)
        right = routed & (pred == labels)
        in_scope = labels != oos
        p = point(counts, k)
        assert p.in_scope_accuracy == pytest.approx(right[in_scope].sum().item() / in_scope.sum().item())
        assert p.oos_recall == pytest.approx((~routed)[~in_scope].sum().item() / (~in_scope).sum().item())
        assert p.review_share == pytest.approx(1 - routed.float().mean().item())
        n_routed = routed.sum().item()
        assert p.routed_accuracy == pytest.approx(right.sum().item() / n_routed if n_routed else 1.0), t
    # the lowest threshold that meets the target: one step lower misses it
    for target in (0.3, 0.6, 0.9):
        k = choose_threshold(counts, min_oos_recall=target)
        assert point(counts, k).oos_recall >= target and (k == 0 or point(counts, k - 1).oos_recall < target)
    k = choose_threshold(counts, max_misrouted=0.2)
    assert point(counts, k).misrouted <= 0.2 and (k == 0 or point(counts, k - 1).misrouted > 0.2)


CLINC = "recipes/ticket_router/config_clinc150.yaml"
CLINC_DIR = SHIPPED.parent / "clinc150"


def clinc_sample(tmp_path, domains=("banking", "travel")):
    """A few hundred CLINC150 queries: the intents of two domains and out-of-scope queries from each split."""
    all_domains = json.loads((CLINC_DIR / "domains.json").read_text())
    keep = {d: all_domains[d] for d in domains}
    intents = {x for labels in keep.values() for x in labels}
    paths = {}
    for split_name, per_label in (("train", 6), ("val", 3), ("test", 3)):
        rows = [json.loads(line) for line in (CLINC_DIR / f"{split_name}.jsonl").read_text().splitlines()]
        seen: dict[str, int] = {}
        picked = []
        for r in rows:
            limit = per_label * 8 if r["label"] == "oos" else per_label
            if (r["label"] in intents or r["label"] == "oos") and seen.get(r["label"], 0) < limit:
                seen[r["label"]] = seen.get(r["label"], 0) + 1
                picked.append(r)
        paths[split_name] = tmp_path / f"{split_name}.jsonl"
        paths[split_name].write_text("".join(json.dumps(r) + "\n" for r in picked))
    (tmp_path / "domains.json").write_text(json.dumps(keep))
    return paths


def test_clinc150_files_are_the_official_splits():
    counts = {s: [json.loads(x)["label"] for x in (CLINC_DIR / f"{s}.jsonl").read_text().splitlines()]
              for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in counts.items()} == {"train": 15100, "val": 3100, "test": 5500}
    assert {s: v.count("oos") for s, v in counts.items()} == {"train": 100, "val": 100, "test": 1000}
    domains = json.loads((CLINC_DIR / "domains.json").read_text())
    assert len(domains) == 10 and sorted(x for v in domains.values() for x in v) == sorted(set(counts["train"]) - {"oos"})
    assert (CLINC_DIR / "LICENSE").is_file() and "Attribution 3.0" in (CLINC_DIR / "LICENSE").read_text()


@pytest.mark.slow
def test_clinc150_pipeline_with_abstention_end_to_end(tmp_path, tiny_model):
    """config_clinc150.yaml on a few hundred real queries: out-of-scope and per-domain metrics, a threshold
    chosen on validation and judged on test, the trade-off report, the export carrying the threshold (ONNX
    parity and metadata), and predict sending exactly the low-confidence tickets to a person."""
    paths = clinc_sample(tmp_path)
    out = tmp_path / "run"
    proc = launch(2, CLINC, f"task.model_path={tiny_model}", f"output_dir={out}", f"task.data_path={paths['train']}",
                  f"task.val_path={paths['val']}", f"task.test_path={paths['test']}",
                  f"task.domains={tmp_path / 'domains.json'}", "train.max_steps=12", "train.eval_every=6",
                  "optim.lr=1e-3", "optim.warmup_steps=2")
    assert "[test]" in proc.stdout and "abstain_threshold=" in proc.stdout
    r = json.loads((out / "test_report.json").read_text())
    names = json.loads((out / "split.json").read_text())["labels"]
    cm, oos = torch.tensor(r["confusion_matrix"]), names.index("oos")
    test_rows = paths["test"].read_text().splitlines()
    assert cm.sum().item() == len(test_rows)  # all of test.jsonl, none of it trained on
    in_scope = [i for i in range(len(names)) if i != oos]
    assert r["in_scope_accuracy"] == pytest.approx(cm.diag()[in_scope].sum().item() / cm[in_scope].sum().item())
    assert r["oos_recall"] == pytest.approx(cm[oos, oos].item() / cm[oos].sum().item())
    assert set(r["per_domain_accuracy"]) == {"banking", "travel"}

    a = r["abstain"]
    assert a["target"] == {"min_oos_recall": 0.6} and a["val"]["oos_recall"] >= 0.6
    assert r["abstain_threshold"] == a["threshold"] and r["review_share"] == a["test"]["review_share"]
    assert "**(chosen)**" in (out / "abstain.md").read_text()
    assert (out / "abstain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    export_dir = tmp_path / "export"
    meta = json.loads(dtrain("export", str(out), str(export_dir)).stdout)
    assert meta["parity"]["tickets"] == len(paths["val"].read_text().splitlines()) and meta["parity"]["agreement"] >= 0.995
    assert meta["abstain"]["threshold"] == a["threshold"] and meta["abstain"]["out_of_scope"] == "oos"
    import onnx

    props = {p.key: p.value for p in onnx.load(str(export_dir / "model.onnx")).metadata_props}
    assert json.loads(props["dtrain.abstain"])["threshold"] == a["threshold"] and json.loads(props["dtrain.labels"]) == names

    # predict on the validation queries: the share sent to a person is the one chosen on validation
    val_texts = [json.loads(x)["text"] for x in paths["val"].read_text().splitlines()]
    rows = [json.loads(x) for x in dtrain("predict", str(export_dir), "--file", str(paths["val"])).stdout.splitlines()]
    assert [x["text"] for x in rows] == val_texts
    review = [x for x in rows if x["label"] == "needs_review"]
    assert abs(len(review) / len(rows) - a["val"]["review_share"]) <= 2 / len(rows)  # bins vs float, padding
    for x in rows:
        if x["label"] == "needs_review":
            assert x["predicted"] == "oos" or x["confidence"] < a["threshold"] + 1e-3
            assert 1 <= len(x["candidates"]) <= 3 and all(c["label"] != "oos" for c in x["candidates"])
        else:
            assert x["label"] != "oos" and x["confidence"] >= a["threshold"] - 1e-3
    from_ckpt = [json.loads(x) for x in dtrain("predict", str(out), *val_texts[:20]).stdout.splitlines()]
    assert [x["label"] for x in from_ckpt] == [x["label"] for x in rows[:20]]


def test_own_val_and_test_files_decide_what_data_path_is_split_into(tmp_path):
    from recipes.ticket_router import Config, load_data

    held = tmp_path / "held.csv"
    held.write_text("text,label\nmy card was charged twice,billing\nthe app crashes,technical\n")
    n = len(load_tickets(SHIPPED).texts)
    _, given, parts = load_data(Config(val_path=str(held), test_path=str(held)), seed=0)
    assert set(given) == {"val", "test"} and parts == {"train": list(range(n))}  # all of it trains
    _, given, parts = load_data(Config(test_path=str(held)), seed=0)
    assert set(given) == {"test"} and set(parts) == {"train", "val"}  # split into train and validation
    assert sorted(parts["train"] + parts["val"]) == list(range(n)) and abs(len(parts["val"]) - 0.15 * n) <= 5
    _, given, parts = load_data(Config(val_path=str(held)), seed=0)
    assert set(given) == {"val"} and set(parts) == {"train", "test"}


def test_serving_uses_a_threshold_only_with_the_checkpoint_it_was_chosen_for(tmp_path):
    pytest.importorskip("onnxruntime")
    from pathlib import Path

    from recipes.ticket_router.serve import abstention

    chosen = {"threshold": 0.3, "top_k": 3, "target": {"max_misrouted": 0.05}}
    for tested in ("step_00000040", "step_00000040 (final)"):
        (tmp_path / "test_report.json").write_text(json.dumps({"checkpoint": tested, "abstain": chosen}))
        assert abstention(tmp_path, Path("ckpt/step_00000040"), None)["threshold"] == 0.3
    assert abstention(tmp_path, Path("ckpt/step_00000020"), None) is None  # another checkpoint: none
    assert abstention(tmp_path, Path("ckpt/step_00000020"), "oos") == {
        "threshold": 0.0, "top_k": 3, "target": None, "out_of_scope": "oos"}  # out of scope still goes to a person
