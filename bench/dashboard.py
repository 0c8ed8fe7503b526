"""The CoE Serve dashboard: one list of panels, rendered two ways.

* `python -m bench.dashboard grafana` writes `k8s/grafana/coe-serve.json`, a Grafana dashboard
  whose panels query Prometheus (PromQL generated from the specs below).
* `python -m bench.dashboard run ...` starts a local cluster, drives `bench.load` against it,
  scrapes `GET /metrics` every `--scrape-s` seconds, and draws the same panels with matplotlib
  from the scrapes (`rate` = counter difference over the window, quantiles = PromQL's
  `histogram_quantile` on the bucket differences): `bench/results/dashboard.{png,json,md}`.

The specs are the single source of truth, so the picture shows what the Grafana JSON charts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import prom
from cluster.paths import REPO_ROOT

GRAFANA_JSON = REPO_ROOT / "k8s" / "grafana" / "coe-serve.json"
RESULTS = REPO_ROOT / "bench" / "results"
EXPERT = 'expert=~"$expert"'  # the dashboard's expert filter, on the serving metrics


# --------------------------------------------------------------------------- panel specs


@dataclass(frozen=True)
class Query:
    """One line (or one line per `by` label value) of a panel.

    kind: "rate" (sum of a counter's rate), "quantile" (histogram_quantile over a histogram's
    bucket rates), "gauge" (sum of a gauge), "hit_rate" (hits / (hits + misses) of one tier).
    """

    kind: str
    metric: str
    legend: str
    by: tuple[str, ...] = ()
    q: float = 0.5
    match: dict[str, str] = field(default_factory=dict)
    filtered: bool = False  # apply the dashboard's $expert filter

    def selector(self, name: str) -> str:
        parts = [f'{k}="{v}"' for k, v in self.match.items()] + ([EXPERT] if self.filtered else [])
        return f"{name}{{{','.join(parts)}}}" if parts else name

    def promql(self) -> str:
        window = "[$__rate_interval]"
        by = f" by ({', '.join(self.by)})" if self.by else ""
        if self.kind == "rate":
            return f"sum{by} (rate({self.selector(self.metric)}{window}))"
        if self.kind == "gauge":
            return f"sum{by} ({self.selector(self.metric)})"
        if self.kind == "quantile":
            group = ", ".join(("le", *self.by))
            return (
                f"histogram_quantile({self.q}, sum by ({group}) "
                f"(rate({self.selector(self.metric + '_bucket')}{window})))"
            )
        if self.kind == "hit_rate":
            tier = self.match["tier"]
            hits = f'sum(rate(coe:memtier_hits_total{{tier="{tier}"}}{window}))'
            misses = f'sum(rate(coe:memtier_misses_total{{tier="{tier}"}}{window}))'
            return f"{hits} / ({hits} + {misses})"
        raise ValueError(f"unknown query kind {self.kind!r}")

    def evaluate(self, now: prom.Samples, before: prom.Samples, seconds: float) -> dict[str, float]:
        """This query over one window of two scrapes: {legend: value} (what Prometheus would plot)."""
        diff = prom.delta(now, before)
        if self.kind == "hit_rate":
            hits = prom.total(diff, "coe:memtier_hits_total", **self.match)
            misses = prom.total(diff, "coe:memtier_misses_total", **self.match)
            return {self.legend: hits / (hits + misses)} if hits + misses else {}
        source = now if self.kind == "gauge" else diff
        name = {"rate": self.metric, "gauge": self.metric, "quantile": f"{self.metric}_bucket"}[self.kind]
        groups: dict[tuple[str, ...], list] = {}
        for (sample, labels), _ in source.items():
            label_map = dict(labels)
            if sample == name and all(label_map.get(k) == v for k, v in self.match.items()):
                groups.setdefault(tuple(label_map.get(b, "") for b in self.by), [])
        out: dict[str, float] = {}
        for key in groups:
            match = {**self.match, **dict(zip(self.by, key, strict=True))}
            legend = self.legend.format(**dict(zip(self.by, key, strict=True)))
            if self.kind == "quantile":
                value = prom.histogram_quantile(self.q, prom.buckets(diff, self.metric, **match))
            elif self.kind == "rate":
                value = prom.total(diff, self.metric, **match) / seconds
            else:
                value = prom.total(now, self.metric, **match)
            if not math.isnan(value):
                out[legend] = value
        return out


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit: s, reqps, percentunit, bytes, Bps, short
    queries: tuple[Query, ...]


def _latency(title: str, metric: str, *, filtered: bool = True) -> Panel:
    quantiles = (0.5, 0.9, 0.99)
    return Panel(
        title,
        "s",
        tuple(Query("quantile", metric, f"p{round(q * 100)}", q=q, filtered=filtered) for q in quantiles),
    )


PANELS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Serving (vLLM's metrics, coe: prefix)",
        (
            Panel(
                "Requests/s by finish reason",
                "reqps",
                (
                    Query(
                        "rate",
                        "coe:request_success_total",
                        "{finished_reason}",
                        by=("finished_reason",),
                        filtered=True,
                    ),
                ),
            ),
            _latency("Time to first token", "coe:time_to_first_token_seconds"),
            _latency("Inter-token latency", "coe:inter_token_latency_seconds"),
            _latency("End-to-end latency", "coe:e2e_request_latency_seconds"),
            _latency("Queue time on the socket", "coe:request_queue_time_seconds"),
            Panel(
                "Tokens/s",
                "short",
                (
                    Query("rate", "coe:prompt_tokens_total", "prompt", filtered=True),
                    Query("rate", "coe:generation_tokens_total", "generated", filtered=True),
                ),
            ),
            Panel(
                "Requests running / waiting on sockets",
                "short",
                (
                    Query("gauge", "coe:num_requests_running", "running", filtered=True),
                    Query("gauge", "coe:num_requests_waiting", "waiting", filtered=True),
                ),
            ),
            Panel(
                "TTFT p50 by expert",
                "s",
                (
                    Query(
                        "quantile",
                        "coe:time_to_first_token_seconds",
                        "{expert}",
                        by=("expert",),
                        filtered=True,
                    ),
                ),
            ),
            Panel(
                "Errors/s by code",
                "reqps",
                (Query("rate", "coe:request_errors_total", "{code}", by=("code",)),),
            ),
        ),
    ),
    (
        "Memtier (expert paging)",
        (
            Panel(
                "Hit rate per tier",
                "percentunit",
                (
                    Query("hit_rate", "", "HBM", match={"tier": "hbm"}),
                    Query("hit_rate", "", "DDR (of HBM misses)", match={"tier": "ddr"}),
                ),
            ),
            Panel(
                "Expert switch time by source",
                "s",
                tuple(
                    Query(
                        "quantile",
                        "coe:memtier_switch_seconds",
                        f"{{source}} p{round(q * 100)}",
                        by=("source",),
                        q=q,
                    )
                    for q in (0.5, 0.99)
                ),
            ),
            Panel(
                "Bytes paged in/s by tier",
                "Bps",
                (Query("rate", "coe:memtier_paged_bytes_total", "into {tier}", by=("tier",)),),
            ),
            Panel(
                "Evictions/s by tier",
                "short",
                (Query("rate", "coe:memtier_evictions_total", "{tier}", by=("tier",)),),
            ),
            Panel(
                "HBM resident bytes per socket",
                "bytes",
                (
                    Query(
                        "gauge",
                        "coe:memtier_resident_bytes",
                        "{socket}",
                        by=("socket",),
                        match={"tier": "hbm"},
                    ),
                ),
            ),
        ),
    ),
    (
        "Router",
        (
            Panel(
                "Decisions/s by category",
                "reqps",
                (Query("rate", "coe:router_decisions_total", "{category}", by=("category",)),),
            ),
            Panel(
                "Fallbacks/s (uncertain prompts)",
                "reqps",
                (Query("rate", "coe:router_fallbacks_total", "{category}", by=("category",)),),
            ),
            _latency("Routing latency", "coe:router_latency_seconds", filtered=False),
        ),
    ),
)


def metric_names() -> set[str]:
    """Every metric family a panel reads (for the test that they all exist)."""
    names = {q.metric for _, panels in PANELS for p in panels for q in p.queries if q.metric}
    names |= {"coe:memtier_hits_total", "coe:memtier_misses_total"}
    return names


# --------------------------------------------------------------------------- Grafana JSON


def grafana_dashboard() -> dict:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels, y, panel_id = [], 0, 1
    for row_title, row in PANELS:
        panels.append(
            {
                "type": "row",
                "title": row_title,
                "id": panel_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for i, panel in enumerate(row):
            panels.append(
                {
                    "type": "timeseries",
                    "title": panel.title,
                    "id": panel_id,
                    "datasource": datasource,
                    "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                    "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {
                            "refId": chr(ord("A") + j),
                            "datasource": datasource,
                            "expr": q.promql(),
                            "legendFormat": q.legend.replace("{", "{{").replace("}", "}}"),
                        }
                        for j, q in enumerate(panel.queries)
                    ],
                }
            )
            panel_id += 1
        y += math.ceil(len(row) / 3) * 8
    return {
        "title": "CoE Serve",
        "uid": "coe-serve",
        "description": "Serving (vLLM's metric names, coe: prefix), memtier paging and the router. "
        "Generated by `python -m bench.dashboard grafana`; edit bench/dashboard.py, not this file.",
        "tags": ["coe-serve", "vllm", "ray-serve"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
                {
                    "name": "expert",
                    "label": "Expert",
                    "type": "query",
                    "datasource": datasource,
                    "query": "label_values(coe:request_success_total, expert)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


def write_grafana(path: Path = GRAFANA_JSON) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(grafana_dashboard(), indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- a real run, drawn


class Scraper:
    """Scrapes `GET /metrics` every `interval_s` on a thread: [(seconds since start, samples)]."""

    def __init__(self, url: str, interval_s: float) -> None:
        self.url, self.interval_s = url, interval_s
        self.scrapes: list[tuple[float, prom.Samples]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        with httpx.Client() as client:
            while True:
                try:
                    self.scrapes.append((time.monotonic() - self._start, prom.scrape(client, self.url)))
                except httpx.HTTPError:
                    pass
                if self._stop.wait(self.interval_s):
                    return

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(self.interval_s)  # one more scrape after the last request
        self._stop.set()
        self._thread.join()


def series(scrapes: list[tuple[float, prom.Samples]], query: Query, window_s: float) -> dict[str, list]:
    """{legend: [(t, value)]}: the query at each scrape over the trailing window (PromQL's rate window)."""
    out: dict[str, list] = {}
    for i, (t, now) in enumerate(scrapes):
        earlier = [j for j in range(i) if t - scrapes[j][0] >= window_s]
        if not earlier:
            continue
        t0, before = scrapes[earlier[-1]]
        for legend, value in query.evaluate(now, before, t - t0).items():
            out.setdefault(legend, []).append((t, value))
    return out


def draw(scrapes: list[tuple[float, prom.Samples]], window_s: float, path: Path, subtitle: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(row, p) for row, ps in PANELS for p in ps]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 2.9), squeeze=False)
    scale = {"percentunit": (100, "%"), "bytes": (2**-20, "MiB"), "Bps": (2**-20, "MiB/s"), "s": (1000, "ms")}
    for ax, (_, panel) in zip(axes.flat, panels, strict=False):
        factor, unit = scale.get(panel.unit, (1, panel.unit))
        for query in panel.queries:
            for legend, points in sorted(series(scrapes, query, window_s).items()):
                ax.plot([t for t, _ in points], [v * factor for _, v in points], label=legend, linewidth=1.2)
        ax.set_ylim(bottom=0)  # as Grafana's panels: a small wobble must not look like a cliff
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(
                0.5, 0.5, "no data in this run", ha="center", va="center", fontsize=8, transform=ax.transAxes
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds since start", fontsize=8)
    fig.suptitle(f"CoE Serve dashboard, drawn from GET /metrics scrapes ({subtitle})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args: argparse.Namespace, command: str) -> dict:
    """A cluster, a load, the scrapes, the picture and its numbers."""
    from bench.load import LoadSettings, run_benchmark
    from bench.rig import LocalServe
    from cluster.config import load_config
    from deployments.app import build_app_from_config

    config = load_config(args.config)
    settings_kw = dict(
        concurrency=args.concurrency,
        num_requests=args.num_requests,
        warmup=0,
        workload=args.workload,
        zipf_s=args.zipf_s,
        model=args.model,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    with LocalServe(config, build_app_from_config, cpus_per_node=args.cpus_per_node) as serve_rig:
        settings = LoadSettings(url=serve_rig.base_url, **settings_kw)
        if args.warmup:  # cold start (STORE reads, first forward passes) before the picture starts
            warm = settings.model_copy(update={"num_requests": args.warmup, "seed": args.seed + 1})
            asyncio.run(run_benchmark(warm, show_progress=False))
        with Scraper(serve_rig.base_url, args.scrape_s) as scraper:
            report, _ = asyncio.run(run_benchmark(settings, show_progress=False))
    scrapes = scraper.scrapes
    first, last = scrapes[0][1], scrapes[-1][1]
    whole = prom.delta(last, first)
    ttft = prom.histogram_quantile(0.5, prom.buckets(whole, "coe:time_to_first_token_seconds"))
    subtitle = (
        f"{config.name} config, {report.sent} requests, {args.workload} workload"
        f"{', routed' if args.model == 'coe' else ''}, shared 2-core box"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    png = draw(scrapes, args.window_s, args.out / "dashboard.png", subtitle)
    summary = {
        "command": command,
        "scrapes": len(scrapes),
        "duration_s": scrapes[-1][0] - scrapes[0][0],
        "client": {
            "sent": report.sent,
            "completed": report.completed,
            "failed": report.failed,
            "ttft_p50_s": report.ttft.p50_ms / 1000,
            "e2el_p50_s": report.e2el.p50_ms / 1000,
        },
        "server": {
            "requests": prom.total(whole, "coe:request_success_total"),
            "ttft_count": prom.total(whole, "coe:time_to_first_token_seconds_count"),
            "ttft_p50_s": ttft,
            "e2e_p50_s": prom.histogram_quantile(0.5, prom.buckets(whole, "coe:e2e_request_latency_seconds")),
            "hbm_hit_rate": Query("hit_rate", "", "", match={"tier": "hbm"}).evaluate(last, first, 1).get(""),
            "router_decisions": prom.total(whole, "coe:router_decisions_total"),
        },
        "png": str(png.relative_to(REPO_ROOT)) if png.is_relative_to(REPO_ROOT) else str(png),
    }
    (args.out / "dashboard.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "dashboard.md").write_text(_markdown(summary))
    return summary


def _markdown(s: dict) -> str:
    c, v = s["client"], s["server"]
    return f"""# Dashboard from a real run

![dashboard](dashboard.png)

Command: `{s["command"]}`

The box (2 cores) was shared with other agents' clusters and tests while this ran, so absolute
latencies are this box's, not the system's. The panels are those of `k8s/grafana/coe-serve.json`,
computed from {s["scrapes"]} scrapes of `GET /metrics` over {s["duration_s"]:.0f} s, after a warm-up
whose cold starts (STORE reads, first forward passes) would flatten every latency panel. Panels
that say "no data" had none in this run: errors (there were none) and the sockets' running/waiting
gauges (the engine does not set them yet: `deployments.metrics.set_running/set_waiting`).

| | client (bench.load) | server (/metrics) |
|---|---|---|
| requests | {c["completed"]} of {c["sent"]} ({c["failed"]} failed) | {v["requests"]:.0f} |
| TTFT observations | | {v["ttft_count"]:.0f} |
| TTFT p50 | {c["ttft_p50_s"] * 1000:.0f} ms | {v["ttft_p50_s"] * 1000:.0f} ms |
| E2E p50 | {c["e2el_p50_s"] * 1000:.0f} ms | {v["e2e_p50_s"] * 1000:.0f} ms |
| HBM hit rate | | {v["hbm_hit_rate"] if v["hbm_hit_rate"] is not None else float("nan"):.2f} |
| router decisions | | {v["router_decisions"]:.0f} |

Server TTFT starts when the ingress takes the request; the client's also holds Serve's HTTP
proxy and the ingress's event loop, which is busy relaying tokens under load.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    grafana = sub.add_parser("grafana", help="write the Grafana dashboard JSON")
    grafana.add_argument("--out", type=Path, default=GRAFANA_JSON)
    runp = sub.add_parser("run", help="run a load, scrape /metrics, draw the dashboard")
    runp.add_argument("--config", default=str(REPO_ROOT / "cluster" / "configs" / "tiny.yaml"))
    runp.add_argument("--num-requests", type=int, default=400)
    runp.add_argument("--concurrency", type=int, default=8)
    runp.add_argument("--workload", default="phase")
    runp.add_argument("--zipf-s", type=float, default=1.0)
    runp.add_argument("--model", default="coe", help="'coe': routed prompts; 'none': explicit expert ids")
    runp.add_argument("--max-tokens", type=int, default=16)
    runp.add_argument("--seed", type=int, default=0)
    runp.add_argument("--warmup", type=int, default=32, help="requests sent before scraping starts")
    runp.add_argument("--cpus-per-node", type=int, default=2)
    runp.add_argument("--scrape-s", type=float, default=2.0)
    runp.add_argument("--window-s", type=float, default=10.0, help="the rate window of every panel")
    runp.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.what == "grafana":
        print(write_grafana(args.out))
        return 0
    args.model = None if args.model == "none" else args.model
    command = "python -m bench.dashboard " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(json.dumps(run(args, command), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
