"""Response sinks: what an upstream's 2xx body is handed to as it arrives. ``EventStreamSink``
reads an event stream or a plain JSON answer, ``JSONSink`` a plain JSON answer, and
``ModelReplySink`` is the base of the providers' reply sinks (text, reasoning, tool calls).
They parse and collect; the transport is ``upstream_client``'s.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from .base import DeltaSink, ReasoningSink, ToolCallSink
from .errors import ProviderError, ProviderUnavailable
from .sse import SSEError, SSEEvent, SSEParser
from .tools import ToolCallCollector
from .upstream_client import UpstreamResponse
from .upstream_errors import in_band_error

_DECODER = json.JSONDecoder()


def _loads(data: str) -> Any:
    """``json.loads(data)``, cheaper per event: ``raw_decode`` skips its two whitespace
    scans; what it does not take whole (surrounding whitespace, trailing data, an error)
    gets ``json.loads`` itself, so results and errors are the same."""
    try:
        payload, end = _DECODER.raw_decode(data)
    except ValueError:
        return json.loads(data)
    return payload if end == len(data) else json.loads(data)


class EventStreamSink:
    """A ``BodySink`` that accepts either an event stream or a plain JSON answer.

    Subclasses implement ``handle_event`` (one SSE event), ``handle_json`` (a whole JSON body,
    for upstreams that ignore ``stream: true``) and ``end`` (validate and build the result).
    The mode follows the content type, sniffing the first byte when that says neither.
    """

    max_json_bytes = 32 * 1024 * 1024

    def __init__(self, label: str, secrets: Iterable[Optional[str]] = ()):
        self.label = label
        self.secrets = tuple(secrets)
        self._mode: Optional[str] = None     # "sse" | "json"
        self._parser = SSEParser()
        self._json: list[bytes] = []
        self._json_size = 0

    def response_started(self, response: UpstreamResponse) -> None:
        ctype = response.content_type
        if ctype == "text/event-stream":
            self._mode = "sse"
        elif ctype == "application/json" or ctype.endswith("+json"):
            self._mode = "json"

    def data_received(self, data: bytes) -> None:
        if self._mode is None:
            head = data.lstrip()
            if not head:
                return
            self._mode = "json" if head[:1] in (b"{", b"[") else "sse"
        if self._mode == "json":
            self._json_size += len(data)
            if self._json_size > self.max_json_bytes:
                raise self.unavailable("sent a JSON answer larger than we accept")
            self._json.append(data)
            return
        try:
            events = self._parser.feed(data)
        except SSEError:
            raise self.unavailable("sent an event stream line larger than we accept") from None
        for event in events:
            self.handle_event(event)

    def finish(self):
        """Called once the body is complete; returns the subclass's result."""
        if self._mode == "json":
            try:
                payload = json.loads(b"".join(self._json).decode("utf-8", errors="replace"))
            except ValueError:
                raise self.unavailable("sent malformed JSON") from None
            if not isinstance(payload, dict):
                raise self.unavailable("sent JSON that is not an object")
            self.handle_json(payload)
        else:
            for event in self._parser.finish():
                self.handle_event(event)
        return self.end()

    def load(self, data: str) -> dict:
        """One event's JSON payload, or ProviderUnavailable."""
        try:
            payload = _loads(data)
        except ValueError:
            raise self.unavailable("sent malformed JSON in its event stream") from None
        if not isinstance(payload, dict):
            raise self.unavailable("sent an event that is not a JSON object")
        return payload

    def unavailable(self, what: str) -> ProviderUnavailable:
        return ProviderUnavailable(f'provider "{self.label}" {what}')

    def upstream_error(self, error: Any, status: Optional[int] = None) -> ProviderError:
        """The typed error for an ``{"type", "message"}`` object the upstream sent in-band."""
        return in_band_error(self.label, error, self.secrets, status)

    def handle_event(self, event: SSEEvent) -> None:
        raise NotImplementedError

    def handle_json(self, payload: dict) -> None:
        raise NotImplementedError

    def end(self):
        raise NotImplementedError


class JSONSink(EventStreamSink):
    """A ``BodySink`` for a plain, non-streamed JSON answer; ``finish()`` returns the object.
    An in-band ``{"error": ...}`` becomes the matching ``ProviderError``."""

    def __init__(self, label: str, secrets: Iterable[Optional[str]] = (),
                 max_bytes: Optional[int] = None):
        super().__init__(label, secrets)
        self._mode = "json"
        if max_bytes is not None:
            self.max_json_bytes = max_bytes
        self._payload: Optional[dict] = None

    def response_started(self, response: UpstreamResponse) -> None:
        pass    # JSON whatever the content type says

    def handle_json(self, payload: dict) -> None:
        if "error" in payload and payload["error"] is not None:
            raise self.upstream_error(payload["error"])
        self._payload = payload

    def end(self) -> dict:
        if self._payload is None:
            raise self.unavailable("sent an empty answer")
        return self._payload


class ModelReplySink(EventStreamSink):
    """What the providers' reply sinks share: the callbacks a ``stream`` caller passed, the
    text and reasoning collected so far, the tool calls and the model the upstream reported.
    Subclasses parse their dialect and call ``_emit``/``_reason``/``self._tools``."""

    def __init__(self, label: str, on_delta: Optional[DeltaSink],
                 secrets: Iterable[Optional[str]] = (),
                 on_tool_call: Optional[ToolCallSink] = None,
                 on_reasoning: Optional[ReasoningSink] = None):
        super().__init__(label, secrets)
        self._on_delta = on_delta
        self._on_reasoning = on_reasoning
        self._tools = ToolCallCollector(label, on_tool_call)
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._model: Optional[str] = None

    def _emit(self, text: Any) -> None:
        """A text fragment of the reply; empty and non-string ones are not news."""
        if isinstance(text, str) and text:
            self._text.append(text)
            if self._on_delta is not None:
                self._on_delta(text)

    def _reason(self, text: Any) -> None:
        """A thinking fragment; it never goes to ``on_delta``."""
        if isinstance(text, str) and text:
            self._reasoning.append(text)
            if self._on_reasoning is not None:
                self._on_reasoning(text)


def nonempty_str(value: Any) -> Optional[str]:
    """``value`` if it is a non-empty string, else ``None`` (ids and names of tool calls)."""
    return value if isinstance(value, str) and value else None


def json_object(value: Any) -> dict:
    """``value`` if it is a JSON object, else an empty one: a malformed upstream field reads
    as absent."""
    return value if isinstance(value, dict) else {}


def token_count(value: Any) -> int:
    """``value`` if it is a count (a non-negative int, not a bool), else 0: upstream usage
    numbers are trusted only that far."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
