"""A static encoder: the weighted mean of all-MiniLM-L6-v2's input token embeddings, no transformer.

Routing needs the topic of a prompt, and the word-piece embedding table already places words by
topic. Averaging the rows of a prompt's word pieces costs a tokenizer call and one gather
(~0.1 ms per prompt on one core) instead of six transformer layers (~15 ms per short prompt,
far more under load), which is what lets the ingress route 32 concurrent requests within a
few milliseconds each.

Two variants share the code:
- `"static"`: every word piece weighs the same;
- `"static-idf"`: each word piece weighs its inverse document frequency in the routing corpus
  (`token_idf`), so "the", "what", "?" and digits stop outvoting the few words that carry the
  topic. On the leave-one-source-out split this lifted accuracy by ~3 points at the same cost
  (bench/results/router_encoders.md). The weights are part of the trained artifact
  (`token_weights.safetensors`), computed from the corpus texts only (no labels).

Same interface as `router.embedding.Encoder`: `encode(texts) -> [N, D]` unit rows, `dim`,
`name`, `path`. Its table is read from the installed encoder package, never committed.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from router.embedding import resolve_encoder_path

STATIC_ENCODER = "static"
STATIC_IDF_ENCODER = "static-idf"
STATIC_ENCODERS = (STATIC_ENCODER, STATIC_IDF_ENCODER)
# Why 256: the same window the transformer encoder reads, so both see the same text.
MAX_TOKENS = 256


@functools.cache
def _parts() -> tuple[Path, object, torch.Tensor, threading.Lock]:
    """Tokenizer and embedding table, loaded once per process (every StaticEncoder shares them)."""
    path = resolve_encoder_path("default")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
        table = f.get_tensor(key).float()  # [V, D]
    return path, tokenizer, table, threading.Lock()  # the Rust tokenizer is not re-entrant


def tokenize(texts: list[str]) -> list[list[int]]:
    """Word-piece ids of each text (no special tokens, at most MAX_TOKENS)."""
    _, tokenizer, _, lock = _parts()
    with lock:
        return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=MAX_TOKENS)["input_ids"]


def token_idf(texts: list[str]) -> torch.Tensor:
    """Smoothed inverse document frequency [V] of every word piece over `texts`: ln((1+n)/(1+df)) + 1.

    A word piece no text uses gets the largest weight (rare), like a rare one.
    """
    table = _parts()[2]
    df = torch.zeros(table.shape[0], dtype=torch.float64)
    for ids in tokenize(texts):
        df[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
    return (torch.log((1 + len(texts)) / (1 + df)) + 1).float()


class StaticEncoder:
    """Weighted mean of word-piece input embeddings (special tokens excluded), L2-normalised."""

    def __init__(self, encoder: str = STATIC_ENCODER, token_weights: torch.Tensor | None = None):
        if encoder not in STATIC_ENCODERS:
            raise ValueError(f"unknown static encoder {encoder!r}; known: {STATIC_ENCODERS}")
        if (encoder == STATIC_IDF_ENCODER) != (token_weights is not None):
            raise ValueError(f"{STATIC_IDF_ENCODER!r} needs token_weights and {STATIC_ENCODER!r} takes none")
        self.name = encoder
        self.path, self._tokenizer, self._table, _ = _parts()
        self.dim: int = int(self._table.shape[1])
        self.vocab_size: int = int(self._table.shape[0])
        if token_weights is not None and token_weights.shape != (self._table.shape[0],):
            raise ValueError(
                f"token_weights must have shape [{self._table.shape[0]}]; got {tuple(token_weights.shape)}"
            )
        self.token_weights = token_weights
        self.batch_size = 1 << 30  # no batching limit: the cost is linear in tokens

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        ids = tokenize(texts)
        lengths = torch.tensor([max(len(s), 1) for s in ids])
        flat = torch.tensor([t for s in ids for t in (s or [self._tokenizer.unk_token_id])])
        rows = torch.repeat_interleave(torch.arange(len(ids)), lengths)
        w = torch.ones(len(flat)) if self.token_weights is None else self.token_weights[flat]  # [T]
        sums = torch.zeros(len(ids), self.dim).index_add_(0, rows, self._table[flat] * w[:, None])  # [N, D]
        mass = torch.zeros(len(ids)).index_add_(0, rows, w)  # [N]
        return torch.nn.functional.normalize(sums / mass[:, None], dim=-1)
