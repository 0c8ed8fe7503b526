"""How much better than LRU could an HBM expert cache be? Replay traces through policies.

Every policy sees the same trace and byte budget and must *admit* every requested expert
(an expert has to be in HBM to run), then may drop it again at once if its admission test
refuses to keep it; policies differ in which residents they evict. Byte accounting for all
of them goes through ``memtier.lru.ByteBudgetLRU``, so the budget check is the one production
uses; the policy only names victims.

Policies:

* ``LRU``: memtier's old default; victims come from ``ByteBudgetLRU.plan_insert``.
* ``LFU``: evict the resident with the fewest requests *since the start of the trace*
  (counts survive eviction: with tens of experts a counter each is free), LRU among ties.
  Strong on a stationary skew, slow to forget after a phase shift.
* ``LFU-DA``: LFU with dynamic aging (Arlitt et al., 2000): priority = L + in-cache count,
  where L is the priority of the last victim, so stale popularity is overtaken. LRU among ties.
* ``LRFU-256``: LRFU (Lee et al., 2001) at one fixed half-life of 256 requests: what the
  adaptive policy would be without its shadows.
* ``ADAPTIVE``: memtier's default, ``memtier.policy.AdaptiveLRFU`` itself (shadow caches pick
  the LRFU half-life online; size-aware), run through the production ``ByteBudgetLRU(policy=...)``.
* ``ADAPTIVE+ADMIT``: the same with admission on: a miss scoring below every victim it displaced
  is served, then dropped.
* ``ORACLE`` (only with a ``Forecast``, not in the tables): A0 (Aho, Denning and Ullman, JACM 1971),
  evict the resident the next request is least likely to want by the law the trace generator
  draws it from. Under i.i.d. requests and equal sizes no online demand-paging policy expects
  more hits; it knows the popularity that every other policy here has to learn from the trace,
  so it shows how much of a gap to OPT is learning and how much is not knowing the future.
* ``OPT``: Belady's MIN, evict the resident whose next request is farthest in the future
  (never again counts as infinitely far), LRU among ties. With equal sizes this is the best
  any demand-paging policy can do, so it bounds the others.

With mixed sizes Belady's rule is only a heuristic (bench/results/policy.md shows LFU above it),
so mixed-size workloads add two references:

* ``BELADY-SIZE``: byte-weighted Belady, evict the largest size x next-use distance: an
  *approximation* of the byte-optimal policy (which is NP-hard), not a bound.
* ``OPT-BOUND``: PFOO-U (Berger, Beckmann, Harchol-Balter, "Practical Bounds on Optimal Caching
  with Variable Object Sizes", SIGMETRICS 2018): every reuse interval costs size x length in
  byte-requests, the cache offers capacity x trace length of them, and the cheapest intervals
  are taken first. Any real schedule's hits satisfy that budget, so this *upper-bounds* OPT.

Run ``python -m bench.policy --help``; results go to ``bench/results/policy.{json,md}`` and
``policy_hit_rate.png``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from bench.traces import SIZE_CLASSES, bursty_trace, diurnal_trace, mixed_sizes, session_trace
from bench.workloads import Forecast, phase_shift_trace, uniform_trace, zipf_trace
from memtier.lru import ByteBudgetLRU
from memtier.policy import AdaptiveLRFU, EvictionPolicy

__all__ = [
    "MIXED_POLICIES",
    "POLICIES",
    "BenchReport",
    "PolicyResult",
    "main",
    "opt_bound",
    "replay",
    "sweep",
]

POLICIES: tuple[str, ...] = ("LRU", "LFU", "LFU-DA", "LRFU-256", "ADAPTIVE", "ADAPTIVE+ADMIT", "OPT")
MIXED_POLICIES: tuple[str, ...] = (*POLICIES, "BELADY-SIZE", "OPT-BOUND")
DEFAULT_POLICY = "ADAPTIVE"
GOAL_VS_BEST_OF_LRU_LFU = -0.01  # issue 17: default >= max(LRU, LFU) - 0.01 on every trace and budget
GOAL_ZIPF_VS_OPT = 0.88  # issue 17: default >= 0.88x OPT on stationary Zipf (equal sizes)
# issue 17: bench.compare's CoE hit rate >= 0.9x OPT (round 1 asked 0.95; results committed before this
# print 0.95). Here because bench.online_ceiling checks it without bench.compare's imports (Ray, torch).
GOAL_OPT_RATIO = 0.9


class PolicyResult(BaseModel):
    """Outcome of one trace through one policy at one byte budget."""

    policy: str
    capacity_bytes: int = Field(description="The byte budget the policy ran under.")
    hits: int
    misses: int
    hit_rate: float = Field(description="hits / requests; 0.0 for an empty trace.")
    evictions: int = Field(description="Residents evicted, plus experts dropped after an admission refusal.")
    bytes_loaded: int = Field(description="Bytes paged in: the sum of sizes over misses.")


# --------------------------------------------------------------------------- victim choosers
class _Chooser:
    """Per-policy state: is told about every request and eviction, and names victims.

    Recency lives in the shared ``ByteBudgetLRU`` ledger (replay touches on every hit), so a
    scored policy breaks ties by LRU for free: ``min`` returns the first minimum in LRU order.
    """

    policy: EvictionPolicy | None = None  # a production policy ranks inside ByteBudgetLRU itself

    def before_request(self, t: int, key: str) -> None:
        """Called first for the request at position ``t`` (a production policy records it here)."""

    def on_request(self, t: int, key: str, hit: bool) -> None:
        """Called after the request at position ``t`` has been served (and admitted on a miss)."""

    def on_evict(self, key: str) -> None:
        """Called once per victim, before the missing expert is inserted."""

    def keep(self, key: str, size_bytes: int, victims: list[tuple[str, int]]) -> bool:
        """After a miss is served: keep it resident (True) or drop it (an admission refusal)."""
        return True

    def score(self, key: str) -> float:
        """Lower is evicted first. Only scored policies implement it."""
        raise NotImplementedError

    def victims(self, cache: ByteBudgetLRU[str], key: str, size_bytes: int) -> list[str]:
        """Lowest-score residents, one at a time, until ``size_bytes`` fit; nothing is mutated."""
        free_bytes = cache.free_bytes
        candidates = cache.keys_lru_order()
        chosen: list[str] = []
        while free_bytes < size_bytes:
            victim = min(candidates, key=self.score)
            candidates.remove(victim)
            chosen.append(victim)
            free_bytes += cache.size_of(victim)
        return chosen


class _LRU(_Chooser):
    def victims(self, cache: ByteBudgetLRU[str], key: str, size_bytes: int) -> list[str]:
        return cache.plan_insert(key, size_bytes)


class _Production(_LRU):
    """A `memtier.policy` policy exactly as production runs it: it ranks inside ByteBudgetLRU."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy

    def before_request(self, t: int, key: str) -> None:
        self.policy.record(key)

    def keep(self, key: str, size_bytes: int, victims: list[tuple[str, int]]) -> bool:
        return self.policy.admit(key, size_bytes, victims)


