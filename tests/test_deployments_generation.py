"""The generation loop and the socket engine's continuous batching, on a real tiny expert (no Ray).

Scenarios assert order of events, not clocks: a request that joins a running batch gets its
first token before the running request finishes; a cancelled row leaves and frees its KV
reservation; a request whose KV does not fit waits for room and is then served.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deployments.engine import SocketEngine, generate_batch
from deployments.generation import GenRequest, TokenEvent, eos_token_ids
from deployments.kv_cache import cache_bytes, kv_bytes_per_token
from deployments.sampling import SamplingParams, sample_next
from deployments.wire import KV_TOO_LARGE

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def expert(tiny_zoo):
    path = tiny_zoo[0]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _run(
    model, tokenizer, requests: list[GenRequest], eos: set[int] | None = None, **engine
) -> list[list[TokenEvent]]:
    events: list[list[TokenEvent]] = [[] for _ in requests]
    for i, request in enumerate(requests):
        request.emit = events[i].append
    generate_batch(
        model, tokenizer, requests, eos_token_ids(model, tokenizer) if eos is None else eos, **engine
    )
    return events


def _text(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def _greedy(input_ids: list[int], max_tokens: int, **params) -> GenRequest:
    return GenRequest(
        input_ids=input_ids, max_tokens=max_tokens, params=SamplingParams(temperature=0, **params)
    )


# --------------------------------------------------------------------------- one batch
def test_each_row_stops_at_its_own_max_tokens(expert):
    model, tok = expert
    events = _run(model, tok, [_greedy([5, 6, 7], 3), _greedy([9, 10], 7)], eos=set())
    assert [e[-1].finish_reason for e in events] == ["length", "length"]
    assert [e[-1].completion_tokens for e in events] == [3, 7]
    assert all(ev.finish_reason is None for row in events for ev in row[:-1])


def test_batched_greedy_equals_one_at_a_time(expert):
    model, tok = expert
    prompts = [[5, 6, 7, 8, 9], [11, 12], [100, 200, 300]]
    alone = [_text(_run(model, tok, [_greedy(p, 6)], eos=set())[0]) for p in prompts]
    together = [_text(e) for e in _run(model, tok, [_greedy(p, 6) for p in prompts], eos=set())]
    assert together == alone


def test_a_long_prompt_prefilled_in_chunks_generates_what_one_prefill_does(expert):
    model, tok = expert
    prompt = list(range(3, 60))
    whole = _run(model, tok, [_greedy(prompt, 8)], eos=set())[0]
    chunked = _run(model, tok, [_greedy(prompt, 8)], eos=set(), prefill_chunk_tokens=7)[0]
    assert [e.token_ids for e in chunked] == [e.token_ids for e in whole]


def test_token_ids_of_the_events_add_up_to_the_completion(expert):
    model, tok = expert
    events = _run(model, tok, [_greedy([5, 6, 7], 9)], eos=set())[0]
    ids = [t for e in events for t in e.token_ids]
    assert len(ids) == events[-1].completion_tokens == 9
    assert tok.decode(ids, skip_special_tokens=True) == _text(events)


def test_same_seed_same_sample_different_seed_usually_differs(expert):
    model, tok = expert

    def sample(seed: int) -> str:
        request = GenRequest(
            input_ids=[1, 2, 3], max_tokens=8, params=SamplingParams(temperature=1.0, seed=seed)
        )
        return _text(_run(model, tok, [request], eos=set())[0])

    assert sample(3) == sample(3)
    assert len({sample(s) for s in range(4)}) > 1


def test_stop_string_truncates_and_ends_the_row(expert):
    model, tok = expert

    def sampled(**kw) -> GenRequest:  # random weights: sample text
        return GenRequest(
            input_ids=[5, 6, 7], max_tokens=16, params=SamplingParams(temperature=1.0, seed=0), **kw
        )

    full = _text(_run(model, tok, [sampled()], eos=set())[0])
    assert len(full) > 4
    stop = full[2:4]
    events = _run(model, tok, [sampled(stop=[stop])], eos=set())[0]
    assert events[-1].finish_reason == "stop"
    assert _text(events) == full[: full.find(stop)]


def _greedy_first_token(model, prompt: list[int]) -> int:
    with torch.inference_mode():
        return int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())


def test_eos_ends_with_stop_and_no_tokens(expert):
    model, tok = expert
    first = _greedy_first_token(model, [5, 6, 7])
    events = _run(model, tok, [_greedy([5, 6, 7], 5)], eos={first})[0]
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == 0


def test_min_tokens_bans_eos_and_ignore_eos_runs_past_it(expert):
    model, tok = expert
    first = _greedy_first_token(model, [5, 6, 7])
    held = _run(model, tok, [_greedy([5, 6, 7], 5, min_tokens=3)], eos={first})[0]
    assert held[-1].completion_tokens >= 3 and first not in [t for e in held for t in e.token_ids][:3]
    ignored = _run(model, tok, [_greedy([5, 6, 7], 4, ignore_eos=True)], eos={first})[0]
    assert ignored[-1].finish_reason == "length"
    assert [t for e in ignored for t in e.token_ids][0] == first


def test_logit_bias_forces_a_token_and_top_k_one_is_greedy(expert):
    model, tok = expert
    forced = _run(model, tok, [_greedy([5, 6, 7], 3, logit_bias={42: 100.0})], eos=set())[0]
    assert [t for e in forced for t in e.token_ids] == [42, 42, 42]
    greedy = _run(model, tok, [_greedy([5, 6, 7], 6)], eos=set())[0]
    top1 = GenRequest(
        input_ids=[5, 6, 7], max_tokens=6, params=SamplingParams(temperature=1.5, top_k=1, seed=1)
    )
    assert _text(_run(model, tok, [top1], eos=set())[0]) == _text(greedy)


def test_repetition_and_presence_penalties_change_what_repeats(expert):
    model, tok = expert
    forced = _greedy([5, 6, 7], 4, logit_bias={42: 5.0})
    plain = [t for e in _run(model, tok, [forced], eos=set())[0] for t in e.token_ids]
    penalised = _greedy([5, 6, 7], 4, logit_bias={42: 5.0}, presence_penalty=2.0, repetition_penalty=10.0)
    varied = [t for e in _run(model, tok, [penalised], eos=set())[0] for t in e.token_ids]
    assert plain.count(42) > 1  # the bias alone repeats the token
    assert varied.count(42) <= 1  # the penalties stop the repetition


def test_logprobs_are_the_model_distribution(expert):
    model, tok = expert
    events = _run(model, tok, [_greedy([5, 6, 7], 1, logprobs=3)], eos=set())[0]
    (logprob,) = [lp for e in events for lp in e.logprobs]
    with torch.inference_mode():
        expected = torch.log_softmax(model(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1].float(), -1)
    assert logprob.token_id == int(expected.argmax())
    assert logprob.logprob == pytest.approx(float(expected.max()), abs=0.05)
    assert [t for t, _ in logprob.top][0] == logprob.token_id and len(logprob.top) == 3


def test_cancelled_row_stops_while_others_continue(expert):
    model, tok = expert
    keep, cancel = _greedy([1, 2], 6), _greedy([3, 4], 6)
    cancel.cancelled.set()
    events = _run(model, tok, [keep, cancel], eos=set())
    assert events[1][-1].finish_reason == "cancelled" and events[0][-1].finish_reason == "length"


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([10.0, 9.0, 0.0, -5.0])
    picks = {sample_next(logits, 1.0, 0.5, torch.Generator().manual_seed(s)) for s in range(50)}
    assert picks == {0}
    assert sample_next(logits, 0.0, 1.0, None) == 0


def test_top_p_over_a_flat_distribution_samples_beyond_the_candidate_window():
    logits = torch.zeros(5000)  # flat: the nucleus for top_p 0.9 is 4,500 tokens, past the top 1,024
    picks = {sample_next(logits, 1.0, 0.9, torch.Generator().manual_seed(s)) for s in range(200)}
    assert max(picks) > 1100


# --------------------------------------------------------------------------- the socket engine
async def _collect(queue: asyncio.Queue[TokenEvent], log: list[tuple[str, TokenEvent]], name: str) -> None:
    while True:
        event = await queue.get()
        log.append((name, event))
        if event.finish_reason is not None:
            return


def _engine(**kwargs) -> SocketEngine:
    return SocketEngine(
        max_batch_size=kwargs.pop("max_batch_size", 8),
        prefill_chunk_tokens=kwargs.pop("prefill_chunk_tokens", 256),
        kv_capacity_bytes=kwargs.pop("kv_capacity_bytes", 1 << 30),
    )


def test_cache_bytes_counts_a_layer_the_engine_is_still_filling_as_empty() -> None:
    """`stats()` reads caches from the event loop while the engine thread fills them: a layer
    caught with keys but no values yet must count as nothing, not raise (it did, in a heartbeat)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    full = torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16)
    cache.update(full, full.clone(), 0)
    cache.update(full, full.clone(), 1)
    cache.layers[1].values = None  # the state the fresh-clone run caught mid forward pass
    assert cache_bytes(cache) == 2 * full.numel() * full.element_size()


