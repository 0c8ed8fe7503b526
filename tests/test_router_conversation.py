"""Follow-up detection and session pins, without a model (the routed behaviour is in test_router_routing)."""

from __future__ import annotations

import pytest

from router.conversation import SessionPins, SessionPolicy, is_follow_up, routing_text

FOLLOW_UPS = ["now in Java", "and for a 3D case?", "what about tuples?", "make it shorter", "is it safe?"]


@pytest.mark.parametrize("turn", FOLLOW_UPS)
def test_elliptical_turns_are_follow_ups(turn):
    assert is_follow_up(turn)


@pytest.mark.parametrize(
    "turn",
    [
        "What are the symptoms of the flu?",
        "Write a Python function that parses a CSV line and returns a list of fields.",
        "Now tell me everything about the history of the Roman empire and its fall.",
    ],
)
def test_turns_that_state_their_topic_are_not(turn):
    assert not is_follow_up(turn)


def test_a_follow_up_is_read_with_the_previous_user_turn_only():
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Write a function that reverses a string in Python."},
        {"role": "assistant", "content": "def rev(s): return s[::-1]"},
        {"role": "user", "content": "now in Java"},
    ]
    assert routing_text(messages) == ("Write a function that reverses a string in Python.\nnow in Java", True)
    assert routing_text(messages[-1:]) == ("now in Java", False)  # nothing earlier to lean on
    assert routing_text("now in Java") == ("now in Java", False)  # a plain prompt is read as is


def test_pins_expire_after_idle_time_and_are_bounded():
    now = [0.0]
    pins = SessionPins(SessionPolicy(idle_s=10, max_sessions=2), clock=lambda: now[0])
    pins.put("a", "code", "code")
    now[0] = 9.0
    assert pins.get("a").expert == "code"
    now[0] = 20.0
    assert pins.get("a") is None
    for s in ("x", "y", "z"):
        pins.put(s, "law", "law")
    assert len(pins) == 2 and pins.get("x") is None and pins.get("z").expert == "law"
