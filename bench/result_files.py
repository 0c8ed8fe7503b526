"""Where a bench's figures land: `<stem>.json` (the numbers, for scripts) and `<stem>.md` (the same
numbers with the command, for people), side by side in one folder, as bench/README expects."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(out_dir: Path, stem: str, result: dict, markdown: str) -> None:
    """Write both files (creating `out_dir`) and print the markdown, as every bench reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(markdown, encoding="utf-8")
    print(markdown)
