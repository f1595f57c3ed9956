"""Secrets stay out of logs and saved configs: values under key-like names are replaced by '***'."""

from __future__ import annotations

import re
from typing import Any

SECRET_WORDS = {"token", "secret", "password", "passwd", "pwd", "credential", "credentials", "apikey"}
KEY_QUALIFIERS = {"api", "access", "secret", "private", "auth", "signing"}
MASK = "***"


def is_secret(name: str) -> bool:
    """WANDB_API_KEY, hf_token, db.password, AWS_SECRET_ACCESS_KEY: yes. max_tokens, tokenizer, key_dim: no."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if any(w in SECRET_WORDS for w in words):
        return True
    return any(w == "key" and i > 0 and words[i - 1] in KEY_QUALIFIERS for i, w in enumerate(words))


def redact(obj: Any) -> Any:
    """A copy of nested dicts/lists with every value under a secret-looking key masked."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret(str(k)) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def redact_overrides(overrides: list[str]) -> list[str]:
    """`wandb.api_key=abc` -> `wandb.api_key=***` (for printed command lines)."""
    out = []
    for text in overrides:
        key, sep, _ = text.partition("=")
        out.append(f"{key}={MASK}" if sep and is_secret(key.rsplit(".", 1)[-1]) else text)
    return out


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (MASK if is_secret(k) else v) for k, v in env.items()}
