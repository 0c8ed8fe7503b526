"""Conversations: which text decides a multi-turn request, and session pins.

The last user turn decides. But an elliptical follow-up ("now in Java", "and for a 3D case?")
names no topic of its own: read alone it looks like small talk and would leave the expert
that has the conversation's context. So a SHORT last turn that OPENS like a continuation is
routed together with the previous user turn, and keeps the conversation's category unless the
pair reads as something else.

A session (OpenAI `user` field or an `x-session-id` header) pins the expert that answered its
first routed turn. Later turns stay on it, so the conversation keeps one model and that
model's KV-friendly context, unless the router moves to another category WITH CONFIDENCE
(calibrated probability >= `switch_confidence` and no fallback): then the pin moves with it.
Pins live in memory per ingress replica, expire after `idle_s` without a request and are
bounded in number (least recently used first out).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from router.errors import InvalidPromptError
from router.prompt import MAX_PROMPT_CHARS, Prompt, prompt_text

# Why 8 words: the elliptical follow-ups we saw ("now in Java", "and for a 3D case?", "what about
# for kids?", "can you make it shorter") are 2-6 words; a turn of 9+ words usually states its topic.
FOLLOW_UP_MAX_WORDS = 8
# A follow-up opens by pointing back at what came before. Matched on the first words, lowercased.
_FOLLOW_UP_OPENERS = re.compile(
    r"^(and|now|also|then|but|so|ok(ay)?|same|instead|again|what about|how about|what if|and if|"
    r"in|for|with|without|make (it|that|this)|do (it|that|the same)|can you (also|make|do|explain|"
    r"add|show|rewrite|convert|translate)|could you (also|make|do|explain)|why|how come|"
    r"explain (it|that|this)|more|shorter|longer|simpler|another|again)\b",
    re.IGNORECASE,
)
# Pronouns that refer back ("is it safe?", "translate that") in a short turn also mark a follow-up.
_BACK_REFERENCES = re.compile(r"\b(it|that|this|those|these|them|the same|the above)\b", re.IGNORECASE)


def is_follow_up(text: str) -> bool:
    """True for a short turn that opens like a continuation or points back at earlier turns."""
    words = text.split()
    if not words or len(words) > FOLLOW_UP_MAX_WORDS:
        return False
    return bool(_FOLLOW_UP_OPENERS.match(text.strip()) or _BACK_REFERENCES.search(text))


def routing_text(prompt: Prompt, *, where: str = "prompt") -> tuple[str, bool]:
    """The text to classify and whether it folded in the previous user turn (a follow-up).

    A plain string is read as is. For messages the last user turn is read; if it is a follow-up
    and an earlier user turn exists, that earlier turn is prepended so the pair is classified.
    """
    last = prompt_text(prompt, where=where)
    if isinstance(prompt, str) or not is_follow_up(last):
        return last, False
    previous = _previous_user_text(prompt)
    if previous is None:
        return last, False
    return f"{previous}\n{last}"[-MAX_PROMPT_CHARS:], True


def _previous_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    for i in reversed(users[:-1]):
        try:
            return prompt_text([messages[i]], where=f"messages[{i}]")
        except InvalidPromptError:
            continue  # an earlier turn with only an image: look further back
    return None


class SessionPolicy(BaseModel):
    """How session pins behave; defaults are what `load_router` uses."""

    switch_confidence: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Calibrated probability a new category needs to move a pinned session. 0.8: with a "
        "calibrated router four in five such moves are right, and a wrong move costs the context.",
    )
    idle_s: float = Field(
        default=1800.0,
        gt=0,
        description="A pin unused this long is forgotten: 30 minutes, about a chat session's pause.",
    )
    max_sessions: int = Field(
        default=100_000,
        gt=0,
        description="Pins kept per ingress replica (~100 bytes each, so ~10 MB); oldest out first.",
    )


class PinnedExpert(BaseModel):
    expert: str
    category: str
    last_used_s: float


class SessionPins:
    """Thread-safe, bounded, expiring map session id -> pinned expert."""

    def __init__(self, policy: SessionPolicy | None = None, clock=time.monotonic):
        self.policy = policy or SessionPolicy()
        self._clock = clock
        self._pins: OrderedDict[str, PinnedExpert] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, session: str) -> PinnedExpert | None:
        now = self._clock()
        with self._lock:
            pin = self._pins.get(session)
            if pin is None:
                return None
            if now - pin.last_used_s > self.policy.idle_s:
                del self._pins[session]
                return None
            return pin

    def put(self, session: str, expert: str, category: str) -> None:
        with self._lock:
            self._pins[session] = PinnedExpert(expert=expert, category=category, last_used_s=self._clock())
            self._pins.move_to_end(session)
            while len(self._pins) > self.policy.max_sessions:
                self._pins.popitem(last=False)

    def forget(self, session: str) -> None:
        with self._lock:
            self._pins.pop(session, None)
