"""The shipped HWU64 files: shape, disjointness, domains; and, where the source mirror is on disk, that the
converter reproduces them byte for byte. No training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.ticket_router.hwu64 import OUT, convert

MIRROR = Path("/work/.mirror/xliuhw+NLU-Evaluation-Data/repo")
FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "domains.json")


def rows(split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (OUT / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_hwu64_files_are_kfold1_with_a_val_carve_out():
    train, val, test = rows("train"), rows("val"), rows("test")
    assert (len(train), len(val), len(test)) == (8941, 1016, 1076)
    labels = {r["label"] for r in train}
    assert len(labels) == 64 and "oos" not in labels  # HWU64 has no out-of-scope class
    assert {r["label"] for r in test} <= labels and {r["label"] for r in val} == labels
    texts = {s: [r["text"] for r in rs] for s, rs in (("train", train), ("val", val), ("test", test))}
    for s, t in texts.items():
        assert len(set(t)) == len(t) and all(x and x == x.strip().lower() for x in t), s
    assert not set(texts["train"]) & set(texts["val"]) and not set(texts["test"]) & set(texts["train"] + texts["val"])
    assert 0.08 <= len(val) / (len(train) + len(val)) <= 0.12
    domains = json.loads((OUT / "domains.json").read_text(encoding="utf-8"))
    flat = [x for v in domains.values() for x in v]
    assert len(flat) == len(set(flat)) and set(flat) == labels
    assert all(x.startswith(f"{d}_") and v == sorted(v) for d, v in domains.items() for x in v)
    assert "Attribution 4.0 International" in (OUT / "LICENSE").read_text(encoding="utf-8")


def test_hwu64_convert_reproduces_the_shipped_files(tmp_path):
    if not (MIRROR / "HEAD").is_file():
        pytest.skip(f"no NLU-Evaluation-Data mirror at {MIRROR} (CI has none); the shipped files are checked above")
    counts = convert(MIRROR, tmp_path)
    assert counts == {"train": 8941, "val": 1016, "test": 1076}
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (OUT / name).read_bytes(), name
