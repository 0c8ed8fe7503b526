"""Where the project keeps files it builds (never committed).

The zoo and the trained router live in one ignored folder so `git clean` and a fresh clone agree
on what is source and what is a build output. `COE_ZOO_DIR` moves it (CI caches, shared FS on a
real cluster, where every node must see the same STORE path).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def zoo_dir() -> Path:
    """Root of the built STORE tier: `$COE_ZOO_DIR`, else `<repo>/zoo`."""
    return Path(os.environ.get("COE_ZOO_DIR", REPO_ROOT / "zoo")).resolve()


def router_dir() -> Path:
    """Where `python -m router.train` writes the demo router artifact by default."""
    return Path(os.environ.get("COE_ROUTER_DIR", zoo_dir() / "router")).resolve()
