"""The load generator: metric math on synthetic timestamps, SSE parsing on a mock transport, Poisson
schedules and request lists. Its real runs against the app are in tiny_app/test_bench_load_on_the_app.py."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from bench.compare import opt_hit_rates
from bench.http_client import stream_chat
from bench.load import run_requests, summarize
from bench.metrics import RequestRecord, itl_ms, latency_stats, meets_slo, parse_goodput, tpot_ms
from bench.requests import RequestSpec, build_requests, heldout_prompts

LATENCIES = ("ttft", "tpot", "itl", "e2el")


def record(start: float, chunks: list[float], end: float, tokens: int, ok: bool = True) -> RequestRecord:
    return RequestRecord(
        index=0, model="m", start_s=start, chunk_s=chunks, end_s=end, output_tokens=tokens, ok=ok
    )


# --------------------------------------------------------------------------- metric math
def test_percentiles_are_interpolated_in_ms_and_ordered() -> None:
    stats = latency_stats([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats.count == 100
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert latency_stats([]).model_dump() == {"mean_ms": 0, "p50_ms": 0, "p90_ms": 0, "p99_ms": 0, "count": 0}


def test_ttft_tpot_and_itl_from_synthetic_timestamps() -> None:
    # sent at 10.0, content at +100, +150, +250 ms, stream ends at +300 ms, 3 tokens.
    r = record(10.0, [10.1, 10.15, 10.25], 10.3, 3)
    assert r.ttft_s == pytest.approx(0.1)
    assert r.e2el_s == pytest.approx(0.3)
    assert tpot_ms(r) == pytest.approx(100.0)  # (300 - 100) / (3 - 1)
    assert itl_ms(r) == pytest.approx([50.0, 100.0])
    assert tpot_ms(record(0, [0.1], 0.1, 1)) is None  # one token: no TPOT, as in vLLM


def test_goodput_counts_only_completed_requests_within_every_slo() -> None:
    slo = parse_goodput(["ttft:150", "e2el:400"])
    assert slo == {"ttft": 150.0, "e2el": 400.0}
    fast, slow_first = record(0, [0.1, 0.2], 0.3, 2), record(0, [0.2, 0.25], 0.3, 2)
    slow_end, failed = record(0, [0.1], 0.5, 1), record(0, [0.1], 0.2, 1, ok=False)
    assert [meets_slo(r, slo) for r in (fast, slow_first, slow_end, failed)] == [True, False, False, False]
    summary = summarize([fast, slow_first, slow_end, failed], duration_s=2.0, slo_ms=slo)
    assert (summary["sent"], summary["completed"], summary["failed"]) == (4, 3, 1)
    assert summary["goodput"].good_requests == 1 and summary["goodput"].request_goodput == pytest.approx(0.5)
    assert summary["request_throughput"] == pytest.approx(1.5)
    assert summary["output_throughput"] == pytest.approx(2.5)  # (2 + 2 + 1) tokens / 2 s


@pytest.mark.parametrize("bad", ["ttft", "latency:100", "e2el:abc", "ttft:-5"])
def test_bad_goodput_specs_are_refused_with_the_item_named(bad: str) -> None:
    with pytest.raises(ValueError, match="--goodput"):
        parse_goodput([bad])


# --------------------------------------------------------------------------- drivers without a server
def _specs(n: int) -> list[RequestSpec]:
    return [RequestSpec(index=i, model=f"e{i % 3}", prompt="p", seed=i) for i in range(n)]


async def _fake_send(spec: RequestSpec) -> RequestRecord:
    if spec.index == 3:
        raise RuntimeError("boom")  # a broken sender still yields a failed record
    start = time.perf_counter()
    await asyncio.sleep(0.01)
    return RequestRecord(
        index=spec.index,
        model=spec.model,
        start_s=start,
        chunk_s=[time.perf_counter()],
        end_s=time.perf_counter(),
        output_tokens=1,
        ok=True,
    )


@pytest.mark.parametrize("rate", [None, 200.0])
def test_every_request_sent_is_answered_or_failed(rate: float | None) -> None:
    records = asyncio.run(run_requests(_specs(12), _fake_send, concurrency=3, rate=rate))
    assert [r.index for r in records] == list(range(12))
    assert sum(r.ok for r in records) == 11 and "boom" in records[3].error


def _sse_transport(lines: list[str], status: int = 200) -> httpx.MockTransport:
    body = "".join(f"{line}\n\n" for line in lines).encode()
    return httpx.MockTransport(lambda request: httpx.Response(status, content=body))


def test_sse_stream_gives_content_times_usage_and_tier() -> None:
    coe = {"expert": "tiny-01", "tier": "ddr"}
    lines = [
        "data: " + json.dumps({"choices": [{"delta": {"role": "assistant", "content": ""}}], "coe": coe}),
        "data: " + json.dumps({"choices": [{"delta": {"content": "he"}}], "coe": coe}),
        "data: " + json.dumps({"choices": [{"delta": {"content": "llo"}, "finish_reason": "length"}]}),
        "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 3}}),
        "data: [DONE]",
    ]
    spec = RequestSpec(index=0, model="tiny-01", prompt="hi", seed=1)

    async def go(transport: httpx.MockTransport) -> RequestRecord:
        async with httpx.AsyncClient(transport=transport) as client:
            return await stream_chat(client, "http://x", spec, max_tokens=3, temperature=1.0, timeout_s=5)

    r = asyncio.run(go(_sse_transport(lines)))
    assert r.ok and len(r.chunk_s) == 2 and r.output_tokens == 3 and (r.tier, r.expert) == ("ddr", "tiny-01")
    assert r.start_s <= r.chunk_s[0] <= r.chunk_s[1] <= r.end_s
    assert not asyncio.run(go(_sse_transport(lines[:-1]))).ok  # no [DONE]: the stream was cut
    failed = asyncio.run(go(_sse_transport(['{"error": "busy"}'], status=503)))
    assert not failed.ok and failed.error.startswith("HTTP 503")


def test_request_lists_are_reproducible_and_coe_mode_uses_category_prompts() -> None:
    experts = [f"e{i}" for i in range(8)]
    a, b = build_requests(experts, 50, seed=3), build_requests(experts, 50, seed=3)
    assert a == b and {s.model for s in a} <= set(experts)
    routed = build_requests([], 20, model="coe", seed=1)
    prompts = heldout_prompts()
    assert all(s.model == "coe" and s.prompt in prompts[s.category] for s in routed)


def test_open_loop_sends_on_a_poisson_schedule_without_waiting_for_answers(monkeypatch) -> None:
    """No clock: the gaps the loop would sleep are recorded (and not slept), and no answer comes
    back until every request is out, so a loop that waited for answers could not finish."""
    n, rate = 2000, 4.0
    gaps: list[float] = []
    real_sleep = asyncio.sleep

    async def record_gap(delay: float, *args, **kwargs):
        gaps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", record_gap)
    specs = [RequestSpec(index=i, model="m", prompt="p", seed=i) for i in range(n)]

    async def run() -> list[RequestRecord]:
        all_sent, sent = asyncio.Event(), []

        async def send(spec: RequestSpec) -> RequestRecord:
            sent.append(spec.index)
            if len(sent) == n:
                all_sent.set()
            await all_sent.wait()
            return RequestRecord(index=spec.index, model=spec.model, start_s=0.0, ok=True)

        return await asyncio.wait_for(run_requests(specs, send, concurrency=None, rate=rate, seed=5), 60)

    records = asyncio.run(run())
    assert [r.index for r in records] == list(range(n)) and len(gaps) == n - 1
    mean = sum(gaps) / len(gaps)
    spread = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert mean == pytest.approx(1 / rate, rel=0.1)  # arrivals at `rate` per second
    assert spread / mean == pytest.approx(1.0, rel=0.1)  # exponential gaps: a Poisson process


def test_opt_bounds_lru_on_the_aggregate_budget() -> None:
    trace = build_requests([f"e{i}" for i in range(8)], 300, seed=0)
    rates = opt_hit_rates([s.model for s in trace], {f"e{i}": 10 for i in range(8)}, 40)
    assert 0 < rates["LRU"] <= rates["OPT"] < 1
