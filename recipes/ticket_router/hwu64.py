"""HWU64 (Liu et al., 2019) as ticket-router files: fold 1 of the authors' 10-fold split, 64 intents.

    python -m recipes.ticket_router.hwu64 GIT_DIR_OR_FOLDER [OUT_DIR]

GIT_DIR_OR_FOLDER is a clone (or bare mirror) of github.com/xliuhw/NLU-Evaluation-Data, read at HEAD, or a
plain copy of its KFold_1 folder. KFold_1's testset becomes test.jsonl; its trainset becomes train.jsonl and
val.jsonl, val being per label the ~10 % of texts with the smallest sha256, so it is reproducible without a
seed. Each line is {"text": ..., "label": ...} with label scenario_intent ("alarm_set"); domains.json maps
each scenario to its sorted labels. Run once; the files ship in recipes/ticket_router/data/hwu64/.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).parent / "data" / "hwu64"
KFOLD = "CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation/KFold_1"
VAL_SHARE = 0.1


def read_csvs(source: Path, sub: str) -> list[str]:
    """The text of every per-intent CSV in `sub`, from a plain KFold_1 folder or, failing that, from git."""
    if (source / sub).is_dir():
        return [p.read_text(encoding="utf-8") for p in sorted((source / sub).glob("*.csv"))]
    git = ["git", "-C", str(source)]  # -C: a bare mirror and a clone's work tree alike
    # no check: not a repository, or no such folder, lists nothing and load() says what to give
    names = subprocess.run([*git, "ls-tree", "--name-only", f"HEAD:{KFOLD}/{sub}"],
                           capture_output=True, text=True).stdout.split()
    return [subprocess.run([*git, "show", f"HEAD:{KFOLD}/{sub}/{n}"], capture_output=True, check=True)
            .stdout.decode("utf-8") for n in sorted(names) if n.endswith(".csv")]


def load(source: Path, sub: str, domains: dict[str, set[str]]) -> list[dict[str, str]]:
    rows, seen = [], set()
    for text in read_csvs(source, sub):
        # The files are ';'-separated with quoted fields; answer_from_anno is the annotated utterance with the
        # entity brackets removed. ~100 of them keep the user's capitals, hence lower().
        for r in csv.DictReader(io.StringIO(text), delimiter=";"):
            utterance, label = r["answer_from_anno"].strip().lower(), f"{r['scenario']}_{r['intent']}"
            if utterance and utterance not in seen:  # a few utterances occur twice in a split
                seen.add(utterance)
                rows.append({"text": utterance, "label": label})
                domains[r["scenario"]].add(label)
    if not rows:
        raise SystemExit(f"{source}: no utterances under {sub}; give the repository or its KFold_1 folder")
    return rows


def carve_val(rows: list[dict[str, str]]) -> set[str]:
    """Per label, the round(10 %) texts whose sha256 sorts first: every label gets val rows, no seed needed."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: hashlib.sha256(r["text"].encode("utf-8")).hexdigest()):
        by_label[r["label"]].append(r["text"])
    return {t for texts in by_label.values() for t in texts[:round(len(texts) * VAL_SHARE)]}


def convert(source: Path, out: Path = OUT) -> dict[str, int]:
    """Write OUT/{train,val,test}.jsonl and domains.json from HWU64's KFold_1; returns the rows per file."""
    domains: dict[str, set[str]] = defaultdict(set)
    # testset/annotated/*.json holds the same test utterances as testset/csv; the trainset has only CSVs
    train, test = load(source, "trainset", domains), load(source, "testset/csv", domains)
    val = carve_val(train)
    splits = {"train": [r for r in train if r["text"] not in val], "val": [r for r in train if r["text"] in val],
              "test": test}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    mapping = {d: sorted(labels) for d, labels in sorted(domains.items())}
    (out / "domains.json").write_text(json.dumps(mapping, indent=4) + "\n", encoding="utf-8")
    return {name: len(rows) for name, rows in splits.items()}


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__.split("\n\n")[1].strip())
    counts = convert(Path(argv[0]), Path(argv[1]) if len(argv) > 1 else OUT)
    print(f"{argv[0]}: " + ", ".join(f"{k} {v} rows" for k, v in counts.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
