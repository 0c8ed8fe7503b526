"""How much better than LRU could an HBM expert cache be? Replay traces through policies.

Every policy sees the same trace and byte budget and must *admit* every requested expert
(an expert has to be in HBM to run, so there is no bypass); policies differ only in which
residents they evict. Byte accounting for all of them goes through ``memtier.lru.ByteBudgetLRU``,
so the budget check is the one production uses; the policy only names victims.

Policies:

* ``LRU``: what memtier does; victims come from ``ByteBudgetLRU.plan_insert``.
* ``LFU``: evict the resident with the fewest requests *since the start of the trace*
  (counts survive eviction: with tens of experts a counter each is free), LRU among ties.
  Strong on a stationary skew, slow to forget after a phase shift.
* ``LFU-DA``: LFU with dynamic aging (Arlitt et al., 2000): priority = L + in-cache count,
  where L is the priority of the last victim, so stale popularity is overtaken. LRU among ties.
* ``OPT``: Belady's MIN, evict the resident whose next request is farthest in the future
  (never again counts as infinitely far), LRU among ties. With equal sizes this is the best
  any demand-paging policy can do, so it bounds the others. With unequal sizes it is the
  standard Belady heuristic, not the (NP-hard) byte-optimal policy.

Run ``python -m bench.policy --help``; results go to ``bench/results/policy.{json,md}`` and
``policy_hit_rate.png``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from bench.workloads import phase_shift_trace, uniform_trace, zipf_trace
from memtier.lru import ByteBudgetLRU

__all__ = ["POLICIES", "BenchReport", "PolicyResult", "main", "replay", "sweep"]

POLICIES: tuple[str, ...] = ("LRU", "LFU", "LFU-DA", "OPT")


class PolicyResult(BaseModel):
    """Outcome of one trace through one policy at one byte budget."""

    policy: str
    capacity_bytes: int = Field(description="The byte budget the policy ran under.")
    hits: int
    misses: int
    hit_rate: float = Field(description="hits / requests; 0.0 for an empty trace.")
    evictions: int
    bytes_loaded: int = Field(description="Bytes paged in: the sum of sizes over misses.")


# --------------------------------------------------------------------------- victim choosers
class _Chooser:
    """Per-policy state: is told about every request and eviction, and names victims.

    Recency lives in the shared ``ByteBudgetLRU`` ledger (replay touches on every hit), so a
    scored policy breaks ties by LRU for free: ``min`` returns the first minimum in LRU order.
    """

    def on_request(self, t: int, key: str, hit: bool) -> None:
        """Called after the request at position ``t`` has been served (and admitted on a miss)."""

    def on_evict(self, key: str) -> None:
        """Called once per victim, before the missing expert is inserted."""

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
        self._count[key] = self._count[key] + 1 if hit else 1
        self._priority[key] = self._age + self._count[key]

    def on_evict(self, key: str) -> None:
        self._age = max(self._age, self._priority.pop(key))
        del self._count[key]

    def score(self, key: str) -> float:
        return self._priority[key]


class _OPT(_Chooser):
    def __init__(self, trace: Sequence[str]) -> None:
        self._next_use = _next_use_positions(trace)
        self._resident_next: dict[str, float] = {}  # key -> position of its next request

    def on_request(self, t: int, key: str, hit: bool) -> None:
        self._resident_next[key] = self._next_use[t]

    def on_evict(self, key: str) -> None:
        del self._resident_next[key]

    def score(self, key: str) -> float:
        return -self._resident_next[key]  # farthest next use scores lowest


def _next_use_positions(trace: Sequence[str]) -> list[float]:
    """For each position, the position of the next request for the same key (inf if none)."""
    next_use: list[float] = [math.inf] * len(trace)
    seen: dict[str, int] = {}
    for t in range(len(trace) - 1, -1, -1):
        next_use[t] = seen.get(trace[t], math.inf)
        seen[trace[t]] = t
    return next_use


_CHOOSERS: dict[str, Callable[[Sequence[str]], _Chooser]] = {
    "LRU": lambda trace: _LRU(),
    "LFU": lambda trace: _LFU(),
    "LFU-DA": lambda trace: _LFUDA(),
    "OPT": _OPT,
}


# --------------------------------------------------------------------------- replay
def _validate(trace: Sequence[str], sizes: Mapping[str, int], capacity_bytes: int, policy: str) -> None:
    """Reject inputs that would make a result meaningless, naming the value and the fix."""
    if policy not in _CHOOSERS:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
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


def replay(trace: Sequence[str], sizes: Mapping[str, int], capacity_bytes: int, policy: str) -> PolicyResult:
    """Serve ``trace`` in order from a cache of ``capacity_bytes`` run by ``policy``."""
    _validate(trace, sizes, capacity_bytes, policy)
    chooser = _CHOOSERS[policy](trace)
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(capacity_bytes)
    hits = evictions = bytes_loaded = 0
    for t, key in enumerate(trace):
        hit = key in cache
        if hit:
            hits += 1
            cache.touch(key)
        else:
            size_bytes = sizes[key]
            for victim in chooser.victims(cache, key, size_bytes):
                cache.remove(victim)
                chooser.on_evict(victim)
                evictions += 1
            # The chooser made room, so this evicts nothing; insert still checks the budget.
            if cache.insert(key, size_bytes):
                raise RuntimeError(f"{policy} chooser left too little room for {key!r}")
            bytes_loaded += size_bytes
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
class BenchReport(BaseModel):
    """Everything ``policy.json`` holds: the parameters, the exact command and every result."""

    command: str
    experts: int
    requests: int
    zipf_s: float
    expert_bytes: int
    seed: int
    budgets_experts: list[int]
    workloads: dict[str, list[PolicyResult]]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.split("\n")[0])
    parser.add_argument("--experts", type=int, default=16, help="distinct experts in the trace")
    parser.add_argument("--requests", type=int, default=5000, help="requests per trace")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s of expert popularity")
    parser.add_argument(
        "--expert-bytes",
        type=int,
        default=2**30,
        help="bytes per expert; sizes are equal, so only budget/expert matters (default 1 GiB)",
    )
    parser.add_argument("--budgets", default="2,4,6,8", help="HBM budgets, in experts, comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="trace seed (results are deterministic)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder")
    return parser.parse_args(argv)


def _command(args: argparse.Namespace, budgets: list[int]) -> str:
    """The fully explicit command line, so the committed results can be reproduced exactly."""
    return (
        f"python -m bench.policy --experts {args.experts} --requests {args.requests} --zipf {args.zipf} "
        f"--expert-bytes {args.expert_bytes} --budgets {','.join(map(str, budgets))} "
        f"--seed {args.seed} --out {args.out}"
    )


def _markdown(report: BenchReport) -> str:
    lines = [
        "# Expert-cache policy hit rates",
        "",
        f"{report.experts} experts of {report.expert_bytes} bytes each, {report.requests} requests per "
        f"trace, Zipf s={report.zipf_s}, seed {report.seed}. Every miss must be admitted (no bypass). "
        "OPT (Belady) is the upper bound for any eviction policy at that budget.",
        "",
        "The phase-shift trace draws the same ranks as the Zipf trace and relabels them after the "
        "midpoint, so a policy that remembers only order (LRU) scores about the same on both; "
        "the difference for LFU and LFU-DA is what stale frequencies cost.",
        "",
        "```",
        report.command,
        "```",
    ]
    for workload, results in report.workloads.items():
        by_budget: dict[int, dict[str, float]] = {}
        for r in results:
            by_budget.setdefault(r.capacity_bytes, {})[r.policy] = r.hit_rate
        lines += ["", f"## {workload}", "", "| budget (experts) | " + " | ".join(POLICIES) + " |"]
        lines.append("|---:|" + "---:|" * len(POLICIES))
        for capacity_bytes, rates in by_budget.items():
            cells = " | ".join(f"{rates[p]:.3f}" for p in POLICIES)
            lines.append(f"| {capacity_bytes // report.expert_bytes} | {cells} |")
    return "\n".join(lines) + "\n"


def _plot(report: BenchReport, path: Path) -> None:
    """Hit rate vs HBM budget, one panel per workload, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report.workloads), figsize=(4.5 * len(report.workloads), 4), sharey=True)
    axes = [axes] if len(report.workloads) == 1 else list(axes)
    for ax, (workload, results) in zip(axes, report.workloads.items(), strict=True):
        for policy in POLICIES:
            mine = [r for r in results if r.policy == policy]
            budgets_experts = [r.capacity_bytes / report.expert_bytes for r in mine]
            ax.plot(budgets_experts, [r.hit_rate for r in mine], marker="o", label=policy)
        ax.set_title(workload)
        ax.set_xlabel(f"HBM budget (experts of {report.expert_bytes / 2**30:g} GiB)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("hit rate")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> BenchReport:
    args = _parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    experts = [f"expert-{i:02d}" for i in range(args.experts)]
    sizes = dict.fromkeys(experts, args.expert_bytes)
    capacities = [b * args.expert_bytes for b in budgets]
    traces = {
        f"zipf s={args.zipf}": zipf_trace(experts, args.requests, args.zipf, args.seed),
        f"phase shift s={args.zipf}": phase_shift_trace(experts, args.requests, args.zipf, args.seed),
        "uniform": uniform_trace(experts, args.requests, args.seed),
    }
    report = BenchReport(
        command=_command(args, budgets),
        experts=args.experts,
        requests=args.requests,
        zipf_s=args.zipf,
        expert_bytes=args.expert_bytes,
        seed=args.seed,
        budgets_experts=budgets,
        workloads={name: sweep(trace, sizes, capacities) for name, trace in traces.items()},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy.json").write_text(report.model_dump_json(indent=2) + "\n")
    markdown = _markdown(report)
    (args.out / "policy.md").write_text(markdown)
    _plot(report, args.out / "policy_hit_rate.png")
    print(markdown)
    return report


if __name__ == "__main__":
    main()
