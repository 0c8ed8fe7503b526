"""OpenAI API parity, driven by the official `openai` client against a real 2-node app (tiny experts).

Choices (n, prompt lists, best_of) with their own seed streams, logprobs in both endpoints' shapes,
echo with prompt logprobs, token-id prompts, stop, usage streamed and not, structured output that
parses and validates on random-weight experts, and every field of OpenAI's request spec (read
from the installed client's own types) either working or refused with a 400 that names it.
"""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import openai
import pytest
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params
from transformers import AutoTokenizer

from deployments.token_text import token_bytes

pytestmark = pytest.mark.integration

# Bounded on every path, so a random-weight expert finishes it within the tiny zoo's 64 tokens.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 3},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green"]},
    },
    "required": ["name", "age", "ok", "color"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.fixture(scope="module")
def client(rig) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rig.base_url}/v1", api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def tokenizer(rig):
    return AutoTokenizer.from_pretrained(rig.config.checkpoint_path(rig.config.expert("tiny-01")))


def _chat(client, model="tiny-01", content="tell me something", **kw):
    kw.setdefault("max_tokens", 6)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def _texts(completion) -> list[str]:
    return [c.message.content for c in sorted(completion.choices, key=lambda c: c.index)]


def test_n_choices_each_sample_their_own_seed_stream(client):
    first = _chat(client, n=3, seed=7, temperature=1.0)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len(set(_texts(first))) == 3  # three streams, not one answer thrice
    assert _texts(_chat(client, n=3, seed=7, temperature=1.0)) == _texts(first)  # seeded: reproducible
    # choice i samples with seed + i: choice 1 of seed 7 is choice 0 of seed 8
    assert _texts(_chat(client, n=3, seed=8, temperature=1.0))[0] == _texts(first)[1]
    assert 3 <= first.usage.completion_tokens <= 18  # every choice's tokens, not one choice's


def test_chat_logprobs_and_top_logprobs(client, tokenizer):
    completion = _chat(client, n=2, seed=3, temperature=1.0, logprobs=True, top_logprobs=2, max_tokens=5)
    for choice in completion.choices:
        content = choice.logprobs.content
        assert choice.finish_reason == "length" and len(content) == 5
        assert b"".join(bytes(t.bytes) for t in content).decode(errors="replace") == choice.message.content
        for token in content:
            assert token.logprob <= 0 and len(token.top_logprobs) == 2
            tops = [t.logprob for t in token.top_logprobs]
            assert tops == sorted(tops, reverse=True) and tops[0] >= token.logprob - 1e-4
    assert completion.usage.completion_tokens == 10
    plain = _chat(client, seed=3, temperature=1.0, max_tokens=5)
    assert plain.choices[0].logprobs is None


