"""Your own model, trained from a script with dtrain's Python API (no recipe module, no YAML needed).

    python examples/own_model.py                                   # one process (a GPU if there is one)
    torchrun --nproc-per-node 2 examples/own_model.py              # every rank runs the script
    python examples/own_model.py output_dir=runs/own train.epochs=5  # overrides, as on the command line

A tiny character-level language model of this script's own source text, with dtrain doing the rest:
DDP (or fsdp/deepspeed by a key), mixed precision, accumulation, clipping, the LR schedule, checkpoints
that resume exactly, metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import dtrain
from dtrain import BuildContext, Hooks, Task

CONTEXT = 32


class CharLM(nn.Module):
    def __init__(self, vocab: int, width: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])


def make_task(ctx: BuildContext) -> Task:
    text = Path(__file__).read_text(encoding="utf-8")
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    windows = ids.unfold(0, CONTEXT + 1, 1)  # (n, CONTEXT + 1): input and next-character target
    pairs = [(w[:-1], w[1:]) for w in windows]
    split = int(len(pairs) * 0.9)

    def loss_fn(logits, batch):
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[1].flatten())  # the mean, as dtrain expects

    def sample(model, step, metrics):  # after each evaluation, on rank 0: what the model writes now
        device = next(model.parameters()).device
        out = ids[:CONTEXT].tolist()
        for _ in range(60):
            probs = model(torch.tensor([out[-CONTEXT:]], device=device))[0, -1].float().softmax(-1)
            out.append(int(torch.multinomial(probs, 1)))  # random draws: dtrain puts the RNG back after
        print(f"[sample] step {step}: {''.join(vocab[i] for i in out[CONTEXT:])!r}", flush=True)

    return Task(
        model=lambda: CharLM(len(vocab)),
        train_data=pairs[:split],
        val_data=pairs[split:],
        loss_fn=loss_fn,
        eval_stats=lambda logits, batch: {"correct": (logits.argmax(-1) == batch[1]).sum(), "count": batch[1].numel()},
        summarize=lambda sums: {"char_accuracy": (sums["correct"] / sums["count"]).item()},
        optimizer=lambda model: torch.optim.RAdam(model.parameters(), lr=3e-3),  # yours, not optim.*
        hooks=Hooks(after_eval=sample),
    )


if __name__ == "__main__":
    config = {"output_dir": "runs/own_model", "train": {"epochs": 2, "batch_size": 32, "log_every": 20},
              "optim": {"warmup_steps": 10}, "checkpoint": {"best_metric": "char_accuracy"}}
    result = dtrain.fit(make_task, config, overrides=sys.argv[1:])
    print(f"char_accuracy {result.metrics['char_accuracy']:.3f}; model {type(result.model).__name__}; "
          f"run directory {result.run_dir}")
