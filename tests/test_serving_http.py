"""The OpenAI HTTP API on a 2-node cluster with tiny experts, driven by the official client."""

from __future__ import annotations

import concurrent.futures
import json
import threading

import httpx
import openai
import pytest

from tests.serving_rig import ServingRig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(tiny_config, router_artifact):
    rig = ServingRig(tiny_config)
    yield rig
    rig.close()


@pytest.fixture()
def client(rig) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rig.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client, model: str, content: str, **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=kw.pop("max_tokens", 5), **kw
    )


def test_chat_completion_with_an_explicit_expert(client):
    raw = _ask(client, "tiny-03", "hello there", seed=1, temperature=0.7)
    completion = raw.parse()
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage.completion_tokens >= 1 and completion.usage.prompt_tokens > 5
    coe = completion.model_extra["coe"]
    assert coe["expert"] == "tiny-03" and coe["routed"] is False and coe["tier"] in {"store", "ddr", "hbm"}
    assert raw.headers["x-coe-expert"] == "tiny-03" and raw.headers["x-coe-tier"] == coe["tier"]


def test_same_seed_same_text_and_second_call_is_an_hbm_hit(client):
    first = _ask(client, "tiny-04", "repeat", seed=7, temperature=1.0, max_tokens=6).parse()
    second = _ask(client, "tiny-04", "repeat", seed=7, temperature=1.0, max_tokens=6).parse()
    assert first.choices[0].message.content == second.choices[0].message.content
    assert second.model_extra["coe"]["tier"] == "hbm"


def test_model_coe_routes_to_the_specialist(client):
    raw = _ask(client, "coe", "Solve the integral of x^2 dx from 0 to 3 and simplify the fraction.")
    coe = raw.parse().model_extra["coe"]
    assert (coe["category"], coe["expert"], coe["routed"]) == ("math", "tiny-01", True)
    assert raw.headers["x-coe-category"] == "math"
    raw = _ask(client, "coe", "Write a Python function that reverses a linked list.")
    assert raw.parse().model_extra["coe"]["expert"] == "tiny-00"


def test_streaming_sends_chunks_then_done(rig, client):
    stream = client.chat.completions.create(
        model="tiny-05",
        messages=[{"role": "user", "content": "stream please"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    with httpx.stream(
        "POST",
        f"{rig.base_url}/v1/chat/completions",
        json={
            "model": "tiny-05",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "stream": True,
        },
        timeout=60,
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and response.headers["x-coe-expert"] == "tiny-05"


def test_text_completions_endpoint(client):
    completion = client.completions.create(model="tiny-02", prompt="Once upon a time", max_tokens=4)
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.model_extra["coe"]["expert"] == "tiny-02"


def test_models_lists_every_expert_and_coe(client, tiny_config):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "coe" and set(ids[1:]) == set(tiny_config.expert_ids)


def test_route_endpoint_returns_the_decision_only(rig):
    decision = httpx.post(f"{rig.base_url}/v1/route", json={"prompt": "What are the symptoms of flu?"}).json()
    assert decision["category"] == "medicine" and decision["expert"] == "tiny-02"
    assert abs(sum(decision["probabilities"].values()) - 1) < 1e-4


def test_memtier_endpoint_shows_residency_and_budgets(rig, tiny_config):
    status = rig.memtier()
    assert len(status["nodes"]) == 2
    assert sum(len(n["sockets"]) for n in status["nodes"]) == 4
    for node in status["nodes"]:
        for socket in node["sockets"]:
            assert socket["used_bytes"] <= socket["hbm_bytes"] == tiny_config.topology.hbm_per_socket
    assert "hbm_hit_rate" in status["stats"]


# ---------------------------------------------------------------------------------------------- errors
def _status_and_error(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return info.value.status_code, body["error"]


def test_unknown_model_is_404(client):
    status, error = _status_and_error(lambda: _ask(client, "no-such-expert", "hi"))
    assert status == 404 and error["code"] == "model_not_found" and "no-such-expert" in error["message"]


def test_max_tokens_over_the_limit_is_400(client, tiny_config):
    status, error = _status_and_error(lambda: _ask(client, "tiny-00", "hi", max_tokens=10_000))
    assert (
        status == 400
        and error["param"] == "max_tokens"
        and str(tiny_config.limits.max_tokens) in error["message"]
    )


def test_prompt_over_the_token_limit_is_400(client):
    status, error = _status_and_error(lambda: _ask(client, "tiny-00", "word " * 2000))
    assert status == 400 and "tokens" in error["message"]


def test_body_over_the_size_limit_is_413(rig):
    response = httpx.post(
        f"{rig.base_url}/v1/chat/completions",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413 and response.json()["error"]["param"] == "body"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (json.dumps({"model": "tiny-00"}).encode(), "messages"),
        (
            json.dumps(
                {"model": "tiny-00", "messages": [{"role": "user", "content": "x"}], "temperature": 9}
            ).encode(),
            "temperature",
        ),
        (
            json.dumps({"model": "tiny-00", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            "messages.0.role",
        ),
        (json.dumps([1, 2]).encode(), None),
    ],
)
def test_malformed_requests_are_400_with_the_field_named(rig, body, param):
    response = httpx.post(
        f"{rig.base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


def test_coe_with_no_user_turn_is_400(client):
    status, error = _status_and_error(
        lambda: client.chat.completions.create(
            model="coe", messages=[{"role": "system", "content": "be nice"}], max_tokens=3
        )
    )
    assert status == 400 and "user" in error["message"]


def test_bad_requests_leave_the_app_serving(client):
    for _ in range(3):
        _status_and_error(lambda: _ask(client, "nope", "hi"))
    assert _ask(client, "tiny-00", "still alive?").parse().choices[0].message is not None


# ---------------------------------------------------------------------------------------------- load
def test_32_concurrent_requests_over_6_experts_stay_within_budget(rig, tiny_config):
    experts = [f"tiny-{i:02d}" for i in range(8, 14)]
    over_budget: list[str] = []
    done = threading.Event()

    def sample_memtier():
        while not done.is_set():
            for node in rig.memtier()["nodes"]:
                for socket in node["sockets"]:
                    if socket["used_bytes"] > socket["hbm_bytes"]:
                        over_budget.append(socket["socket_id"])
            done.wait(0.2)

    def one(i: int) -> str:
        response = httpx.post(
            f"{rig.base_url}/v1/chat/completions",
            timeout=180,
            json={
                "model": experts[i % 6],
                "messages": [{"role": "user", "content": f"request {i}"}],
                "max_tokens": 4,
            },
        )
        assert response.status_code == 200, response.text
        return response.json()["coe"]["expert"]

    sampler = threading.Thread(target=sample_memtier)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            served = list(pool.map(one, range(32)))
    finally:
        done.set()
        sampler.join()
    assert sorted(served) == sorted(experts[i % 6] for i in range(32))
    assert not over_budget
    stats = rig.memtier()["stats"]
    assert (
        stats["hbm_evictions"] > 0
    )  # 6 experts over 4 sockets x 2 slots with others resident: paging happened
