"""API keys, rate limits and load shedding on a real Serve app (one node, two sockets, tiny experts).

One key comes from `COE_API_KEY` in the environment the cluster was started with (as on `make
serve`), the other from `security.api_keys_file` (a mounted Secret). `limits.max_in_flight` 1 and
`max_queued` 0 make overload easy to reach: one generation in progress is the whole capacity.
"""

from __future__ import annotations

import os

import grpc
import httpx
import pytest

from deployments.grpc_client import CoEClient
from tests.serving_rig import ServingRig

pytestmark = pytest.mark.integration

ENV_KEY = "env-key-5b0c8e2f"
FILE_KEY = "file-key-91d4a7c3"
LONG_TOKENS = 480  # a few seconds of streaming on a tiny expert: the slot stays busy meanwhile


@pytest.fixture(scope="module")
def rig(tiny_config, router_artifact, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("secret") / "api-keys"
    keys_file.write_text(f"{FILE_KEY}\n")
    topology = tiny_config.topology.model_copy(update={"nodes": 1})
    limits = tiny_config.limits.model_copy(
        update={"max_in_flight": 1, "max_queued": 0, "max_tokens": LONG_TOKENS, "overload_retry_after_s": 2}
    )
    security = tiny_config.security.model_copy(
        update={"api_keys_file": str(keys_file), "requests_per_s": 1.0, "request_burst": 8}
    )
    config = tiny_config.model_copy(
        update={"name": "secure", "topology": topology, "limits": limits, "security": security}
    )
    os.environ["COE_API_KEY"] = ENV_KEY  # the raylet, and so every replica, inherits it
    try:
        rig = ServingRig(config)
    finally:
        del os.environ["COE_API_KEY"]
    yield rig
    rig.close()


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _chat(model: str = "tiny-00", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, **fields}


def _leases_granted(rig: ServingRig) -> int:
    status = httpx.get(f"{rig.base_url}/v1/memtier", headers=_auth(ENV_KEY), timeout=30).json()
    return status["stats"]["leases"]


def test_no_key_or_a_wrong_key_is_401_on_every_work_route_and_health_stays_open(rig):
    before = _leases_granted(rig)
    routes = [
        ("POST", "/v1/chat/completions", _chat()),
        ("POST", "/v1/completions", {"model": "tiny-00", "prompt": "hi", "max_tokens": 2}),
        ("POST", "/v1/route", {"prompt": "hi"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/memtier", None),
    ]
    for headers in ({}, _auth("wrong-key"), {"authorization": ENV_KEY}):
        for method, path, body in routes:
            response = httpx.request(method, f"{rig.base_url}{path}", json=body, headers=headers, timeout=30)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{rig.base_url}/healthz", timeout=30).status_code == 200
    assert _leases_granted(rig) == before  # refused before MemTier was asked for anything


def test_the_right_key_from_the_environment_or_the_file_is_200(rig):
    for key in (ENV_KEY, FILE_KEY):
        response = httpx.post(
            f"{rig.base_url}/v1/chat/completions", json=_chat(), headers=_auth(key), timeout=60
        )
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None


def test_grpc_without_the_right_key_is_unauthenticated_with_it_ok(rig):
    for key in (None, "wrong-key"):
        with CoEClient(rig.grpc_target, timeout_s=30, api_key=key) as client:
            for call in (lambda: client.generate("hi", model="tiny-01", max_tokens=2), client.experts):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with CoEClient(rig.grpc_target, timeout_s=60, api_key=FILE_KEY) as client:
        assert client.generate("hi", model="tiny-01", max_tokens=2).usage.completion_tokens >= 1
        assert len(client.experts().experts) == 16


def test_a_body_over_the_limit_is_413_before_the_key_is_even_checked(rig):
    response = httpx.post(
        f"{rig.base_url}/v1/chat/completions",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413 and response.json()["error"]["param"] == "body"


def test_a_full_admission_queue_is_503_with_retry_after_while_the_slot_is_busy(rig):
    """One stream holds the only slot; every other work request, HTTP or gRPC, is refused at once."""
    before = _leases_granted(rig)
    body = _chat("tiny-02", max_tokens=LONG_TOKENS, stream=True)
    with httpx.stream(
        "POST", f"{rig.base_url}/v1/chat/completions", json=body, headers=_auth(ENV_KEY), timeout=60
    ) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")  # the stream is running: its slot is taken
        refused = httpx.post(
            f"{rig.base_url}/v1/chat/completions", json=_chat(), headers=_auth(FILE_KEY), timeout=30
        )
        with CoEClient(rig.grpc_target, timeout_s=30, api_key=FILE_KEY) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.generate("hi", model="tiny-00", max_tokens=2)
        rest = [line for line in lines if line]  # then the stream finishes normally
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "overloaded"
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rest[-1] == "data: [DONE]" and _leases_granted(rig) == before + 1  # only the stream placed
    ok = httpx.post(f"{rig.base_url}/v1/chat/completions", json=_chat(), headers=_auth(FILE_KEY), timeout=60)
    assert ok.status_code == 200  # the slot is free again


def test_over_the_request_rate_is_429_with_retry_after_for_that_key_only(rig):
    codes = [httpx.get(f"{rig.base_url}/v1/models", headers=_auth(FILE_KEY), timeout=30) for _ in range(12)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and all(int(r.headers["retry-after"]) >= 1 for r in limited)
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert httpx.get(f"{rig.base_url}/v1/models", headers=_auth(ENV_KEY), timeout=30).status_code == 200
