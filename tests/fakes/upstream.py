"""Fake model upstreams for tests: real Twisted HTTP servers on 127.0.0.1 speaking OpenAI Chat
Completions (JSON and SSE) or Anthropic Messages (SSE events), scriptable per request.

They record what they receive and can stall, fail, drop the connection or send garbage. They
are not models: replies are scripted text (or an echo of the newest user message), optionally
preceded by scripted reasoning and followed by scripted tool calls.

    up = await FakeOpenAI.start(reactor)
    up.script(text="hello world", chunks=3, delay=0.0)     # every request, unless queued
    up.queue(status=503)                                  # only the next request: a 503
    ... base_url=up.base_url ...
    up.script(text="", tool_calls=(("get_weather", '{"city": "Oslo"}'),), reasoning="hmm")
    up.requests[-1].body["messages"]; await up.requests[-1].connection_lost
    up.single_slot = True     # llama.cpp: a second chat request cuts the running one
    up.max_concurrency        # most chat requests it was answering at once
    await up.stop()
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import socket
import struct
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, ClassVar, Mapping, Optional

from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

_WORD = re.compile(r"\s*\S+\s*")
_ENDLESS_PIECE = "y" * 65_536   # what an endless reply repeats


@dataclass(frozen=True)
class Script:
    """How the fake answers one request. Chunk counts refer to the reply's content chunks."""

    text: str = "Hello from the fake upstream."
    echo: bool = False                      # reply with the newest user message's text instead
    chunks: Optional[int] = None            # split the reply into N pieces; None: one per word
    delay: float = 0.0                      # seconds before each content chunk
    status: int = 200
    error: Optional[str] = None             # message of the error body when status >= 400
    error_type: Optional[str] = None        # its "type"; derived from the status when None
    error_body: Optional[bytes] = None      # a raw body instead (HTML pages, garbage)
    headers: Mapping[str, str] = field(default_factory=dict)  # extra response headers
    force_json: bool = False                # answer one JSON body even when asked to stream
    stall_before_headers: float = 0.0       # wait this long before any byte; math.inf: never
    close_before_headers: bool = False      # close the connection without answering
    stall_after: Optional[int] = None       # after N chunks go silent until the client leaves
    drop_after: Optional[int] = None        # after N chunks close the TCP connection
    malformed: bool = False                 # after the chunks send ``data: {not json``
    stream_error: Optional[str] = None      # after the chunks send an in-band error event
    stream_error_type: Optional[str] = None  # its type (server_error / overloaded_error)
    finish_reason: Optional[str] = "stop"   # OpenAI terms; None: no finish chunk/stop_reason
    done: bool = True                       # end with ``[DONE]`` / ``message_stop``
    usage: Optional[tuple[int, int]] = None  # (prompt, completion); default: word counts
    usage_details: Optional[Mapping[str, Any]] = None  # extra usage fields, in the dialect's names
    include_usage: Optional[bool] = None    # OpenAI usage chunk; None: as the request asks;
    #                                         False: no usage at all, not even in a JSON answer
    #                                         (llama-cpp-python and others stream none)
    model: Optional[str] = None             # reported model; default: the requested one
    comments: bool = False                  # ``: keep-alive`` comments between events
    crlf: bool = False                      # CRLF line endings in the event stream
    # (name, arguments JSON) per tool call, sent after the text; a "stop" finish becomes
    # "tool_calls" / "tool_use". Streamed: id and name first, then the arguments in pieces.
    tool_calls: tuple[tuple[str, str], ...] = ()
    tool_chunks: int = 3                    # argument pieces per streamed tool call
    reasoning: Optional[str] = None         # thinking text before the reply, one piece a word
    reasoning_key: str = "reasoning_content"  # OpenAI field carrying it ("reasoning" for some)
    endless: bool = False                   # then more text, forever, until the client leaves


@dataclass(frozen=True)
class Reply:
    """Everything a dialect needs to render one successful answer."""

    script: Script
    model: str
    text: str
    usage: tuple[int, int]
    body: dict

    @property
    def finish_reason(self) -> Optional[str]:
        """OpenAI terms; "stop" turns into "tool_calls" when the reply calls tools."""
        reason = self.script.finish_reason
        return "tool_calls" if reason == "stop" and self.script.tool_calls else reason


