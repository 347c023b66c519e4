"""Render agent runs as OpenAI Chat Completions: one ``chat.completion`` JSON body, or a
stream of ``chat.completion.chunk`` SSE frames written as run events arrive."""
from __future__ import annotations

import json
from typing import Optional

from twisted.internet.task import LoopingCall

from ..agents.run import RunEvent, RunResult
from .errors import APIError

DONE_FRAME = b"data: [DONE]\n\n"
KEEPALIVE_FRAME = b": keepalive\n\n"
SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no"))


def completion_id(run_id: str) -> str:
    return "chatcmpl-" + run_id.removeprefix("run_")


def usage_json(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def tool_calls_json(result: RunResult) -> list:
    return [{"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in result.tool_calls]


def completion_body(result: RunResult, model: str, created: int) -> dict:
    message = {"role": "assistant", "content": result.text or None, "refusal": None}
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
        "choices": [{"index": 0,
                     "message": message,
                     "logprobs": None,
                     "finish_reason": result.finish_reason}],
        "usage": usage_json(result.usage),
    }


_CONTENT_HEAD = b'[{"index":0,"delta":{"content":'
_CONTENT_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'


def _dumps(payload) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class ChatStream:
    """Writes one run as SSE onto a twisted.web request.

    Headers go out with the first delta, the end of the run, or the first keepalive —
    whichever comes first — so a run that fails before saying anything still gets a real
    HTTP status. Content deltas are written as they arrive: frames produced in the same
    reactor turn (an upstream read often carries several) go out as one HTTP chunk at the
    end of that turn, nothing is held longer.
    """

    def __init__(self, request, run_id: str, model: str, created: int, include_usage: bool,
                 keepalive_seconds: float, clock, flow=None):
        self.request = request
        self.include_usage = include_usage
        self.started = False
        self.closed = False
        self._active_since_tick = False
        self._clock = clock
        self._pending: list[bytes] = []
        self._flow = flow            # the run's FlowControl: a slow client pauses upstream
        # Every chunk shares id/object/created/model: encode that prefix once.
        head = _dumps({"id": completion_id(run_id), "object": "chat.completion.chunk",
                       "created": created, "model": model})
        self._prefix = b"data: " + head[:-1] + b',"choices":'
        self._keepalive = LoopingCall(self._tick)
        self._keepalive.clock = clock
        self._keepalive.start(keepalive_seconds, now=False)
        request.notifyFinish().addBoth(self._closed)

    def _closed(self, _result) -> None:
        self.closed = True
        self._stop_keepalive()

    # IPushProducer: the client's connection says when its buffer is full or drained.
    def pauseProducing(self) -> None:
        self._flow.pause()

    def resumeProducing(self) -> None:
        self._flow.resume()

    def stopProducing(self) -> None:
        self._flow.resume()  # the connection is gone; cancellation stops the run

    def _release(self) -> None:
        if self._flow is not None and self.request.producer is self and not self.closed:
            self.request.unregisterProducer()
        if self._flow is not None:
            self._flow.resume()

    def _stop_keepalive(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()

    def _write(self, data: bytes) -> None:
        if not self._pending:
            self._clock.callLater(0, self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self.closed:
            self.request.write(b"".join(pending))

    def _chunk(self, choices_json: bytes, extra: bytes = b"") -> bytes:
        return self._prefix + choices_json + extra + b"}\n\n"

    def _choice(self, delta: dict, finish_reason: Optional[str] = None) -> bytes:
        return _dumps([{"index": 0, "delta": delta, "logprobs": None,
                        "finish_reason": finish_reason}])

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for name, value in SSE_HEADERS:
            self.request.setHeader(name, value)
        if self._flow is not None:
            self.request.registerProducer(self, True)
        self._write(self._chunk(self._choice({"role": "assistant", "content": ""})))

    def _tick(self) -> None:
        self.start()
        if not self._active_since_tick:
            self._write(KEEPALIVE_FRAME)
        self._active_since_tick = False

    def on_event(self, event: RunEvent) -> None:
        data = event.data
        if event.stream == "assistant":
            self.start()
            self._active_since_tick = True
            if "delta" in data:
                # The hot path: only the delta text is encoded per chunk.
                self._write(self._prefix + _CONTENT_HEAD + _dumps(data["delta"])
                            + _CONTENT_TAIL)
            elif "reasoning" in data:
                self._write(self._chunk(self._choice({"reasoning_content": data["reasoning"]})))
        elif event.stream == "tool":
            self.start()
            self._active_since_tick = True
            call: dict = {"index": data["index"]}
            function: dict = {}
            if "id" in data:
                call.update(id=data["id"], type="function")
            if "name" in data:
                function["name"] = data["name"]
            function["arguments"] = data["argumentsDelta"]
            call["function"] = function
            self._write(self._chunk(self._choice({"tool_calls": [call]})))

    def finish(self, result: RunResult) -> bytes:
        """Write the closing chunks; returns the final ``[DONE]`` frame for the caller."""
        self._stop_keepalive()
        self.start()
        self._write(self._chunk(self._choice({}, result.finish_reason)))
        if self.include_usage:
            self._write(self._chunk(b"[]", b',"usage":' + _dumps(usage_json(result.usage))))
        self._flush()
        self._release()
        return DONE_FRAME

    def fail(self, error: APIError) -> bytes:
        """A failure after the stream started: an error frame, then ``[DONE]``."""
        self._stop_keepalive()
        self._write(b"data: " + error.body() + b"\n\n")
        self._flush()
        self._release()
        return DONE_FRAME
