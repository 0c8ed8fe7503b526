"""One request's generation state: what it asked for, what it produced, and the text it streams.

A flat, per-row view (gpt-fast style) under the engine's batching: each row samples with its own
settings and RNG (`deployments.sampling`), stops on its own (EOS, a stop string, its own
`max_tokens`, cancellation) and streams its own text, holding back what may still become a stop
string or an incomplete UTF-8 sequence. The engine (`deployments.engine`) decides which rows run
together; nothing here knows about batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from deployments.sampling import RowConstraint, SamplingParams, TokenLogprob, sample_row


@dataclass
class TokenEvent:
    """One step of one request: new text (and its token ids), and why it ended when it did."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "cancelled", "error"
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    queue_s: float | None = None  # on a request's first event: submit -> admitted into a batch
    prompt_logprobs: list[TokenLogprob] | None = None  # first event, when the request scores its prompt


@dataclass
class GenRequest:
    input_ids: list[int]
    max_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    constraint: RowConstraint | None = None
    prompt_logprobs: bool = False  # score the prompt's tokens (echo with logprobs); top-k: params.logprobs
    emit: Callable[[TokenEvent], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_s: float = field(default_factory=time.monotonic)


@dataclass
class Row:
    """A request inside the engine. `pending` is the sampled token not yet fed to the model."""

    request: GenRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    sent_chars: int = 0
    sent_tokens: int = 0
    done: bool = False
    pending: int = 0
    queue_s: float | None = None
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    sent_prompt_logprobs: bool = False

    @classmethod
    def of(cls, request: GenRequest) -> Row:
        seed = request.params.seed
        return cls(request, torch.Generator().manual_seed(seed) if seed is not None else None)

    @property
    def final_length(self) -> int:
        """Tokens this row may reach: what the KV budget must reserve for it."""
        return len(self.request.input_ids) + self.request.max_tokens

    def emit(self, text: str, finish_reason: str | None = None) -> None:
        event = TokenEvent(
            text,
            len(self.tokens),
            finish_reason,
            token_ids=self.tokens[self.sent_tokens :],
            logprobs=self.logprobs[self.sent_tokens :],
            queue_s=self.queue_s,
        )
        if self.request.prompt_logprobs and not self.sent_prompt_logprobs:
            event.prompt_logprobs, self.sent_prompt_logprobs = self.prompt_logprobs, True
        self.sent_tokens = len(self.tokens)
        self.queue_s = None  # only the first event carries it
        self.request.emit(event)

    def finish(self, reason: str, text: str = "") -> None:
        self.done = True
        self.emit(text, reason)


class Detokenizer:
    """Decode a row's tokens to text (whole-sequence decode: byte-level BPE merges across tokens)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def sample_for(row: Row, logits: torch.Tensor, eos_ids: set[int]) -> int:
    """Sample `row`'s next token from its logits [V], with its bans (EOS before min_tokens)."""
    request = row.request
    banned = eos_ids if len(row.tokens) < request.params.min_tokens else set()
    token, logprob = sample_row(
        logits,
        request.params,
        row.generator,
        prompt_ids=request.input_ids if request.params.needs_history else [],
        output_ids=row.tokens,
        banned_ids=banned,
        constraint=request.constraint,
    )
    if logprob is not None:
        row.logprobs.append(logprob)
    return token


def advance(row: Row, token: int, decode: Detokenizer, eos_ids: set[int]) -> None:
    """Record `token` for `row` and stream what became final; ends the row when it should end."""
    request = row.request
    if request.cancelled.is_set():
        row.finish("cancelled")
        return
    if token in eos_ids and not request.params.ignore_eos:
        if row.logprobs and len(row.logprobs) > len(row.tokens):
            row.logprobs.pop()  # the EOS is not part of the completion
        row.finish("stop", decode(row.tokens)[row.sent_chars :])
        return
    row.tokens.append(token)
    row.pending = token
    if request.constraint is not None:
        request.constraint.accept(token)
    text = decode(row.tokens)
    for stop in request.stop:
        cut = text.find(stop)
        if cut != -1:
            row.finish("stop", text[row.sent_chars : cut] if cut > row.sent_chars else "")
            return
    if request.constraint is not None and request.constraint.is_terminated():
        row.finish("stop", text[row.sent_chars :])
        return
    if len(row.tokens) >= request.max_tokens:
        row.finish("length", text[row.sent_chars :])
        return
    # Hold back text that may be the start of a stop string or an incomplete UTF-8 sequence.
    safe = len(text) - max((len(s) - 1 for s in request.stop), default=0)
    if text.endswith("\ufffd"):
        safe = min(safe, len(text) - 1)
    if safe > row.sent_chars:
        chunk = text[row.sent_chars : safe]
        row.sent_chars = safe
        row.emit(chunk)


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
