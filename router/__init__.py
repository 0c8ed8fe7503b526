"""Two-step CoE routing: prompt -> category (classifier) -> expert (category map).

    from router import load_router
    r = load_router()                      # default artifact; trained on first use if missing
    r.route("What is the capital of France?").expert
    r.route([{"role": "user", "content": "Prove that sqrt(2) is irrational."}])  # last user turn

An uncertain classification (softmax entropy above the calibrated tau) goes to the fallback
(generalist) expert. Train with `python -m router.train`; build maps with `python -m router.calibrate`.

Names are imported on first use, so `python -m router.calibrate` or `from router.errors import ...`
does not pay for importing transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.classifier import CATEGORIES
    from router.decision import RouteDecision
    from router.errors import InvalidPromptError
    from router.routing import Router, load_router

_LAZY = {
    "CATEGORIES": "router.classifier",
    "InvalidPromptError": "router.errors",
    "RouteDecision": "router.decision",
    "Router": "router.routing",
    "load_router": "router.routing",
}
__all__ = ["CATEGORIES", "InvalidPromptError", "RouteDecision", "Router", "load_router"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'router' has no attribute {name!r}")
