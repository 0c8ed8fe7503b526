"""The typed result the router hands to the serving layer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RouteDecision(BaseModel):
    """Which expert should answer one prompt, and how sure the router was.

    `deployments/` reads `expert`; the rest is kept so a response header, a log line or a bench
    can explain the choice without re-running the classifier.
    """

    model_config = ConfigDict(frozen=True)

    category: str = Field(description="Most probable category from the classifier (argmax).")
    expert: str = Field(
        description="Expert to serve the prompt: the category map's expert, or the fallback "
        "expert when `fallback` is true."
    )
    probabilities: dict[str, float] = Field(
        description="Softmax probability per category, in the router's category order."
    )
    entropy: float = Field(
        ge=0.0,
        description="Shannon entropy of `probabilities` in nats (0 = certain, ln(K) = uniform).",
    )
    fallback: bool = Field(
        description="True when `entropy` exceeded the router's threshold, so the generalist "
        "fallback expert was chosen instead of the category's expert."
    )
    follow_up: bool = Field(
        default=False,
        description="The last user turn was an elliptical follow-up, so it was classified together "
        "with the previous user turn (router/conversation.py).",
    )
    pinned: bool = Field(
        default=False,
        description="`expert` is the session's pinned expert, kept because the router did not move "
        "to another category with confidence.",
    )
