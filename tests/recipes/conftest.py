from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer: the ticket router's code path, in seconds."""
    pytest.importorskip("transformers", reason="the ticket router needs dtrain[text]")
    from transformers import AutoModelForSequenceClassification, BertConfig

    from recipes.ticket_router import BUILTIN_MODEL, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(BUILTIN_MODEL))
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("tiny_bert")
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
