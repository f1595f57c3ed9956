"""The sweep that chooses the ticket router's defaults across public intent sets, on validation splits only.

    python -m recipes.ticket_router.sweep [--epochs 2] [--sets clinc150 hwu64] [--out runs/sweep]
        [--schedule runs/sched] [--head-init runs/probe] [--seeds RUN_DIR ...] [--full SET=RUN_DIR@MINUTES ...]

Protocol. Every candidate trains on every set with config_clinc150.yaml and only the data paths changed
(what a new user does), for a short schedule (--epochs, linear decay over it) on 2 CPU ranks. A set's score
is its best validation accuracy; a candidate's regret on a set is how far it falls below the set's best
candidate; the chosen candidate has the smallest worst-set regret (ties: the higher mean accuracy). The test
split is evaluated at the end of each run but never used to rank. The table goes to recipes/ticket_router/SWEEP.md with the machine named.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIG = "recipes/ticket_router/config_clinc150.yaml"
DATA = "recipes/ticket_router/data"
SETS = {  # set -> the overrides that point CONFIG at it: data paths only (and no out-of-scope label to abstain on)
    "clinc150": [],
    "hwu64": [f"task.data_path={DATA}/hwu64/train.jsonl", f"task.val_path={DATA}/hwu64/val.jsonl",
              f"task.test_path={DATA}/hwu64/test.jsonl", f"task.domains={DATA}/hwu64/domains.json",
              "task.out_of_scope=null"],
}
CANDIDATES = {  # name -> overrides of CONFIG (every swept value stated, so the sweep does not follow CONFIG)
    name: [f"task.pooling={pool}", f"optim.lr={lr}", f"task.head_lr_scale={head}", f"task.label_smoothing={ls}",
           f"train.group_by_length={group}"]
    for name, (pool, lr, head, ls, group) in {
        "cls_lr2e-4_head10_ls0.1": ("cls", "2e-4", 10, 0.1, 0),
        "mean_lr2e-4_head10_ls0.1": ("mean", "2e-4", 10, 0.1, 0),
        "mean_lr1e-4_head10_ls0.1": ("mean", "1e-4", 10, 0.1, 0),
        "mean_lr1e-4_head1_ls0": ("mean", "1e-4", 1, 0.0, 0),
        "mean_lr2e-4_head10_ls0.1_grouped": ("mean", "2e-4", 10, 0.1, 1024),
    }.items()
}


PUBLISHED = {  # set -> (model, test accuracy % or in-scope accuracy %, oos recall %, source)
    "clinc150": [("BERT-base (110 M)", 96.9, 40.3, "Larson et al. 2019, Table 2, Full, oos-train"),
                 ("MLP on USE embeddings", 93.5, 47.4, "Larson et al. 2019, Table 2, Full, oos-train")],
    "hwu64": [("BERT-large fine-tuned, USE+ConveRT", "about 92-93", None,
               "Casanueva et al. 2020 on the same KFold_1 test set, own train/val split; compare loosely")],
}


def evals(run_dir: Path) -> list[dict]:
    """The run's evaluation records (metrics.jsonl), in order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "eval"]


def best_val(run_dir: Path) -> dict:
    found = evals(run_dir)
    return max(found, key=lambda r: r["accuracy"]) if found else {}