@dataclass
class RecordedRequest:
    """One request the fake received, and what became of its connection."""

    method: str
    path: str
    headers: dict[str, str]                 # lower-case names, last value wins
    raw: bytes
    body: Any                               # parsed JSON, None if the body was not JSON
    received_at: float
    script: Script
    client_port: int                        # equal ports: the client reused a connection
    # fires with the reactor time at which the connection closed before the reply was done
    connection_lost: Deferred = field(default_factory=Deferred)
    # fires with the reactor time at which the reply was completely written
    completed: Deferred = field(default_factory=Deferred)
    lost_at: Optional[float] = None
    dropped_by_us: bool = False             # the script aborted the connection itself
    cut: bool = False                       # single_slot: a later request cut this one

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


class _TrackingFactory(WrappingFactory):
    """Keeps the live connections so ``stop()`` can close them and wait until they are gone."""

    noisy = False

    def __init__(self, site: Site):
        super().__init__(site)
        self._idle_waiters: list[Deferred] = []

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def all_closed(self) -> Deferred:
        if not self.protocols:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        return d


class _QuietSite(Site):
    noisy = False

    def log(self, request) -> None:   # no access log in test output
        pass


class _Endpoint(Resource):
    isLeaf = True

    def __init__(self, upstream: "FakeUpstream"):
        super().__init__()
        self._upstream = upstream

    def render(self, request):
        return self._upstream._handle(request)


