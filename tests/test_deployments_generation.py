"""The generation loop and per-expert batching, on a real tiny expert (no Ray)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deployments.batcher import ExpertBatcher
from deployments.generation import GenRequest, TokenEvent, eos_token_ids, generate_batch, sample_next


@pytest.fixture(scope="module")
def expert(tiny_zoo):
    path = tiny_zoo[0]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _run(model, tokenizer, requests: list[GenRequest], eos: set[int] | None = None) -> list[list[TokenEvent]]:
    events: list[list[TokenEvent]] = [[] for _ in requests]
    for i, request in enumerate(requests):
        request.emit = events[i].append
    generate_batch(model, tokenizer, requests, eos_token_ids(model, tokenizer) if eos is None else eos)
    return events


def _text(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def test_each_row_stops_at_its_own_max_tokens(expert):
    model, tok = expert
    events = _run(
        model,
        tok,
        [GenRequest(input_ids=[5, 6, 7], max_tokens=3), GenRequest(input_ids=[9, 10], max_tokens=7)],
        eos=set(),
    )
    assert [e[-1].finish_reason for e in events] == ["length", "length"]
    assert [e[-1].completion_tokens for e in events] == [3, 7]
    assert all(ev.finish_reason is None for row in events for ev in row[:-1])


def test_batched_greedy_equals_one_at_a_time(expert):
    model, tok = expert
    prompts = [[5, 6, 7, 8, 9], [11, 12], [100, 200, 300]]
    alone = [_text(_run(model, tok, [GenRequest(input_ids=p, max_tokens=6)], eos=set())[0]) for p in prompts]
    together = [
        _text(e)
        for e in _run(model, tok, [GenRequest(input_ids=p, max_tokens=6) for p in prompts], eos=set())
    ]
    assert together == alone


def test_same_seed_same_sample_different_seed_usually_differs(expert):
    model, tok = expert

    def sample(seed: int) -> str:
        return _text(
            _run(
                model,
                tok,
                [GenRequest(input_ids=[1, 2, 3], max_tokens=8, temperature=1.0, seed=seed)],
                eos=set(),
            )[0]
        )

    assert sample(3) == sample(3)
    assert len({sample(s) for s in range(4)}) > 1


def test_stop_string_truncates_and_ends_the_row(expert):
    model, tok = expert
    sampled = dict(input_ids=[5, 6, 7], max_tokens=16, temperature=1.0, seed=0)  # random weights: sample text
    full = _text(_run(model, tok, [GenRequest(**sampled)], eos=set())[0])
    assert len(full) > 4
    stop = full[2:4]
    events = _run(model, tok, [GenRequest(**sampled, stop=[stop])], eos=set())[0]
    assert events[-1].finish_reason == "stop"
    assert _text(events) == full[: full.find(stop)]


def test_eos_ends_with_stop_and_no_tokens(expert):
    model, tok = expert
    with torch.inference_mode():
        greedy_first = int(model(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1].argmax())
    events = _run(model, tok, [GenRequest(input_ids=[5, 6, 7], max_tokens=5)], eos={greedy_first})[0]
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == 0


def test_cancelled_row_stops_while_others_continue(expert):
    model, tok = expert
    keep, cancel = GenRequest(input_ids=[1, 2], max_tokens=6), GenRequest(input_ids=[3, 4], max_tokens=6)
    cancel.cancelled.set()
    events = _run(model, tok, [keep, cancel], eos=set())
    assert events[1][-1].finish_reason == "cancelled" and events[0][-1].finish_reason == "length"


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([10.0, 9.0, 0.0, -5.0])
    picks = {sample_next(logits, 1.0, 0.5, torch.Generator().manual_seed(s)) for s in range(50)}
    assert picks == {0}
    assert sample_next(logits, 0.0, 1.0, None) == 0


def test_concurrent_requests_for_one_expert_share_a_batch(expert):
    model, tok = expert
    batcher = ExpertBatcher(max_batch_size=8, wait_s=0.05)

    async def scenario() -> list[str]:
        queues = [
            batcher.submit("e", model, tok, set(), GenRequest(input_ids=[5 + i, 6], max_tokens=4))
            for i in range(4)
        ]
        texts = []
        for queue in queues:
            parts = []
            while True:
                event = await queue.get()
                parts.append(event.text)
                if event.finish_reason:
                    break
            texts.append("".join(parts))
        return texts

    texts = asyncio.run(scenario())
    assert len(texts) == 4
    assert batcher.batches == 1 and batcher.batched_requests == 4