class _LFU(_Chooser):
    def __init__(self) -> None:
        self._count: dict[str, int] = {}

    def on_request(self, t: int, key: str, hit: bool) -> None:
        self._count[key] = self._count.get(key, 0) + 1

    def score(self, key: str) -> float:
        return self._count[key]


class _LFUDA(_Chooser):
    def __init__(self) -> None:
        self._age = 0.0  # L: priority of the most recent victim
        self._count: dict[str, int] = {}  # in-cache counts, reset on eviction
        self._priority: dict[str, float] = {}

    def on_request(self, t: int, key: str, hit: bool) -> None:
        self._count[key] = self._count[key] + 1 if hit and key in self._count else 1
        self._priority[key] = self._age + self._count[key]

    def on_evict(self, key: str) -> None:
        self._age = max(self._age, self._priority.pop(key))
        del self._count[key]

    def score(self, key: str) -> float:
        return self._priority[key]


class _OPT(_Chooser):
    def __init__(self, trace: Sequence[str], sizes: Mapping[str, int] | None = None) -> None:
        self._next_use = _next_use_positions(trace)
        self._resident_next: dict[str, float] = {}  # key -> position of its next request
        self._sizes = sizes  # byte-weighted (BELADY-SIZE) when given

    def on_request(self, t: int, key: str, hit: bool) -> None:
        self._resident_next[key] = self._next_use[t]

    def on_evict(self, key: str) -> None:
        del self._resident_next[key]

    def score(self, key: str) -> float:
        distance = self._resident_next[key]  # farthest next use scores lowest
        return -distance * self._sizes[key] if self._sizes is not None else -distance


