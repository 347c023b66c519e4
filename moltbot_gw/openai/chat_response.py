"""Render agent runs as OpenAI Chat Completions: one ``chat.completion`` JSON body, or a
stream of ``chat.completion.chunk`` SSE frames written as run events arrive."""
from __future__ import annotations

from typing import Any, Optional

from ..agents.run import RunEvent, RunResult
from ..json_text import compact_utf8, json_string_utf8
from .errors import APIError, note_refusal
from .sse_stream import SSEStream
from .usage import chat_usage_json

DONE_FRAME = b"data: [DONE]\n\n"


def completion_id(run_id: str) -> str:
    return "chatcmpl-" + run_id.removeprefix("run_")


def response_model(requested: str, names_agent: bool, answered: str) -> str:
    """The ``model`` of a response: the request's string when it named the agent
    (``moltbot:<id>``), else the ``provider/model`` that answered (the agent was chosen by
    header or is the default, so the request's string says nothing about who answered)."""
    return requested if names_agent else answered


def stream_models(requested: str, names_agent: bool, override, chain) -> tuple[str, ...]:
    """What a stream's chunks may name, in order (``response_model``'s rule before the run
    has answered): the request's string, else the override, else the agent's model chain
    (a stream moves to the next one on each ``fallback`` event)."""
    if names_agent:
        return (requested,)
    return (override,) if override else tuple(chain)


def tool_calls_json(result: RunResult) -> list:
    return [{"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in result.tool_calls]


def completion_body(result: RunResult, model: str, created: int) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None,
                               "refusal": None}
    if result.tool_calls:
        message["tool_calls"] = tool_calls_json(result)
    elif message["content"] is None:
        message["content"] = ""
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    return {
        "id": completion_id(result.run_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0,
                     "message": message,
                     "logprobs": None,
                     "finish_reason": result.finish_reason}],
        "usage": chat_usage_json(result.usage),
    }


class CompletionStream(SSEStream):
    """What the SSE answers of chat and legacy text completions share: the chain of models
    their chunks name, the closing chunks (``finish_reason``, then the usage chunk when asked
    for) and the ``[DONE]`` frame that ends them, also after an error frame."""

    def __init__(self, request, models: tuple[str, ...], include_usage: bool,
                 keepalive_seconds: float, clock, flow=None):
        super().__init__(request, keepalive_seconds, clock, flow)
        self.include_usage = include_usage
        self._models = list(models)

    def _finish_chunk(self, finish_reason: str) -> None:
        """The chunk that carries the run's ``finish_reason``."""
        raise NotImplementedError

    def _usage_chunk(self, usage: dict) -> None:
        """The chunk with ``choices: []`` and ``usage`` (``include_usage``)."""
        raise NotImplementedError

    def finish(self, result: RunResult) -> bytes:
        """Write the closing chunks and ``[DONE]``, with whatever this reactor turn produced
        before them, as one HTTP chunk; returns nothing more for the caller to write."""
        self.start()
        self._finish_chunk(result.finish_reason)
        if self.include_usage:
            self._usage_chunk(chat_usage_json(result.usage))
        self._write(DONE_FRAME)
        self._end()
        return b""

    def fail(self, error: APIError) -> bytes:
        """A failure after the stream started: an error frame, then ``[DONE]``."""
        note_refusal(self.request, error)
        self._write(b"data: " + error.body() + b"\n\n")
        self._write(DONE_FRAME)
        self._end()
        return b""


_CONTENT_HEAD = b'[{"index":0,"delta":{"content":'
_CONTENT_TAIL = b'},"logprobs":null,"finish_reason":null}]'


class ChatStream(CompletionStream):
    """Writes one run as ``chat.completion.chunk`` SSE frames onto a twisted.web request.

    Content deltas are written as they arrive: frames produced in the same reactor turn (an
    upstream read often carries several) go out as one HTTP chunk at the end of that turn,
    nothing is held longer.

    ``models`` is the chain of models the run may answer with: chunks name the first until a
    ``fallback`` event says it failed (before any output), then the next. With
    ``include_usage`` every chunk but the last carries ``"usage": null``, as OpenAI's do.
    """

    def __init__(self, request, run_id: str, models: tuple[str, ...], created: int,
                 include_usage: bool, keepalive_seconds: float, clock, flow=None):
        super().__init__(request, models, include_usage, keepalive_seconds, clock, flow)
        self._id = completion_id(run_id)
        self._created = created
        self._end_of_chunk = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._set_prefix()

    def _set_prefix(self) -> None:
        # Every chunk shares id/object/created/model: encode that prefix once per model.
        head = compact_utf8({"id": self._id, "object": "chat.completion.chunk",
                             "created": self._created, "model": self._models[0],
                             "system_fingerprint": None})
        self._prefix = b"data: " + head[:-1] + b',"choices":'

    def _chunk(self, choices_json: bytes, extra: Optional[bytes] = None) -> bytes:
        if extra is None:
            return self._prefix + choices_json + self._end_of_chunk
        return self._prefix + choices_json + extra + b"}\n\n"

    def _choice(self, delta: dict, finish_reason: Optional[str] = None) -> bytes:
        return compact_utf8([{"index": 0, "delta": delta, "logprobs": None,
                        "finish_reason": finish_reason}])

    def _opening(self) -> None:
        self._write(self._chunk(self._choice({"role": "assistant", "content": ""})))

    def on_event(self, event: RunEvent) -> None:
        data = event.data
        if event.stream == "assistant":
            self._output()
            if "delta" in data:
                # The hot path: only the delta text is encoded per chunk.
                self._write(self._prefix + _CONTENT_HEAD + json_string_utf8(data["delta"])
                            + _CONTENT_TAIL + self._end_of_chunk)
            elif "reasoning" in data:
                self._write(self._chunk(self._choice({"reasoning_content": data["reasoning"]})))
        elif event.stream == "lifecycle":
            if (data.get("phase") == "fallback" and len(self._models) > 1
                    and data.get("model") == self._models[0]):
                self._models.pop(0)
                self._set_prefix()
        elif event.stream == "tool" and "phase" not in data:   # not a server tool's events
            self._output()
            call: dict = {"index": data["index"]}
            function: dict = {}
            if "id" in data:
                call.update(id=data["id"], type="function")
            if "name" in data:
                function["name"] = data["name"]
            function["arguments"] = data["argumentsDelta"]
            call["function"] = function
            self._write(self._chunk(self._choice({"tool_calls": [call]})))

    def _finish_chunk(self, finish_reason: str) -> None:
        self._write(self._chunk(self._choice({}, finish_reason)))

    def _usage_chunk(self, usage: dict) -> None:
        self._write(self._chunk(b"[]", b',"usage":' + compact_utf8(usage)))
