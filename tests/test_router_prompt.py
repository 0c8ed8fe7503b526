"""Which text the router reads from a request, and how it rejects input it cannot route."""

from __future__ import annotations

import pytest

from router.errors import InvalidPromptError
from router.prompt import MAX_PROMPT_CHARS, prompt_text


def test_plain_string_is_read_as_is_without_surrounding_whitespace():
    assert prompt_text("  What is the capital of France?\n") == "What is the capital of France?"


def test_messages_are_routed_on_the_last_user_turn_not_system_or_assistant():
    messages = [
        {"role": "system", "content": "You are a helpful legal assistant."},
        {"role": "user", "content": "Write a Python function to sort a list."},
        {"role": "assistant", "content": "Here is the function..."},
        {"role": "user", "content": "Now, what are the symptoms of the flu?"},
        {"role": "assistant", "content": None},  # e.g. a tool-call turn after the user
    ]
    assert prompt_text(messages) == "Now, what are the symptoms of the flu?"


def test_content_part_lists_join_text_parts_and_skip_images():
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What does this chart say"},
                {"type": "image_url", "image_url": {"url": "http://example.invalid/x.png"}},
                {"type": "text", "text": "about my portfolio?"},
            ],
        }
    ]
    assert prompt_text(messages) == "What does this chart say\nabout my portfolio?"


def test_very_long_prompt_is_cut_to_what_the_encoder_can_use():
    assert len(prompt_text("word " * 10_000)) == MAX_PROMPT_CHARS


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("", "empty or whitespace"),
        ("   \n\t", "empty or whitespace"),
        (None, "got NoneType"),
        (42, "got int"),
        (b"bytes prompt", "got bytes"),
        ({"role": "user", "content": "hi"}, "wrap the conversation in a list"),
        ([], "empty message list"),
        (["just a string in a list"], "must be a message dict"),
        ([{"content": "no role"}], "needs a string 'role'"),
        ([{"role": "system", "content": "only a system prompt"}], "no message with role 'user'"),
        ([{"role": "user", "content": 7}], "must be a string or a list"),
        ([{"role": "user", "content": "   "}], "empty or whitespace"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "no text part"),
        ([{"role": "user", "content": [{"type": "text"}]}], "without a string 'text'"),
        ([{"role": "user", "content": ["raw string part"]}], "content part dict"),
    ],
)
def test_bad_input_raises_invalid_prompt_error_that_says_what_is_wrong(payload, fragment):
    with pytest.raises(InvalidPromptError, match=fragment):
        prompt_text(payload)


def test_invalid_prompt_error_is_a_value_error_so_callers_map_it_to_a_client_error():
    assert issubclass(InvalidPromptError, ValueError)
