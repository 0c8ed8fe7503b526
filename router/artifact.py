"""The trained router on disk: `head.safetensors` (weights) + `router.json` (everything else).

Kept to two small files in the ignored zoo folder: the project never commits weights, and the
JSON stays readable so an operator can check tau, the map and the training report at a glance.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, Field, model_validator
from safetensors.torch import load_file, save_file

from router.calibration import RiskCoveragePoint
from router.classifier import CategoryHead, HeadConfig
from router.metrics import ClassificationReport

HEAD_FILE = "head.safetensors"
CONFIG_FILE = "router.json"
REPORT_FILE = "report.json"
# Word-piece weights of the "static-idf" encoder (idf over the corpus it was trained on).
TOKEN_WEIGHTS_FILE = "token_weights.safetensors"
# The "static-idf-ctx" encoder's contextualised word-piece table [V, D] (router/static_encoder.py).
TOKEN_TABLE_FILE = "token_table.safetensors"
# 4: the default encoder became "static-idf-ctx" (768-dim input, token_table.safetensors).
ARTIFACT_VERSION = 4


class TrainingReport(BaseModel):
    """What `python -m router.train` measured; stored so a deployed router explains itself."""

    corpus_sha256: str = Field(description="Digest of the corpus trained on (see corpus_manifest.json).")
    corpus_counts: dict[str, dict[str, int]] = Field(description="source -> category -> prompts.")
    train_count: int
    leave_one_source_out: ClassificationReport = Field(
        description="Each prompt scored by a head fitted without its source."
    )
    ece_uncalibrated: float = Field(description="ECE of the out-of-source predictions at T = 1.")
    ece_calibrated_in_sample: float = Field(
        description="ECE at the fitted T on the same logits T was fitted on (optimistic; "
        "router.evaluate reports the nested figure)."
    )
    chosen: RiskCoveragePoint = Field(description="The risk-coverage point tau was taken at.")
    risk_coverage: list[RiskCoveragePoint]
    ood_count: int
    ood_fallback_rate: float = Field(description="ood.jsonl share that falls back at the chosen tau.")
    ood_fallback_rate_by_label: dict[str, float] = Field(
        default_factory=dict, description='The same per ood.jsonl label ("mixed", "out_of_domain").'
    )


class RouterArtifact(BaseModel):
    """Contents of router.json."""

    version: int = Field(default=ARTIFACT_VERSION, description="Bumped when the layout changes.")
    categories: list[str] = Field(description="Head output order.")
    encoder: str = Field(
        default="default",
        description='"static" = word-piece averages of the bundled all-MiniLM-L6-v2, "static-idf" = the '
        'same weighted by idf (weights in token_weights.safetensors), "static-idf-ctx" = that beside the '
        "idf-weighted mean of contextualised word pieces (table in token_table.safetensors), "
        '"default" = that transformer '
        "itself; otherwise a path to a transformers model dir.",
    )
    head: HeadConfig
    temperature: float = Field(
        default=1.0, gt=0.0, description="Logits are divided by T before softmax (calibration)."
    )
    entropy_threshold: float = Field(
        ge=0.0, description="tau in nats; entropy of the calibrated probabilities > tau falls back."
    )
    category_map: dict[str, str] = Field(description="Expert per category.")
    fallback_expert: str = Field(min_length=1, description="Expert for uncertain prompts (a generalist).")
    report: TrainingReport | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RouterArtifact:
        check_category_map(self.category_map, self.categories)
        if self.head.num_categories != len(self.categories):
            raise ValueError(
                f"head has {self.head.num_categories} outputs but {len(self.categories)} categories"
            )
        return self


def check_category_map(category_map: dict[str, str], categories: list[str]) -> None:
    """Every category maps to a non-empty expert name, and no unknown category appears."""
    missing = [c for c in categories if c not in category_map]
    unknown = sorted(set(category_map) - set(categories))
    if missing or unknown:
        raise ValueError(
            f"category map must name an expert for exactly the categories {categories}; "
            f"missing {missing}, unknown {unknown}"
        )
    empty = [c for c, e in category_map.items() if not isinstance(e, str) or not e.strip()]
    if empty:
        raise ValueError(f"category map gives no expert name for {empty}")


def save_artifact(
    directory: Path,
    artifact: RouterArtifact,
    head: CategoryHead,
    token_weights: torch.Tensor | None = None,
    token_table: torch.Tensor | None = None,
) -> None:
    """Write head.safetensors, router.json, the encoder's token weights and table (if any) and (if
    trained here) report.json into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, directory / HEAD_FILE)
    if token_weights is not None:
        save_file({"token_weights": token_weights.contiguous()}, directory / TOKEN_WEIGHTS_FILE)
        (directory / TOKEN_WEIGHTS_FILE).chmod(0o644)
    if token_table is not None:
        save_file({"token_table": token_table.contiguous()}, directory / TOKEN_TABLE_FILE)
        (directory / TOKEN_TABLE_FILE).chmod(0o644)
    (directory / CONFIG_FILE).write_text(artifact.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if artifact.report is not None:
        (directory / REPORT_FILE).write_text(
            artifact.report.model_dump_json(indent=2) + "\n", encoding="utf-8"
        )
    # safetensors writes 0600; Ray workers running as another user on a shared zoo must read it.
    (directory / HEAD_FILE).chmod(0o644)


def artifact_exists(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and (directory / HEAD_FILE).is_file()


def load_artifact(directory: Path) -> tuple[RouterArtifact, CategoryHead]:
    """Read and check an artifact; errors name the folder and how to rebuild it."""
    if not artifact_exists(directory):
        raise FileNotFoundError(
            f"no router artifact in {directory} (needs {CONFIG_FILE} and {HEAD_FILE}); "
            f"build one with `python -m router.train --out {directory}`"
        )
    artifact = RouterArtifact.model_validate(
        json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    )
    if artifact.version != ARTIFACT_VERSION:
        raise ValueError(
            f"{directory / CONFIG_FILE} has version {artifact.version}, this code reads {ARTIFACT_VERSION}; "
            "retrain with `python -m router.train`"
        )
    head = CategoryHead(artifact.head)
    head.load_state_dict(load_file(directory / HEAD_FILE))
    return artifact, head.eval()


def load_token_weights(directory: Path) -> torch.Tensor:
    """The "static-idf" encoder's word-piece weights saved beside the head."""
    return _load_beside_head(directory, TOKEN_WEIGHTS_FILE, "token_weights", "weighs word pieces by them")


def load_token_table(directory: Path) -> torch.Tensor:
    """The "static-idf-ctx" encoder's contextualised word-piece table saved beside the head."""
    return _load_beside_head(directory, TOKEN_TABLE_FILE, "token_table", "reads it")


def _load_beside_head(directory: Path, file_name: str, key: str, use: str) -> torch.Tensor:
    path = directory / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the artifact's encoder {use}; retrain with "
            f"`python -m router.train --out {directory}`"
        )
    return load_file(path)[key]