def test_a_request_joins_the_running_batch_instead_of_waiting_for_it(expert):
    model, tok = expert
    engine = _engine()

    # The first request asks for far more tokens than the join needs and is cancelled once the
    # joined request is done, so a starved test thread cannot let it finish first (a race that
    # a 48-token first request lost in a fresh-clone run on a loaded box).
    long_request = _greedy([5, 6, 7], 2000)

    async def scenario() -> list[tuple[str, TokenEvent]]:
        log: list[tuple[str, TokenEvent]] = []
        first = engine.submit("e", model, tok, set(), long_request)
        running = asyncio.create_task(_collect(first, log, "first"))
        while engine.stats().decode_steps < 3:  # the first request is decoding (random weights may
            await asyncio.sleep(0.001)  # hold text back as partial UTF-8, so count steps, not events)
        joined = engine.submit("e", model, tok, set(), _greedy([8, 9], 4))
        await _collect(joined, log, "joined")
        long_request.cancelled.set()
        await running
        return log

    log = asyncio.run(scenario())
    engine.close()
    ends = {name: event for name, event in log if event.finish_reason is not None}
    assert ends["joined"].finish_reason == "length" and ends["joined"].completion_tokens == 4
    assert ends["first"].finish_reason == "cancelled"  # still generating when the joined one was done
    assert engine.stats().max_running == 2


