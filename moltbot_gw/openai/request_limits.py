"""Size limits of one OpenAI-shaped request: how many messages (or input items), how many
content parts per message and how many characters of text in all. Checked on the parsed JSON
before any mapping, so a body of many tiny parts is refused before it can become a transcript.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ChatCompletionsConfig, ResponsesConfig
from .validation import bad_request

IMAGE_PART_TYPES = ("image_url", "input_image")   # counted by the image budget, not here
PART_LIST_FIELDS = ("content", "output")          # a message's parts; a tool result's parts


@dataclass(frozen=True)
class RequestLimits:
    """The limits of one endpoint and the names its errors use for them."""

    items_param: str           # "messages" or "input"
    max_items: int
    items_key: str             # the config key, named in the error message
    max_parts: int
    parts_key: str
    max_chars: int
    chars_key: str

    @classmethod
    def for_chat(cls, config: ChatCompletionsConfig) -> "RequestLimits":
        return cls._of(config, "chatCompletions", "messages", config.maxMessages,
                       "maxMessages")

    @classmethod
    def for_responses(cls, config: ResponsesConfig) -> "RequestLimits":
        return cls._of(config, "responses", "input", config.maxInputItems, "maxInputItems")

    @classmethod
    def _of(cls, config, section: str, items_param: str, max_items: int,
            items_key: str) -> "RequestLimits":
        """The limits of the endpoint configured under ``section``: its own item limit,
        and the parts and characters limits both endpoints name alike."""
        return cls(items_param, max_items, f"{section}.{items_key}",
                   config.maxContentParts, f"{section}.maxContentParts",
                   config.maxTotalChars, f"{section}.maxTotalChars")


def check_request_limits(data: dict, limits: RequestLimits, *extra_text: Any) -> None:
    """Raise a 400 naming the first limit ``data[limits.items_param]`` breaks.

    ``extra_text`` holds other fields whose text the model reads too (``instructions``)."""
    items = data.get(limits.items_param)
    where = limits.items_param
    if isinstance(items, list):
        if len(items) > limits.max_items:
            raise bad_request(
                f"{where} has {len(items)} entries; this gateway accepts at most "
                f"{limits.max_items} per request ({limits.items_key})", where,
                "too_many_messages" if where == "messages" else "too_many_input_items")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue   # the parser names the wrong type
            for name in PART_LIST_FIELDS:
                parts = item.get(name)
                if isinstance(parts, list) and len(parts) > limits.max_parts:
                    raise bad_request(
                        f"{where}[{i}].{name} has {len(parts)} parts; this gateway accepts "
                        f"at most {limits.max_parts} per message ({limits.parts_key})",
                        f"{where}[{i}].{name}", "too_many_content_parts")
    if count_text(items, limits.max_chars, *extra_text) > limits.max_chars:
        raise bad_request(
            f"the text of {where} is longer than this gateway accepts: at most "
            f"{limits.max_chars} characters per request ({limits.chars_key})", where,
            "too_many_characters")


def count_text(value: Any, stop_after: int, *more: Any) -> int:
    """Characters of every string in ``value`` (and ``more``), image parts left out; stops
    counting once past ``stop_after``. Iterative: nesting depth costs no stack."""
    total = 0
    pending = [value, *more]
    while pending and total <= stop_after:
        current = pending.pop()
        if isinstance(current, str):
            total += len(current)
        elif isinstance(current, dict):
            if current.get("type") in IMAGE_PART_TYPES:
                continue
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return total
