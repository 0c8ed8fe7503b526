"""The bundled routing data: labelled prompts in JSON lines.

train.jsonl and heldout.jsonl hold separate prompts (no paraphrase pairs across them), so the
held-out report measures generalisation. ood.jsonl holds out-of-domain and mixed-domain prompts
labelled "out_of_domain" / "mixed"; they have no right category and are used only to show how
often the entropy fallback fires on them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

DATA_DIR = Path(__file__).resolve().parent / "data"
TRAIN_PATH = DATA_DIR / "train.jsonl"
HELDOUT_PATH = DATA_DIR / "heldout.jsonl"
OOD_PATH = DATA_DIR / "ood.jsonl"
DEMO_SCORES_PATH = DATA_DIR / "demo_scores.csv"


class LabeledPrompt(BaseModel):
    prompt: str = Field(min_length=1)
    category: str = Field(description="A router category, or out_of_domain / mixed in ood.jsonl.")


def load_jsonl(path: Path) -> list[LabeledPrompt]:
    """Read one `{"prompt", "category"}` object per non-empty line; errors name the line."""
    rows: list[LabeledPrompt] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(LabeledPrompt.model_validate(json.loads(line)))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a {{prompt, category}} object: {exc}") from exc
    return rows