class _Oracle(_Chooser):
    def __init__(self, forecast: Forecast) -> None:
        self._laws = forecast.laws
        self._column = {expert: i for i, expert in enumerate(forecast.experts)}
        self._next = 0

    def before_request(self, t: int, key: str) -> None:
        self._next = min(t + 1, len(self._laws) - 1)  # victims are chosen for the request after this one

    def score(self, key: str) -> float:
        return float(self._laws[self._next, self._column[key]])


def _next_use_positions(trace: Sequence[str]) -> list[float]:
    """For each position, the position of the next request for the same key (inf if none)."""
    next_use: list[float] = [math.inf] * len(trace)
    seen: dict[str, int] = {}
    for t in range(len(trace) - 1, -1, -1):
        next_use[t] = seen.get(trace[t], math.inf)
        seen[trace[t]] = t
    return next_use


ChooserFactory = Callable[[Sequence[str], Mapping[str, int], int], _Chooser]
_CHOOSERS: dict[str, ChooserFactory] = {
    "LRU": lambda trace, sizes, capacity: _LRU(),
    "LFU": lambda trace, sizes, capacity: _LFU(),
    "LFU-DA": lambda trace, sizes, capacity: _LFUDA(),
    "LRFU-256": lambda trace, sizes, capacity: _Production(
        AdaptiveLRFU(capacity, sizes, half_lives=(256,), admission=False)
    ),
    "ADAPTIVE": lambda trace, sizes, capacity: _Production(AdaptiveLRFU(capacity, sizes)),
    "ADAPTIVE+ADMIT": lambda trace, sizes, capacity: _Production(
        AdaptiveLRFU(capacity, sizes, admission=True)
    ),
    "OPT": lambda trace, sizes, capacity: _OPT(trace),
    "BELADY-SIZE": lambda trace, sizes, capacity: _OPT(trace, sizes),
}


def opt_bound(trace: Sequence[str], sizes: Mapping[str, int], capacity_bytes: int) -> PolicyResult:
    """PFOO-U (Berger et al., 2018): an upper bound on the hits of any policy, sizes mixed or not.

    A hit at position j needs the expert held since its previous request i: that costs
    size x (j - i) byte-requests, and a cache of capacity C over T requests has C x T of them.
    The most hits within that budget come from the cheapest intervals first; any real schedule
    is one such choice, so no policy can hit more often.
    """
    _validate(trace, sizes, capacity_bytes, "OPT")
    last: dict[str, int] = {}
    intervals: list[tuple[int, str]] = []
    for t, key in enumerate(trace):
        if key in last:
            intervals.append((sizes[key] * (t - last[key]), key))
        last[key] = t
    intervals.sort()
    budget = capacity_bytes * len(trace)
    hits = hit_bytes = 0
    for cost, key in intervals:
        if cost > budget:
            break
        budget -= cost
        hits += 1
        hit_bytes += sizes[key]
    requests = len(trace)
    return PolicyResult(
        policy="OPT-BOUND",
        capacity_bytes=capacity_bytes,
        hits=hits,
        misses=requests - hits,
        hit_rate=hits / requests if requests else 0.0,
        evictions=0,
        bytes_loaded=sum(sizes[key] for key in trace) - hit_bytes,
    )


