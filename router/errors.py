"""Errors the router raises for input it cannot route.

`InvalidPromptError` subclasses `ValueError` so callers that already map `ValueError` to a
client error (HTTP 400 / gRPC INVALID_ARGUMENT) in `deployments/` need no new branch.
"""

from __future__ import annotations


class InvalidPromptError(ValueError):
    """The prompt (or chat message list) has no text the router can classify.

    Raised before any tokenizer or torch call, so a bad request costs no model time.
    """
