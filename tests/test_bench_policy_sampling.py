"""bench.policy_sampling: the production policy with its shadows sampled, against every expert replayed."""

from __future__ import annotations

import memtier.policy
from bench.policy_sampling import SamplingReport, markdown, run


def test_sampled_and_full_replays_differ_only_in_the_shadows_and_the_threshold_is_restored() -> None:
    threshold = memtier.policy.FULL_SHADOW_EXPERTS
    rows = run(experts=600, requests=3000, budgets=[256], seed=0)  # 256 > 128: the shadows sample
    assert memtier.policy.FULL_SHADOW_EXPERTS == threshold
    assert len(rows) == 6 and {r.budget_experts for r in rows} == {256}
    assert any(r.sampled != r.full for r in rows)  # a sample is not the whole: some replay differs
    assert all(0.0 < r.sampled < 1.0 and 0.0 < r.full < 1.0 for r in rows)
    text = markdown(SamplingReport(command="c", experts=600, requests=3000, rows=rows))
    worst = min(r.sampled - max(r.lru, r.lfu) for r in rows)
    assert f"worst case: {worst:+.4f}" in text and text.count("\n| 256 |") == 6
