"""The generation loop: batched prefill and decode for one expert, streaming per request.

A flat loop over the model's forward (gpt-fast style), not `model.generate`, because one batch
mixes requests with different `max_tokens`, `temperature`, `top_p`, `stop` and `seed`: each
row samples with its own settings and its own RNG, stops on its own, and streams its own text.
Prompts are left-padded so every row's next token sits in the last column.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class TokenEvent:
    """One step of one request: new text, and why it ended when it did."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "cancelled"


@dataclass
class GenRequest:
    input_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    emit: Callable[[TokenEvent], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    request: GenRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    sent_chars: int = 0
    done: bool = False


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else nucleus sampling. logits: [V]."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _finish(row: _Row, text: str, reason: str) -> None:
    row.done = True
    row.request.emit(TokenEvent(text[row.sent_chars :], len(row.tokens), reason))


def _step_row(row: _Row, token: int, decode: Callable[[list[int]], str], eos_ids: set[int]) -> None:
    request = row.request
    if request.cancelled.is_set():
        row.done = True
        request.emit(TokenEvent("", len(row.tokens), "cancelled"))
        return
    if token in eos_ids:
        _finish(row, decode(row.tokens), "stop")
        return
    row.tokens.append(token)
    text = decode(row.tokens)
    for stop in request.stop:
        cut = text.find(stop)
        if cut != -1:
            _finish(row, text[:cut], "stop")
            return
    if len(row.tokens) >= request.max_tokens:
        _finish(row, text, "length")
        return
    # Hold back text that may be the start of a stop string or an incomplete UTF-8 sequence.
    safe = len(text) - max((len(s) - 1 for s in request.stop), default=0)
    if text.endswith("\ufffd"):
        safe = min(safe, len(text) - 1)
    if safe > row.sent_chars:
        request.emit(TokenEvent(text[row.sent_chars : safe], len(row.tokens)))
        row.sent_chars = safe


@torch.inference_mode()
def generate_batch(model: torch.nn.Module, tokenizer, requests: list[GenRequest], eos_ids: set[int]) -> None:
    """Run `requests` together to completion, calling each request's `emit` as text arrives."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    rows = [_Row(r, torch.Generator().manual_seed(r.seed) if r.seed is not None else None) for r in requests]
    width = max(len(r.input_ids) for r in requests)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, request in enumerate(requests):  # left padding: every row ends in the last column
        ids[i, width - len(request.input_ids) :] = torch.tensor(request.input_ids)
        mask[i, width - len(request.input_ids) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=True)

    cache = DynamicCache()
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
    ).logits[:, -1, :]  # [B, V]
    for _ in range(max(r.max_tokens for r in requests)):
        next_tokens = torch.full((len(rows),), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            if row.done:
                continue
            token = sample_next(logits[i], row.request.temperature, row.request.top_p, row.generator)
            next_tokens[i] = token
            _step_row(row, token, decode, eos_ids)
        if all(row.done for row in rows):
            return
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(
            input_ids=next_tokens[:, None].to(device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1, :]
    for row in rows:  # only reachable when max_tokens was 0 for some rows
        if not row.done:
            _finish(row, decode(row.tokens), "length")


def eos_token_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """EOS from the tokenizer and the model's generation config (chat models end turns with their own)."""
    ids: set[int] = set()
    for source in (
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return ids
