"""The routing corpus: every source, cleaned, deduplicated and balanced: `python -m router.corpus`.

Built in memory from installed packages in a few seconds, deterministically (a fixed seed picks
the capped samples), so nothing large is committed: `router/data/corpus_manifest.json` records
the counts per source and category and a digest of the built corpus, and a test checks that a
fresh build matches it. `--out FILE` writes the corpus as JSON lines to look at.

Rules, in order:
1. whitespace is collapsed; prompts under 3 characters are dropped;
2. exact duplicates (case-insensitive) are dropped; a text that two sources label differently is
   dropped everywhere (a conflict, not a vote);
3. each (source, category) cell keeps at most `CELL_CAP` prompts, sampled with `SEED`, so no single
   source or exam subject outweighs the rest; the head's class weights balance what remains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import BaseModel, Field

from router.classifier import CATEGORIES
from router.data import DATA_DIR
from router.sources import SOURCES, SourceInfo, SourcePrompt

MANIFEST_PATH = DATA_DIR / "corpus_manifest.json"
# Why 800: the largest sources (MMLU law ~1,700, stdlib ~900) would otherwise be most of the corpus,
# but the head balances sources itself (HeadConfig.balance), so the cap only bounds time: 800 per
# cell keeps ~9,000 prompts (static encoder: seconds to embed; training ~1 CPU-minute). Raising it
# from 300 added 1-3 points leave-one-source-out on the sources whose own size did not change.
CELL_CAP = 800
SEED = 0


class CorpusManifest(BaseModel):
    """What a build produced; committed so a changed package or rule shows up as a diff."""

    cell_cap: int
    seed: int
    total: int
    counts: dict[str, dict[str, int]] = Field(description="source -> category -> prompts kept.")
    dropped_conflicts: int = Field(description="Texts two sources labelled differently (dropped).")
    sha256: str = Field(description="Digest of the kept (source, category, prompt) rows, in order.")
    sources: list[SourceInfo]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def build_corpus(
    sources: list[str] | None = None, cell_cap: int = CELL_CAP, seed: int = SEED
) -> tuple[list[SourcePrompt], CorpusManifest]:
    """Read, clean, dedupe and cap the named sources (default: all); the order is deterministic."""
    names = list(SOURCES) if sources is None else sources
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; known: {list(SOURCES)}")
    rows: list[SourcePrompt] = []
    for name in names:
        for row in SOURCES[name][1]():
            if row.category not in CATEGORIES:
                raise ValueError(f"source {name} produced category {row.category!r}")
            text = row.prompt.strip()
            if len(_normalise(text)) >= 3:
                rows.append(row.model_copy(update={"prompt": text}))

    labels: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        labels[_normalise(row.prompt).lower()].add(row.category)
    conflicts = {key for key, cats in labels.items() if len(cats) > 1}
    seen: set[str] = set()
    cells: dict[tuple[str, str], list[SourcePrompt]] = defaultdict(list)
    for row in rows:
        key = _normalise(row.prompt).lower()
        if key in conflicts or key in seen:
            continue
        seen.add(key)
        cells[(row.source, row.category)].append(row)

    rng = random.Random(seed)
    kept: list[SourcePrompt] = []
    for cell in sorted(cells):
        items = cells[cell]
        kept += items if len(items) <= cell_cap else rng.sample(items, cell_cap)

    digest = hashlib.sha256()
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in kept:
        digest.update(f"{row.source}\t{row.category}\t{row.prompt}\n".encode())
        counts[row.source][row.category] += 1
    manifest = CorpusManifest(
        cell_cap=cell_cap,
        seed=seed,
        total=len(kept),
        counts={s: dict(sorted(c.items())) for s, c in counts.items()},
        dropped_conflicts=len(conflicts),
        sha256=digest.hexdigest(),
        sources=[SOURCES[n][0] for n in names],
    )
    return kept, manifest


def format_counts(manifest: CorpusManifest) -> str:
    """Source x category table for the terminal and the eval report."""
    head = f"{'source':<13}" + "".join(f"{c[:8]:>9}" for c in CATEGORIES) + f"{'total':>8}"
    lines = [head]
    for source, counts in manifest.counts.items():
        lines.append(
            f"{source:<13}"
            + "".join(f"{counts.get(c, 0):>9}" for c in CATEGORIES)
            + f"{sum(counts.values()):>8}"
        )
    totals = [sum(m.get(c, 0) for m in manifest.counts.values()) for c in CATEGORIES]
    lines.append(f"{'total':<13}" + "".join(f"{t:>9}" for t in totals) + f"{manifest.total:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the corpus as JSON lines here")
    parser.add_argument(
        "--write-manifest", action="store_true", help=f"rewrite {MANIFEST_PATH.name} (after a rule change)"
    )
    args = parser.parse_args(argv)
    corpus, manifest = build_corpus()
    print(format_counts(manifest))
    print(f"\n{manifest.dropped_conflicts} conflicting texts dropped; sha256 {manifest.sha256}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            for row in corpus:
                f.write(json.dumps(row.model_dump(), ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    if args.write_manifest:
        MANIFEST_PATH.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        print(f"wrote {MANIFEST_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