def test_cancelling_mid_batch_frees_the_row_and_its_kv(expert):
    model, tok = expert
    engine = _engine()

    async def scenario():
        log: list[tuple[str, TokenEvent]] = []
        keep, cancel = _greedy([5, 6, 7], 40), _greedy([9, 10], 40)
        keeping = asyncio.create_task(_collect(engine.submit("e", model, tok, set(), keep), log, "keep"))
        cancelling = asyncio.create_task(
            _collect(engine.submit("e", model, tok, set(), cancel), log, "cancel")
        )
        while engine.stats().running < 2 or engine.stats().decode_steps < 2:
            await asyncio.sleep(0.001)
        reserved_both = engine.stats().kv_reserved_bytes
        cancel.cancelled.set()
        await cancelling
        while engine.stats().running != 1:  # the row leaves at the next step
            await asyncio.sleep(0.001)
        reserved_one = engine.stats().kv_reserved_bytes
        await keeping
        return log, reserved_both, reserved_one

    log, reserved_both, reserved_one = asyncio.run(scenario())
    _until(lambda: engine.stats().running == 0)  # the last event is sent inside the step that ends it
    stats = engine.stats()
    engine.close()
    finishes = {name: e.finish_reason for name, e in log if e.finish_reason}
    assert finishes == {"keep": "length", "cancel": "cancelled"}
    assert 0 < reserved_one < reserved_both
    assert stats.running == 0 and stats.kv_reserved_bytes == 0 and stats.kv_cache_bytes == 0


def test_when_kv_is_full_a_request_waits_in_the_queue_then_runs(expert):
    model, tok = expert
    per_token = kv_bytes_per_token(model.config, torch.bfloat16)
    one_row = (3 + 12) * per_token
    engine = _engine(kv_capacity_bytes=one_row + per_token)  # room for one such row, not two

    async def scenario():
        log: list[tuple[str, TokenEvent]] = []
        waits = []
        first = engine.submit("e", model, tok, set(), _greedy([5, 6, 7], 12))
        second = engine.submit("e", model, tok, set(), _greedy([8, 9, 10], 12))
        tasks = [_collect(first, log, "first"), _collect(second, log, "second")]
        sampler = asyncio.create_task(_sample_stats(engine, waits))
        await asyncio.gather(*tasks)
        sampler.cancel()
        return log, waits

    log, samples = asyncio.run(scenario())
    engine.close()
    names = [name for name, _ in log]
    first_done = len(names) - 1 - names[::-1].index("first")
    assert names.index("second") > first_done  # the second started only when the first freed its KV
    second_first_event = next(e for name, e in log if name == "second")
    assert second_first_event.queue_s is not None and second_first_event.queue_s > 0
    assert {e.finish_reason for _, e in log if e.finish_reason} == {"length"}
    assert samples and max(s.kv_reserved_bytes for s in samples) <= one_row + per_token
    assert max(s.kv_cache_bytes for s in samples) <= one_row + per_token
    assert any(s.running == 1 and s.waiting == 1 for s in samples)  # one ran while the other queued


def _until(condition, polls: int = 10_000) -> None:
    """Wait for the engine thread to finish its step (bounded; a hang fails, no clock is asserted)."""
    for _ in range(polls):
        if condition():
            return
        time.sleep(0.001)
    raise AssertionError("the engine never reached the expected state")


async def _sample_stats(engine: SocketEngine, out: list) -> None:
    while True:
        out.append(engine.stats())
        await asyncio.sleep(0)


