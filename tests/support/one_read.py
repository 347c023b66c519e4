"""An upstream that sends a whole streamed answer in ONE write (a ``Content-Length`` body, as
nginx serving a static file does), and a raw HTTP client that keeps the chunk boundaries of
the answer it reads: together they show how the gateway relays what arrived in one read."""
from __future__ import annotations

import json

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

WORDS = ["Hello", " from", " one", " read", "."]


def _event(choices, **extra) -> bytes:
    body = {"id": "chatcmpl-one", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "one-model", "choices": choices, **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def sse_body() -> bytes:
    """Role chunk, one chunk per word, finish chunk, usage chunk and ``[DONE]``."""
    events = [_event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                       "finish_reason": None}])]
    events += [_event([{"index": 0, "delta": {"content": w}, "finish_reason": None}])
               for w in WORDS]
    events.append(_event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    events.append(_event([], usage={"prompt_tokens": 3, "completion_tokens": len(WORDS),
                                    "total_tokens": 3 + len(WORDS)}))
    return b"".join(events) + b"data: [DONE]\n\n"


class _OneRead(Protocol):
    """Answers each request (headers and a Content-Length body) with the whole SSE answer."""

    def connectionMade(self):
        self.buf = b""

    def dataReceived(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buf = rest[length:]
            body = sse_body()
            self.factory.requests += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def start_one_read_upstream(reactor):
    """Listen on 127.0.0.1; returns ``(port, factory)`` (``factory.requests`` counts)."""
    factory = Factory.forProtocol(_OneRead)
    factory.requests = 0
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port, factory


class _RawReader(Protocol):
    def __init__(self, request: bytes, done: Deferred):
        self.request, self.done, self.data = request, done, []

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason=None):
        self.done.callback(b"".join(self.data))


async def raw_post(reactor, port: int, path: str, body: bytes, headers=()) -> bytes:
    """POST with ``Connection: close``; the raw response bytes as they came."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    done: Deferred = Deferred()
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoints.connectProtocol(endpoint, _RawReader(request, done))
    return await done


def http_chunks(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Split a chunked HTTP/1.1 response into its head and its body chunks (without the
    terminating zero-size chunk)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2:]
    return head, chunks
