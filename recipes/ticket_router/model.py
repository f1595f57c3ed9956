"""The ticket router's classifier: a pretrained encoder and a fresh linear head over one pooled vector.

Two poolings (task.pooling):
- "mean": the average of the encoder's last hidden states over the ticket's tokens (padding excluded).
  Sentence encoders such as the shipped all-MiniLM-L6-v2 were trained to put a sentence's meaning there.
- "cls": Hugging Face's AutoModelForSequenceClassification, which feeds the [CLS] token through the
  checkpoint's pooler (dense + tanh); the pooler of a sentence encoder was never trained for anything.

Both return an object with `.logits` and name the head's parameters `classifier.*`, so the Trainer, the
head's learning-rate scale, checkpoints, export and predict treat them alike.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

POOLINGS = ("mean", "cls")
MEAN_POOLED = "dtrain_mean_pooled"
"""config.json key marking a saved mean-pooled classifier (its head lies beside the encoder's weights)."""


class MeanPooledClassifier(nn.Module):
    """encoder -> mean over unmasked tokens -> dropout -> linear head."""

    base_model_prefix = "encoder"

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.dropout = nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.1))
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # clamp: a row of padding alone (never produced by the collate, but possible in an export) stays finite
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        """A Hugging Face directory: the encoder's config (marked, with the labels) and one safetensors
        file holding encoder and head, so `load_model` on this directory rebuilds this classifier."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.encoder.config)
        setattr(config, MEAN_POOLED, True)
        config.save_pretrained(path)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))


def _labels(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _without_pooler(make, *args, **kwargs):
    """The encoder without its [CLS] pooler where the architecture has one: an unused layer would get no
    gradient, which DistributedDataParallel refuses."""
    try:
        return make(*args, add_pooling_layer=False, **kwargs)
    except TypeError:  # an architecture without a pooler (DistilBERT, say) takes no such argument
        return make(*args, **kwargs)


def _saved_config(path: Path) -> dict:
    """The model directory's config.json ({} without one)."""
    config = path / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def _is_mean_pooled_dir(path: Path) -> bool:
    return bool(_saved_config(path).get(MEAN_POOLED))


def load_model(path: Path, names: list[str], pooling: str = "mean"):
    """The pretrained encoder at `path` with a fresh head for `names` (a directory that already holds a
    classifier for another label set gets a fresh head too)."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    hf_logging.disable_progress_bar()
    if pooling == "cls":
        return AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, ignore_mismatched_sizes=True, **_labels(names))
    if _is_mean_pooled_dir(path):  # one this recipe exported: encoder and head in one file
        from safetensors.torch import load_file

        model = skeleton_model(path, names, pooling)
        state = load_file(str(path / "model.safetensors"))
        head_fits = state.get("classifier.weight", torch.empty(0)).shape == model.classifier.weight.shape
        if head_fits:
            model.load_state_dict(state)
        else:  # another label set: the encoder's weights, and a head initialised here (the skeleton's is not)
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")}, strict=False)
            model.classifier.reset_parameters()
        return model
    encoder = _without_pooler(AutoModel.from_pretrained, path, local_files_only=True, **_labels(names))
    return MeanPooledClassifier(encoder, len(names))


def routes_labels(path: Path, names: list[str]) -> bool:
    """True when the model directory at `path` is already a classifier for exactly these labels (one this
    recipe exported, say): its head is trained, not fresh."""
    id2label = _saved_config(path).get("id2label") or {}
    return [id2label.get(str(i)) for i in range(len(id2label))] == list(names)


def skeleton_model(path: Path, names: list[str], pooling: str = "mean"):
    """The architecture of `load_model` without its weights (ranks that receive a shard of rank 0's)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights

    config = AutoConfig.from_pretrained(path, local_files_only=True, **_labels(names))
    # No initialisation: rank 0's weights replace it, and under DeepSpeed's zero.Init it would index
    # parameters that are already partitioned (empty on this rank).
    with no_init_weights():
        if pooling == "cls":
            return AutoModelForSequenceClassification.from_config(config)
        return MeanPooledClassifier(_without_pooler(AutoModel.from_config, config), len(names))


def transformer_layers(model) -> list:
    """The encoder's layers (BERT-style models keep them in encoder.layer): FSDP's units."""
    base = getattr(model, model.base_model_prefix, model)
    return list(base.encoder.layer) if hasattr(base, "encoder") else []
