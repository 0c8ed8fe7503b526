"""Train the router on the multi-source corpus and calibrate it: `python -m router.train [--out DIR]`.

Steps (all seeded, CPU only):
1. build the corpus from installed packages (`router.corpus`) and embed it;
2. leave-one-source-out: for each source, fit a head on the others and score that source, so
   every prompt gets logits from a head that never saw its source (how a new user's prompts look);
3. fit the temperature T on those out-of-source logits (`router.calibration`);
4. draw the risk-coverage curve of the calibrated out-of-source predictions and take tau at its
   highest expected answer quality (score table router/data/demo_scores.csv: the right specialist,
   a wrong specialist or the generalist each score what the table says);
5. fit the shipped head on the whole corpus; write head.safetensors, router.json (T, tau, the
   curve, the map) and report.json to DIR, by default `cluster.paths.router_dir()`.
`python -m router.evaluate` re-runs step 2 with nested calibration and writes the full report.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.paths import router_dir
from router.artifact import RouterArtifact, TrainingReport, save_artifact
from router.calibrate import build_category_map, read_scores
from router.calibration import (
    choose_tau,
    expected_calibration_error,
    fit_temperature,
    risk_coverage_curve,
)
from router.classifier import CATEGORIES, CategoryHead, HeadConfig, entropy_nats, fit_head
from router.corpus import build_corpus
from router.data import DEMO_SCORES_PATH, OOD_PATH, load_jsonl
from router.embedding import get_encoder
from router.metrics import classification_report, format_classification
from router.static_encoder import (
    STATIC_CTX_ENCODER,
    WEIGHTED_ENCODERS,
    StaticEncoder,
    contextual_table,
    token_idf,
)

logger = logging.getLogger(__name__)

# Why "static-idf-ctx": word-piece embeddings averaged with idf weights cost ~0.1 ms a prompt instead
# of the transformer's ~15 ms, which is what meets the routing latency target at 32 concurrent
# requests; "static-idf" was ~4.5 points under the transformer leave-one-source-out and ~3 over the
# unweighted average (bench/results/router_encoders.md); the second, contextualised view adds
# another ~1.2 points (0.690 -> 0.702 on the same corpus) for a second gather.
DEFAULT_ROUTER_ENCODER = STATIC_CTX_ENCODER
# Why "generalist": the demo zoo's broad model; uncertain prompts are safest with it.
DEFAULT_FALLBACK_EXPERT = "generalist"

# Embeddings already computed in this process, per (encoder, texts): tests and evaluate reuse them.
_EMBEDDINGS: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}


@dataclass(frozen=True)
class EmbeddedCorpus:
    """The corpus as tensors; `sources[i]` is the source of row i (the unit held out)."""

    x: torch.Tensor  # [N, D]
    y: torch.Tensor  # [N] category index
    sources: tuple[str, ...]
    groups: torch.Tensor  # [N] index of row i's source in sorted(set(sources)): the head balances them
    prompts: tuple[str, ...]
    ood_x: torch.Tensor  # [M, D] ood.jsonl: prompts with no right category
    ood_labels: tuple[str, ...]
    corpus_sha256: str
    counts: dict[str, dict[str, int]]
    token_weights: torch.Tensor | None = None  # [V] the "static-idf"(-ctx) encoder's, saved with the artifact
    token_table: torch.Tensor | None = None  # [V, D] the "static-idf-ctx" encoder's, saved with the artifact


def training_encoder(encoder_name: str, corpus_texts: list[str]):
    """The encoder to embed the corpus with; "static-idf"(-ctx) takes its weights from these texts."""
    if encoder_name in WEIGHTED_ENCODERS:
        return StaticEncoder(encoder_name, token_idf(corpus_texts))
    return get_encoder(encoder_name)


def embed(encoder_name: str, texts: list[str], corpus_texts: list[str] | None = None) -> torch.Tensor:
    """Embeddings [N, D] of `texts`, cached per process; `corpus_texts` (default `texts`) set the
    "static-idf" weights."""
    corpus_texts = list(texts) if corpus_texts is None else corpus_texts
    key = (encoder_name, tuple(texts), tuple(corpus_texts) if encoder_name in WEIGHTED_ENCODERS else ())
    x = _EMBEDDINGS.get(key)
    if x is None:
        x = _EMBEDDINGS[key] = training_encoder(encoder_name, corpus_texts).encode(list(texts)).clone()
    return x


def embed_corpus(encoder_name: str = DEFAULT_ROUTER_ENCODER) -> EmbeddedCorpus:
    """The corpus and ood.jsonl embedded. The idf weights come from the corpus texts alone (no
    labels; held-out sources included, which measured no better than idf without them: 0.671 vs
    0.677 leave-one-source-out)."""
    corpus, manifest = build_corpus()
    ood = load_jsonl(OOD_PATH)
    texts = [r.prompt for r in corpus]
    x = embed(encoder_name, texts + [r.prompt for r in ood], corpus_texts=texts)
    sources = tuple(r.source for r in corpus)
    names = sorted(set(sources))
    return EmbeddedCorpus(
        x=x[: len(corpus)],
        y=torch.tensor([CATEGORIES.index(r.category) for r in corpus]),
        sources=sources,
        groups=torch.tensor([names.index(s) for s in sources]),
        token_weights=token_idf(texts) if encoder_name in WEIGHTED_ENCODERS else None,
        token_table=contextual_table() if encoder_name == STATIC_CTX_ENCODER else None,
        prompts=tuple(texts),
        ood_x=x[len(corpus) :],
        ood_labels=tuple(r.category for r in ood),
        corpus_sha256=manifest.sha256,
        counts=manifest.counts,
    )


def out_of_source_logits(
    x: torch.Tensor,
    y: torch.Tensor,
    sources: tuple[str, ...],
    config: HeadConfig,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [N, K] where row i comes from a head fitted on `rows` minus row i's source.

    rows: [N] bool, the rows taking part (default all); rows outside get zeros.
    """
    rows = torch.ones(len(y), dtype=torch.bool) if rows is None else rows
    logits = torch.zeros(len(y), len(CATEGORIES))
    names = sorted({s for s, r in zip(sources, rows.tolist(), strict=True) if r})
    source_of = torch.tensor([names.index(s) if s in names else -1 for s in sources])
    for k, _ in enumerate(names):
        held = rows & (source_of == k)
        train = rows & ~held
        head = fit_head(x[train], y[train], config, groups=source_of[train])
        with torch.inference_mode():
            logits[held] = head(x[held])
    return logits