class FakeUpstream:
    """Common machinery; use ``FakeOpenAI`` or ``FakeAnthropic``."""

    log = Logger()
    chat_path: ClassVar[str] = ""
    url_suffix: ClassVar[str] = ""

    def __init__(self, reactor=None, script: Optional[Script] = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.requests: list[RecordedRequest] = []
        self.default_script = script or Script()
        self._queue: list[Script] = []
        self._responders: set[Deferred] = set()
        self._request_waiters: list[tuple[int, Deferred]] = []
        self._factory = _TrackingFactory(_QuietSite(_Endpoint(self)))
        self._port = None
        # A single-slot server (llama.cpp's default): a chat request arriving while another
        # is being answered cuts the running one's connection.
        self.single_slot = False
        self.max_concurrency = 0                # most chat requests answered at once
        self._answering: dict[int, tuple[RecordedRequest, Any]] = {}

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def start(cls, reactor=None, **script) -> Deferred:
        """Listen on 127.0.0.1, a free port; fires with the started fake."""
        upstream = cls(reactor, Script(**script))
        return Deferred.fromCoroutine(upstream._listen())

    async def _listen(self) -> "FakeUpstream":
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._port = await endpoint.listen(self._factory)
        return self

    def stop(self) -> Deferred:
        """Stop listening, end pending replies, close every connection; fires when all are gone."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            await port.stopListening()
        for responder in list(self._responders):
            responder.cancel()
        for wrapper in list(self._factory.protocols):
            wrapper.transport.abortConnection()
        await self._factory.all_closed()

    @property
    def port(self) -> int:
        return self._port.getHost().port

    @property
    def base_url(self) -> str:
        """What a provider config's ``baseUrl`` should be."""
        return f"http://127.0.0.1:{self.port}{self.url_suffix}"

    @property
    def open_connections(self) -> int:
        return len(self._factory.protocols)

    def resource(self) -> Resource:
        """The fake as a ``twisted.web`` resource, for clients that need no port (treq's
        ``RequestTraversalAgent``; see ``tests/fakes/memory_upstream.py``)."""
        return _Endpoint(self)

    # --- scripting -------------------------------------------------------------------

    def script(self, **changes) -> "FakeUpstream":
        """Set how every request is answered from now on (fields of ``Script``)."""
        self.default_script = Script(**changes)
        return self

    def queue(self, **changes) -> "FakeUpstream":
        """Answer the next request not yet covered by the queue like this; no arguments: with
        the default script. Queued scripts are used once each, in order."""
        self._queue.append(Script(**changes) if changes else None)
        return self

    def wait_for_request(self, count: int = 1) -> Deferred:
        """Fires with the ``count``-th request received (1-based) once it has arrived."""
        if len(self.requests) >= count:
            return succeed(self.requests[count - 1])
        d: Deferred = Deferred()
        self._request_waiters.append((count, d))
        return d

    # --- serving ---------------------------------------------------------------------

    def _handle(self, request):
        raw = request.content.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        script = self.default_script
        if request.method == b"POST" and self._queue:
            script = self._queue.pop(0) or self.default_script
        record = RecordedRequest(
            method=request.method.decode("ascii"), path=request.path.decode("utf-8"),
            headers={k.decode("latin-1").lower(): v[-1].decode("latin-1")
                     for k, v in request.requestHeaders.getAllRawHeaders()},
            raw=raw, body=body, received_at=self.reactor.seconds(), script=script,
            client_port=getattr(request.getClientAddress(), "port", 0))
        self.requests.append(record)
        for waiter in [w for w in self._request_waiters if w[0] <= len(self.requests)]:
            self._request_waiters.remove(waiter)
            waiter[1].callback(self.requests[waiter[0] - 1])

        responders: list[Deferred] = []

        def lost(_failure):
            record.lost_at = self.reactor.seconds()
            record.connection_lost.callback(record.lost_at)
            for responder in responders:
                responder.cancel()

        request.notifyFinish().addCallbacks(
            lambda _: record.completed.callback(self.reactor.seconds()), lost)
        if self._route(record) == "chat":
            self._occupy_slot(record, request)

        responder = Deferred.fromCoroutine(self._respond(request, record))
        if not responder.called:
            responders.append(responder)
            self._responders.add(responder)

        def forget(result):
            self._responders.discard(responder)
            if isinstance(result, Failure) and not result.check(CancelledError):
                self.log.failure("fake upstream reply failed", result)

        responder.addBoth(forget)
        return NOT_DONE_YET

    def _occupy_slot(self, record: RecordedRequest, request) -> None:
        """Count the chat requests answered at once; a single slot cuts the running ones."""
        if self.single_slot:
            for running, running_request in self._answering.values():
                running.cut = running.dropped_by_us = True
                running_request.channel.transport.loseConnection()
        key = id(record)
        self._answering[key] = (record, request)
        self.max_concurrency = max(self.max_concurrency, len(self._answering))
        request.notifyFinish().addBoth(lambda _: self._answering.pop(key, None))

    async def _respond(self, request, record: RecordedRequest) -> None:
        script = record.script
        route = self._route(record)
        if route == "models" and script.stall_before_headers:
            await self._sleep(script.stall_before_headers)
        if route == "models" and script.status < 400:   # a scripted error status refuses it too
            self._send_json(request, 200, self.models())
            return
        if route is None:
            self._send_json(request, 404, self.error_body(404, f"no route for {record.path}", None))
            return
        if script.stall_before_headers:
            await self._sleep(script.stall_before_headers)
        if script.close_before_headers:
            record.dropped_by_us = True
            request.channel.transport.loseConnection()
            return
        for name, value in script.headers.items():
            request.setHeader(name, value)
        if script.status >= 400:
            request.setResponseCode(script.status)
            if script.error_body is not None:
                request.setHeader("content-type", "text/html")
                request.write(script.error_body)
            else:
                body = self.error_body(script.status, script.error or _reason(script.status),
                                       script.error_type)
                request.setHeader("content-type", "application/json")
                request.write(json.dumps(body).encode())
            request.finish()
            return
        if route == "embeddings":
            self._send_json(request, 200, self.embeddings(record.body or {}))
            return
        body = record.body if isinstance(record.body, dict) else {}
        text = _newest_user_text(body.get("messages")) if script.echo else script.text
        pieces = _split(text, script.chunks)
        usage = script.usage or (_prompt_words(body), len(_WORD.findall(text)))
        reply = Reply(script=script, model=script.model or body.get("model") or "fake-model",
                      text=text, usage=usage, body=body)
        if not body.get("stream") or script.force_json:
            # Answering in one piece takes as long as streaming would have.
            if script.delay:
                await self._sleep(script.delay * max(1, len(pieces)))
            if script.stall_after is not None:
                await self._sleep(math.inf)
            if script.endless:
                await self._endless_json(request, reply)
                return
            self._send_json(request, 200, self.completion(reply))
            return
        request.setHeader("content-type", "text/event-stream")
        request.setHeader("cache-control", "no-cache")
        nl = "\r\n" if script.crlf else "\n"

        def write(frames: list[str]) -> None:
            request.write("".join(frames).replace("\n", nl).encode())

        async def write_paced(groups: list[list[str]]) -> None:
            for group in groups:
                if script.delay:
                    await self._sleep(script.delay)
                write(group)

        write(self.stream_start(reply))
        await write_paced(self.reasoning_frames(reply))
        write(self.text_start(reply))
        for index, piece in enumerate(pieces):
            if await self._interrupt(request, record, index):
                return
            if script.delay:
                await self._sleep(script.delay)
            write(([": keep-alive\n\n"] if script.comments else [])
                  + self.stream_chunk(piece, reply))
        if await self._interrupt(request, record, len(pieces)):
            return
        while script.endless:
            await self._sleep(0)   # let the client read (or leave: that cancels us)
            write(self.stream_chunk(_ENDLESS_PIECE, reply))
        write(self.text_end(reply))
        await write_paced(self.tool_call_frames(reply))
        if script.malformed:
            write(["data: {not json\n\n"])
        if script.stream_error:
            write(self.stream_error(script.stream_error, script.stream_error_type))
        write(self.stream_end(reply))
        request.finish()

    async def _interrupt(self, request, record: RecordedRequest, sent: int) -> bool:
        script = record.script
        if script.drop_after is not None and sent >= script.drop_after:
            record.dropped_by_us = True
            # close the TCP connection without ending the HTTP body: what was written still
            # arrives (an abort would discard it), then the client sees the body cut short
            request.channel.transport.loseConnection()
            return True
        if script.stall_after is not None and sent >= script.stall_after:
            await Deferred()   # until the client leaves or stop() cancels us
        return False

    async def _endless_json(self, request, reply: Reply) -> None:
        """A completion body whose text never ends: its JSON is never closed."""
        marker = "\u0000ENDLESS\u0000"
        body = json.dumps(self.completion(replace(reply, text=reply.text + marker)))
        request.setResponseCode(200)
        request.setHeader("content-type", "application/json")
        request.write(body[:body.index(json.dumps(marker)[1:-1])].encode())
        while True:
            await self._sleep(0)
            request.write(_ENDLESS_PIECE.encode())

    def _sleep(self, seconds: float) -> Deferred:
        if math.isinf(seconds):
            return Deferred()
        return deferLater(self.reactor, seconds, lambda: None)

    @staticmethod
    def _send_json(request, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        request.setHeader("content-length", str(len(data)))
        request.write(data)
        request.finish()

    # --- the dialect, overridden per provider ------------------------------------------

    def _route(self, record: RecordedRequest) -> Optional[str]:
        if record.method == "POST" and record.path == self.chat_path:
            return "chat"
        return None

    def error_body(self, status: int, message: str, error_type: Optional[str]) -> Any:
        raise NotImplementedError

    def completion(self, reply: Reply) -> Any:
        raise NotImplementedError

    def stream_start(self, reply: Reply) -> list[str]:
        raise NotImplementedError

    def reasoning_frames(self, reply: Reply) -> list[list[str]]:
        raise NotImplementedError

    def stream_chunk(self, piece: str, reply: Reply) -> list[str]:
        raise NotImplementedError

    def text_start(self, reply: Reply) -> list[str]:
        return []

    def text_end(self, reply: Reply) -> list[str]:
        return []

    def tool_call_frames(self, reply: Reply) -> list[list[str]]:
        raise NotImplementedError

    def stream_error(self, message, error_type) -> list[str]:
        raise NotImplementedError

    def stream_end(self, reply: Reply) -> list[str]:
        raise NotImplementedError

    def embeddings(self, body) -> Any:
        raise NotImplementedError

    def models(self) -> Any:
        raise NotImplementedError


class FakeOpenAI(FakeUpstream):
    """OpenAI Chat Completions at ``{base_url}/chat/completions`` (base_url ends in ``/v1``),
    plus ``/v1/embeddings`` (deterministic 8-dimension vectors) and ``GET /v1/models``."""

    chat_path = "/v1/chat/completions"
    url_suffix = "/v1"

    _TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
              403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}

    def _route(self, record):
        if record.method == "POST" and record.path == "/v1/embeddings":
            return "embeddings"
        if record.method == "GET" and record.path == "/v1/models":
            return "models"
        return super()._route(record)

    def error_body(self, status, message, error_type):
        kind = error_type or self._TYPES.get(status) or (
            "server_error" if status >= 500 else "invalid_request_error")
        code = "invalid_api_key" if status == 401 else None
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def completion(self, reply):
        script = reply.script
        message: dict[str, Any] = {"role": "assistant",
                                   "content": reply.text or (None if script.tool_calls else "")}
        if script.reasoning:
            message[script.reasoning_key] = script.reasoning
        if script.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_fake_{i}", "type": "function",
                 "function": {"name": name, "arguments": arguments}}
                for i, (name, arguments) in enumerate(script.tool_calls)]
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                "model": reply.model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": reply.finish_reason or "stop"}],
                **({} if script.include_usage is False else
                   {"usage": _openai_usage(reply.usage, reply.script.usage_details)})}

    @staticmethod
    def _frame(payload) -> str:
        return "data: " + json.dumps(payload) + "\n\n"

    def _chunk(self, model, delta, finish_reason=None) -> str:
        return self._frame({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                            "created": 1700000000, "model": model,
                            "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": finish_reason}]})

    def stream_start(self, reply):
        return [self._chunk(reply.model, {"role": "assistant", "content": ""})]

    def reasoning_frames(self, reply):
        key = reply.script.reasoning_key
        return [[self._chunk(reply.model, {"content": None, key: piece})]
                for piece in _split(reply.script.reasoning or "", None)]

    def stream_chunk(self, piece, reply):
        return [self._chunk(reply.model, {"content": piece})]

    def tool_call_frames(self, reply):
        groups = []
        for i, (name, arguments) in enumerate(reply.script.tool_calls):
            groups.append([self._chunk(reply.model, {"tool_calls": [
                {"index": i, "id": f"call_fake_{i}", "type": "function",
                 "function": {"name": name, "arguments": ""}}]})])
            for piece in _split(arguments, reply.script.tool_chunks):
                groups.append([self._chunk(reply.model, {"tool_calls": [
                    {"index": i, "function": {"arguments": piece}}]})])
        return groups

    def stream_error(self, message, error_type):
        return [self._frame({"error": {"message": message, "type": error_type or "server_error",
                                       "param": None, "code": None}})]

    def stream_end(self, reply):
        script, model = reply.script, reply.model
        frames = []
        if reply.finish_reason:
            frames.append(self._chunk(model, {}, reply.finish_reason))
        include = script.include_usage
        if include is None:
            include = bool((reply.body.get("stream_options") or {}).get("include_usage"))
        if include:
            frames.append(self._frame({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                       "created": 1700000000, "model": model, "choices": [],
                                       "usage": _openai_usage(reply.usage,
                                                              script.usage_details)}))
        if script.done:
            frames.append("data: [DONE]\n\n")
        return frames

    def models(self):
        return {"object": "list", "data": [{"id": "fake-model", "object": "model",
                                            "created": 1700000000, "owned_by": "fake"}]}

    def embeddings(self, body):
        """One deterministic vector per input (8 dimensions unless ``dimensions`` asks
        otherwise); ``encoding_format: "base64"`` packs it as little-endian float32."""
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and all(isinstance(x, int) for x in inputs)):
            inputs = [inputs]                       # one string, or one tokenized input
        inputs = list(inputs or [])
        size = body.get("dimensions")
        size = size if isinstance(size, int) and size > 0 else 8
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(item, size)
            if body.get("encoding_format") == "base64":
                embedding: Any = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(item.split()) if isinstance(item, str) else len(item)
                     for item in inputs)
        return {"object": "list", "data": data, "model": body.get("model") or "fake-embedding",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class FakeAnthropic(FakeUpstream):
    """Anthropic Messages at ``{base_url}/v1/messages`` (base_url has no path)."""

    chat_path = "/v1/messages"
    url_suffix = ""

    _TYPES = {400: "invalid_request_error", 401: "authentication_error",
              403: "permission_error", 404: "not_found_error", 413: "request_too_large",
              429: "rate_limit_error", 529: "overloaded_error"}
    _STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

    def _route(self, record):
        if record.method == "GET" and record.path == "/v1/models":
            return "models"
        return super()._route(record)

    def models(self):
        return {"data": [{"type": "model", "id": "claude-fake", "display_name": "Claude Fake",
                          "created_at": "2025-01-01T00:00:00Z"}],
                "has_more": False, "first_id": "claude-fake", "last_id": "claude-fake"}

    def error_body(self, status, message, error_type):
        kind = error_type or self._TYPES.get(status) or (
            "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def completion(self, reply):
        script = reply.script
        content: list[dict] = []
        if script.reasoning:
            content.append({"type": "thinking", "thinking": script.reasoning,
                            "signature": "fake-signature"})
        if self._has_text_block(reply):
            content.append({"type": "text", "text": reply.text})
        for i, (name, arguments) in enumerate(script.tool_calls):
            content.append({"type": "tool_use", "id": f"toolu_fake_{i}", "name": name,
                            "input": _json_object(arguments)})
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": reply.model,
                "content": content, "stop_reason": self._stop_reason(reply) or "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": reply.usage[0], "output_tokens": reply.usage[1],
                          **(script.usage_details or {})}}

    def _stop_reason(self, reply) -> Optional[str]:
        reason = reply.finish_reason
        return self._STOP.get(reason, reason) if reason else None

    @staticmethod
    def _has_text_block(reply) -> bool:
        return bool(reply.text) or not reply.script.tool_calls

    @staticmethod
    def _text_index(reply) -> int:
        return 1 if reply.script.reasoning else 0

    @staticmethod
    def _event(name, payload) -> str:
        return f"event: {name}\ndata: {json.dumps(payload)}\n\n"

    def _block_start(self, index, block) -> str:
        return self._event("content_block_start", {"type": "content_block_start",
                                                   "index": index, "content_block": block})

    def _block_delta(self, index, delta) -> str:
        return self._event("content_block_delta", {"type": "content_block_delta",
                                                   "index": index, "delta": delta})

    def _block_stop(self, index) -> str:
        return self._event("content_block_stop", {"type": "content_block_stop", "index": index})

    def stream_start(self, reply):
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "content": [],
                   "model": reply.model, "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": reply.usage[0], "output_tokens": 1,
                             **(reply.script.usage_details or {})}}
        return [self._event("message_start", {"type": "message_start", "message": message}),
                self._event("ping", {"type": "ping"})]

    def reasoning_frames(self, reply):
        if not reply.script.reasoning:
            return []
        groups = [[self._block_start(0, {"type": "thinking", "thinking": ""})]]
        groups += [[self._block_delta(0, {"type": "thinking_delta", "thinking": piece})]
                   for piece in _split(reply.script.reasoning, None)]
        groups.append([self._block_delta(0, {"type": "signature_delta",
                                             "signature": "fake-signature"}),
                       self._block_stop(0)])
        return groups

    def stream_chunk(self, piece, reply):
        return [self._block_delta(self._text_index(reply), {"type": "text_delta",
                                                            "text": piece})]

    def text_start(self, reply):
        if not self._has_text_block(reply):
            return []
        return [self._block_start(self._text_index(reply), {"type": "text", "text": ""})]

    def text_end(self, reply):
        if not self._has_text_block(reply):
            return []
        return [self._block_stop(self._text_index(reply))]

    def tool_call_frames(self, reply):
        index = self._text_index(reply) + (1 if self._has_text_block(reply) else 0)
        groups = []
        for i, (name, arguments) in enumerate(reply.script.tool_calls):
            groups.append([self._block_start(index, {"type": "tool_use",
                                                     "id": f"toolu_fake_{i}", "name": name,
                                                     "input": {}}),
                           self._block_delta(index, {"type": "input_json_delta",
                                                     "partial_json": ""})])
            for piece in _split(arguments, reply.script.tool_chunks):
                groups.append([self._block_delta(index, {"type": "input_json_delta",
                                                         "partial_json": piece})])
            groups.append([self._block_stop(index)])
            index += 1
        return groups

    def stream_error(self, message, error_type):
        return [self._event("error", {"type": "error", "error": {
            "type": error_type or "overloaded_error", "message": message}})]

    def stream_end(self, reply):
        frames = []
        if reply.finish_reason:
            frames.append(self._event("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason(reply), "stop_sequence": None},
                "usage": {"output_tokens": reply.usage[1]}}))
        if reply.script.done:
            frames.append(self._event("message_stop", {"type": "message_stop"}))
        return frames


def unused_port() -> int:
    """A loopback port nothing listens on (bound then released), for connection-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split(text: str, chunks: Optional[int]) -> list[str]:
    if not text:
        return []
    if chunks is None:
        return _WORD.findall(text) or [text]
    count = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _vector(item: Any, size: int) -> list[float]:
    seed = str(item).encode()
    digest = hashlib.sha256(seed).digest()
    counter = 0
    while len(digest) < size:
        counter += 1
        digest += hashlib.sha256(seed + str(counter).encode()).digest()
    return [round(b / 255.0, 6) for b in digest[:size]]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _newest_user_text(messages: Any) -> str:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _prompt_words(body: dict) -> int:
    words = len(_content_text(body.get("system")).split())
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            words += len(_content_text(message.get("content")).split())
    return words


def _openai_usage(usage: tuple[int, int], details: Optional[Mapping[str, Any]] = None) -> dict:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1], **(details or {})}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeUpstream", "RecordedRequest", "Reply", "Script",
           "unused_port"]
