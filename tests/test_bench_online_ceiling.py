"""bench.online_ceiling: compare's trace through one ideal cache under every policy and ORACLE."""

from __future__ import annotations

import json
from pathlib import Path

from bench.online_ceiling import ORDER, CeilingReport, CeilingSettings, main, seed_hit_rates
from bench.policy import replay
from bench.requests import build_requests


def test_small_run_is_written_and_opt_bounds_every_policy(tmp_path: Path) -> None:
    report = main(["--requests", "200", "--seeds", "4", "--out", str(tmp_path)])
    saved = CeilingReport.model_validate(json.loads((tmp_path / "online_ceiling.json").read_text()))
    assert saved == report
    assert [row.policy for row in report.spread] == list(ORDER)
    assert report.vs_opt["OPT"] == 1.0
    for row in report.spread:  # equal sizes: Belady's OPT hits at least as often as any policy
        assert 0.0 < row.min <= row.mean <= row.max <= 1.0 and 0.0 <= row.share_at_goal <= 1.0
    assert "ORACLE" in (tmp_path / "online_ceiling.md").read_text()


def test_the_replayed_trace_is_the_one_compare_sends() -> None:
    """The LRU and OPT figures bench.compare prints for a seed come out of the same trace here."""
    settings = CeilingSettings(requests=300, seed=2)
    experts = [f"other-name-{i}" for i in range(settings.experts)]  # names do not matter, order does
    trace = [r.model for r in build_requests(experts, 300, workload="zipf", zipf_s=1.0, seed=2)]
    rates = seed_hit_rates(settings, 2)
    for policy in ("LRU", "OPT"):
        assert rates[policy] == replay(trace, dict.fromkeys(experts, 1), 8, policy).hit_rate
    assert rates["ORACLE"] != rates["LRU"]