def cpu_name() -> str:
    """The CPU model, as every benchmark report names it (benchmarks/hostinfo.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from hostinfo import cpu_model

    return cpu_model()


def choose(acc: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """acc[candidate][set] -> (the candidate with the smallest worst-set regret, each candidate's regret)."""
    sets = {s for per in acc.values() for s in per}
    best = {s: max(per[s] for per in acc.values() if s in per) for s in sets}
    regret = {c: max(best[s] - per.get(s, 0.0) for s in sets) for c, per in acc.items()}
    mean = {c: sum(per.values()) / len(per) for c, per in acc.items()}
    return min(acc, key=lambda c: (round(regret[c], 6), -mean[c])), regret


def train(data: str, overrides: list[str], run_dir: Path, epochs: int) -> None:
    if (run_dir / "sweep_time_s.txt").is_file():
        return  # a finished candidate (its time is written last) is not trained again
    start = time.time()
    cmd = [sys.executable, "-m", "dtrain.cli", "launch", "--nproc-per-node", "2", CONFIG, f"output_dir={run_dir}",
           f"train.epochs={epochs}", "task.abstain=null", "early_stopping.metric=null", "checkpoint.keep_last=1",
           *SETS[data], *overrides]
    subprocess.run(cmd, check=True)
    (run_dir / "sweep_time_s.txt").write_text(f"{time.time() - start:.0f}\n")


def curve(run_dir: Path) -> list[float]:
    """Validation accuracy (%) at each evaluation (the end of each epoch), in order."""
    return [100 * r["accuracy"] for r in evals(run_dir)]


def stopped(accs: list[float], patience: int | None) -> tuple[float, int, int]:
    """(best accuracy, its epoch, the epoch the run ends at) under early stopping with `patience` (None: off),
    decided by dtrain's own EarlyStopping: a run without early stopping trains the same steps up to any
    point, so its curve says where each patience would have stopped it and what it would have kept."""
    from dtrain.early_stopping import EarlyStopping

    rule = EarlyStopping("accuracy" if patience is not None else None, "max", patience or 1)
    best, best_at = -1.0, 0
    for epoch, acc in enumerate(accs, 1):
        if acc > best:
            best, best_at = acc, epoch
        if rule.update({"accuracy": acc}):
            return best, best_at, epoch
    return best, best_at, len(accs)


def lr_text(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def run_config(run_dir: Path) -> dict:
    """The config a run wrote (config.yaml: every key, defaults included)."""
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def run_lr(run_dir: Path) -> float:
    return float(run_config(run_dir)["optim"]["lr"])


def run_head_init(run_dir: Path) -> str:
    """A run's task.head_init; runs from before the key existed started from a random head."""
    return (run_config(run_dir)["task"] or {}).get("head_init", "random")


def minutes(run_dir: Path, data: str) -> str:
    """`data` and the run's wall time in minutes (time_s.txt, or the sweep's own sweep_time_s.txt)."""
    f = run_dir / "time_s.txt"
    f = f if f.is_file() else run_dir / "sweep_time_s.txt"
    return f"{data} {int(f.read_text()) / 60:.1f}" if f.is_file() else f"{data} ?"


def schedule_table(runs: dict[tuple[float, int], dict[str, Path]], sets: list[str]) -> tuple[list[str], tuple[float, int]]:
    """Schedule length and early stopping, chosen by the same rule: runs[(lr, epochs)][set] is a run of the
    chosen candidate at that peak learning rate over that many epochs (linear decay over them) without early
    stopping. Returns the table and the chosen (lr, epochs) (smallest worst-set regret of best validation
    accuracy; ties: fewer epochs)."""
    curves = {k: {s: curve(d) for s, d in per.items()} for k, per in runs.items()}
    acc = {k: {s: max(c) for s, c in per.items()} for k, per in curves.items()}
    best = {s: max(acc[k][s] for k in acc) for s in sets}
    regret = {k: max(best[s] - acc[k][s] for s in sets) for k in acc}
    chosen = min(acc, key=lambda k: (round(regret[k], 6), k[1]))
    lines = ["| lr | epochs | " + " | ".join(f"{s} best val % (epoch)" for s in sets) + " | worst-set regret | "
             + " | ".join(f"{s}: patience 2 / 3 / 4 end at epoch, keep %" for s in sets) + " | minutes (no early stop) |",
             "| --- | --- | " + " | ".join("---" for _ in sets) + " | --- | " + " | ".join("---" for _ in sets) + " | --- |"]
    for k in sorted(runs, key=lambda k: (-k[0], k[1])):
        cells = []
        for s in sets:
            stops = [stopped(curves[k][s], p) for p in (2, 3, 4)]
            cells.append(" / ".join(f"{end}, {kept:.2f}" for kept, _, end in stops))
        times = [minutes(runs[k][s], s) for s in sets]
        lines.append(f"| {lr_text(k[0])} | {k[1]} | " + " | ".join(f"{acc[k][s]:.2f} ({stopped(curves[k][s], None)[1]})"
                                                                    for s in sets)
                     + f" | {regret[k]:.2f} | " + " | ".join(cells) + f" | {', '.join(times)} |")
    return lines, chosen


def head_init_table(runs: dict[str, dict[str, Path]], sets: list[str]) -> tuple[list[str], str]:
    """The head's starting point, chosen by the same rule: runs[head_init][set] is a whole run (no early
    stopping) of the chosen schedule with task.head_init = head_init. Returns the table and the choice."""
    curves = {k: {s: curve(d) for s, d in per.items()} for k, per in runs.items()}
    chosen, regret = choose({k: {s: max(c) for s, c in per.items()} for k, per in curves.items()})
    lines = ["| task.head_init | " + " | ".join(f"{s} val % by epoch (best)" for s in sets) + " | worst-set regret | "
             + " | ".join(f"{s} test %" for s in sets) + " | minutes |",
             "| --- | " + " | ".join("---" for _ in sets) + " | --- | " + " | ".join("---:" for _ in sets) + " | --- |"]
    for k, per in runs.items():
        cells, tests = [], []
        for s in sets:
            c = curves[k][s]
            cells.append(" ".join(f"{a:.2f}" for a in c) + f" (**{max(c):.2f}**, epoch {stopped(c, None)[1]})")
            r = json.loads((per[s] / "test_report.json").read_text())
            tests.append(f"{100 * r['accuracy']:.2f}" + (f" (in-scope {100 * r['in_scope_accuracy']:.2f}, oos recall "
                                                         f"{100 * r['oos_recall']:.1f})" if r.get("oos_recall") is not None else ""))
        times = ", ".join(minutes(per[s], s) for s in sets)
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {regret[k]:.2f} | " + " | ".join(tests) + f" | {times} |")
    return lines, chosen


def seed_table(run_dirs: list[Path]) -> list[str]:
    """Whole runs that differ from the table above in their seed: best validation accuracy and test accuracy
    per (set, head_init, seed), the seed and head_init read from each run's config.yaml."""
    lines = ["| set | task.head_init | seed | best val % (epoch) | test % |", "| --- | --- | ---: | ---: | ---: |"]
    rows = []
    for d in run_dirs:
        c = curve(d)
        test = json.loads((d / "test_report.json").read_text())["accuracy"]
        rows.append((d.name, run_head_init(d), run_config(d)["seed"], f"{max(c):.2f} ({stopped(c, None)[1]})", f"{100 * test:.2f}"))
    lines += [f"| {a} | {b} | {c} | {v} | {t} |" for a, b, c, v, t in sorted(rows)]
    return lines


def full_runs(specs: list[str]) -> list[str]:
    """The chosen defaults' full runs (config_clinc150.yaml, data paths changed) on each set's test split."""
    lines = ["## Full runs of the defaults, on each set's test split", "",
             f"`dtrain launch --nproc-per-node 2 {CONFIG}` with only the data paths changed (as above), "
             f"2 CPU ranks of a {cpu_name()}, the whole command timed.", "",
             "| set | model | test accuracy % | in-scope accuracy % | oos recall % | macro-F1 | minutes | source |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for spec in specs:
        data, rest = spec.split("=", 1)
        run_dir, _, minutes = rest.partition("@")
        r = json.loads((Path(run_dir) / "test_report.json").read_text())
        pct = lambda k: "" if r.get(k) is None else f"{100 * r[k]:.2f}"  # noqa: E731
        lines.append(f"| {data} | **dtrain, MiniLM-L6 (22.7 M)** | **{pct('accuracy')}** | {pct('in_scope_accuracy')} | "
                     f"{pct('oos_recall')} | {r['macro_f1']:.3f} | {minutes} | this run, {r['checkpoint']} |")
        for model, acc, oos, source in PUBLISHED.get(data, []):
            in_scope = data == "clinc150"
            lines.append(f"| {data} | {model}, published | {'' if in_scope else acc} | {acc if in_scope else ''} | "
                         f"{'' if oos is None else oos} |  |  | {source} |")
    return lines + [""]


HEAD_INIT_FINDINGS = (
    "Chosen: **{head}** (config_clinc150.yaml and the recipe's default). On validation the probe wins CLINC150 by "
    "0.32 and ties HWU64 (one query below at seed 0, 0.40 above at seed 1), and it gets there sooner (CLINC150's best "
    "at epoch 4, not 6; final validation loss 0.949 vs 0.961 on HWU64, 1.050 vs 1.048 on CLINC150). On the test splits, which "
    "no choice here used, its gain is the first in this file larger than the noise that separated the schedules: "
    "CLINC150 in-scope +0.60 points (27 queries) and out-of-scope recall +1.5, HWU64 +1.30 and +1.12 at two seeds "
    "(14 and 12 queries). The validation splits are the training sets' own kind (CLINC150's official val; "
    "HWU64's a tenth of its training fold), the test splits less so (HWU64's is another fold of the data "
    "collection): the gap between them is where a head that does not bend the pretrained features first pays, "
    "which is the gain Kumar et al. 2022 report for linear probe, then fine-tune. The probe costs one forward "
    "pass over the training tickets: 54 s of CLINC150's 26.3 min, 14 s of HWU64's 14.1, on these CPU ranks. "
    "The head's learning-rate scale stays x10 (chosen for a random head): one HWU64 run of the probe with x1 "
    "reached 93.80 on validation (epoch 7) and 92.66 on test, no better. Not swept: the probe's L2 penalty (1e-4).")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    ap.add_argument("--report", default="recipes/ticket_router/SWEEP.md")
    ap.add_argument("--schedule", metavar="DIR", nargs="*", default=[],
                    help="runs of the chosen candidate over more epochs without early stopping, DIR/e<EPOCHS>/<SET> "
                         "(beside the sweep's own 2-epoch runs; each run's optim.lr read from its config.yaml): "
                         "schedule length, learning rate over it and patience, chosen the same way")
    ap.add_argument("--head-init", metavar="DIR", nargs="*", default=[],
                    help="whole runs of the chosen schedule with another task.head_init, DIR/e<EPOCHS>/<SET> (each "
                         "run's head_init read from its config.yaml), judged beside the schedule's own runs")
    ap.add_argument("--seeds", metavar="RUN_DIR", nargs="*", default=[], type=Path,
                    help="whole runs like --head-init's with another seed (a run directory each)")
    ap.add_argument("--full", nargs="*", default=[], metavar="SET=RUN_DIR[@MINUTES]",
                    help="full runs of the chosen defaults to report on their test splits beside published numbers")
    args = ap.parse_args()
    if args.head_init and not args.schedule:
        ap.error("--head-init compares against the chosen schedule's runs: give --schedule too")
    acc: dict[str, dict[str, float]] = {}
    rows = []
    for name, overrides in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        for data in args.sets:
            run_dir = Path(args.out) / data / name
            train(data, overrides, run_dir, args.epochs)
            best = best_val(run_dir)
            acc.setdefault(name, {})[data] = 100 * best.get("accuracy", 0.0)
            rows.append((name, data, best, (run_dir / "sweep_time_s.txt").read_text().strip()))
            print(name, data, json.dumps({k: best.get(k) for k in ("accuracy", "macro_f1", "oos_recall")}), flush=True)
    chosen, regret = choose(acc)
    lines = ["# Ticket router defaults, chosen across intent sets (validation splits only)", "",
             f"Each candidate: {args.epochs} epochs of {CONFIG} with only the data paths changed (linear schedule "
             f"over those epochs, global batch 32) on 2 CPU ranks of a {cpu_name()}. A set's score is the best "
             "validation accuracy (CLINC150's out-of-scope queries included); a candidate's regret on a set is "
             "how many points it falls below that set's best candidate; the chosen one has the smallest "
             "worst-set regret. No test number was used to rank. Reproduce: `python -m recipes.ticket_router.sweep`.", "",
             "| candidate | " + " | ".join(f"{s} val acc %" for s in args.sets) + " | worst-set regret | overrides |",
             "| --- | " + " | ".join("---" for _ in args.sets) + " | --- | --- |"]
    for name in sorted(acc, key=lambda c: regret[c]):
        lines.append(f"| {name} | " + " | ".join(f"{acc[name].get(s, 0):.2f}" for s in args.sets)
                     + f" | {regret[name]:.2f} | {' '.join(CANDIDATES[name])} |")
    lines += ["", "| candidate | set | val accuracy % | val macro-F1 % | val oos recall % | best at step | time s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, data, best, secs in rows:
        oos = best.get("oos_recall")
        lines.append(f"| {name} | {data} | {100 * best.get('accuracy', 0):.2f} | {100 * best.get('macro_f1', 0):.2f} | "
                     f"{'' if oos is None else f'{100 * oos:.1f}'} | {best.get('step')} | {secs} |")
    lines += ["", f"Chosen: **{chosen}** (its pooling, head scale, smoothing and grouping are config_clinc150.yaml's and "
              "the recipe's defaults; its learning rate is judged again with the schedule below). One seed each; the runs are "
              "deterministic (the cls row repeats the earlier CLINC150-only sweep's 94.26 to the digit). Times "
              "include other work sharing the 2 cores.", "",
              "What the sets say: mean pooling beats cls on both sets by about the same margin (+0.55 points on "
              "CLINC150, +0.59 on HWU64 at lr 2e-4), so it is the one change that holds on data it was not "
              "chosen on; the learning rate's optimum (2e-4 vs 1e-4) agrees across the two sets within 0.3 "
              "points; plain fine-tuning (head x1, no smoothing) is slow to start on both in a short schedule. "
              "Length-grouped batches (`train.group_by_length: 1024`) change accuracy by less than a handful of "
              "queries (+0.03 points on CLINC150, +0.10 on HWU64) and take 0.71x the time (322 vs 452 s, 174 vs "
              "242 s), so they are on.", "",
              "How much these numbers can tell: one query is 0.03 points of CLINC150's validation split (3,100) "
              "and 0.10 of HWU64's (1,016); fine-tuning runs that differ only in their seed commonly differ by "
              "a few tenths of a point, so a regret below ~0.3 is a tie that the rule breaks, not a finding.", "",
              "Not swept, and why: `max_length` 128 (batches pad to their longest ticket, so a cap above the data "
              "costs nothing; CLINC150's longest query is 33 tokens); `warmup_steps` 100; global batch 32 (the "
              "published BERT runs' size); AdamW, weight decay 0.01, linear decay, gradient clipping at 1. "
              "Schedule length and early stopping cannot be judged by a 2-epoch proxy: the next section runs them "
              "whole.", ""]
    if args.schedule:
        proxy = {d: Path(args.out) / d / chosen for d in args.sets}
        runs = {(run_lr(proxy[args.sets[0]]), args.epochs): proxy}
        for root in args.schedule:
            for e_dir in sorted(p for p in Path(root).glob("e*") if p.is_dir() and p.name[1:].isdigit()):
                per = {d: e_dir / d for d in args.sets}
                runs[(run_lr(per[args.sets[0]]), int(e_dir.name[1:]))] = per
        table, (lr, epochs) = schedule_table(runs, args.sets)
        schedule_runs = runs[(lr, epochs)]
        lines += ["## Schedule length and early stopping", "",
                  "The chosen candidate over more epochs (linear decay over each), early stopping off so that each "
                  "curve is whole; what patience 2, 3 or 4 would have done is read off the curve (dtrain's rule: "
                  "stop after that many evaluations without a new best; the best checkpoint is kept). Same rule as "
                  "above: smallest worst-set regret of best validation accuracy; ties go to the shorter schedule.", "",
                  *table, "", f"Chosen: **lr {lr_text(lr)} over {epochs} epochs** (config_clinc150.yaml), early stopping at "
                  "patience 4 (was 2): on HWU64's curve patience 2 or 3 ends the run at epoch 6 or 7 during a plateau, "
                  "keeping epoch 4's 93.80, 0.39 below epoch 8's 94.19 once the decay has paid off (what the issue saw "
                  "on its banking set: early stopping at 5 of 7, flat from epoch 3); patience 4 ends neither set "
                  "early, so the whole runs are the shipped config's. The 2-epoch proxy above preferred 2e-4 (by 0.33 and 0.10 "
                  "points); over 10 epochs 1e-4 wins on both sets (+0.52 on CLINC150, +0.49 on HWU64): a short proxy "
                  "favours the fast learner, which is why the learning rate is judged again with the schedule here. "
                  "At 2e-4, longer schedules pay on neither set. The earlier default, 7 epochs at 2e-4 without "
                  "grouping and with patience 2, reached 95.00 on CLINC150 (epoch 7) and 92.91 on HWU64 (epoch 4, "
                  "stopped at 6).", ""]
    if args.head_init:
        heads = {run_head_init(schedule_runs[args.sets[0]]): schedule_runs}
        for root in args.head_init:
            for e_dir in sorted(p for p in Path(root).glob("e*") if p.is_dir() and p.name[1:].isdigit()):
                per = {d: e_dir / d for d in args.sets}
                if (run_lr(per[args.sets[0]]), int(e_dir.name[1:])) == (lr, epochs):
                    heads[run_head_init(per[args.sets[0]])] = per
        table, head = head_init_table(heads, args.sets)
        lines += ["## Where the head starts", "",
                  "The chosen schedule, whole (no early stopping), from a random head or from a linear probe on the "
                  "encoder's frozen features (`task.head_init: probe`, recipes/ticket_router/probe.py). Same rule: "
                  "smallest worst-set regret of best validation accuracy. The test columns are reported, not used.", "",
                  *table, ""]
        if args.seeds:
            lines += ["The same runs with another seed (data order, dropout; the probe itself is deterministic), and "
                      "the seed-0 runs above beside them:", "",
                      *seed_table([*args.seeds, *(per[d] for per in heads.values() for d in args.sets if d in
                                                  {s.name for s in args.seeds})]), ""]
        lines += [HEAD_INIT_FINDINGS.format(head=head), ""]
    if args.full:
        lines += full_runs(args.full)
        lines += ["These full runs (the head from the probe) ran with early stopping off (their curves are in the "
                  "tables above); with patience 4 CLINC150 ends at epoch 8 with the same best checkpoint (epoch 4, about "
                  "21 min) and HWU64 runs all 10 epochs, so they are what the shipped config does. With abstention "
                  "(threshold chosen on validation for min_oos_recall 0.6) the CLINC150 run routes 96.69 % of in-scope "
                  "queries right and sends 46.1 % of out-of-scope ones to a person. The same schedule from a random head "
                  "gave CLINC150 96.13 % in-scope / 35.5 % out-of-scope recall (96.1 / 42.2 with abstention) and HWU64 "
                  "91.45 %; the schedules before it, on the same test splits, 96.47 / 35.5 and 92.01 % (lr 2e-4, 7 epochs, "
                  "ungrouped), 96.29 / 34.2 and 91.73 % (lr 2e-4, 4 epochs): among those the test splits could not "
                  "separate the schedules (7-15 CLINC150 and 3-6 HWU64 queries, the other way round from validation); "
                  "the probe's gain is 12-27 queries, the same way on both sets (and at both HWU64 seeds).", ""]
    Path(args.report).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.report}; chosen {chosen}")


if __name__ == "__main__":
    main()
