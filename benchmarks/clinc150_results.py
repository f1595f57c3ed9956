"""Write the CLINC150 run's results beside the published ones: benchmarks/results/clinc150_<machine>_<date>.md.

    dtrain launch --nproc-per-node 2 recipes/ticket_router/config_clinc150.yaml   # the run
    python benchmarks/clinc150_results.py runs/ticket_router_clinc150 --wall-s 1234 --slug amd-epyc-2core

Reads the run directory only (test_report.json, metrics.jsonl, config.yaml); copies its abstain.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import describe  # noqa: E402

PUBLISHED = [  # Larson et al. 2019, Table 2, "Full": (classifier, scheme, in-scope accuracy, oos recall)
    ("BERT-base (110 M)", "oos-train (151st class)", 96.9, 40.3),
    ("BERT-base (110 M)", "oos-threshold", 96.2, 52.3),
    ("MLP on USE embeddings", "oos-train", 93.5, 47.4),
    ("SVM", "oos-train", 91.0, 14.5),
    ("Rasa", "oos-train", 91.5, 45.3),
    ("DialogFlow", "oos-train", 91.7, 14.0),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--wall-s", type=float, required=True, help="wall time of the training command")
    ap.add_argument("--slug", required=True, help="machine slug for the file name, e.g. amd-epyc-2core")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    r = json.loads((args.run_dir / "test_report.json").read_text())
    rows = [json.loads(x) for x in (args.run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [x for x in rows if x.get("kind") == "eval"]
    a = r["abstain"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    date = datetime.date.today().isoformat()
    name = f"clinc150_{args.slug}_{date}"
    lines = [
        f"# Ticket router on CLINC150 (official test split): {describe()}", "",
        f"`dtrain launch --nproc-per-node 2 recipes/ticket_router/config_clinc150.yaml` (MiniLM-L6, 22.7 M "
        f"parameters): {args.wall_s / 60:.1f} min wall time for the whole command on this machine, "
        f"{len(evals)} evaluations, best checkpoint {r['checkpoint']} (by validation accuracy).", "",
        "| model | scheme | in-scope accuracy % | out-of-scope recall % | out-of-scope precision % | macro-F1 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| **dtrain MiniLM-L6 (22.7 M)** | oos-train (151st class) | **{pct(r['in_scope_accuracy'])}** | "
        f"**{pct(r['oos_recall'])}** | {pct(r['oos_precision'])} | {r['macro_f1']:.3f} |",
        f"| **dtrain MiniLM-L6 (22.7 M)** | oos-train + abstain below {a['threshold']:.3f} (chosen on val for "
        f"{', '.join(f'{k} {v}' for k, v in a['target'].items())}) | **{pct(a['test']['in_scope_accuracy'])}** | "
        f"**{pct(a['test']['oos_recall'])}** | | |",
    ]
    lines += [f"| {m} (published) | {s} | {acc} | {rec} | | |" for m, s, acc, rec in PUBLISHED]
    lines += ["", "Accuracy per domain (in-scope queries; test split):", "",
              "| domain | accuracy % |", "| --- | ---: |"]
    lines += [f"| {d} | {pct(v)} |" for d, v in sorted(r["per_domain_accuracy"].items())]
    lines += ["", "Validation during training:", "", "| step | val accuracy % | in-scope % | oos recall % |",
              "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {e['step']} | {pct(e['accuracy'])} | {pct(e['in_scope_accuracy'])} | {pct(e['oos_recall'])} |"
              for e in evals]
    lines += ["", (args.run_dir / "abstain.md").read_text().strip(), "",
              "Routed accuracy counts an out-of-scope query routed to an intent as wrong; the validation and test "
              "curves differ mostly by their mix (out-of-scope queries are 3 % of validation, 18 % of test).", "",
              f"![trade-off]({name}.png)", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text("\n".join(lines))
    if (args.run_dir / "abstain.png").is_file():
        shutil.copyfile(args.run_dir / "abstain.png", args.out / f"{name}.png")
    print(args.out / f"{name}.md")


if __name__ == "__main__":
    main()
