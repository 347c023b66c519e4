"""The conversation an OpenAI-shaped request carries, as the run needs it: system texts set
apart, user/assistant/tool messages in order, split into the turn (what follows the last
assistant message) and the history before it. Chat messages and Responses input items both
fill one ``Conversation``; how each shape reads its entries stays with its parser."""
from __future__ import annotations

from typing import Any, Optional

from ..content import content_text
from .validation import bad_request


def text_or_parts(parts: list[dict]) -> Any:
    """Parsed content parts as the run takes them: one string when they are all text (the
    common case, and what providers and transcripts expect), else the parts."""
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts) if len(parts) <= 1 else parts
    return parts


class Conversation:
    """Messages collected in request order; ``where`` names an entry in errors
    (``messages[2]``, ``input[0]``)."""

    def __init__(self) -> None:
        self.system: list[str] = []
        self.messages: list[dict] = []

    def add(self, role: str, content: Any, where: str) -> None:
        """A system, developer, user or (text-only) assistant message."""
        if role in ("system", "developer"):
            text = content_text(content)
            if text:
                self.system.append(text)
        elif role == "user":
            if content == "" or content == []:
                raise bad_request(f"{where} has no text or image content", f"{where}.content",
                                  "empty_message")
            self.messages.append({"role": "user", "content": content})
        else:
            self.add_assistant(content_text(content))

    def add_assistant(self, text: str, tool_calls: Optional[list] = None) -> None:
        if not text and not tool_calls:
            return   # an empty assistant message says nothing; providers reject it
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        self.messages.append(message)

    def add_tool_result(self, call_id: str, text: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    def split(self) -> tuple[list, list]:
        """(turn, history): the messages after the last assistant message, and the rest."""
        last_assistant = max((i for i, m in enumerate(self.messages)
                              if m["role"] == "assistant"), default=-1)
        return self.messages[last_assistant + 1:], self.messages[:last_assistant + 1]