def test_completions_prompt_lists_token_ids_echo_and_prompt_logprobs(client, tokenizer):
    prompts = ["The sky is", "Once upon a time"]
    listed = client.completions.create(model="tiny-02", prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [c.index for c in listed.choices] == [0, 1, 2, 3]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert listed.usage.prompt_tokens == sum(map(len, ids))
    by_ids = client.completions.create(model="tiny-02", prompt=ids, n=2, max_tokens=4, temperature=0)
    assert [c.text for c in by_ids.choices] == [c.text for c in listed.choices]

    def one(**kw):
        return client.completions.create(
            model="tiny-02", prompt=prompts[0], max_tokens=3, temperature=0, **kw
        )

    assert one(echo=True).choices[0].text == prompts[0] + one().choices[0].text
    echoed = one(echo=True, logprobs=1)
    choice = echoed.choices[0]
    assert choice.text.startswith(prompts[0])
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids[0]) + echoed.usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:]) and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset) and "".join(lp.tokens[: len(ids[0])]) == prompts[0]

    # Scoring lines up with generation: the prompt + the first generated token, scored (max_tokens 0),
    # gives that token the logprob the generation reported for it.
    table = token_bytes(tokenizer)
    generated = [i for i in range(table.size) if table.text(i) == lp.tokens[len(ids[0])]]
    assert len(generated) == 1
    scored = client.completions.create(
        model="tiny-02", prompt=ids[0] + generated, echo=True, logprobs=0, max_tokens=0
    )
    assert scored.usage.completion_tokens == 0
    assert math.isclose(
        scored.choices[0].logprobs.token_logprobs[-1], lp.token_logprobs[len(ids[0])], abs_tol=0.05
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-02", prompt=[[1, 10**7]], max_tokens=2)
    assert err.value.body["param"] == "prompt"


def test_a_routed_prompt_list_answers_every_prompt(rig, client, router_artifact):
    """Each prompt is routed; prompts of one expert share a socket call, experts go one after another."""
    prompts = ["How do I reverse a list in Python?", "What is the derivative of x^2?", "Write a haiku"]
    routes = [httpx.post(f"{rig.base_url}/v1/route", json={"prompt": p}).json()["expert"] for p in prompts]
    listed = client.completions.create(model="coe", prompt=prompts, n=2, max_tokens=3, seed=4)
    assert listed.model == (routes[0] if len(set(routes)) == 1 else "coe")
    assert [c.index for c in listed.choices] == list(range(6))
    assert all(c.finish_reason in {"stop", "length"} for c in listed.choices)
    assert listed.usage.completion_tokens >= 6


def test_best_of_returns_the_most_likely_rows(client):
    best = client.completions.create(
        model="tiny-05", prompt="Hello", best_of=3, n=1, max_tokens=4, seed=11, logprobs=0
    )
    rows = client.completions.create(model="tiny-05", prompt="Hello", n=3, max_tokens=4, seed=11, logprobs=0)
    totals = {c.text: sum(c.logprobs.token_logprobs) for c in rows.choices}
    assert best.choices[0].text == max(totals, key=totals.get)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-05", prompt="Hello", best_of=1, n=2)
    assert err.value.body["param"] == "best_of"


def test_stop_and_streamed_usage_equal_the_buffered_answer(client):
    base = dict(model="tiny-03", messages=[{"role": "user", "content": "count"}], seed=5, temperature=1.0)
    whole = client.chat.completions.create(**base, max_tokens=12, n=2)
    stream = client.chat.completions.create(
        **base, max_tokens=12, n=2, stream=True, stream_options={"include_usage": True}
    )
    texts, usage = {0: "", 1: ""}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert [texts[0], texts[1]] == _texts(whole)
    assert usage is not None and usage.model_dump() == whole.usage.model_dump()

    text = whole.choices[0].message.content
    stop = text[4:6]
    cut = text.index(stop)
    stopped = client.chat.completions.create(**base, max_tokens=12, n=2, stop=[stop])
    assert stopped.choices[0].message.content == text[:cut] and stopped.choices[0].finish_reason == "stop"


def test_json_schema_output_parses_and_validates_streamed_or_not(client):
    completion = _chat(
        client, "tiny-06", "a person", n=3, response_format=SCHEMA_FORMAT, max_tokens=64, seed=1
    )
    for choice in completion.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    stream = _chat(client, "tiny-06", "a person", response_format=SCHEMA_FORMAT, max_tokens=64, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), PERSON)
    # the same through /v1/completions (vLLM accepts response_format there too)
    raw = client.completions.create(
        model="tiny-06", prompt="{", max_tokens=64, extra_body={"response_format": SCHEMA_FORMAT}
    )
    jsonschema.validate(json.loads(raw.choices[0].text), PERSON)


def test_json_object_and_running_out_of_tokens(client, tokenizer):
    # Random weights wander inside strings; a bias toward '"', ':' and '}' lets them close (the
    # grammar still decides what is allowed), so the answer is a complete object.
    bias = {str(tokenizer.convert_tokens_to_ids(t)): 100 for t in ['"', ":", "}"]}
    completion = _chat(
        client,
        "tiny-07",
        "json",
        n=2,
        response_format={"type": "json_object"},
        logit_bias=bias,
        max_tokens=64,
    )
    for choice in completion.choices:
        assert choice.finish_reason == "stop" and isinstance(json.loads(choice.message.content), dict)
    long = {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 40}},
        "required": ["s"],
        "additionalProperties": False,
    }
    short = _chat(
        client,
        "tiny-07",
        "json",
        max_tokens=6,
        response_format={"type": "json_schema", "json_schema": {"name": "long", "schema": long}},
    )
    assert short.choices[0].finish_reason == "length" and short.choices[0].message.content.startswith(
        '{"s":"'
    )
    with pytest.raises(openai.BadRequestError) as err:
        _chat(
            client,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}},
        )
    assert err.value.body["param"] == "response_format"


