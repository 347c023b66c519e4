"""Tool-call bookkeeping shared by the providers: ids, and assembling streamed fragments."""
from __future__ import annotations

import json
import secrets
from typing import Any, Optional

from twisted.logger import Logger

from .base import ToolCall, ToolCallSink


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 hex digits."""
    return "call_" + secrets.token_hex(12)


def arguments_text(value: Any) -> str:
    """Arguments as JSON text: strings pass through, objects (some servers send them
    parsed) are serialized compactly."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Pending:
    __slots__ = ("id", "name", "parts", "announced")

    def __init__(self) -> None:
        self.id: Optional[str] = None
        self.name: Optional[str] = None
        self.parts: list[str] = []
        self.announced = False


class ToolCallCollector:
    """Assembles tool calls from fragments and forwards them to an optional sink.

    Calls are numbered 0, 1, ... in the order they first appear. The sink hears a call once
    its name is known, with its id (one is made up if the upstream sent none), its name and
    the arguments received so far; later fragments go out with ``None`` for id and name.
    """

    log = Logger()

    def __init__(self, label: str, sink: Optional[ToolCallSink]):
        self.label = label
        self._sink = sink
        self._calls: list[_Pending] = []

    def __len__(self) -> int:
        return len(self._calls)

    def id_of(self, ordinal: int) -> Optional[str]:
        return self._calls[ordinal].id

    def open(self) -> int:
        """Start a new call; returns its ordinal."""
        self._calls.append(_Pending())
        return len(self._calls) - 1

    def add(self, ordinal: int, id: Optional[str] = None, name: Optional[str] = None,
            arguments: str = "") -> None:
        """Feed what one fragment of call ``ordinal`` said."""
        call = self._calls[ordinal]
        if id and not call.id:
            call.id = id
        if name and not call.name:
            call.name = name
        if arguments:
            call.parts.append(arguments)
        if call.announced:
            if arguments and self._sink is not None:
                self._sink(ordinal, None, None, arguments)
        elif call.name:
            call.announced = True
            if not call.id:
                call.id = new_call_id()
            if self._sink is not None:
                self._sink(ordinal, call.id, call.name, "".join(call.parts))

    def result(self) -> tuple[ToolCall, ...]:
        """The finished calls in order; a call that never got a name is dropped."""
        calls = []
        for call in self._calls:
            if not call.name:
                self.log.warn("provider {provider} sent a tool call without a name; dropped",
                              provider=self.label)
                continue
            calls.append(ToolCall(id=call.id or new_call_id(), name=call.name,
                                  arguments="".join(call.parts) or "{}"))
        return tuple(calls)
