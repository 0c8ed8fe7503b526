"""Train the category classifier and calibrate tau: `python -m router.train [--out DIR]`.

Steps: embed the bundled train / held-out / OOD prompts; fit the head on train only; report
per-category precision/recall and the confusion matrix on held-out; pick tau on held-out (rule
in `router.threshold`); report how often OOD prompts fall back; write the artifact
(head.safetensors, router.json, report.json) to DIR, by default `cluster.paths.router_dir()`.
Deterministic: a fixed seed and full-batch training give the same head on every run.
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
from router.classifier import (
    CATEGORIES,
    CategoryHead,
    HeadConfig,
    entropy_nats,
    fit_head,
    max_entropy_nats,
    predict_proba,
)
from router.data import DEMO_SCORES_PATH, HELDOUT_PATH, OOD_PATH, TRAIN_PATH, LabeledPrompt, load_jsonl
from router.embedding import DEFAULT_ENCODER, Encoder, get_encoder
from router.metrics import classification_report, format_classification
from router.threshold import DEFAULT_MAX_FALLBACK_RATE, choose_threshold, format_tradeoff, tradeoff_table

logger = logging.getLogger(__name__)

# Why "generalist": the demo zoo's broad model; uncertain prompts are safest with it.
DEFAULT_FALLBACK_EXPERT = "generalist"
# Why 5 folds: ~135 prompts per fold keeps each fold's accuracy meaningful on ~850 train prompts.
CV_FOLDS = 5


# Embeddings of the data already encoded in this process (~1.7 MB for the bundled data), so
# retraining with other head settings, or `load_router` training after a test did, skips the encoder.
_EMBEDDINGS: dict[tuple[Path, tuple[str, ...]], torch.Tensor] = {}


@dataclass(frozen=True)
class EmbeddedSplits:
    """Embeddings of the three splits; tests build this once and train from it repeatedly."""

    train_x: torch.Tensor  # [N_train, D]
    train_y: torch.Tensor  # [N_train] category index
    heldout_x: torch.Tensor  # [N_heldout, D]
    heldout_y: torch.Tensor  # [N_heldout]
    ood_x: torch.Tensor  # [N_ood, D]
    ood_labels: tuple[str, ...] = ()  # "mixed" / "out_of_domain" per OOD prompt, for the report


def default_category_map() -> dict[str, str]:
    """The demo zoo's map, derived from router/data/demo_scores.csv (each specialist wins its category)."""
    return build_category_map(read_scores(DEMO_SCORES_PATH))


def _labels(rows: list[LabeledPrompt], split: str) -> torch.Tensor:
    unknown = sorted({r.category for r in rows} - set(CATEGORIES))
    if unknown:
        raise ValueError(
            f"{split} split has categories {unknown} that are not router categories {CATEGORIES}"
        )
    return torch.tensor([CATEGORIES.index(r.category) for r in rows], dtype=torch.long)


def embed_splits(
    encoder: Encoder, train: list[LabeledPrompt], heldout: list[LabeledPrompt], ood: list[LabeledPrompt]
) -> EmbeddedSplits:
    """Embed all three splits in one call so batches pack prompts of similar length together.

    Memoised per process on (encoder folder, texts); a cached result is bit-identical to a fresh one.
    """
    texts = tuple(r.prompt for r in train + heldout + ood)
    key = (encoder.path, texts)
    x = _EMBEDDINGS.get(key)
    if x is None:
        x = _EMBEDDINGS[key] = encoder.encode(list(texts)).clone()  # clone: a plain tensor for autograd
    a, b = len(train), len(train) + len(heldout)
    return EmbeddedSplits(
        train_x=x[:a],
        train_y=_labels(train, "train"),
        heldout_x=x[a:b],
        heldout_y=_labels(heldout, "heldout"),
        ood_x=x[b:],
        ood_labels=tuple(r.category for r in ood),
    )


