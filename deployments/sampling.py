"""Per-row sampling: penalties, bias, constraints, top-k / top-p, and the logprobs users asked for.

Each row of a batch carries its own `SamplingParams` and RNG, so one batch can mix a greedy
request, a creative one and a constrained one. The order follows vLLM's sampler: logit bias and
bans (min_tokens, constraints) first, then repetition / presence / frequency penalties, then
temperature, top-k, top-p. Logprobs are taken from the raw model distribution, as vLLM reports
them by default, so a client sees what the model believed, not what the sampler reshaped.

Nucleus sampling over a 49k vocabulary would sort it every step (about 2 ms a row on one CPU
thread, 15% of a decode step of 8 rows). We sort the top 1,024 tokens instead and fall back to
the full sort only when their mass is below `top_p`: exact in every case, cheap in the usual one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

NUCLEUS_CANDIDATES = 1024


class RowConstraint(Protocol):
    """A per-row logits constraint (structured output): it masks what may come next and learns
    what came. `allowed` returns a bool mask [V] or None for "anything"."""

    def allowed(self, vocab_size: int) -> torch.Tensor | None: ...

    def accept(self, token: int) -> None: ...

    def is_terminated(self) -> bool: ...


@dataclass
class SamplingParams:
    """How one row picks its next token. Defaults are the neutral values (no effect)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # HF/vLLM style: divides positive logits of seen tokens (prompt too)
    presence_penalty: float = 0.0  # OpenAI style: on generated tokens only
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob and the top k
    seed: int | None = None

    @property
    def needs_history(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the top alternatives, as OpenAI's logprobs carry them."""

    token_id: int
    logprob: float | None  # None: a prompt's first token, which nothing predicts
    top: list[tuple[int, float]] = field(default_factory=list)


def _apply_penalties(
    logits: torch.Tensor, params: SamplingParams, prompt_ids: list[int], output_ids: list[int]
) -> torch.Tensor:
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        if seen.numel():
            picked = logits[seen]
            logits[seen] = torch.where(
                picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
            )
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.unique(torch.tensor(output_ids, dtype=torch.long), return_counts=True)
        logits[ids] -= params.presence_penalty + params.frequency_penalty * counts.to(logits.dtype)
    return logits


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every probability outside the smallest set whose mass reaches top_p. probs: [V]."""
    k = min(NUCLEUS_CANDIDATES, probs.numel())
    top_probs, top_ids = torch.topk(probs, k)
    if float(top_probs.sum()) < top_p and k < probs.numel():
        top_probs, top_ids = torch.sort(probs, descending=True)
    keep = torch.cumsum(top_probs, dim=-1) - top_probs < top_p  # always keeps the top token
    return torch.zeros_like(probs).scatter_(0, top_ids[keep], top_probs[keep])


def sample_row(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    *,
    prompt_ids: list[int],
    output_ids: list[int],
    banned_ids: set[int],
    constraint: RowConstraint | None = None,
) -> tuple[int, TokenLogprob | None]:
    """The next token for one row, and its logprobs when asked. logits: [V] (any float dtype)."""
    plain = not (params.logit_bias or banned_ids or constraint is not None or params.needs_history)
    if plain and params.temperature <= 0 and params.logprobs is None:
        return int(torch.argmax(logits)), None  # greedy, nothing to reshape: the hot path stays flat
    raw = logits.float()
    scores = raw.clone()
    for token_id, bias in params.logit_bias.items():
        if 0 <= token_id < scores.numel():
            scores[token_id] += bias
    if banned_ids:
        scores[torch.tensor(sorted(banned_ids), dtype=torch.long)] = float("-inf")
    if constraint is not None:
        allowed = constraint.allowed(scores.numel())
        if allowed is not None:
            allowed = allowed.to(scores.device, non_blocking=True)  # masks are built on the CPU
            scores = scores.masked_fill(~allowed, float("-inf"))
            if not bool(torch.isfinite(scores).any()):
                # The grammar allows only what a ban forbids (EOS before min_tokens): the grammar
                # wins, as a row with no allowed token would fail its whole batch.
                scores = raw.masked_fill(~allowed, float("-inf"))
    if params.needs_history:
        scores = _apply_penalties(scores, params, prompt_ids, output_ids)

    if params.temperature <= 0:
        token = int(torch.argmax(scores))
    else:
        scores = scores / params.temperature
        if params.top_k > 0 and params.top_k < scores.numel():
            kth = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if params.top_p < 1.0:
            probs = _nucleus(probs, params.top_p)
        token = int(torch.multinomial(probs, 1, generator=generator))

    if params.logprobs is None:
        return token, None
    logprobs = torch.log_softmax(raw, dim=-1)
    top: list[tuple[int, float]] = []
    if params.logprobs > 0:
        values, ids = torch.topk(logprobs, params.logprobs)
        top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
    return token, TokenLogprob(token_id=token, logprob=float(logprobs[token]), top=top)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else nucleus sampling. logits: [V]. (Plain form for tests and bench.)"""
    params = SamplingParams(temperature=temperature, top_p=top_p)
    token, _ = sample_row(logits, params, generator, prompt_ids=[], output_ids=[], banned_ids=set())
    return token