def test_a_request_that_can_never_fit_the_kv_budget_is_refused(expert):
    model, tok = expert
    per_token = kv_bytes_per_token(model.config, torch.bfloat16)
    events = _run(model, tok, [_greedy([5, 6, 7], 100)], eos=set(), kv_capacity_bytes=50 * per_token)[0]
    assert events[-1].finish_reason == KV_TOO_LARGE and "KV cache" in events[-1].text


def test_two_experts_on_one_socket_take_turns(expert, tiny_zoo):
    model, tok = expert
    other = AutoModelForCausalLM.from_pretrained(tiny_zoo[1], dtype=torch.bfloat16).eval()
    other_tok = AutoTokenizer.from_pretrained(tiny_zoo[1])
    engine = _engine()

    async def scenario():
        log: list[tuple[str, TokenEvent]] = []
        a = engine.submit("a", model, tok, set(), _greedy([5, 6], 20))
        b = engine.submit("b", other, other_tok, set(), _greedy([5, 6], 20))
        assert set(engine.rows_by_expert()) == {"a", "b"}  # both counted, whatever their state
        await asyncio.gather(_collect(a, log, "a"), _collect(b, log, "b"))
        return [name for name, _ in log]

    names = asyncio.run(scenario())
    engine.close()
    # Interleaved, not one after the other: b's first event comes before a's last.
    assert names.index("b") < len(names) - 1 - names[::-1].index("a")


# --------------------------------------------------------------------------- prompt logprobs, json
def test_prompt_logprobs_score_each_prompt_token_under_the_model(expert):
    model, tok = expert
    prompt = [5, 17, 301, 42, 9]
    scoring = GenRequest(
        input_ids=prompt, max_tokens=0, params=SamplingParams(logprobs=2), prompt_logprobs=True
    )
    # chunks of 2 columns beside a longer row: logits of one chunk predict the next chunk's first token
    other = _greedy(list(range(20, 31)), 1)
    events = _run(model, tok, [scoring, other], prefill_chunk_tokens=4)
    assert events[0][-1].finish_reason == "length" and events[0][-1].completion_tokens == 0
    scored = events[0][0].prompt_logprobs
    assert [lp.token_id for lp in scored] == prompt and scored[0].logprob is None
    with torch.inference_mode():
        reference = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    for position, lp in enumerate(scored[1:], start=1):
        assert lp.logprob == pytest.approx(float(reference[position - 1, prompt[position]]), abs=0.05)
        second_best = float(reference[position - 1].topk(2).values[1])
        for token, value in lp.top:  # the top alternatives, up to bf16 noise between batch shapes
            assert value == pytest.approx(float(reference[position - 1, token]), abs=0.05)
            assert value >= second_best - 0.05


def test_choices_added_together_prefill_together(expert):
    model, tok = expert
    engine = _engine(max_batch_size=4)
    rows = [_greedy([5, 6, 7], 2) for _ in range(3)]
    done: list[TokenEvent] = []
    for row in rows:
        row.emit = lambda event: done.append(event) if event.finish_reason else None
    engine.add("e", model, tok, eos_token_ids(model, tok), *rows)
    _until(lambda: len(done) == 3)
    assert engine.stats().max_running == 3
    engine.close()


SMALL_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "boolean"}},
    "required": ["n", "b"],
    "additionalProperties": False,
}


def test_a_schema_constraint_makes_random_weights_write_valid_json(expert):
    import json

    import jsonschema

    from deployments.structured import json_constraint, schema_text

    model, tok = expert
    eos = eos_token_ids(model, tok)
    vocab = model.config.vocab_size

    def constrained(seed: int, max_tokens: int) -> GenRequest:
        return GenRequest(
            input_ids=[5, 6, 7],
            max_tokens=max_tokens,
            params=SamplingParams(seed=seed),
            constraint=json_constraint(tok, vocab, eos, schema_text(SMALL_SCHEMA)),
        )

    events = _run(model, tok, [constrained(seed, 32) for seed in range(4)] + [constrained(9, 3)])
    for row in events[:4]:
        assert row[-1].finish_reason == "stop"
        jsonschema.validate(json.loads(_text(row)), SMALL_SCHEMA)
    assert events[4][-1].finish_reason == "length" and _text(events[4]).startswith('{"')


def test_token_bytes_spell_each_token_exactly(expert):
    from deployments.token_text import token_bytes

    _, tok = expert
    text = 'Héllo wörld, 日本 "x": 1\n\ttabs'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    table = token_bytes(tok)
    assert b"".join(table[i] for i in ids) == text.encode()
    partial = [table.text(i) for i in ids if table.text(i).startswith("bytes:")]
    assert partial  # a CJK character split across tokens is spelled as its bytes, not U+FFFD
    assert table.text(tok.eos_token_id) == tok.eos_token and table[tok.eos_token_id] == b""