# A value for each field of OpenAI's spec that CoE Serve implements (200 expected) ...
CHAT_WORKS = {
    "messages": None,
    "model": None,
    "frequency_penalty": 0.5,
    "presence_penalty": 0.5,
    "logit_bias": {"42": 5},
    "logprobs": True,
    "top_logprobs": 1,
    "max_completion_tokens": 2,
    "max_tokens": 2,
    "n": 2,
    "response_format": {"type": "json_object"},
    "seed": 1,
    "stop": ["\n\n"],
    "stream_options": {"include_usage": True},
    "temperature": 0.5,
    "top_p": 0.9,
    "user": "alice",
    "safety_identifier": "hash-of-alice",
    "prompt_cache_key": "k",
    "parallel_tool_calls": False,
    "tool_choice": "none",
}
# ... and one for each field it does not (a 400 naming the field expected).
CHAT_REFUSED = {
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "reasoning_effort": "low",
    "verbosity": "low",
    "store": True,
    "metadata": {"k": "v"},
    "service_tier": "priority",
    "moderation": {"mode": "score"},
    "prompt_cache_options": {"mode": "explicit"},
    "prompt_cache_retention": "24h",
}
COMPLETION_WORKS = {
    "prompt": None,
    "model": None,
    "best_of": 2,
    "echo": True,
    "frequency_penalty": 0.5,
    "presence_penalty": 0.5,
    "logit_bias": {"42": 5},
    "logprobs": 2,
    "max_tokens": 2,
    "n": 2,
    "seed": 1,
    "stop": "\n",
    "stream_options": {"include_usage": True},
    "temperature": 0.5,
    "top_p": 0.9,
    "user": "alice",
}
COMPLETION_REFUSED = {"suffix": "the end"}


def test_every_field_of_the_openai_spec_works_or_is_a_400_naming_it(rig):
    for fields, works, refused in (
        (chat_params.CompletionCreateParamsBase.__annotations__, CHAT_WORKS, CHAT_REFUSED),
        (completion_params.CompletionCreateParamsBase.__annotations__, COMPLETION_WORKS, COMPLETION_REFUSED),
    ):
        assert set(fields) <= set(works) | set(refused), (
            f"unclassified spec fields: {set(fields) - set(works) - set(refused)}"
        )
    chat = {"model": "tiny-08", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    completion = {"model": "tiny-08", "prompt": "hi", "max_tokens": 2}
    with httpx.Client(base_url=rig.base_url, timeout=120) as http:
        for path, base, works, refused in (
            ("/v1/chat/completions", chat, CHAT_WORKS, CHAT_REFUSED),
            ("/v1/completions", completion, COMPLETION_WORKS, COMPLETION_REFUSED),
        ):
            for name, value in works.items():
                if value is None:
                    continue
                body = {**base, name: value}
                if name == "top_logprobs":
                    body["logprobs"] = True
                if name == "stream_options":
                    body["stream"] = True
                response = http.post(path, json=body)
                assert response.status_code == 200, (path, name, response.text)
            for name, value in refused.items():
                response = http.post(path, json={**base, name: value})
                assert response.status_code == 400, (path, name, response.text)
                error = response.json()["error"]
                assert error["param"] == name and name in error["message"], error
            unknown = http.post(path, json={**base, "frobnicate": 1})
            assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "frobnicate"


def test_tools_are_a_clear_400_with_the_client(client):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(
            client,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        )
    assert err.value.status_code == 400 and err.value.body["param"] == "tools"
    assert "tool calling" in err.value.body["message"]


def test_a_chat_session_keeps_its_expert_across_turns(rig, client, router_artifact):
    """`user` (or `x-session-id`) pins a routed conversation's expert on chat completions, as on
    /v1/route: a vague later turn that the router alone would send elsewhere stays with the pin."""
    first = "How do I reverse a list in Python?"
    opener = httpx.post(f"{rig.base_url}/v1/route", json={"prompt": first}).json()
    assert not opener["fallback"], opener  # the first turn must pin something
    vague = [
        v
        for v in ("ok", "thanks!", "hmm, what else?", "tell me more", "and then?", "hello")
        if httpx.post(f"{rig.base_url}/v1/route", json={"prompt": v}).json()["expert"] != opener["expert"]
    ]
    assert vague, "every candidate routes to the opener's expert alone: the test could not tell a pin"
    for session in ({"user": "chat-session-1"}, {"extra_headers": {"x-session-id": "chat-session-2"}}):
        turn1 = _chat(client, model="coe", content=first, max_tokens=2, **session)
        assert turn1.model_extra["coe"]["expert"] == opener["expert"]
        turn2 = _chat(client, model="coe", content=vague[0], max_tokens=2, **session)
        assert turn2.model_extra["coe"]["expert"] == opener["expert"]
        assert turn2.model_extra["coe"]["pinned"] is True
    alone = _chat(client, model="coe", content=vague[0], max_tokens=2)
    assert alone.model_extra["coe"]["expert"] != opener["expert"] and not alone.model_extra["coe"]["pinned"]


def test_route_endpoint_names_the_bad_field(rig):
    both = {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}
    for body, param in (({}, "messages"), (both, "messages"), ({"prompt": 5}, "prompt")):
        response = httpx.post(f"{rig.base_url}/v1/route", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, (body, response.json())
