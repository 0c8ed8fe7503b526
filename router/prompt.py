"""Turn a request payload into the one text the router classifies, or reject it.

The router reads a plain string as is. For an OpenAI-style message list it reads only the LAST
user turn: that is the request being answered now, system prompts are shared boilerplate that
would pull every request toward the same category, and earlier turns describe what was already
asked. All checks run here, before any tokenizer or torch call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from router.errors import InvalidPromptError

# Why 4096: the encoder reads at most 256 word pieces (~1,000 characters of English), so longer
# text is cut before tokenizing to keep a huge prompt from costing tokenizer time it can't use.
MAX_PROMPT_CHARS = 4096

Prompt = str | Sequence[Mapping[str, Any]]


def prompt_text(prompt: Any, *, where: str = "prompt") -> str:
    """Return the text to classify from a string or a chat message list.

    Raises `InvalidPromptError` naming what was wrong and what to send instead; `where` names
    the item in error messages (e.g. "prompts[3]" for a batch).
    """
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, Mapping):
        raise InvalidPromptError(
            f"{where} is a single message dict; wrap the conversation in a list "
            "([{'role': 'user', 'content': '...'}]), one list per prompt in a batch."
        )
    elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes | bytearray):
        text = _last_user_text(prompt, where)
    else:
        raise InvalidPromptError(
            f"{where} must be a string or a list of chat messages "
            f"([{{'role': 'user', 'content': '...'}}]); got {type(prompt).__name__}."
        )
    text = text.strip()
    if not text:
        raise InvalidPromptError(f"{where} is empty or whitespace only; send the text to route.")
    return text[:MAX_PROMPT_CHARS]


def _last_user_text(messages: Sequence[Any], where: str) -> str:
    if not messages:
        raise InvalidPromptError(f"{where} is an empty message list; add a {{'role': 'user'}} message.")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidPromptError(
                f"{where}[{i}] must be a message dict with 'role' and 'content'; "
                f"got {type(message).__name__}."
            )
        if not isinstance(message.get("role"), str):
            raise InvalidPromptError(f"{where}[{i}] needs a string 'role' (e.g. 'user').")
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return _content_text(messages[i].get("content"), f"{where}[{i}].content")
    roles = sorted({m["role"] for m in messages})
    raise InvalidPromptError(f"{where} has no message with role 'user' (roles present: {roles}).")


def _content_text(content: Any, where: str) -> str:
    """Text of one message's content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence) or isinstance(content, bytes | bytearray):
        raise InvalidPromptError(
            f"{where} must be a string or a list of {{'type': 'text', 'text': ...}} parts; "
            f"got {type(content).__name__}."
        )
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise InvalidPromptError(f"{where}[{j}] must be a content part dict with a string 'type'.")
        if part["type"] != "text":
            continue  # images, audio, files: nothing the text classifier can read
        if not isinstance(part.get("text"), str):
            raise InvalidPromptError(f"{where}[{j}] is a text part without a string 'text'.")
        texts.append(part["text"])
    if not texts:
        raise InvalidPromptError(f"{where} has no text part to route on.")
    return "\n".join(texts)