# --------------------------------------------------------------------------- replay
def _validate(
    trace: Sequence[str],
    sizes: Mapping[str, int],
    capacity_bytes: int,
    policy: str,
    forecast: Forecast | None = None,
) -> None:
    """Reject inputs that would make a result meaningless, naming the value and the fix."""
    if policy not in _CHOOSERS and policy not in ("OPT-BOUND", "ORACLE"):
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(MIXED_POLICIES)} or ORACLE")
    if policy == "ORACLE":
        if forecast is None:
            raise ValueError("policy ORACLE needs forecast= (the law of each request, e.g. zipf_forecast)")
        if len(forecast.laws) != len(trace) or not set(trace) <= set(forecast.experts):
            raise ValueError(
                f"the forecast has {len(forecast.laws)} laws over {len(forecast.experts)} experts; the trace "
                f"has {len(trace)} requests over {len(set(trace))}: build both with the same arguments"
            )
    if capacity_bytes < 0:
        raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
    missing = sorted(set(trace) - set(sizes))
    if missing:
        raise ValueError(f"trace requests experts with no size: {missing[:5]}; add them to sizes")
    too_big = sorted(key for key in set(trace) if sizes[key] > capacity_bytes)
    if too_big:
        raise ValueError(
            f"experts {too_big[:5]} are larger than capacity_bytes={capacity_bytes} "
            f"(e.g. {too_big[0]!r} is {sizes[too_big[0]]} bytes) and could never be resident; "
            "raise the budget"
        )


def replay(
    trace: Sequence[str],
    sizes: Mapping[str, int],
    capacity_bytes: int,
    policy: str,
    forecast: Forecast | None = None,
) -> PolicyResult:
    """Serve ``trace`` in order from a cache of ``capacity_bytes`` run by ``policy`` (``ORACLE``
    also needs the ``forecast`` the trace was drawn from)."""
    if policy == "OPT-BOUND":
        return opt_bound(trace, sizes, capacity_bytes)
    _validate(trace, sizes, capacity_bytes, policy, forecast)
    oracle = policy == "ORACLE" and forecast is not None  # _validate made sure ORACLE has one
    chooser = _Oracle(forecast) if oracle else _CHOOSERS[policy](trace, sizes, capacity_bytes)
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(capacity_bytes, policy=chooser.policy)
    hits = evictions = bytes_loaded = 0
    for t, key in enumerate(trace):
        chooser.before_request(t, key)
        hit = key in cache
        if hit:
            hits += 1
            cache.touch(key)
        else:
            size_bytes = sizes[key]
            victims = chooser.victims(cache, key, size_bytes)
            for victim in victims:
                cache.remove(victim)
                chooser.on_evict(victim)
                evictions += 1
            # The chooser made room, so this evicts nothing; insert still checks the budget.
            if cache.insert(key, size_bytes):
                raise RuntimeError(f"{policy} chooser left too little room for {key!r}")
            bytes_loaded += size_bytes
            if not chooser.keep(key, size_bytes, [(v, sizes[v]) for v in victims]):
                cache.remove(key)  # served, then dropped: it does not displace hotter experts
                evictions += 1
        chooser.on_request(t, key, hit)
    requests = len(trace)
    return PolicyResult(
        policy=policy,
        capacity_bytes=capacity_bytes,
        hits=hits,
        misses=requests - hits,
        hit_rate=hits / requests if requests else 0.0,
        evictions=evictions,
        bytes_loaded=bytes_loaded,
    )


