"""Category -> expert map from a score table: `python -m router.calibrate`.

The classifier names a category; this map names the expert that serves it. With only scores
(rows = experts, columns = categories, higher = better) each category goes to its best expert.
With `--max-regret D` and per-expert costs, each category goes to the CHEAPEST expert scoring
within D of the best: a small quality loss traded for a smaller or already-resident model.

Usage:
    python -m router.calibrate --scores scores.csv [--costs costs.csv] [--max-regret 0.05] --out map.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from router.classifier import CATEGORIES

Scores = Mapping[str, Mapping[str, float]]  # expert -> category -> score


def build_category_map(
    scores: Scores, costs: Mapping[str, float] | None = None, max_regret: float | None = None
) -> dict[str, str]:
    """Pick one expert per category.

    - no `max_regret`: the best-scoring expert; `costs`, if given, break exact ties (cheapest wins).
    - `max_regret=D` (needs `costs`): the cheapest expert with score >= best - D; equal costs go to
      the higher score.
    A tie nothing can break raises `ValueError` naming the experts, so the map is never decided by
    row order. Categories are the keys of the first expert's row; every row must have the same ones.
    """
    if not scores:
        raise ValueError("score table is empty; give at least one expert row")
    if max_regret is not None:
        if not math.isfinite(max_regret) or max_regret < 0:
            raise ValueError(f"max_regret must be a finite number >= 0; got {max_regret}")
        if costs is None:
            raise ValueError(
                "max_regret picks the cheapest expert near the best, so it needs costs (--costs)"
            )
    categories = list(next(iter(scores.values())))
    for expert, row in scores.items():
        if set(row) != set(categories):
            raise ValueError(
                f"expert {expert!r} scores categories {sorted(row)}, expected {sorted(categories)}"
            )
        for category, value in row.items():
            if not math.isfinite(value):
                raise ValueError(
                    f"score of expert {expert!r} on {category!r} is {value}; scores must be finite"
                )
    if costs is not None:
        unknown = sorted(set(costs) - set(scores))
        if unknown:
            raise ValueError(
                f"costs name unknown experts {unknown}; experts in the score table: {sorted(scores)}"
            )
        missing = sorted(set(scores) - set(costs))
        if missing:
            raise ValueError(f"no cost for experts {missing}; give every expert in the score table a cost")
    return {c: _pick(c, scores, costs, max_regret) for c in categories}


def _pick(category: str, scores: Scores, costs: Mapping[str, float] | None, max_regret: float | None) -> str:
    best = max(row[category] for row in scores.values())
    slack = max_regret or 0.0
    candidates = [e for e, row in scores.items() if row[category] >= best - slack]
    if costs is not None:
        cheapest = min(costs[e] for e in candidates)
        candidates = [e for e in candidates if costs[e] == cheapest]
        top = max(scores[e][category] for e in candidates)
        candidates = [e for e in candidates if scores[e][category] == top]
    if len(candidates) > 1:
        how = "cost and score" if costs is not None else "score"
        raise ValueError(
            f"category {category!r}: experts {sorted(candidates)} tie on {how}; "
            "change a score or give costs that tell them apart"
        )
    return candidates[0]


def read_scores(path: Path, categories: Sequence[str] = CATEGORIES) -> dict[str, dict[str, float]]:
    """CSV with header `expert,<category>...`; the columns must be exactly the router's categories."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if not header or header[0] != "expert":
            raise ValueError(f"{path}: first column must be 'expert'; got header {header}")
        if sorted(header[1:]) != sorted(categories):
            raise ValueError(f"{path}: category columns {header[1:]} must be exactly {list(categories)}")
        table: dict[str, dict[str, float]] = {}
        for lineno, row in enumerate(reader, 2):
            expert = (row["expert"] or "").strip()
            if not expert or expert in table:
                raise ValueError(f"{path}:{lineno}: expert name is empty or repeated ({expert!r})")
            try:
                table[expert] = {c: float(row[c]) for c in categories}
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: every score must be a number ({exc})") from exc
    return table


def read_costs(path: Path) -> dict[str, float]:
    """CSV with header `expert,cost` (any unit, e.g. parameter bytes or $/1M tokens; lower = cheaper)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["expert", "cost"]:
            raise ValueError(f"{path}: header must be 'expert,cost'; got {reader.fieldnames}")
        costs: dict[str, float] = {}
        for lineno, row in enumerate(reader, 2):
            expert = (row["expert"] or "").strip()
            if not expert or expert in costs:
                raise ValueError(f"{path}:{lineno}: expert name is empty or repeated ({expert!r})")
            try:
                costs[expert] = float(row["cost"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: cost must be a number ({exc})") from exc
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", type=Path, required=True, help="CSV: expert,<one column per category>")
    parser.add_argument("--costs", type=Path, help="CSV: expert,cost (lower is cheaper)")
    parser.add_argument(
        "--max-regret", type=float, help="pick the cheapest expert within this score of the best"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the {category: expert} JSON")
    args = parser.parse_args(argv)
    try:
        costs = read_costs(args.costs) if args.costs else None
        mapping = build_category_map(read_scores(args.scores), costs, args.max_regret)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(mapping, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(mapping, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
