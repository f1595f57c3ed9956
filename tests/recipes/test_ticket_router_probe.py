"""The ticket router's head starts as a linear probe on the encoder's frozen features (recipes/ticket_router/
probe.py): fitted deterministically, on exactly the features the head reads, once per process, never over a
head that already routes these labels, and a run still trains, exports and predicts with it."""

from __future__ import annotations

import json

import torch

from tests.conftest import run

CFG = "recipes/ticket_router/config.yaml"
NAMES = ["billing", "technical", "account"]


def test_fit_head_separates_separable_features_and_is_deterministic():
    from recipes.ticket_router.probe import fit_head

    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 8, generator=g)
    labels = torch.arange(4).repeat_interleave(25)
    features = centres[labels] + 0.3 * torch.randn(100, 8, generator=g)
    w1, b1 = fit_head(features, labels, 4, label_smoothing=0.1)
    w2, b2 = fit_head(features, labels, 4, label_smoothing=0.1)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert (features @ w1.T + b1).argmax(1).eq(labels).all()
    # label smoothing and the L2 penalty keep the logits moderate: the encoder still gets gradients
    assert (features @ w1.T + b1).softmax(1).max(1).values.mean() < 0.99


def test_probe_rows_reads_all_or_every_kth():
    from recipes.ticket_router.probe import probe_rows

    assert list(probe_rows(5, 10)) == [0, 1, 2, 3, 4]
    rows = probe_rows(25, 10)
    assert list(rows) == [0, 3, 6, 9, 12, 15, 18, 21, 24] and len(rows) <= 10


def test_the_probe_reads_what_the_head_reads_and_runs_once(tiny_model):
    from recipes.ticket_router import load_tokenizer
    from recipes.ticket_router.data import Encoded, PadCollate
    from recipes.ticket_router.model import load_model
    from recipes.ticket_router.probe import ProbedModel, frozen_features

    tok = load_tokenizer(tiny_model)
    texts = ["refund please", "my card was charged twice", "the app crashes on start", "reset my password",
             "where is my invoice", "login fails with an error"]
    data = Encoded(tok(texts)["input_ids"], [0, 0, 1, 2, 0, 2])
    collate = PadCollate(tok.pad_token_id)
    builds = []

    def build():
        builds.append(1)
        torch.manual_seed(len(builds))  # a different random head each build: the probe must replace it
        return load_model(tiny_model, NAMES, "mean")

    probed = ProbedModel(build, data, collate, 3, 0.1, torch.device("cpu"))
    a, b = probed(), probed()
    assert torch.equal(a.classifier.weight, b.classifier.weight) and torch.equal(a.classifier.bias, b.classifier.bias)
    assert probed.head.samples == 6 and len(builds) == 2  # fitted on the first build only
    features = frozen_features(a, [data[i] for i in range(6)], collate, torch.device("cpu"))
    assert a.training  # handed back in training mode, on the CPU
    a.eval()
    with torch.no_grad():
        batch = collate([data[i] for i in range(6)])
        hidden = a.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(features, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-5)
        logits = a(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, features @ probed.head.weight.T + probed.head.bias, atol=1e-5, rtol=1e-5)


def test_a_classifier_for_these_labels_keeps_its_head(tiny_model, tmp_path):
    from recipes.ticket_router.model import load_model, routes_labels

    assert not routes_labels(tiny_model, NAMES)
    load_model(tiny_model, NAMES, "mean").save_pretrained(tmp_path / "hf")
    assert routes_labels(tmp_path / "hf", NAMES)
    assert not routes_labels(tmp_path / "hf", NAMES + ["shipping"])
    assert not routes_labels(tmp_path / "hf", list(reversed(NAMES)))


def test_a_run_starts_from_the_probe_or_a_random_head(tmp_path, tiny_model):
    first_loss = {}
    for head_init in ("probe", "random"):
        out = tmp_path / head_init
        proc = run(CFG, f"task.model_path={tiny_model}", f"output_dir={out}", "task.max_length=32",
                   "train.max_steps=1", "train.log_every=1", f"task.head_init={head_init}")
        assert ("[ticket_router] head: a linear probe on" in proc.stdout) == (head_init == "probe")
        first_loss[head_init] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                                 if '"kind": "train"' in line][0]
    assert first_loss["probe"] < first_loss["random"]  # the probe already reads the (tiny) encoder's features


def test_a_bad_head_init_is_one_line_and_exit_2(tmp_path, tiny_model):
    bad = run(CFG, f"task.model_path={tiny_model}", f"output_dir={tmp_path}", "task.head_init=zeros", check=False)
    assert bad.returncode == 2
    assert "task.head_init: must be one of probe, random, got 'zeros'" in bad.stderr
