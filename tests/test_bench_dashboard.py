"""The dashboard's panels: the committed Grafana JSON is what the specs generate, every metric a
panel reads is one the server exports, and the PNG's arithmetic is PromQL's on two scrapes."""

from __future__ import annotations

import json

import pytest

from bench import dashboard, prom
from deployments.metrics import ServingMetrics
from memtier.metrics import MemtierMetrics
from memtier.models import NodeStatus, SocketStatus


def test_the_committed_grafana_json_is_what_the_panels_generate():
    committed = json.loads(dashboard.GRAFANA_JSON.read_text())
    assert committed == dashboard.grafana_dashboard(), "regenerate it: python -m bench.dashboard grafana"
    exprs = [t["expr"] for p in committed["panels"] for t in p.get("targets", [])]
    assert (
        'histogram_quantile(0.99, sum by (le) (rate(coe:time_to_first_token_seconds_bucket{expert=~"$expert"}'
        in (" ".join(exprs))
    )


def test_every_metric_a_panel_reads_is_exported():
    serving, memtier = ServingMetrics(), MemtierMetrics("t")
    socket = SocketStatus(
        socket_id="s", node_id="n", hbm_bytes=1, used_bytes=0, pinned_bytes=0, residents=[], leases=0
    )
    node = NodeStatus(node_id="n", ddr_bytes=1, used_bytes=0, residents=[], sockets=[socket])
    families = [*serving.registry.collect(), *memtier.families([node])]
    exported = {f.name for f in families} | {f"{f.name}_total" for f in families if f.type == "counter"}
    assert dashboard.metric_names() <= exported, dashboard.metric_names() - exported


def _scrape(count: float, le_0_5: float, success: float, hits: float, misses: float) -> prom.Samples:
    ttft = "coe:time_to_first_token_seconds_bucket"
    labels = (("category", ""), ("expert", "e1"))
    return {
        (ttft, (*labels, ("le", "0.5"))): le_0_5,
        (ttft, (*labels, ("le", "1.0"))): count,
        (ttft, (*labels, ("le", "+Inf"))): count,
        ("coe:request_success_total", (*labels, ("finished_reason", "stop"))): success,
        ("coe:memtier_hits_total", (("tier", "hbm"),)): hits,
        ("coe:memtier_misses_total", (("tier", "hbm"),)): misses,
    }


def test_panel_values_are_promqls_over_the_window():
    before, now = _scrape(10, 10, 10, 5, 5), _scrape(30, 20, 30, 20, 10)  # 20 new: 10 under 0.5 s
    (reqs,) = [
        q for _, ps in dashboard.PANELS for p in ps for q in p.queries if q.metric.endswith("success_total")
    ]
    assert reqs.evaluate(now, before, seconds=10.0) == {"stop": pytest.approx(2.0)}  # 20 requests / 10 s
    p50 = dashboard.Query("quantile", "coe:time_to_first_token_seconds", "p50")
    assert p50.evaluate(now, before, 10.0) == {"p50": pytest.approx(0.5)}  # the 10th of 20 is at 0.5 s
    hbm = dashboard.Query("hit_rate", "", "HBM", match={"tier": "hbm"})
    assert hbm.evaluate(now, before, 10.0) == {"HBM": pytest.approx(15 / 20)}


def test_the_picture_draws_every_panel(tmp_path):
    scrapes = [(t * 2.0, _scrape(10 * t, 5 * t, 10 * t, 4 * t, t)) for t in range(8)]
    path = dashboard.draw(scrapes, window_s=4.0, path=tmp_path / "d.png", subtitle="synthetic")
    assert path.stat().st_size > 10_000