def cross_validation_accuracy(
    x: torch.Tensor, y: torch.Tensor, config: HeadConfig, folds: int = CV_FOLDS
) -> float:
    """Mean k-fold accuracy on the train split with a seeded shuffle."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed))
    correct = 0
    for k in range(folds):
        test = order[k::folds]
        mask = torch.ones(len(y), dtype=torch.bool)
        mask[test] = False
        head = fit_head(x[mask], y[mask], config)
        correct += int((predict_proba(head, x[test]).argmax(-1) == y[test]).sum())
    return correct / len(y)


def _rate_by_label(fell_back: torch.Tensor, labels: tuple[str, ...]) -> dict[str, float]:
    if len(labels) != len(fell_back):
        return {}
    return {
        label: float(fell_back[[i for i, x in enumerate(labels) if x == label]].double().mean())
        for label in sorted(set(labels))
    }


def fit_router(
    splits: EmbeddedSplits,
    *,
    encoder: str = DEFAULT_ENCODER,
    head_config: HeadConfig | None = None,
    max_fallback_rate: float = DEFAULT_MAX_FALLBACK_RATE,
    category_map: dict[str, str] | None = None,
    fallback_expert: str = DEFAULT_FALLBACK_EXPERT,
) -> tuple[RouterArtifact, CategoryHead]:
    """Fit the head on train, evaluate and calibrate tau on held-out, measure OOD fallback."""
    config = head_config or HeadConfig(embedding_dim=splits.train_x.shape[1], num_categories=len(CATEGORIES))
    head = fit_head(splits.train_x, splits.train_y, config)
    max_h = max_entropy_nats(len(CATEGORIES))

    heldout_p = predict_proba(head, splits.heldout_x)  # [N, K]
    heldout_h = entropy_nats(heldout_p)
    predicted = heldout_p.argmax(-1)
    tau = choose_threshold(heldout_h, max_fallback_rate, max_h)
    ood_h = entropy_nats(predict_proba(head, splits.ood_x)) if len(splits.ood_x) else torch.empty(0)

    report = TrainingReport(
        train_count=len(splits.train_y),
        heldout_count=len(splits.heldout_y),
        ood_count=len(ood_h),
        cross_validation_accuracy=cross_validation_accuracy(splits.train_x, splits.train_y, config),
        heldout=classification_report(splits.heldout_y, predicted, CATEGORIES),
        max_fallback_rate=max_fallback_rate,
        heldout_fallback_rate=float((heldout_h > tau).double().mean()),
        ood_fallback_rate=float((ood_h > tau).double().mean()) if len(ood_h) else 0.0,
        ood_fallback_rate_by_label=_rate_by_label(ood_h > tau, splits.ood_labels),
        tradeoff=tradeoff_table(heldout_h, predicted == splits.heldout_y, max_h, ood_h),
    )
    artifact = RouterArtifact(
        categories=list(CATEGORIES),
        encoder=encoder,
        head=config,
        entropy_threshold=tau,
        category_map=category_map or default_category_map(),
        fallback_expert=fallback_expert,
        report=report,
    )
    return artifact, head


def train_router(
    out_dir: Path | None,
    *,
    encoder: str = DEFAULT_ENCODER,
    train_path: Path = TRAIN_PATH,
    heldout_path: Path = HELDOUT_PATH,
    ood_path: Path = OOD_PATH,
    **fit_kwargs,
) -> tuple[RouterArtifact, CategoryHead]:
    """Embed the data files, fit, and (if `out_dir`) write the artifact there."""
    train, heldout, ood = load_jsonl(train_path), load_jsonl(heldout_path), load_jsonl(ood_path)
    splits = embed_splits(get_encoder(encoder), train, heldout, ood)
    artifact, head = fit_router(splits, encoder=encoder, **fit_kwargs)
    if out_dir is not None:
        save_artifact(out_dir, artifact, head)
    return artifact, head


def format_report(artifact: RouterArtifact) -> str:
    r = artifact.report
    if r is None:
        return "(artifact has no training report)"
    return "\n".join(
        [
            f"train {r.train_count} / held-out {r.heldout_count} / ood {r.ood_count} prompts; "
            f"{CV_FOLDS}-fold CV accuracy on train: {r.cross_validation_accuracy:.3f}",
            "",
            format_classification(r.heldout),
            "",
            "entropy threshold trade-off (held-out; a prompt falls back when entropy > tau):",
            format_tradeoff(r.tradeoff, artifact.entropy_threshold),
            "",
            f"chosen tau = {artifact.entropy_threshold:.4f} nats (lowest tau with held-out fallback <= "
            f"{r.max_fallback_rate:.0%}; max entropy ln {len(artifact.categories)} = "
            f"{max_entropy_nats(len(artifact.categories)):.4f})",
            f"held-out fallback rate: {r.heldout_fallback_rate:.3f}   "
            f"ood fallback rate: {r.ood_fallback_rate:.3f} "
            + " ".join(f"({k}: {v:.3f})" for k, v in r.ood_fallback_rate_by_label.items()),
            f"category map: {artifact.category_map}; fallback expert: {artifact.fallback_expert}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.train", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="artifact folder (default: cluster.paths.router_dir())"
    )
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help='"default" or a transformers model folder')
    parser.add_argument("--train", type=Path, default=TRAIN_PATH)
    parser.add_argument("--heldout", type=Path, default=HELDOUT_PATH)
    parser.add_argument("--ood", type=Path, default=OOD_PATH)
    parser.add_argument("--max-fallback-rate", type=float, default=DEFAULT_MAX_FALLBACK_RATE)
    parser.add_argument("--hidden-dim", type=int, default=0, help="0 = linear head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--category-map", type=Path, help="JSON {category: expert}, e.g. from router.calibrate"
    )
    parser.add_argument("--fallback-expert", default=DEFAULT_FALLBACK_EXPERT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    out_dir = (args.out or router_dir()).resolve()
    encoder = get_encoder(args.encoder)
    config = HeadConfig(
        embedding_dim=encoder.dim, num_categories=len(CATEGORIES), hidden_dim=args.hidden_dim, seed=args.seed
    )
    category_map = json.loads(args.category_map.read_text(encoding="utf-8")) if args.category_map else None
    artifact, _ = train_router(
        out_dir,
        encoder=args.encoder,
        train_path=args.train,
        heldout_path=args.heldout,
        ood_path=args.ood,
        head_config=config,
        max_fallback_rate=args.max_fallback_rate,
        category_map=category_map,
        fallback_expert=args.fallback_expert,
    )
    print(format_report(artifact))
    print(f"\nwrote {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
