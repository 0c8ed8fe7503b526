"""The category classifier: a small torch head over sentence embeddings.

The encoder already separates topics well, so the head stays tiny (a linear layer, or one
hidden layer): it trains in about a second on CPU, is deterministic under a fixed seed, and its
softmax entropy is a usable uncertainty signal for the generalist fallback.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

# Order matters: it is the head's output order and the order of every report and probability dict.
CATEGORIES: tuple[str, ...] = ("code", "math", "medicine", "law", "finance", "science", "writing", "general")


class HeadConfig(BaseModel):
    """Shape and training settings of the head, stored in router.json to rebuild it."""

    embedding_dim: int = Field(gt=0, description="Encoder output size; 384 for all-MiniLM-L6-v2.")
    num_categories: int = Field(gt=1, description="Number of output categories.")
    hidden_dim: int = Field(
        default=0,
        ge=0,
        description="0 = linear head. On the bundled data a linear head matched a 256-unit MLP's held-out "
        "accuracy, and its entropies stay spread out where the MLP's collapse to ~0 (over-confident).",
    )
    epochs: int = Field(default=300, gt=0, description="Full-batch steps; the loss is flat well before 300.")
    lr: float = Field(
        default=0.05, gt=0, description="AdamW step size, high because the batch is the whole set."
    )
    weight_decay: float = Field(
        default=0.5,
        ge=0,
        description="Keeps logits moderate so softmax entropy stays informative instead of ~0 everywhere; "
        "0.5 beat 0.1 and 0.01 on leave-one-source-out accuracy (a head that leans less on any one "
        "source's quirks transfers better), 1.0 was no better.",
    )
    balance: Literal["class", "source"] = Field(
        default="source",
        description='"class": every category weighs the same. "source": also, inside a category, every '
        "source weighs the same, so a category's big source (MMLU) does not define it alone; +1 to +2 "
        "points leave-one-source-out (bench/results/router_encoders.md).",
    )
    seed: int = Field(default=0, description="Fixed so `python -m router.train` is reproducible.")


class CategoryHead(nn.Module):
    """Maps `[N, D]` embeddings to `[N, K]` category logits."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        d, k, h = config.embedding_dim, config.num_categories, config.hidden_dim
        self.net = nn.Linear(d, k) if h == 0 else nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, k))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)


def sample_weights(labels: torch.Tensor, groups: torch.Tensor | None, num_categories: int) -> torch.Tensor:
    """Per-row loss weights [N] summing to N: each category weighs the same in total and, with
    `groups` (source index per row), each (category, source) cell weighs the same inside its category.

    Balancing classes keeps a category with more examples from winning ties on ambiguous prompts;
    balancing sources keeps one big source from defining a category in its own style.
    """
    groups = torch.zeros_like(labels) if groups is None else groups
    cells = labels * (int(groups.max()) + 1) + groups  # one id per (category, source) cell
    cell_count = torch.bincount(cells).float()
    present = torch.zeros(num_categories)
    for k in labels.unique().tolist():
        present[k] = float(groups[labels == k].unique().numel())
    weights = 1.0 / (cell_count[cells] * present[labels])  # each category sums to 1
    return weights * len(labels) / weights.sum()


def fit_head(
    embeddings: torch.Tensor, labels: torch.Tensor, config: HeadConfig, groups: torch.Tensor | None = None
) -> CategoryHead:
    """Train a head full-batch with weighted cross-entropy; deterministic for a given seed and input.

    embeddings: [N, D] float32, labels: [N] int64 category indices, groups: [N] int64 source index
    per row (used when `config.balance == "source"`; without it the balance is per class).
    """
    torch.manual_seed(config.seed)
    embeddings = embeddings.clone()  # encoder output is an inference-mode tensor; autograd needs a plain one
    head = CategoryHead(config)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weights = sample_weights(labels, groups if config.balance == "source" else None, config.num_categories)
    head.train()
    for _ in range(config.epochs):
        opt.zero_grad()
        loss = (nn.functional.cross_entropy(head(embeddings), labels, reduction="none") * weights).mean()
        loss.backward()
        opt.step()
    return head.eval()


@torch.inference_mode()
def predict_proba(head: CategoryHead, embeddings: torch.Tensor) -> torch.Tensor:
    """Category probabilities `[N, K]` for embeddings `[N, D]`."""
    return torch.softmax(head(embeddings), dim=-1)


def entropy_nats(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each row of `[N, K]` probabilities -> `[N]`; max is ln(K)."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(-1)


def max_entropy_nats(num_categories: int = len(CATEGORIES)) -> float:
    """Entropy of the uniform distribution: a threshold at or above it never falls back."""
    return math.log(num_categories)
