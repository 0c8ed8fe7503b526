"""The ingress gate without a cluster: API keys, token buckets, the admission queue, and the ASGI
middleware in front of a real FastAPI app whose handler counts the requests that reach it, so each
refusal is shown to happen before any handler (hence tokenizer or model) work."""

from __future__ import annotations

import asyncio
import hmac

import httpx
import pytest
from fastapi import FastAPI, Request

from cluster.api_keys import ApiKeyConfigError, auth_banner, load_api_keys
from cluster.config import SecurityConfig, load_config
from deployments import auth as auth_module
from deployments.admission import AdmissionQueue, RateLimiter, TokenBucket, admission_queue
from deployments.auth import ApiKeyAuth
from deployments.errors import Overloaded, RateLimited, Unauthorized
from deployments.gate import Gate, GateMiddleware
from tests.conftest import CONFIGS

KEYS = ["k-alpha-0123456789", "k-beta-0123456789", "k-gamma-0123456789"]


# --------------------------------------------------------------------------- where keys come from


def test_no_variable_means_open_and_the_banner_says_so():
    security = SecurityConfig()
    assert load_api_keys(security, {}) == []
    assert "OFF" in auth_banner(security, {}) and "COE_API_KEY" in auth_banner(security, {})


def test_one_key_or_a_comma_separated_list():
    security = SecurityConfig()
    assert load_api_keys(security, {"COE_API_KEY": "solo"}) == ["solo"]
    assert load_api_keys(security, {"COE_API_KEY": " a, b ,,c,a "}) == ["a", "b", "c"]
    assert "ON (3 keys)" in auth_banner(security, {"COE_API_KEY": "a,b,c"})


def test_a_set_but_empty_variable_refuses_to_start_rather_than_run_open():
    with pytest.raises(ApiKeyConfigError, match="COE_API_KEY is set but holds no key"):
        load_api_keys(SecurityConfig(), {"COE_API_KEY": " , "})