def sweep(
    trace: Sequence[str],
    sizes: Mapping[str, int],
    capacities: Sequence[int],
    policies: Sequence[str] = POLICIES,
) -> list[PolicyResult]:
    """``replay`` for every capacity (outer) and policy (inner)."""
    return [replay(trace, sizes, capacity, policy) for capacity in capacities for policy in policies]


# --------------------------------------------------------------------------- CLI
class WorkloadResult(BaseModel):
    """One trace (with its sizes) through every policy at every budget."""

    name: str
    sizes: str = Field(description="equal: every expert expert_bytes; mixed: SIZE_CLASSES x expert_bytes.")
    budget_labels: list[str] = Field(description="Budgets as the tables print them (experts, or % of bytes).")
    results: list[PolicyResult]


class Goal(BaseModel):
    workload: str
    budget: str
    check: str
    measured: float
    met: bool


class BenchReport(BaseModel):
    """Everything ``policy.json`` holds: the parameters, the exact command and every result."""

    command: str
    experts: int
    requests: int
    zipf_s: float
    expert_bytes: int
    seed: int
    budgets_experts: list[int]
    mixed_budgets: list[float] = Field(description="Mixed-size budgets, as fractions of the catalog's bytes.")
    workloads: list[WorkloadResult]
    goals: list[Goal]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.split("\n")[0])
    parser.add_argument("--experts", type=int, default=16, help="distinct experts in the trace")
    parser.add_argument("--requests", type=int, default=5000, help="requests per trace")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s of expert popularity")
    parser.add_argument(
        "--expert-bytes",
        type=int,
        default=2**30,
        help="bytes per expert (mixed sizes: the 1x class); with equal sizes only budget/expert matters",
    )
    parser.add_argument("--budgets", default="2,4,6,8", help="HBM budgets, in experts, comma-separated")
    parser.add_argument(
        "--mixed-budgets",
        default="0.15,0.3,0.5",
        help="mixed-size budgets, shares of the catalog's bytes (the smallest must hold the largest expert)",
    )
    parser.add_argument("--seed", type=int, default=0, help="trace seed (results are deterministic)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder")
    return parser.parse_args(argv)


def _command(args: argparse.Namespace, budgets: list[int], mixed: list[float]) -> str:
    """The fully explicit command line, so the committed results can be reproduced exactly."""
    return (
        f"python -m bench.policy --experts {args.experts} --requests {args.requests} --zipf {args.zipf} "
        f"--expert-bytes {args.expert_bytes} --budgets {','.join(map(str, budgets))} "
        f"--mixed-budgets {','.join(map(str, mixed))} --seed {args.seed} --out {args.out}"
    )


def _traces(experts: list[str], n: int, s: float, seed: int) -> dict[str, list[str]]:
    return {
        f"zipf s={s}": zipf_trace(experts, n, s, seed),
        f"phase shift s={s}": phase_shift_trace(experts, n, s, seed),
        "uniform": uniform_trace(experts, n, seed),
        f"bursty s={s}": bursty_trace(experts, n, s, seed),
        f"diurnal s={s}": diurnal_trace(experts, n, s, seed),
        f"sessions s={s}": session_trace(experts, n, s, seed),
    }


MIXED_TRACES = ("zipf", "phase shift", "bursty", "sessions")  # with mixed sizes too


def _goals(workload: WorkloadResult) -> list[Goal]:
    """Issue 17's checks for one workload: the default against LRU/LFU, and against OPT on Zipf."""
    goals = []
    for label, capacity in zip(workload.budget_labels, _capacities(workload), strict=True):
        rate = {r.policy: r.hit_rate for r in workload.results if r.capacity_bytes == capacity}
        margin = rate[DEFAULT_POLICY] - max(rate["LRU"], rate["LFU"])
        goals.append(
            Goal(
                workload=workload.name,
                budget=label,
                check="default - max(LRU, LFU) >= -0.01",
                measured=margin,
                met=margin >= GOAL_VS_BEST_OF_LRU_LFU,
            )
        )
        if workload.sizes == "equal" and workload.name.startswith("zipf"):
            ratio = rate[DEFAULT_POLICY] / rate["OPT"] if rate["OPT"] else 1.0
            goals.append(
                Goal(
                    workload=workload.name,
                    budget=label,
                    check=f"default / OPT >= {GOAL_ZIPF_VS_OPT}",
                    measured=ratio,
                    met=ratio >= GOAL_ZIPF_VS_OPT,
                )
            )
    return goals


