"""Render agent runs as OpenAI Responses API objects: one ``response`` JSON body, or a stream
of typed SSE events (``event: <type>`` / ``data: <json>``) written as run events arrive."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..agents.run import RunEvent, RunResult
from ..json_text import compact_utf8
from .errors import APIError
from .sse_stream import SSEStream
from .usage import responses_usage_json

# The SDK's ResponseError.code is a closed set; the gateway's own code goes in the message.
RESPONSE_ERROR_CODES = {429: "rate_limit_exceeded"}
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ResponseShell:
    """What every rendering of one response shares: its id, times and the echoed request."""

    id: str
    created_at: int
    model: str
    echo: Mapping[str, Any]

    def body(self, status: str, output: list, *, usage=None, error: Optional[dict] = None,
             incomplete_details: Optional[dict] = None,
             completed_at: Optional[int] = None) -> dict:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": completed_at,
            "error": error,
            "incomplete_details": incomplete_details,
            "model": self.model,
            "output": output,
            "usage": responses_usage_json(usage) if usage is not None else None,
            "background": False,
            "reasoning": None,
            **self.echo,
        }


def outcome(finish_reason: str) -> tuple[str, Optional[dict]]:
    """(response status, incomplete_details) for a run's finish reason."""
    reason = INCOMPLETE_REASONS.get(finish_reason)
    if reason is None:
        return "completed", None
    return "incomplete", {"reason": reason}


def error_json(error: APIError) -> dict:
    code = RESPONSE_ERROR_CODES.get(error.status, "server_error")
    return {"code": code, "message": f"{error.message} ({error.code})" if error.code
            else error.message}


def message_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [text_part(text)]}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": []}


def reasoning_item(item_id: str, text: str) -> dict:
    return {"type": "reasoning", "id": item_id,
            "summary": [{"type": "summary_text", "text": text}]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str) -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def response_body(shell: ResponseShell, result: RunResult, completed_at: int) -> dict:
    """The complete ``response`` object of a finished run (non-streaming)."""
    status, incomplete = outcome(result.finish_reason)
    item_status = "completed" if status == "completed" else "incomplete"
    output = []
    if result.reasoning:
        output.append(reasoning_item(new_id("rs"), result.reasoning))
    if result.text or not result.tool_calls:
        output.append(message_item(new_id("msg"), result.text, item_status))
    for call in result.tool_calls:
        output.append(function_call_item(new_id("fc"), call.id, call.name, call.arguments,
                                         "completed"))
    return shell.body(status, output, usage=result.usage, incomplete_details=incomplete,
                      completed_at=completed_at if status == "completed" else None)


