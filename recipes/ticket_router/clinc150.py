"""CLINC150 (Larson et al., 2019) as ticket-router files: one JSONL per official split, out-of-scope included.

    python -m recipes.ticket_router.clinc150 path/to/data_full.json [OUT_DIR]

The "Full" variant's `train`/`oos_train` become train.jsonl, `val`/`oos_val` val.jsonl, `test`/`oos_test`
test.jsonl; each line is {"text": ..., "label": ...} with label "oos" for a query that fits no intent,
so the recipe reads them like any user's file. domains.json (intent -> domain) is copied beside them.
Run once; the converted files ship in recipes/ticket_router/data/clinc150/ (see README.md there).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

OUT = Path(__file__).parent / "data" / "clinc150"
SPLITS = {"train": ("train", "oos_train"), "val": ("val", "oos_val"), "test": ("test", "oos_test")}


def convert(source: Path, out: Path = OUT) -> dict[str, int]:
    """Write OUT/{train,val,test}.jsonl from CLINC150's data_full.json; returns the rows per file."""
    data = json.loads(source.read_text(encoding="utf-8"))
    missing = [k for keys in SPLITS.values() for k in keys if k not in data]
    if missing:
        raise SystemExit(f"{source}: no {', '.join(missing)} list; give CLINC150's data_full.json")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, keys in SPLITS.items():
        rows = [{"text": text, "label": label} for key in keys for text, label in data[key]]
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        counts[name] = len(rows)
    domains = source.parent / "domains.json"
    if domains.is_file():
        shutil.copyfile(domains, out / "domains.json")
    return counts


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__.split("\n\n")[1].strip())
    source = Path(argv[0])
    counts = convert(source, Path(argv[1]) if len(argv) > 1 else OUT)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    print(f"{source} (sha256 {digest}...): " + ", ".join(f"{k} {v} rows" for k, v in counts.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
