"""Short real load runs (closed loop, open loop, gRPC streams) against the shared tiny-expert app,
then the baseline app swapped in on the same cluster (that test runs last in this package)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from ray import serve

from bench.load import LoadReport, LoadSettings, main, run_benchmark
from bench.metrics import RequestRecord

LATENCIES = ("ttft", "tpot", "itl", "e2el")


def _check_report(report: LoadReport, sent: int) -> None:
    assert report.sent == sent == report.completed + report.failed
    assert report.failed == 0, report.errors
    assert report.duration_s > 0 and report.request_throughput > 0 and report.output_throughput > 0
    for name in LATENCIES:
        stats = getattr(report, name)
        assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms, (name, stats)
    assert report.ttft.p50_ms <= report.e2el.p50_ms and report.ttft.p99_ms <= report.e2el.p99_ms
    assert report.goodput.good_requests <= report.completed
    assert report.goodput.request_goodput <= report.request_throughput
    assert report.server.source == "memtier"
    assert report.server.hbm_hits + report.server.hbm_misses == report.completed
    assert 0 <= report.server.hbm_hit_rate <= 1


@pytest.mark.integration
def test_closed_loop_cli_writes_a_complete_report(rig, tiny_config, tmp_path) -> None:
    out, records = tmp_path / "run.json", tmp_path / "records.jsonl"
    main(
        [
            "--url",
            rig.base_url,
            "--concurrency",
            "4",
            "--num-requests",
            "16",
            "--warmup",
            "4",
            "--max-tokens",
            "4",
            "--goodput",
            "ttft:60000",
            "e2el:60000",
            "--out",
            str(out),
            "--records",
            str(records),
        ]
    )
    data = json.loads(out.read_text())
    for field in ("completed", "failed", "request_throughput", "output_throughput", *LATENCIES, "goodput"):
        assert field in data, field
    for name in LATENCIES:
        assert set(data[name]) >= {"mean_ms", "p50_ms", "p90_ms", "p99_ms"}
    report = LoadReport.model_validate(data)
    _check_report(report, 16)
    assert report.goodput.good_requests == report.completed  # generous SLOs
    rows = [RequestRecord.model_validate_json(line) for line in records.read_text().splitlines()]
    assert len(rows) == 20 and all(r.ttft_s <= r.e2el_s for r in rows)
    assert {r.tier for r in rows} <= {"hbm", "ddr", "store"}
    assert set(data["settings"]["experts"]) == set(tiny_config.expert_ids)


@pytest.mark.integration
def test_open_loop_poisson_arrivals(rig, tiny_config) -> None:
    settings = LoadSettings(
        url=rig.base_url,
        rate=4.0,
        concurrency=None,
        num_requests=12,
        max_tokens=4,
        experts=tiny_config.expert_ids,
        seed=5,
        goodput_slo_ms={"e2el": 1.0},
    )
    report, records = asyncio.run(run_benchmark(settings, show_progress=False))
    _check_report(report, 12)  # the schedule itself: test_open_loop_sends_on_a_poisson_schedule...
    assert report.goodput.good_requests == 0  # 1 ms end to end is impossible
    assert len(records) == 12


@pytest.mark.integration
def test_grpc_stream_closed_loop(rig, tiny_config) -> None:
    settings = LoadSettings(
        url=rig.base_url,
        grpc=rig.grpc_target,
        concurrency=2,
        num_requests=6,
        max_tokens=4,
        experts=tiny_config.expert_ids,
        seed=9,
    )
    report, records = asyncio.run(run_benchmark(settings, show_progress=False))
    _check_report(report, 6)
    assert all(r.tier in {"hbm", "ddr", "store"} and r.socket for r in records)


@pytest.mark.integration
@pytest.mark.replaces_the_app
def test_baseline_app_serves_and_counts_hits(rig, tiny_config) -> None:
    """Runs last in the package (`replaces_the_app`): it swaps the CoE app for the baseline on the
    same cluster and sockets."""
    from bench.baseline import build_baseline_app

    serve.delete(rig.config.serve.app_name)
    serve.run(build_baseline_app(rig.config), name="baseline", route_prefix="/", blocking=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{rig.base_url}/healthz", timeout=5).json().get("status") == "ok":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    settings = LoadSettings(
        url=rig.base_url, concurrency=1, num_requests=2, max_tokens=3, experts=["tiny-03"], seed=1
    )
    report, records = asyncio.run(run_benchmark(settings, show_progress=False))
    assert report.completed == 2 and report.server.source == "multiplex"
    assert [r.tier for r in records] == ["store", "hbm"]  # loaded by the first, resident for the second
    assert (report.server.hbm_hits, report.server.hbm_misses, report.server.store_reads) == (1, 1, 1)
    assert report.server.bytes_store_to_hbm == tiny_config.expert("tiny-03").size_bytes
    stats = httpx.get(f"{rig.base_url}/v1/stats", timeout=10).json()
    assert stats["max_num_models_per_replica"] == 2  # 6.4MB per socket / ~3.2MB per tiny expert
    assert report.server.peak_models_in_use == 1  # one request at a time: one model in use
