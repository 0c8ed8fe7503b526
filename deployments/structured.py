"""Structured output: `response_format` json_object / json_schema as a per-row grammar constraint.

A request's JSON schema becomes an llguidance grammar; each row that asks for one gets its own
matcher (`JsonConstraint`, the engine's `RowConstraint`): before each token the matcher's mask
bans every token that would break the grammar, and it learns the token that was sampled. So the
text parses and validates whatever the model's weights are, random ones included; what can still
happen is running out of `max_tokens` first: the row then ends with finish_reason "length" and
the text is a prefix of valid JSON, as OpenAI and vLLM do.

Why llguidance (bench/results/structured_output.md, same tokenizer, schemas and engine): every
output it allowed parsed and validated; xgrammar let a raw control character into a string (1 of
19 invalid) and pulls triton into a CPU install; outlines-core ignored integer bounds (most
outputs invalid) and took 20-25 s to compile json_object. Per token all three cost 35-165 us on
this CPU, well under 1% of a decode step. JSON is compact (`whitespace_flexible` off): a weak or
random model cannot spend its token budget on whitespace between keys, and answers are shorter.

Costs paid once: the grammar of a schema is built and checked once per process (`grammar_for`,
cached by schema text), which is also how the ingress refuses a bad schema with a 400 before any
socket sees it; a tokenizer's llguidance view (about 1 s for a 49k vocabulary) once per tokenizer
and vocabulary size on each socket (`ll_tokenizer`); the matcher of a grammar once per socket,
each row starting from a copy of it. Per token, the mask is computed on the CPU
into an int32 bitmask and unpacked to the [V] bool mask `sample_row` applies (moved to the logits'
device there, so the same code serves CUDA).
"""

from __future__ import annotations

import functools
import json
import threading

import llguidance
import llguidance.hf
import llguidance.torch
import torch

# Compact JSON: no free whitespace between tokens (see the module docstring).
GRAMMAR_DEFAULTS = {"whitespace_flexible": False}
JSON_OBJECT_SCHEMA = '{"type": "object"}'


class InvalidSchema(ValueError):
    """A JSON schema llguidance cannot turn into a grammar (the ingress answers 400)."""


@functools.lru_cache(maxsize=256)
def grammar_for(schema_json: str) -> str:
    """The checked llguidance grammar of a JSON schema (text); raises InvalidSchema with the reason."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=GRAMMAR_DEFAULTS)
    except ValueError as err:
        raise InvalidSchema(f"not a JSON schema: {err}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidSchema(error)
    return grammar


def schema_text(schema: dict) -> str:
    """The one spelling of a schema that grammars are cached by (key order kept: it is the field order)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


_tokenizers: dict[tuple[int, int], tuple[object, llguidance.LLTokenizer]] = {}
_tokenizers_lock = threading.Lock()


def ll_tokenizer(tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer` for logits of `vocab_size`, built once (about 1 s)."""
    key = (id(tokenizer), vocab_size)
    with _tokenizers_lock:
        held = _tokenizers.get(key)
        if held is None or held[0] is not tokenizer:
            held = _tokenizers[key] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size))
        return held[1]


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """An int32 bitmask [ceil(V/32)] (bit i of word w allows token 32w+i) as a bool mask [V]."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.view(-1)[:vocab_size].bool()


_templates: dict[tuple[int, str], tuple[llguidance.LLTokenizer, llguidance.LLMatcher]] = {}


def _template(tokenizer: llguidance.LLTokenizer, grammar: str) -> llguidance.LLMatcher:
    """A matcher compiled once per tokenizer and grammar, never advanced: rows get copies of it."""
    key = (id(tokenizer), grammar)
    with _tokenizers_lock:
        held = _templates.get(key)
        if held is None or held[0] is not tokenizer:
            if len(_templates) >= 256:  # bounded like grammar_for's cache: drop the oldest
                _templates.pop(next(iter(_templates)))
            held = _templates[key] = (tokenizer, llguidance.LLMatcher(tokenizer, grammar))
        return held[1]


class JsonConstraint:
    """One row's grammar state (the engine's `RowConstraint`). Driven by the engine thread only."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str, eos_ids: set[int]) -> None:
        self.matcher = _template(tokenizer, grammar).deep_copy()
        self.grammar_eos = tokenizer.eos_token
        self.eos_ids = sorted(eos_ids | {tokenizer.eos_token})
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, tokenizer.vocab_size)

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """Tokens that keep the text inside the grammar; any of the model's EOS ids where it may end."""
        if self.matcher.is_error():  # cannot happen with masked sampling; end the row, never stall it
            mask = torch.zeros(vocab_size, dtype=torch.bool)
            mask[[i for i in self.eos_ids if i < vocab_size]] = True
            return mask
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask)
        mask = unpack_bitmask(self.bitmask[0], vocab_size)
        if vocab_size > mask.numel():
            mask = torch.cat([mask, mask.new_zeros(vocab_size - mask.numel())])
        if self.grammar_eos < vocab_size and mask[self.grammar_eos]:
            mask[[i for i in self.eos_ids if i < vocab_size]] = True
        return mask

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)

    def is_terminated(self) -> bool:
        """The grammar is complete and allows nothing but EOS (or it failed: the row must end)."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()


def json_constraint(tokenizer, vocab_size: int, eos_ids: set[int], schema_json: str) -> JsonConstraint:
    """A fresh row constraint for `schema_json`; the grammar and tokenizer view come from the caches."""
    return JsonConstraint(ll_tokenizer(tokenizer, vocab_size), grammar_for(schema_json), eos_ids)
