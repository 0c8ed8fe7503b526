"""bench.chaos's judgement without a cluster: which requests count as during a fault, what fails a
run, and how RSS growth is told from warm-up. (The run itself: bench/results/chaos.md.)"""

from __future__ import annotations

import pytest

from bench.chaos import Answer, BudgetSample, ChaosSettings, _parse, _report
from bench.faults import FaultRecord
from bench.rss import RssSample, growth

MIB = 2**20


def _answer(start_s: float, end_s: float, cause: str | None = None, stream: bool = False) -> Answer:
    return Answer(start_s=start_s, end_s=end_s, expert="tiny-00", stream=stream, cause=cause)


def _run(answers, faults=(), samples=(), leases=0, pinned=0, rss=(), **settings):
    settings = ChaosSettings(warmup_s=0, **settings)
    return _report(
        settings, list(answers), list(faults), list(samples), list(rss), 100.0, leases, pinned, False
    )


def test_requests_overlapping_a_fault_until_full_capacity_count_as_during_faults():
    fault = FaultRecord(kind="socket", at_s=10, target="socket x", recovered_s=5)  # window 10..15
    answers = [_answer(1, 2), _answer(9, 11), _answer(14, 20), _answer(16, 17), _answer(3, 4)]
    report = _run(answers, [fault])
    assert (report.requests_steady, report.requests_faults) == (3, 2)
    assert report.p99_faults_s == pytest.approx(6.0) and report.p99_steady_s == pytest.approx(1.0)
    assert report.passed


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"answers": [_answer(1, 2, cause="503 socket_failed")]}, "a lost non-streaming request"),
        ({"faults": [FaultRecord(kind="node", at_s=5, target="node y")]}, "a fault never recovered"),
        ({"samples": [BudgetSample(t_s=1, ok=True, over_budget=["hbm s0 7>6"])]}, "a budget breach"),
        ({"leases": 1}, "a lease left at the end"),
        ({"pinned": 4096}, "pinned bytes left at the end"),
    ],
)
def test_a_run_fails_on(change: dict, why: str):
    base = {"answers": [_answer(1, 2)]}
    assert _run(**{**base, **change}).passed is False, why


def test_a_stream_cut_after_its_first_token_is_reported_but_does_not_fail_the_run():
    report = _run([_answer(1, 2), _answer(1, 3, cause="stream error socket_failed", stream=True)])
    assert report.failed == 1 and report.failed_non_streaming == 0 and report.passed
    assert report.causes == {"stream error socket_failed": 1}


def _series(pid: int, start_mib: float, slope_mib_per_s: float, t_from: float = 0, t_to: float = 100):
    return [
        RssSample(
            t_s=t, pid=pid, title=f"ray::Actor{pid}", rss_bytes=int((start_mib + slope_mib_per_s * t) * MIB)
        )
        for t in range(int(t_from), int(t_to), 5)
    ]


def test_rss_growth_skips_warm_up_and_short_lived_processes_and_flags_creep():
    warm_then_flat = [
        RssSample(t_s=t, pid=1, title="ray::Warm", rss_bytes=(100 if t < 20 else 400) * MIB)
        for t in range(0, 100, 5)
    ]
    creeping = _series(2, 300, 2.0)  # +2 MiB/s: ~130 MiB between the thirds
    short_lived = _series(3, 100, 5.0, t_from=80)
    found = {g.pid: g for g in growth(warm_then_flat + creeping + short_lived, min_lived_s=40, after_s=20)}
    assert set(found) == {1, 2}
    assert found[1].growth_mib == pytest.approx(0.0)
    assert found[2].growth_mib > 64
    report = _run([_answer(1, 2)], rss=creeping, soak_s=100, rss_warmup_s=20, rss_growth_mb=64)
    assert not report.passed and report.rss_grew and "ray::Actor2" in report.rss_grew[0]


def test_the_command_line_rejects_unknown_faults_and_a_node_fault_on_one_node():
    with pytest.raises(SystemExit):
        _parse(["--faults", "socket,meteor"])
    with pytest.raises(SystemExit):
        _parse(["--faults", "node", "--nodes", "1"])
    settings, out = _parse(["--soak", "1800", "--faults", "memtier,ddr", "--out", "bench/results/chaos_soak"])
    assert (
        settings.soak_s == 1800
        and settings.faults == ["memtier", "ddr"]
        and out == "bench/results/chaos_soak"
    )