def quality_tables(
    category_map: dict[str, str], fallback_expert: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """expert_quality [K_pred, K_true] and fallback_quality [K_true] from demo_scores.csv.

    An expert the table does not know scores 1 on its own category and 0 elsewhere (a map for
    another zoo); an unknown fallback scores the table's mean generalist row or 0.5.
    """
    scores = read_scores(DEMO_SCORES_PATH)
    k = len(CATEGORIES)
    expert_q = torch.zeros(k, k, dtype=torch.float64)
    for i, predicted in enumerate(CATEGORIES):
        row = scores.get(category_map[predicted])
        for j, true in enumerate(CATEGORIES):
            expert_q[i, j] = row[true] if row else float(i == j)
    fallback_row = scores.get(fallback_expert)
    fallback_q = torch.tensor(
        [fallback_row[c] if fallback_row else 0.5 for c in CATEGORIES], dtype=torch.float64
    )
    return expert_q, fallback_q


def default_category_map() -> dict[str, str]:
    """The demo zoo's map, derived from router/data/demo_scores.csv (each specialist wins its category)."""
    return build_category_map(read_scores(DEMO_SCORES_PATH))


def _rate_by_label(fell_back: torch.Tensor, labels: tuple[str, ...]) -> dict[str, float]:
    return {
        label: float(fell_back[[i for i, x in enumerate(labels) if x == label]].double().mean())
        for label in sorted(set(labels))
    }


def fit_router(
    data: EmbeddedCorpus,
    *,
    encoder: str = DEFAULT_ROUTER_ENCODER,
    head_config: HeadConfig | None = None,
    category_map: dict[str, str] | None = None,
    fallback_expert: str = DEFAULT_FALLBACK_EXPERT,
) -> tuple[RouterArtifact, CategoryHead]:
    """Out-of-source logits -> T and tau; then the shipped head on everything."""
    config = head_config or HeadConfig(embedding_dim=data.x.shape[1], num_categories=len(CATEGORIES))
    category_map = category_map or default_category_map()
    logits = out_of_source_logits(data.x, data.y, data.sources, config)
    temperature = fit_temperature(logits, data.y)
    raw_p, cal_p = torch.softmax(logits, -1), torch.softmax(logits / temperature, -1)
    curve = risk_coverage_curve(cal_p, data.y, *quality_tables(category_map, fallback_expert))
    chosen = choose_tau(curve)

    head = fit_head(data.x, data.y, config, groups=data.groups)
    with torch.inference_mode():
        ood_h = entropy_nats(torch.softmax(head(data.ood_x) / temperature, -1))
    report = TrainingReport(
        corpus_sha256=data.corpus_sha256,
        corpus_counts=data.counts,
        train_count=len(data.y),
        leave_one_source_out=classification_report(data.y, logits.argmax(-1), CATEGORIES),
        ece_uncalibrated=expected_calibration_error(raw_p, data.y),
        ece_calibrated_in_sample=expected_calibration_error(cal_p, data.y),
        chosen=chosen,
        risk_coverage=curve,
        ood_count=len(ood_h),
        ood_fallback_rate=float((ood_h > chosen.entropy_threshold).double().mean()) if len(ood_h) else 0.0,
        ood_fallback_rate_by_label=_rate_by_label(ood_h > chosen.entropy_threshold, data.ood_labels),
    )
    artifact = RouterArtifact(
        categories=list(CATEGORIES),
        encoder=encoder,
        head=config,
        temperature=temperature,
        entropy_threshold=chosen.entropy_threshold,
        category_map=category_map,
        fallback_expert=fallback_expert,
        report=report,
    )
    return artifact, head


def train_router(
    out_dir: Path | None, *, encoder: str = DEFAULT_ROUTER_ENCODER, **fit_kwargs
) -> tuple[RouterArtifact, CategoryHead]:
    """Build and embed the corpus, fit, and (if `out_dir`) write the artifact there."""
    data = embed_corpus(encoder)
    artifact, head = fit_router(data, encoder=encoder, **fit_kwargs)
    if out_dir is not None:
        save_artifact(out_dir, artifact, head, data.token_weights, data.token_table)
    return artifact, head


def format_report(artifact: RouterArtifact) -> str:
    r = artifact.report
    if r is None:
        return "(artifact has no training report)"
    loso = format_classification(r.leave_one_source_out).replace(
        "held-out accuracy", "leave-one-source-out accuracy"
    )
    return "\n".join(
        [
            f"corpus: {r.train_count} prompts from {len(r.corpus_counts)} sources "
            f"(sha256 {r.corpus_sha256[:12]}); encoder {artifact.encoder!r}",
            "",
            loso,
            "",
            f"temperature T = {artifact.temperature:.3f} (fitted on out-of-source logits); "
            f"ECE {r.ece_uncalibrated:.3f} -> {r.ece_calibrated_in_sample:.3f} (in-sample; "
            "`python -m router.evaluate` reports nested held-out ECE)",
            f"tau = {artifact.entropy_threshold:.4f} nats: coverage {r.chosen.coverage:.3f}, risk "
            f"{r.chosen.risk:.3f}, expected quality {r.chosen.expected_quality:.3f} (highest on the curve)",
            f"ood.jsonl fallback rate: {r.ood_fallback_rate:.3f} "
            + " ".join(f"({k}: {v:.3f})" for k, v in r.ood_fallback_rate_by_label.items()),
            f"category map: {artifact.category_map}; fallback expert: {artifact.fallback_expert}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.train", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="artifact folder (default: cluster.paths.router_dir())"
    )
    parser.add_argument(
        "--encoder",
        default=DEFAULT_ROUTER_ENCODER,
        help='"static-idf-ctx" (default), "static-idf", "static", "default" (the all-MiniLM-L6-v2 '
        "transformer) or a "
        "transformers folder",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--category-map", type=Path, help="JSON {category: expert}, e.g. from router.calibrate"
    )
    parser.add_argument("--fallback-expert", default=DEFAULT_FALLBACK_EXPERT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    out_dir = (args.out or router_dir()).resolve()
    dim = training_encoder(args.encoder, ["dim"]).dim
    config = HeadConfig(embedding_dim=dim, num_categories=len(CATEGORIES), seed=args.seed)
    category_map = json.loads(args.category_map.read_text(encoding="utf-8")) if args.category_map else None
    artifact, _ = train_router(
        out_dir,
        encoder=args.encoder,
        head_config=config,
        category_map=category_map,
        fallback_expert=args.fallback_expert,
    )
    print(format_report(artifact))
    print(f"\nwrote {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
