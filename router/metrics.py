"""Held-out classification metrics: accuracy, per-category precision/recall, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, Field


class CategoryMetrics(BaseModel):
    precision: float = Field(description="Of prompts predicted as this category, the share that were.")
    recall: float = Field(description="Of prompts of this category, the share predicted as it.")
    support: int = Field(description="Held-out prompts of this category.")


class ClassificationReport(BaseModel):
    accuracy: float
    per_category: dict[str, CategoryMetrics]
    confusion: list[list[int]] = Field(
        description="confusion[true][predicted], rows/cols in `categories` order."
    )
    categories: list[str]


def classification_report(
    y_true: torch.Tensor, y_pred: torch.Tensor, categories: Sequence[str]
) -> ClassificationReport:
    """Metrics for `[N]` true and predicted category indices."""
    k = len(categories)
    confusion = torch.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)  # [true, pred]
    per_category = {}
    for i, name in enumerate(categories):
        hits = int(confusion[i, i])
        predicted, support = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        per_category[name] = CategoryMetrics(
            precision=hits / predicted if predicted else 0.0,
            recall=hits / support if support else 0.0,
            support=support,
        )
    return ClassificationReport(
        accuracy=float((y_true == y_pred).float().mean()) if len(y_true) else 0.0,
        per_category=per_category,
        confusion=confusion.tolist(),
        categories=list(categories),
    )


def format_classification(report: ClassificationReport) -> str:
    """Plain-text table for the terminal."""
    width = max(len(c) for c in report.categories)
    lines = [f"held-out accuracy: {report.accuracy:.3f}", "", f"{'category':<{width}}  precision  recall  n"]
    for name, m in report.per_category.items():
        lines.append(f"{name:<{width}}  {m.precision:9.3f}  {m.recall:6.3f}  {m.support}")
    short = [c[:4] for c in report.categories]
    lines += [
        "",
        "confusion (rows = true, columns = predicted):",
        " " * width + "  " + " ".join(f"{s:>4}" for s in short),
    ]
    for name, row in zip(report.categories, report.confusion, strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>4}" for v in row))
    return "\n".join(lines)
