"""A static encoder: the mean of all-MiniLM-L6-v2's input token embeddings, no transformer pass.

Routing needs the topic of a prompt, and the word-piece embedding table already places words by
topic. Averaging the rows of a prompt's word pieces costs a tokenizer call and one gather
(~0.1 ms per prompt on one core) instead of six transformer layers (~15 ms per short prompt,
far more under load), which is what lets the ingress route 32 concurrent requests within a
few milliseconds each. `bench.router_encoders` compares it with the full encoder on the same
leave-one-source-out split; the table and the chosen default are in bench/results/.

Same interface as `router.embedding.Encoder`: `encode(texts) -> [N, D]` unit rows, `dim`,
`name`, `path`. Its weights are read from the installed encoder package, never committed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from router.embedding import resolve_encoder_path

STATIC_ENCODER = "static"
# Why 256: the same window the transformer encoder reads, so both see the same text.
MAX_TOKENS = 256


class StaticEncoder:
    """Mean of word-piece input embeddings (special tokens excluded), L2-normalised."""

    def __init__(self, encoder: str = STATIC_ENCODER):
        self.name = str(encoder)
        self.path: Path = resolve_encoder_path("default")
        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self._tokenizer_lock = threading.Lock()  # the Rust tokenizer is not re-entrant (see embedding.py)
        with safe_open(str(self.path / "model.safetensors"), framework="pt") as f:
            key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
            self._table = f.get_tensor(key).float()  # [V, D]
        self.dim: int = int(self._table.shape[1])
        self.batch_size = 1 << 30  # no batching limit: the cost is linear in tokens

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        with self._tokenizer_lock:
            ids = self._tokenizer(
                texts, add_special_tokens=False, truncation=True, max_length=MAX_TOKENS
            )["input_ids"]
        lengths = torch.tensor([max(len(s), 1) for s in ids])
        flat = torch.tensor([t for s in ids for t in (s or [self._tokenizer.unk_token_id])])
        rows = torch.repeat_interleave(torch.arange(len(ids)), lengths)
        sums = torch.zeros(len(ids), self.dim).index_add_(0, rows, self._table[flat])  # [N, D]
        return torch.nn.functional.normalize(sums / lengths[:, None], dim=-1)
