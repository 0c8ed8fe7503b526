"""Cache-policy replay: hand-computed traces, OPT and PFOO-U as upper bounds, traces, CLI."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.policy import MIXED_POLICIES, POLICIES, BenchReport, main, opt_bound, replay, sweep
from bench.traces import (
    SIZE_CLASSES,
    bursty_forecast,
    bursty_trace,
    diurnal_forecast,
    diurnal_trace,
    mixed_sizes,
    session_forecast,
    session_trace,
)
from bench.workloads import (
    Forecast,
    phase_shift_forecast,
    phase_shift_trace,
    uniform_trace,
    zipf_forecast,
    zipf_trace,
)

EXPERTS = [f"e{i:02d}" for i in range(16)]


def unit_sizes(trace: list[str] | str) -> dict[str, int]:
    return dict.fromkeys(trace, 1)


def hits(trace: str, capacity: int, policy: str) -> int:
    return replay(list(trace), unit_sizes(trace), capacity, policy).hits


# --------------------------------------------------------------------------- hand-computed traces
def test_lru_and_opt_on_a_trace_where_lru_thrashes() -> None:
    # capacity 2, ABCABDA: LRU always evicts the expert needed next, 0 hits, 5 evictions.
    # OPT: C evicts B (next use 4 > A's 3), A hits, B evicts C (never again), D evicts B, A hits.
    trace = "ABCABDA"
    lru = replay(list(trace), unit_sizes(trace), 2, "LRU")
    assert (lru.hits, lru.misses, lru.evictions, lru.bytes_loaded) == (0, 7, 5, 7)
    opt = replay(list(trace), unit_sizes(trace), 2, "OPT")
    assert (opt.hits, opt.misses, opt.evictions, opt.bytes_loaded) == (2, 5, 3, 5)
    assert opt.hit_rate == pytest.approx(2 / 7)


def test_frequency_keeps_a_hot_expert_that_lru_drops() -> None:
    # capacity 2, AAABCA: LRU evicts A for C (A is least recent) and misses the last A;
    # LFU/LFU-DA and the CRF policies evict B (1 request) instead and hit it.
    assert {p: hits("AAABCA", 2, p) for p in POLICIES} == {
        "LRU": 2,
        "LFU": 3,
        "LFU-DA": 3,
        "LRFU-256": 3,
        "ADAPTIVE": 3,
        "ADAPTIVE+ADMIT": 3,
        "OPT": 3,
    }


def test_aging_forgets_stale_popularity_after_a_phase_shift() -> None:
    # capacity 2: A and B are hot (4 each), then traffic moves to C and D for good.
    # LFU keeps B (count 4) forever and thrashes C/D; LFU-DA ages A and B out like LRU does.
    trace = "AAAABBBB" + "CD" * 4
    got = {p: hits(trace, 2, p) for p in ("LRU", "LFU", "LFU-DA", "OPT")}
    assert got == {"LRU": 12, "LFU": 6, "LFU-DA": 12, "OPT": 12}


def test_unequal_sizes_evict_until_the_big_expert_fits() -> None:
    trace = ["s1", "s2", "big", "s1"]
    sizes = {"s1": 1, "s2": 1, "big": 2}
    lru = replay(trace, sizes, 3, "LRU")  # big evicts s1 only (1 free + 1); s1 then evicts s2
    assert (lru.hits, lru.evictions, lru.bytes_loaded) == (0, 2, 5)
    opt = replay(trace, sizes, 3, "OPT")  # big evicts s2 (never used again), s1 hits
    assert (opt.hits, opt.evictions, opt.bytes_loaded) == (1, 1, 4)


def test_empty_trace_and_sweep_order() -> None:
    assert replay([], {}, 0, "OPT").hit_rate == 0.0
    results = sweep(list("ABAB"), unit_sizes("AB"), [1, 2])
    assert [(r.capacity_bytes, r.policy) for r in results] == [(c, p) for c in (1, 2) for p in POLICIES]
    assert all(r.hits == 2 for r in results if r.capacity_bytes == 2)


@pytest.mark.parametrize(
    ("trace", "sizes", "capacity", "policy", "message"),
    [
        (["a"], {"a": 1}, 1, "FIFO", "unknown policy 'FIFO'"),
        (["a"], {"a": 5}, 4, "OPT-BOUND", "larger than capacity_bytes=4"),
        (["a", "b"], {"a": 1}, 1, "LRU", "no size: \\['b'\\]"),
        (["a"], {"a": 5}, 4, "LRU", "larger than capacity_bytes=4.*'a' is 5 bytes"),
        (["a"], {"a": 1}, -1, "LRU", "capacity_bytes must be >= 0"),
    ],
)
def test_bad_input_is_rejected_with_the_numbers(trace, sizes, capacity, policy, message) -> None:
    with pytest.raises(ValueError, match=message):
        replay(trace, sizes, capacity, policy)


# --------------------------------------------------------------------------- OPT is the bound
def brute_force_max_hits(trace: tuple[str, ...], capacity: int) -> int:
    """Best hits over every possible eviction choice (equal sizes, forced admission)."""

    @cache
    def best(t: int, resident: frozenset[str]) -> int:
        if t == len(trace):
            return 0
        key = trace[t]
        if key in resident:
            return 1 + best(t + 1, resident)
        if len(resident) < capacity:
            return best(t + 1, resident | {key})
        return max(best(t + 1, (resident - {victim}) | {key}) for victim in resident)

    return best(0, frozenset())


traces = st.lists(st.sampled_from("ABCDEF"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(trace=traces, capacity=st.integers(1, 5))
def test_opt_hits_at_least_as_often_as_every_policy(trace: list[str], capacity: int) -> None:
    results = {p: replay(trace, unit_sizes(trace), capacity, p) for p in POLICIES}
    for policy, result in results.items():
        assert result.hits + result.misses == len(trace)
        assert result.bytes_loaded == result.misses  # unit sizes
        if policy != "ADAPTIVE+ADMIT":  # an admission refusal is one more (voluntary) eviction
            assert result.evictions == result.misses - min(capacity, len(set(trace)))
    for policy in POLICIES:
        assert results["OPT"].hits >= results[policy].hits, policy
    # PFOO-U relaxes the budget to an average over time, so it bounds even OPT from above.
    assert opt_bound(trace, unit_sizes(trace), capacity).hits >= results["OPT"].hits


@settings(max_examples=150, deadline=None)
@given(trace=st.lists(st.sampled_from("ABCDE"), max_size=12), capacity=st.integers(1, 3))
def test_opt_equals_the_brute_force_optimum(trace: list[str], capacity: int) -> None:
    assert hits("".join(trace), capacity, "OPT") == brute_force_max_hits(tuple(trace), capacity)


@settings(max_examples=150, deadline=None)
@given(
    trace=traces,
    sizes=st.fixed_dictionaries({k: st.integers(1, 4) for k in "ABCDEF"}),
    extra_bytes=st.integers(0, 8),
    policy=st.sampled_from(MIXED_POLICIES),
)
def test_unequal_sizes_replay_consistently(trace, sizes, extra_bytes, policy) -> None:
    result = replay(trace, sizes, 4 + extra_bytes, policy)
    assert result.hits + result.misses == len(trace)
    # every miss loads its expert's bytes, every hit loads nothing
    assert result.bytes_loaded >= result.misses and result.bytes_loaded <= 4 * result.misses
    # no policy can beat the PFOO-U bound, whatever the sizes
    assert result.hits <= opt_bound(trace, sizes, 4 + extra_bytes).hits


def test_opt_bound_on_a_hand_computed_trace() -> None:
    # capacity 2 over 6 requests = 12 byte-requests. Reuse intervals: a@0->2 costs 1x2, big@1->4
    # costs 2x3, a@2->5 costs 1x3. Cheapest first: 2 + 3 = 5, then 6 more = 11 <= 12: all three.
    trace = ["a", "big", "a", "x", "big", "a"]
    sizes = {"a": 1, "big": 2, "x": 1}
    assert opt_bound(trace, sizes, 2).hits == 3
    # capacity 1 offers 6: a's two intervals (2 + 3) fit, big's (6) does not.
    bound = opt_bound(["a", "big", "a", "x", "a"], {"a": 1, "big": 1, "x": 1}, 1)
    assert (bound.hits, bound.bytes_loaded) == (2, 3)


# --------------------------------------------------------------------------- workloads
def test_zipf_trace_is_deterministic_for_a_seed() -> None:
    assert zipf_trace(EXPERTS, 500, 1.0, seed=7) == zipf_trace(EXPERTS, 500, 1.0, seed=7)
    assert zipf_trace(EXPERTS, 500, 1.0, seed=7) != zipf_trace(EXPERTS, 500, 1.0, seed=8)
    assert phase_shift_trace(EXPERTS, 500, 1.0, seed=3) == phase_shift_trace(EXPERTS, 500, 1.0, seed=3)
    assert uniform_trace(EXPERTS, 500, seed=3) == uniform_trace(EXPERTS, 500, seed=3)


def test_zipf_trace_is_skewed_towards_the_first_expert() -> None:
    counts = Counter(zipf_trace(EXPERTS, 5000, 1.0, seed=0))
    ranked = [key for key, _ in counts.most_common()]
    assert ranked[0] == EXPERTS[0]
    assert counts[EXPERTS[0]] > 1.5 * counts[EXPERTS[1]]  # expected ratio 2
    assert counts[EXPERTS[0]] > 5 * counts[EXPERTS[-1]]  # expected ratio 16
    assert set(counts) <= set(EXPERTS)


def test_uniform_trace_is_flat() -> None:
    counts = Counter(uniform_trace(EXPERTS, 16_000, seed=0))
    assert set(counts) == set(EXPERTS)
    assert max(counts.values()) < 1.2 * min(counts.values())


def test_phase_shift_changes_the_most_popular_expert_between_halves() -> None:
    trace = phase_shift_trace(EXPERTS, 4000, 1.0, seed=0)
    assert len(trace) == 4000
    first, second = Counter(trace[:2000]), Counter(trace[2000:])
    assert first.most_common(1)[0][0] == EXPERTS[0]
    assert second.most_common(1)[0][0] == EXPERTS[8]  # default shift: half the experts


def test_after_a_phase_shift_lfu_da_recovers_faster_than_lfu() -> None:
    # Online policies are prefix-consistent, so whole-trace minus first-half hits are the
    # hits after the shift. LFU's lifetime counts keep the old favourites resident for a while.
    trace = phase_shift_trace(EXPERTS, 4000, 1.0, seed=0)
    sizes = unit_sizes(EXPERTS)

    def hits_after_shift(policy: str) -> int:
        return replay(trace, sizes, 4, policy).hits - replay(trace[:2000], sizes, 4, policy).hits

    assert hits_after_shift("LFU-DA") > hits_after_shift("LFU")
    assert max(replay(trace, sizes, 4, p).hits for p in POLICIES) == replay(trace, sizes, 4, "OPT").hits


def test_new_traces_are_deterministic_and_shaped_as_described() -> None:
    for make in (bursty_trace, diurnal_trace, session_trace):
        trace = make(EXPERTS, 2000, 1.0, 5)
        assert trace == make(EXPERTS, 2000, 1.0, 5) and len(trace) == 2000
        assert set(trace) <= set(EXPERTS)

    # sessions: runs of one expert, so consecutive repeats are far above i.i.d. Zipf's
    def repeats(trace: list[str]) -> int:
        return sum(a == b for a, b in zip(trace, trace[1:], strict=False))

    assert repeats(session_trace(EXPERTS, 4000, 1.0, 0, concurrent=1)) > 2 * repeats(
        zipf_trace(EXPERTS, 4000, 1.0, 0)
    )
    # diurnal: the top expert of the "day" (t near 0) is not the top of the "night" (t near period/2)
    trace = diurnal_trace(EXPERTS, 4000, 1.0, 0, period=4000)
    assert Counter(trace[:400]).most_common(1)[0][0] == EXPERTS[0]
    assert Counter(trace[1800:2200]).most_common(1)[0][0] == EXPERTS[8]
    # bursty with one state is plain Zipf in distribution: rank 1 leads
    assert Counter(bursty_trace(EXPERTS, 3000, 1.0, 0, states=1)).most_common(1)[0][0] == EXPERTS[0]


def _traces_with_forecasts(n: int, seed: int) -> dict[str, tuple[list[str], Forecast]]:
    return {
        "zipf": (zipf_trace(EXPERTS, n, 1.0, seed), zipf_forecast(EXPERTS, n, 1.0)),
        "phase": (phase_shift_trace(EXPERTS, n, 1.0, seed), phase_shift_forecast(EXPERTS, n, 1.0)),
        "bursty": (bursty_trace(EXPERTS, n, 1.0, seed), bursty_forecast(EXPERTS, n, 1.0, seed)),
        "diurnal": (diurnal_trace(EXPERTS, n, 1.0, seed), diurnal_forecast(EXPERTS, n, 1.0)),
        "sessions": (session_trace(EXPERTS, n, 1.0, seed), session_forecast(EXPERTS, n, 1.0, seed)),
    }


def test_forecasts_are_the_laws_the_traces_are_drawn_from() -> None:
    """Calibration: over the trace, each expert's requests match the sum of the probabilities its
    forecast gave it (within 4 standard deviations), and a forecast that knows the hidden state
    gives the requests that came more probability than the stationary Zipf law does."""
    n = 6000
    stationary = zipf_forecast(EXPERTS, n, 1.0).laws
    for name, (trace, forecast) in _traces_with_forecasts(n, seed=3).items():
        laws = forecast.laws
        assert laws.shape == (n, len(EXPERTS)) and np.allclose(laws.sum(axis=1), 1.0), name
        column = np.array([EXPERTS.index(e) for e in trace])
        counts = np.bincount(column, minlength=len(EXPERTS))
        expected, spread = laws.sum(axis=0), np.sqrt((laws * (1 - laws)).sum(axis=0))
        assert np.all(np.abs(counts - expected) <= 4 * spread + 1), (name, counts, expected.round())
        given_to_trace = laws[np.arange(n), column].mean()
        if name == "zipf":
            assert given_to_trace == pytest.approx(stationary[np.arange(n), column].mean())
        else:
            assert given_to_trace > 1.2 * stationary[np.arange(n), column].mean(), name


def test_the_miss_floor_is_the_mass_outside_the_likeliest_experts() -> None:
    laws = np.array([[0.5, 0.3, 0.2], [0.0, 1.0, 0.0], [0.1, 0.1, 0.8]])
    forecast = Forecast(("a", "b", "c"), laws)
    assert [forecast.miss_floor(k) for k in (0, 1, 2, 3, 4)] == pytest.approx([3.0, 0.7, 0.3, 0.0, 0.0])
    # on an i.i.d. trace it agrees with counting the requests outside the k most requested
    trace, zipf = _traces_with_forecasts(20_000, seed=0)["zipf"]
    outside = sum(sorted(Counter(trace).values(), reverse=True)[8:])
    assert zipf.miss_floor(8) == pytest.approx(outside, rel=0.05)


def test_mixed_sizes_use_every_class_independently_of_rank() -> None:
    sizes = mixed_sizes(EXPERTS, 10, seed=0)
    assert sorted(set(sizes.values())) == sorted(round(10 * c) for c in SIZE_CLASSES)
    assert mixed_sizes(EXPERTS, 10, seed=0) == sizes and mixed_sizes(EXPERTS, 10, seed=1) != sizes
    with pytest.raises(ValueError, match="base_bytes"):
        mixed_sizes(EXPERTS, 0, seed=0)


# --------------------------------------------------------------------------- CLI
def test_cli_writes_json_markdown_plot_and_goals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = main(["--experts", "6", "--requests", "150", "--budgets", "1,3", "--out", str(tmp_path)])
    saved = BenchReport.model_validate(json.loads((tmp_path / "policy.json").read_text()))
    assert saved == report
    equal = [w for w in saved.workloads if w.sizes == "equal"]
    mixed = [w for w in saved.workloads if w.sizes == "mixed"]
    assert len(equal) == 6 and len(mixed) == 4
    assert all(len(w.results) == 2 * len(POLICIES) for w in equal)
    # 6 experts: the 15% budget is raised to the largest expert (6x), so budgets may merge
    assert all(len(w.results) == len(w.budget_labels) * len(MIXED_POLICIES) for w in mixed)
    assert all(1 <= len(w.budget_labels) <= 3 for w in mixed)
    # one LRU/LFU check per workload and budget, plus one OPT check per equal-size Zipf budget
    assert len(saved.goals) == 6 * 2 + sum(len(w.budget_labels) for w in mixed) + 2
    markdown = (tmp_path / "policy.md").read_text()
    assert report.command in markdown and "| budget (experts) |" in markdown and "OPT-BOUND" in markdown
    assert (tmp_path / "policy_hit_rate.png").read_bytes()[:4] == b"\x89PNG"
    assert "Checks met" in capsys.readouterr().out


def test_oracle_knows_the_law_and_hits_its_top_mass() -> None:
    """ORACLE (A0) on a long i.i.d. trace keeps the likeliest experts: its hit rate lies between the
    mass of the top `capacity` - 1 (the last slot turns over on misses of the tail) and of the top
    `capacity` (Zipf s=1 over 16: 0.77 and 0.80), above a learned policy's, under OPT."""
    n, capacity = 20_000, 8
    trace, forecast = zipf_trace(EXPERTS, n, 1.0, 0), zipf_forecast(EXPERTS, n, 1.0)
    sizes = unit_sizes(trace)
    oracle = replay(trace, sizes, capacity, "ORACLE", forecast=forecast)
    top_mass = [1.0 - forecast.miss_floor(k) / n for k in (capacity - 1, capacity)]
    assert top_mass[0] < oracle.hit_rate < top_mass[1] + 0.01
    assert oracle.hits > replay(trace, sizes, capacity, "LRU").hits
    assert oracle.hits <= replay(trace, sizes, capacity, "OPT").hits
    # after a phase shift it follows the new law at once
    shifted = phase_shift_trace(EXPERTS, 4000, 1.0, 0)
    follows = replay(shifted, sizes, 4, "ORACLE", forecast=phase_shift_forecast(EXPERTS, 4000, 1.0))
    assert follows.hits > replay(shifted, sizes, 4, "LFU").hits


def test_oracle_needs_the_forecast_of_its_trace() -> None:
    trace = zipf_trace(EXPERTS, 100, 1.0, 0)
    with pytest.raises(ValueError, match="forecast="):
        replay(trace, unit_sizes(trace), 4, "ORACLE")
    with pytest.raises(ValueError, match="same arguments"):
        replay(trace, unit_sizes(trace), 4, "ORACLE", forecast=zipf_forecast(EXPERTS, 99, 1.0))