def _capacities(workload: WorkloadResult) -> list[int]:
    seen: list[int] = []
    for r in workload.results:
        if r.capacity_bytes not in seen:
            seen.append(r.capacity_bytes)
    return seen


def run_policy_bench(args: argparse.Namespace) -> BenchReport:
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    mixed = [float(b) for b in args.mixed_budgets.split(",") if b.strip()]
    experts = [f"expert-{i:02d}" for i in range(args.experts)]
    equal = dict.fromkeys(experts, args.expert_bytes)
    mixed_sizes_ = mixed_sizes(experts, args.expert_bytes, args.seed)
    catalog_bytes = sum(mixed_sizes_.values())
    traces = _traces(experts, args.requests, args.zipf, args.seed)
    workloads = [
        WorkloadResult(
            name=name,
            sizes="equal",
            budget_labels=[str(b) for b in budgets],
            results=sweep(trace, equal, [b * args.expert_bytes for b in budgets]),
        )
        for name, trace in traces.items()
    ]
    # A budget below the largest expert could never hold it: such a budget is raised to it.
    mixed_capacities = list(
        dict.fromkeys(max(int(b * catalog_bytes), max(mixed_sizes_.values())) for b in mixed)
    )
    for name, trace in traces.items():
        if name.split(" s=")[0] in MIXED_TRACES:
            workloads.append(
                WorkloadResult(
                    name=f"{name}, mixed sizes",
                    sizes="mixed",
                    budget_labels=[f"{c / catalog_bytes:.0%}" for c in mixed_capacities],
                    results=sweep(trace, mixed_sizes_, mixed_capacities, MIXED_POLICIES),
                )
            )
    return BenchReport(
        command=_command(args, budgets, mixed),
        experts=args.experts,
        requests=args.requests,
        zipf_s=args.zipf,
        expert_bytes=args.expert_bytes,
        seed=args.seed,
        budgets_experts=budgets,
        mixed_budgets=mixed,
        workloads=workloads,
        goals=[goal for workload in workloads for goal in _goals(workload)],
    )


