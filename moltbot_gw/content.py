"""The content model: what text a message's content holds.

One rule for every layer that reads message content (the OpenAI parsers, the providers, the
transcript, the runner's budgets), so that a part counts as text everywhere or nowhere.
"""
from __future__ import annotations

from typing import Any, Mapping

# Chat's ``text``, the Responses API's ``input_text`` (what a client sends) and
# ``output_text`` (what a model answered, resent as input): all three are plain text.
TEXT_PART_TYPES = ("text", "input_text", "output_text")


def content_text(content: Any) -> str:
    """The text of a message's ``content``:

    * a string is its own text;
    * a list (or tuple) of parts gives the ``text`` of each part whose ``type`` is one of
      ``TEXT_PART_TYPES``, concatenated in order with nothing in between;
    * every other part (images, ``refusal``, ``tool_result``, ``thinking``, a part that is
      not an object or whose ``text`` is not a string) adds nothing;
    * anything else (``None``, a number, an object) has no text: ``""``.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(part["text"] for part in content
                       if isinstance(part, Mapping) and part.get("type") in TEXT_PART_TYPES
                       and isinstance(part.get("text"), str))
    return ""
