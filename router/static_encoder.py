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

- `"static-idf-ctx"` (the default): the `"static-idf"` vector beside a second idf-weighted mean,
  over a table of *contextualised* word pieces: each word piece run alone through the
  transformer (`[CLS] piece [SEP]`) and its output vector kept (`contextual_table`, ~20 s once at
  training, shipped in the artifact as `token_table.safetensors`). The two halves are L2-normalised
  each and concatenated (768 dims). Two gathers instead of one (~1.5 ms more p50 at 32 concurrent
  requests, bench/results/router_load.md); +1.2 points leave-one-source-out over `"static-idf"`
  (0.690 -> 0.702 on the same corpus; medicine 0.667 -> 0.655, the other seven as good or better).

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
STATIC_CTX_ENCODER = "static-idf-ctx"
STATIC_ENCODERS = (STATIC_ENCODER, STATIC_IDF_ENCODER, STATIC_CTX_ENCODER)
WEIGHTED_ENCODERS = (STATIC_IDF_ENCODER, STATIC_CTX_ENCODER)  # they carry idf weights from their artifact
# Why 1,024: word pieces per forward pass when building the contextual table; [1024, 3] inputs keep the
# activations small and the ~30 passes take ~20 s on 2 cores.
CONTEXT_BATCH = 1024
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


@functools.cache
def contextual_table() -> torch.Tensor:
    """[V, D] the transformer's output vector of every word piece seen alone (`[CLS] piece [SEP]`).

    Deterministic for a given encoder and torch build; computed once per process (~20 s on 2 cores).
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path, _, table, _ = _parts()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a weights bar is noise in `router.train` output
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    cls, sep = int(model.config.bos_token_id or 101), int(model.config.eos_token_id or 102)
    out = torch.empty_like(table)
    with torch.inference_mode():
        for start in range(0, table.shape[0], CONTEXT_BATCH):
            ids = torch.arange(start, min(table.shape[0], start + CONTEXT_BATCH))
            inputs = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], 1)  # [B, 3]
            hidden = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).last_hidden_state
            out[ids] = hidden[:, 1].float()
    return out


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

    def __init__(
        self,
        encoder: str = STATIC_ENCODER,
        token_weights: torch.Tensor | None = None,
        context_table: torch.Tensor | None = None,
    ):
        if encoder not in STATIC_ENCODERS:
            raise ValueError(f"unknown static encoder {encoder!r}; known: {STATIC_ENCODERS}")
        if encoder in WEIGHTED_ENCODERS and token_weights is None:
            raise ValueError(f"{encoder!r} needs token_weights")
        if encoder not in WEIGHTED_ENCODERS and token_weights is not None:
            raise ValueError(f"{encoder!r} takes no token_weights")
        self.name = encoder
        self.path, self._tokenizer, self._table, _ = _parts()
        if encoder == STATIC_CTX_ENCODER:
            context_table = contextual_table() if context_table is None else context_table
            if context_table.shape != self._table.shape:
                raise ValueError(f"context_table must have shape {tuple(self._table.shape)}")
        elif context_table is not None:
            raise ValueError(f"only {STATIC_CTX_ENCODER!r} takes a context_table")
        self.context_table = context_table
        self.dim: int = int(self._table.shape[1]) * (2 if context_table is not None else 1)
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
        views = [self._table] if self.context_table is None else [self._table, self.context_table]
        out = []
        for table in views:
            weighted = table[flat] * w[:, None]  # [T, D]
            sums = torch.zeros(len(ids), table.shape[1]).index_add_(0, rows, weighted)  # [N, D]
            out.append(torch.nn.functional.normalize(sums, dim=-1))  # the mean's direction: the mass cancels
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)