def _markdown(report: BenchReport) -> str:
    met = sum(goal.met for goal in report.goals)
    worst = min(
        (g for g in report.goals if g.check.startswith("default -")), key=lambda g: g.measured, default=None
    )
    zipf = [g for g in report.goals if g.check.startswith("default /")]
    lines = [
        "# Expert-cache policy hit rates",
        "",
        f"{report.experts} experts, {report.requests} requests per trace, Zipf s={report.zipf_s}, seed "
        f"{report.seed}. Equal sizes: every expert {report.expert_bytes} bytes, budgets in experts. Mixed "
        f"sizes: experts of {' / '.join(f'{c:g}x' for c in SIZE_CLASSES)} that size (assigned independently "
        "of popularity), budgets as a share of the catalog's bytes. Every miss is admitted (an expert must "
        "be in HBM to run); ADAPTIVE may drop it again right after (admission). OPT (Belady) bounds every "
        "policy with equal sizes; with mixed sizes it is a heuristic, BELADY-SIZE an approximation and "
        "OPT-BOUND (PFOO-U) a true upper bound. Traces are deterministic: the numbers do not depend on "
        "the machine.",
        "",
        "```",
        report.command,
        "```",
        "",
        "## Against the goal",
        "",
        f"Default policy: `{DEFAULT_POLICY}` (memtier.policy.AdaptiveLRFU). Checks met: **{met} of "
        f"{len(report.goals)}**.",
    ]
    if worst is not None:
        lines.append(
            f"- default - max(LRU, LFU), every trace and budget: worst {worst.measured:+.3f} "
            f"({worst.workload}, budget {worst.budget}); goal >= {GOAL_VS_BEST_OF_LRU_LFU}."
        )
    if zipf:
        lines.append(
            "- default / OPT on stationary Zipf: "
            + ", ".join(f"{g.budget}: {g.measured:.3f}" for g in zipf)
            + f"; goal >= {GOAL_ZIPF_VS_OPT} at every budget."
        )
    missed = [g for g in report.goals if not g.met]
    lines += [f"- **not met**: {g.workload}, budget {g.budget}: {g.check} ({g.measured:.3f})" for g in missed]
    lines += [
        "",
        "The phase-shift trace draws the same ranks as the Zipf trace and relabels them after the "
        "midpoint; bursty switches between 4 rankings after ~400 requests each; diurnal drifts between "
        "two rankings every 2,000 requests; sessions are runs of one expert (mean 4 turns, 6 "
        "conversations interleaved). See bench/traces.py.",
    ]
    for workload in report.workloads:
        policies = MIXED_POLICIES if workload.sizes == "mixed" else POLICIES
        unit = "share of bytes" if workload.sizes == "mixed" else "experts"
        lines += ["", f"## {workload.name}", "", f"| budget ({unit}) | " + " | ".join(policies) + " |"]
        lines.append("|---:|" + "---:|" * len(policies))
        for label, capacity in zip(workload.budget_labels, _capacities(workload), strict=True):
            rates = {r.policy: r for r in workload.results if r.capacity_bytes == capacity}
            cells = " | ".join(f"{rates[p].hit_rate:.3f}" for p in policies)
            lines.append(f"| {label} | {cells} |")
        if workload.sizes == "mixed":
            lines += ["", "Bytes paged in per request (the stall a miss costs is mostly bytes):", ""]
            lines.append("| budget | " + " | ".join(policies[:-1]) + " |")
            lines.append("|---:|" + "---:|" * (len(policies) - 1))
            for label, capacity in zip(workload.budget_labels, _capacities(workload), strict=True):
                rates = {r.policy: r for r in workload.results if r.capacity_bytes == capacity}
                cells = " | ".join(
                    f"{rates[p].bytes_loaded / report.requests / report.expert_bytes:.2f}x"
                    for p in policies[:-1]
                )
                lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


def _plot(report: BenchReport, path: Path) -> None:
    """Hit rate vs budget, one panel per workload, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    columns = 5
    rows = -(-len(report.workloads) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, workload in zip(flat, report.workloads, strict=False):
        policies = MIXED_POLICIES if workload.sizes == "mixed" else POLICIES
        for policy in policies:
            mine = [r for r in workload.results if r.policy == policy]
            ax.plot(workload.budget_labels, [r.hit_rate for r in mine], marker="o", label=policy)
        ax.set_title(workload.name, fontsize=9)
        ax.set_xlabel("budget (share of bytes)" if workload.sizes == "mixed" else "budget (experts)")
        ax.grid(alpha=0.3)
    for ax in flat[len(report.workloads) :]:
        ax.axis("off")
    flat[0].set_ylabel("hit rate")
    handles, labels = flat[len(report.workloads) - 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.subplots_adjust(left=0.04, right=0.91, top=0.95, bottom=0.08, hspace=0.35, wspace=0.08)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> BenchReport:
    args = _parse_args(argv)
    report = run_policy_bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy.json").write_text(report.model_dump_json(indent=2) + "\n")
    markdown = _markdown(report)
    (args.out / "policy.md").write_text(markdown)
    _plot(report, args.out / "policy_hit_rate.png")
    print(markdown)
    return report


if __name__ == "__main__":
    main()
