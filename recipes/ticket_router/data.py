"""Tickets on disk -> validated (texts, labels); a reproducible, recorded stratified split; batching."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from dtrain.data import stratified_split
from dtrain.shards import ShardedView

SHIPPED = Path(__file__).parent / "data" / "tickets.csv"


class TicketDataError(ValueError):
    pass


@dataclass
class Tickets:
    texts: list[str]
    labels: list[int]
    names: list[str]
    """Label names; `labels` index into it."""
    path: Path
    sha256: str


def decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TicketDataError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


def read_rows(path: Path, columns: tuple[str, str] = ("text", "label")) -> list[tuple[int, dict]]:
    """(line number, row) pairs from a CSV (header row) or a JSONL file; `columns` (text, label) must be in
    a CSV's header."""
    if path.is_dir():
        raise TicketDataError(f"data file {path} is a directory; set task.data_path to a CSV or JSONL file in it")
    if not path.is_file():
        raise TicketDataError(f"data file {path} does not exist; set task.data_path to a CSV or JSONL file")
    text = decode_utf8(path.read_bytes(), path)
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise TicketDataError(f"{path} line {n}: not a JSON object ({exc})") from None
                if not isinstance(row, dict):
                    raise TicketDataError(f"{path} line {n}: expected a JSON object with {columns[0]!r} and {columns[1]!r}")
                rows.append((n, row))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise TicketDataError(
            f"{path}: no {' or '.join(repr(c) for c in missing)} column (columns found: {reader.fieldnames}); "
            f"the file needs a header row with {columns[0]!r} and {columns[1]!r}, or set task.text_column and "
            "task.label_column to the names it has"
        )
    return [(reader.line_num, row) for row in reader]


def check_ticket(row: dict, where: str, columns: tuple[str, str], label_names: Sequence[str] | None,
                 labels_from: str = "task.labels") -> tuple[str, str]:
    """(text, label) of one row, or a TicketDataError naming `where` (file and line, or shard and row)."""
    text, label = row.get(columns[0]), row.get(columns[1])
    if not isinstance(text, str) or not text.strip():
        raise TicketDataError(f"{where}: empty text ({columns[0]!r})")
    if label is None or str(label).strip() == "":
        raise TicketDataError(f"{where}: empty label ({columns[1]!r})")
    label = str(label).strip()
    if label_names is not None and label not in label_names:
        raise TicketDataError(f"{where}: unknown label {label!r}; {labels_from} allows {', '.join(label_names)}")
    return text.strip(), label


def load_tickets(path: str | Path, label_names: Sequence[str] | None = None, labels_from: str = "task.labels",
                 columns: tuple[str, str] = ("text", "label")) -> Tickets:
    """Read and check every row; `label_names` fixes the label set (an unknown label is an error).

    `labels_from` says where that set came from, for the message (task.labels, or the training file)."""
    path = Path(path)
    rows = read_rows(path, columns)
    texts, raw_labels = [], []
    for n, row in rows:
        text, label = check_ticket(row, f"{path} line {n}", columns, label_names, labels_from)
        texts.append(text)
        raw_labels.append(label)
    if not texts:
        raise TicketDataError(f"{path}: no tickets")
    names = list(label_names) if label_names is not None else sorted(set(raw_labels))
    if len(set(raw_labels)) < 2:
        raise TicketDataError(f"{path}: needs at least 2 labels, found {sorted(set(raw_labels))}")
    index = {name: i for i, name in enumerate(names)}
    return Tickets(texts, [index[lab] for lab in raw_labels], names, path, hashlib.sha256(path.read_bytes()).hexdigest())


def split(tickets: Tickets, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Stratified train / val / test row indices; the same file and seed give the same split."""
    rest, test = stratified_split(tickets.labels, test_fraction, seed)
    rest_labels = [tickets.labels[i] for i in rest]
    train_pos, val_pos = stratified_split(rest_labels, val_fraction / (1.0 - test_fraction), seed + 1)
    return {"train": [rest[i] for i in train_pos], "val": [rest[i] for i in val_pos], "test": test}


def split_record(tickets: Tickets, parts: dict[str, list[int]], seed: int) -> dict:
    """What split.json holds: enough to audit and reproduce the split."""
    counts = {
        name: {label: sum(tickets.labels[i] == k for i in idx) for k, label in enumerate(tickets.names)}
        for name, idx in parts.items()
    }
    return {"data_path": str(tickets.path), "sha256": tickets.sha256, "seed": seed, "labels": tickets.names,
            "counts": counts, "indices": parts}


class Encoded(torch.utils.data.Dataset):
    """Token ids of each ticket (tokenised once, unpadded) and its label."""

    def __init__(self, ids: list[list[int]], labels: list[int]):
        self.ids, self.labels = ids, labels
        self.lengths = [len(x) for x in ids]
        """Tokens per ticket, for train.group_by_length."""

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.labels[i]


class ShardedTickets(ShardedView):
    """Tickets read from shards (a directory or glob of JSONL, CSV or Parquet: dtrain.shards) one at a time
    and tokenized where they are read: in the DataLoader's workers, not all up front on every rank. A bad
    row stops the run naming its shard and row."""

    def __init__(self, rows, tokenizer, max_length: int, names: Sequence[str], columns: tuple[str, str]):
        super().__init__(rows)
        self.tokenizer, self.max_length = tokenizer, max_length
        self.index = {name: i for i, name in enumerate(names)}
        self.names, self.columns = list(names), columns

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        shard, row = self.rows.locate(i)
        text, label = check_ticket(self.rows[i], f"{shard} row {row}", self.columns, self.names)
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        return ids, self.index[label]


class PadCollate:
    """Pad to the longest ticket of the batch, not to max_length: short batches cost less."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