def test_keys_from_a_mounted_file_add_to_the_variable(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("from-file-1\nfrom-file-2\n")
    security = SecurityConfig(api_keys_file=str(keys))
    assert load_api_keys(security, {"COE_API_KEY": "env"}) == ["env", "from-file-1", "from-file-2"]
    with pytest.raises(ApiKeyConfigError, match="cannot read"):
        load_api_keys(SecurityConfig(api_keys_file=str(tmp_path / "missing")), {})


def test_require_api_key_fails_loudly_without_one():
    with pytest.raises(ApiKeyConfigError, match="require_api_key"):
        load_api_keys(SecurityConfig(require_api_key=True), {})
    assert load_api_keys(SecurityConfig(require_api_key=True), {"COE_API_KEY": "x"}) == ["x"]


# --------------------------------------------------------------------------- the key check


def test_right_key_names_its_index_wrong_or_missing_key_is_401():
    auth = ApiKeyAuth(KEYS)
    assert auth.authenticate(f"Bearer {KEYS[1]}", "10.0.0.1") == "key-1"
    assert auth.authenticate(f"bearer {KEYS[2]}", "10.0.0.1") == "key-2"
    for header in (None, "", KEYS[0], f"Basic {KEYS[0]}", f"Bearer {KEYS[0]}x", "Bearer "):
        with pytest.raises(Unauthorized) as caught:
            auth.authenticate(header, "10.0.0.1")
        assert caught.value.status == 401 and KEYS[0] not in caught.value.message


def test_auth_off_names_the_caller_by_address():
    assert ApiKeyAuth([]).authenticate(None, "10.0.0.7") == "client-10.0.0.7"


def test_the_key_check_compares_every_key_in_constant_time(monkeypatch):
    """hmac.compare_digest over equal-length digests, once per key, wherever (or whether) it matches."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    auth = ApiKeyAuth(KEYS)
    for presented, expected in [(KEYS[0], 0), (KEYS[2], 2), ("nope", None), ("x" * 500, None)]:
        calls.clear()
        assert auth.match(presented) == expected
        assert calls == [(32, 32)] * len(KEYS)


# --------------------------------------------------------------------------- rate limits


def test_token_bucket_spends_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(capacity=3, rate_per_s=2.0)
    assert [bucket.take(1, now_s=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, now_s=100.0) == pytest.approx(0.5)  # empty: one unit in 1 / 2 s
    assert bucket.take(1, now_s=100.5) == 0.0
    assert bucket.take(10, now_s=100.5) == pytest.approx(1.5)  # over capacity: charged as a full bucket


def test_rate_limits_are_per_key_and_say_when_to_retry():
    limiter = RateLimiter(requests_per_s=1.0, request_burst=2, tokens_per_min=600)
    limiter.check_request("key-0", now_s=0.0)
    limiter.check_request("key-0", now_s=0.0)
    with pytest.raises(RateLimited) as caught:
        limiter.check_request("key-0", now_s=0.0)
    assert caught.value.status == 429 and caught.value.retry_after_s >= 1.0
    limiter.check_request("key-1", now_s=0.0)  # another key has its own bucket
    limiter.check_tokens("key-1", 500, now_s=0.0)
    with pytest.raises(RateLimited, match="tokens/min") as caught:
        limiter.check_tokens("key-1", 200, now_s=0.0)
    assert caught.value.type == "tokens" and caught.value.retry_after_s == pytest.approx(10.0)


# --------------------------------------------------------------------------- the admission queue


def test_admission_queue_runs_max_in_flight_queues_max_queued_and_refuses_the_rest_at_once():
    async def scenario() -> None:
        queue = AdmissionQueue(max_in_flight=1, max_queued=1, max_wait_s=30, retry_after_s=2)
        await queue.acquire()
        queued = asyncio.create_task(queue.acquire())
        await asyncio.sleep(0)
        assert (queue.in_flight, queue.waiting) == (1, 1)
        with pytest.raises(Overloaded) as caught:
            await queue.acquire()  # refused without waiting: the queue is full
        assert caught.value.status == 503 and caught.value.retry_after_s == 2
        queue.release()
        await queued
        assert (queue.in_flight, queue.waiting, queue.refused) == (1, 0, 1)
        queue.release()

    asyncio.run(scenario())


def test_a_queued_request_gives_up_after_max_wait():
    async def scenario() -> None:
        queue = AdmissionQueue(max_in_flight=1, max_queued=4, max_wait_s=0.01, retry_after_s=1)
        await queue.acquire()
        with pytest.raises(Overloaded, match="max_queue_wait_s"):
            await queue.acquire()
        assert queue.waiting == 0

    asyncio.run(scenario())


def test_default_in_flight_is_what_the_sockets_can_run_together():
    config = load_config(CONFIGS / "tiny.yaml", check_store=False)
    assert admission_queue(config).max_in_flight == 4 * config.serve.max_ongoing_requests


# --------------------------------------------------------------------------- the middleware, on a real app


def _app(*, keys: list[str], **limits) -> tuple[FastAPI, dict]:
    """A FastAPI app behind the gate whose handlers count their calls; /v1/slow waits for a release."""
    config = load_config(CONFIGS / "tiny.yaml", check_store=False)
    security = config.security.model_copy(
        update={k: v for k, v in limits.items() if k in SecurityConfig.model_fields}
    )
    limit_fields = {k: v for k, v in limits.items() if k not in SecurityConfig.model_fields}
    config = config.model_copy(
        update={"security": security, "limits": config.limits.model_copy(update=limit_fields)}
    )
    app = FastAPI()
    app.add_middleware(GateMiddleware)
    app.state.coe_gate = Gate(
        config,
        ApiKeyAuth(keys),
        RateLimiter(security.requests_per_s, security.request_burst, security.tokens_per_min),
        admission_queue(config),
    )
    state = {"calls": 0, "release": asyncio.Event()}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        state["calls"] += 1
        return {"echo": len(await request.body())}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict:
        state["calls"] += 1
        return {"echo": len(await request.body())}

    @app.post("/v1/slow")
    async def slow() -> dict:
        state["calls"] += 1
        await state["release"].wait()
        return {}

    @app.get("/v1/models")
    async def models() -> dict:
        state["calls"] += 1
        return {"data": []}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> str:
        return "coe_up 1"

    return app, state


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gate")


def _chat(**fields) -> dict:
    return {"model": "tiny-00", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_without_a_key_every_v1_route_is_401_and_health_and_metrics_stay_open():
    async def scenario() -> None:
        app, state = _app(keys=KEYS)
        async with _client(app) as client:
            for headers in ({}, {"authorization": "Bearer wrong"}):
                for method, url in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
                    response = await client.request(method, url, json=_chat(), headers=headers)
                    assert response.status_code == 401
                    assert response.json()["error"]["code"] == "invalid_api_key"
            assert state["calls"] == 0
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200
            ok = await client.post(
                "/v1/chat/completions", json=_chat(), headers={"authorization": f"Bearer {KEYS[0]}"}
            )
            assert ok.status_code == 200 and state["calls"] == 1

    asyncio.run(scenario())


def test_a_body_over_the_limit_is_413_declared_or_streamed():
    async def scenario() -> None:
        app, state = _app(keys=[])
        limit = load_config(CONFIGS / "tiny.yaml", check_store=False).limits.max_body_bytes
        async with _client(app) as client:
            declared = await client.post("/v1/chat/completions", content=b"x" * (limit + 1))
            assert declared.status_code == 413 and declared.json()["error"]["param"] == "body"

            async def chunks():  # no content-length: the gate counts as it reads, and stops
                for _ in range(limit // 1024 + 2):
                    yield b"y" * 1024

            streamed = await client.post("/v1/chat/completions", content=chunks())
            assert streamed.status_code == 413
            assert state["calls"] == 0
            assert (await client.post("/v1/chat/completions", json=_chat())).status_code == 200

    asyncio.run(scenario())


def test_over_the_request_rate_is_429_with_retry_after_before_the_handler():
    async def scenario() -> None:
        app, state = _app(keys=KEYS, requests_per_s=0.01, request_burst=2)
        async with _client(app) as client:
            auth = {"authorization": f"Bearer {KEYS[0]}"}
            codes = [(await client.get("/v1/models", headers=auth)).status_code for _ in range(4)]
            assert codes == [200, 200, 429, 429] and state["calls"] == 2
            refused = await client.get("/v1/models", headers=auth)
            assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["type"] == "requests"
            other = await client.get("/v1/models", headers={"authorization": f"Bearer {KEYS[1]}"})
            assert other.status_code == 200  # a different key is not slowed by the first

    asyncio.run(scenario())


def test_over_tokens_per_min_is_429_counting_max_tokens_without_a_tokenizer():
    async def scenario() -> None:
        app, state = _app(keys=[], tokens_per_min=100)
        async with _client(app) as client:
            first = await client.post("/v1/chat/completions", json=_chat(max_tokens=60))
            second = await client.post("/v1/chat/completions", json=_chat(max_tokens=60))
            assert (first.status_code, second.status_code) == (200, 429)
            assert second.json()["error"]["type"] == "tokens" and "retry-after" in second.headers
            assert state["calls"] == 1

    asyncio.run(scenario())


def test_tokens_per_min_charges_every_choice_and_every_listed_prompt():
    """n, best_of and a completions list each multiply what one request may generate; a token-id
    prompt (a list of ints) is one prompt. 4 x 30 tokens nearly empty a 150-token bucket; 30 do not."""

    async def charged_rows(path: str, **fields) -> list[int]:
        app, _ = _app(keys=[], tokens_per_min=150)
        async with _client(app) as client:
            body = _chat(max_tokens=30, **fields) if path.endswith("chat/completions") else {
                "model": "tiny-00", "max_tokens": 30, **fields
            }
            first = await client.post(path, json=body)
            second = await client.post(path, json={**body, "n": 1, "best_of": None, "prompt": "x"})
            return [first.status_code, second.status_code]

    async def scenario() -> None:
        assert await charged_rows("/v1/chat/completions") == [200, 200]
        assert await charged_rows("/v1/chat/completions", n=4) == [200, 429]
        assert await charged_rows("/v1/completions", prompt="a", best_of=4) == [200, 429]
        assert await charged_rows("/v1/completions", prompt=["a", "b", "c", "d"]) == [200, 429]
        assert await charged_rows("/v1/completions", prompt=[1, 2, 3, 4]) == [200, 200]

    asyncio.run(scenario())


def test_a_full_admission_queue_is_503_at_once_while_the_slots_are_busy():
    async def scenario() -> None:
        app, state = _app(keys=[], max_in_flight=1, max_queued=1, overload_retry_after_s=3)
        async with _client(app) as client:
            running = asyncio.create_task(client.post("/v1/slow", json={}))
            queued = asyncio.create_task(client.post("/v1/chat/completions", json=_chat()))
            gate: Gate = app.state.coe_gate
            while (gate.queue.in_flight, gate.queue.waiting) != (1, 1):
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/chat/completions", json=_chat())
            assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
            assert refused.json()["error"]["code"] == "overloaded"
            assert not running.done() and state["calls"] == 1  # refused while the slot was still busy
            state["release"].set()
            assert (await running).status_code == 200 and (await queued).status_code == 200
            assert (await client.get("/v1/models")).status_code == 200  # reads take no slot
            assert gate.queue.in_flight == 0

    asyncio.run(scenario())


# --------------------------------------------------------------------------- gRPC


class _Context:
    """What a gRPC method sees of RayServegRPCContext: metadata in, code and details out."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata, self.code, self.details = metadata, None, None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:10.0.0.9:5555"

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def test_gated_grpc_methods_keep_their_shape_and_refuse_before_running():
    import inspect

    import grpc

    from deployments.gate import gated
    from deployments.grpc_stubs import coe_pb2

    class Servicer:
        calls = 0

        def __init__(self, gate: Gate) -> None:
            self.gate = gate

        @gated(work=True)
        async def Generate(self, request, grpc_context):
            Servicer.calls += 1
            return "reply"

        @gated(work=True)
        async def GenerateStream(self, request, grpc_context):
            Servicer.calls += 1
            yield "chunk"

    # Serve dispatches by these: the context parameter's name, and coroutine vs async generator
    assert "grpc_context" in inspect.signature(Servicer.Generate).parameters
    assert inspect.iscoroutinefunction(Servicer.Generate) and inspect.isasyncgenfunction(
        Servicer.GenerateStream
    )
    app, _ = _app(keys=KEYS, max_in_flight=1, max_queued=0)
    servicer, request = Servicer(app.state.coe_gate), coe_pb2.GenerateRequest(model="tiny-00", prompt="hi")

    async def scenario() -> None:
        for metadata in ([], [("authorization", "Bearer x")]):  # no key, a wrong key
            context = _Context(metadata)
            with pytest.raises(Unauthorized):
                await servicer.Generate(request, context)
            assert context.code == grpc.StatusCode.UNAUTHENTICATED
        good = _Context([("authorization", f"Bearer {KEYS[2]}")])
        assert await servicer.Generate(request, good) == "reply"
        stream = servicer.GenerateStream(request, good)
        assert await stream.__anext__() == "chunk"  # holds the only slot until the stream closes
        busy = _Context([("authorization", f"Bearer {KEYS[2]}")])
        with pytest.raises(Overloaded):
            await servicer.Generate(request, busy)
        assert busy.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        await stream.aclose()
        assert servicer.gate.queue.in_flight == 0 and await servicer.Generate(request, good) == "reply"

    asyncio.run(scenario())
    assert Servicer.calls == 3