class _Item:
    """One output item being streamed: its JSON (mutated as it grows) and its position."""

    def __init__(self, index: int, item: dict):
        self.index = index
        self.item = item
        self.id = item["id"]
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ResponsesStream(SSEStream):
    """Writes one run as Responses API SSE events onto a twisted.web request.

    As with chat streaming, headers (and ``response.created``/``response.in_progress``) go
    out with the first output, the end of the run or the first keepalive, whichever comes
    first, so a run that fails before saying anything still gets a real HTTP status. Events
    produced in one reactor turn go out as one HTTP chunk at the end of that turn.
    """

    def __init__(self, request, shell: ResponseShell, keepalive_seconds: float, clock,
                 flow=None):
        super().__init__(request, keepalive_seconds, clock, flow)
        self.shell = shell
        self.sequence = 0
        self.output: list[_Item] = []
        self._open: Optional[_Item] = None          # the item deltas currently go to
        self._calls: dict[int, _Item] = {}          # the run's tool index -> its item
        self.body: Optional[dict] = None            # the final response object, once sent

    # -- writing ---------------------------------------------------------------------------

    def _emit(self, kind: str, payload: dict) -> None:
        event = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        self._write(b"event: " + kind.encode("ascii") + b"\ndata: " + compact_utf8(event) + b"\n\n")

    def _opening(self) -> None:
        snapshot = self.shell.body("in_progress", [])
        self._emit("response.created", {"response": snapshot})
        self._emit("response.in_progress", {"response": snapshot})

    # -- output items ----------------------------------------------------------------------

    def _add(self, item: dict) -> _Item:
        added = _Item(len(self.output), item)
        self.output.append(added)
        self._emit("response.output_item.added", {"output_index": added.index,
                                                   "item": dict(item)})
        return added

    def _open_item(self, kind: str) -> _Item:
        if self._open is not None and self._open.item["type"] == kind:
            return self._open
        self._close_open()
        if kind == "reasoning":
            item = self._add({"type": "reasoning", "id": new_id("rs"), "summary": []})
            self._emit("response.reasoning_summary_part.added", {
                "item_id": item.id, "output_index": item.index, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}})
        else:
            item = self._add({"type": "message", "id": new_id("msg"), "status": "in_progress",
                              "role": "assistant", "content": []})
            self._emit("response.content_part.added", {
                "item_id": item.id, "output_index": item.index, "content_index": 0,
                "part": text_part("")})
        self._open = item
        return item

    def _close_open(self, status: str = "completed") -> None:
        item, self._open = self._open, None
        if item is None:
            return
        kind = item.item["type"]
        where = {"item_id": item.id, "output_index": item.index}
        if kind == "reasoning":
            text = item.text
            self._emit("response.reasoning_summary_text.done",
                       {**where, "summary_index": 0, "text": text})
            self._emit("response.reasoning_summary_part.done",
                       {**where, "summary_index": 0,
                        "part": {"type": "summary_text", "text": text}})
            item.item = reasoning_item(item.id, text)
        elif kind == "message":
            text = item.text
            self._emit("response.output_text.done",
                       {**where, "content_index": 0, "text": text, "logprobs": []})
            self._emit("response.content_part.done",
                       {**where, "content_index": 0, "part": text_part(text)})
            item.item = message_item(item.id, text, status)
        else:
            arguments = item.text
            self._emit("response.function_call_arguments.done",
                       {**where, "arguments": arguments})
            item.item = {**item.item, "arguments": arguments, "status": "completed"}
        self._emit("response.output_item.done", {"output_index": item.index,
                                                  "item": item.item})

    def on_event(self, event: RunEvent) -> None:
        data = event.data
        if event.stream == "assistant":
            self._output()
            if "delta" in data:
                item = self._open_item("message")
                item.parts.append(data["delta"])
                self._emit("response.output_text.delta", {
                    "item_id": item.id, "output_index": item.index, "content_index": 0,
                    "delta": data["delta"], "logprobs": []})
            elif "reasoning" in data:
                item = self._open_item("reasoning")
                item.parts.append(data["reasoning"])
                self._emit("response.reasoning_summary_text.delta", {
                    "item_id": item.id, "output_index": item.index, "summary_index": 0,
                    "delta": data["reasoning"]})
        elif event.stream == "tool" and "phase" not in data:   # not a server tool's events
            self._output()
            self._on_tool(data)

    def _on_tool(self, data: Mapping[str, Any]) -> None:
        index = data.get("index", 0)
        item = self._calls.get(index)
        if item is None:
            self._close_open()
            item = self._add(function_call_item(
                new_id("fc"), data.get("id") or new_id("call"), data.get("name") or "", "",
                "in_progress"))
            self._calls[index] = item
            self._open = item
        fragment = data.get("argumentsDelta") or ""
        if not fragment:
            return
        item.parts.append(fragment)
        if item is self._open:
            self._emit("response.function_call_arguments.delta", {
                "item_id": item.id, "output_index": item.index, "delta": fragment})
        # A late fragment of a call already done only completes its arguments.

    # -- the end ---------------------------------------------------------------------------

    def finish(self, result: RunResult) -> bytes:
        """Close the open item and send ``response.completed`` (or ``.incomplete``)."""
        self.start()
        status, incomplete = outcome(result.finish_reason)
        item_status = "completed" if status == "completed" else "incomplete"
        if not any(i.item["type"] in ("message", "function_call") for i in self.output):
            self._open_item("message")   # a run that said nothing: one empty message
        self._close_open(item_status)
        for item in self._calls.values():   # late fragments of calls closed earlier
            item.item["arguments"] = item.text
        completed_at = int(self._clock.seconds())
        body = self.shell.body(status, [i.item for i in self.output], usage=result.usage,
                               incomplete_details=incomplete,
                               completed_at=completed_at if status == "completed" else None)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self.body = body
        self._emit(kind, {"response": body})
        self._end()
        return b""

    def fail(self, error: APIError) -> bytes:
        """A failure after the stream started: exactly one ``response.failed``, whose
        output holds what was streamed so far (open items marked incomplete)."""
        output = []
        for item in self.output:
            if item is not self._open:
                output.append(item.item)
            elif item.item["type"] == "reasoning":
                output.append(reasoning_item(item.id, item.text))
            elif item.item["type"] == "message":
                output.append(message_item(item.id, item.text, "incomplete"))
            else:
                output.append({**item.item, "arguments": item.text, "status": "incomplete"})
        self._open = None
        body = self.shell.body("failed", output, error=error_json(error))
        self._emit("response.failed", {"response": body})
        self._end()
        return b""
