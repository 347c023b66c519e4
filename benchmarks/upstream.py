"""A fast fake OpenAI Chat Completions upstream for the benchmarks (loopback only).

A raw Twisted ``Protocol`` speaking just enough HTTP/1.1 (keep-alive, Content-Length request
bodies) to answer ``POST .../chat/completions`` with pre-encoded bodies, so that it costs far
less CPU per request than anything it is compared with and is never the bottleneck:

* ``/v1/chat/completions``       — SSE (10 content chunks + finish + usage + ``[DONE]``) when
  the request body asks for ``"stream": true``, else one ``chat.completion`` JSON body;
* ``/json/v1/chat/completions``  — always JSON; ``/sse/v1/chat/completions`` — always SSE;
* ``/oneread/v1/chat/completions`` — the same SSE events as one ``Content-Length`` body in
  ONE write (as nginx serving a static file sends it): the client gets them in one read;
* ``/slow/v1/chat/completions``  — SSE whose chunks are written ``--slow-interval`` seconds
  apart (default 0.2 s, 10 chunks: ~2 s a stream), for the concurrent-streams scenario.

Run: ``python benchmarks/upstream.py --port 0``; it prints ``PORT <n>`` once listening.
"""
from __future__ import annotations

import argparse
import json
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

WORDS = ["Hello", " from", " the", " fast", " fake", " upstream", ":", " ten", " chunks", " here."]
CREATED = 1700000000
MODEL = "bench-model"


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunk(delta: dict, finish=None, usage=None) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
    return b"data: " + _dumps(body) + b"\n\n"


USAGE = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}

SSE_EVENTS = ([_chunk({"role": "assistant", "content": ""})]
              + [_chunk({"content": w}) for w in WORDS]
              + [_chunk({}, finish="stop"), _chunk({}, usage=USAGE), b"data: [DONE]\n\n"])

JSON_BODY = _dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": USAGE,
})


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n")
JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
# The whole fast SSE answer, one HTTP chunk per event (as real upstreams send it).
SSE_BODY = b"".join(_http_chunk(e) for e in SSE_EVENTS) + b"0\r\n\r\n"


def _response(head: bytes, body: bytes, close: bool) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return head + b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


# The same events as one plain body: no chunked framing, one write, one read at the client.
SSE_ONEREAD_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-cache\r\n")
SSE_ONEREAD_BODY = b"".join(SSE_EVENTS)

RESPONSES = {
    (False, False): _response(JSON_HEAD, JSON_BODY, False),
    (False, True): _response(JSON_HEAD, JSON_BODY, True),
    (True, False): SSE_HEAD + b"\r\n" + SSE_BODY,
    (True, True): SSE_HEAD + b"Connection: close\r\n\r\n" + SSE_BODY,
}
ONEREAD = {close: _response(SSE_ONEREAD_HEAD, SSE_ONEREAD_BODY, close) for close in (False, True)}
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


class FakeUpstream(Protocol):
    def connectionMade(self):
        self.factory.connections += 1
        self.buf = b""
        self.busy = False      # a slow stream is being written: hold later requests
        self.timer = None
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        self.buf += data
        if not self.busy:
            self._process()

    in_slow = False

    def connectionLost(self, reason=None):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self._slow_ended(done=False)

    def _slow_ended(self, done: bool):
        if self.in_slow:
            self.in_slow = False
            self.factory.slow_active -= 1
            self.factory.slow_done += done

    def _process(self):
        while self.buf and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail(BAD)
                return
            head = self.buf[:end]
            lines = head.split(b"\r\n")
            try:
                method, path, _version = lines[0].split(b" ", 2)
            except ValueError:
                return self._fail(BAD)
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip() or b"0")
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
                elif name == b"transfer-encoding":
                    return self._fail(BAD)   # our clients always send Content-Length
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4:total]
            self.buf = self.buf[total:]
            self._answer(method, path, body, close)
            if close:
                return

    def _fail(self, data: bytes):
        self.buf = b""
        self.transport.write(data)
        self.transport.loseConnection()

    def _answer(self, method: bytes, path: bytes, body: bytes, close: bool):
        path = path.split(b"?", 1)[0]
        if method == b"GET" and path == b"/stats":
            # counters since the last look (then reset): peak concurrent slow streams, and
            # connections accepted (not counting this one)
            f = self.factory
            data = _dumps({"slow_active": f.slow_active, "slow_peak": f.slow_peak,
                           "slow_done": f.slow_done, "connections": f.connections - 1})
            f.slow_peak, f.slow_done, f.connections = f.slow_active, 0, 0
            self.transport.write(_response(JSON_HEAD, data, close))
            if close:
                self.transport.loseConnection()
            return
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            return self._fail(NOT_FOUND)
        if path.startswith(b"/slow/"):
            return self._slow(close)
        if path.startswith(b"/oneread/"):
            self.transport.write(ONEREAD[close])
            if close:
                self.transport.loseConnection()
            return
        if path.startswith(b"/json/"):
            stream = False
        elif path.startswith(b"/sse/"):
            stream = True
        else:
            stream = b'"stream":true' in body or b'"stream": true' in body
        self.transport.write(RESPONSES[(stream, close)])
        if close:
            self.transport.loseConnection()

    def _slow(self, close: bool):
        self.busy = True
        f = self.factory
        f.slow_active += 1
        f.slow_peak = max(f.slow_peak, f.slow_active)
        self.in_slow = True
        self.transport.write(SSE_HEAD + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        events = list(SSE_EVENTS)
        # role chunk at once; then one content chunk per interval; the tail with the last one
        first, contents, tail = events[0], events[1:1 + len(WORDS)], events[1 + len(WORDS):]
        self.transport.write(_http_chunk(first))
        queue = list(contents)

        def step():
            self.timer = None
            if not self.transport.connected:
                return
            data = _http_chunk(queue.pop(0))
            if not queue:
                self._slow_ended(done=True)
                data += b"".join(_http_chunk(e) for e in tail) + b"0\r\n\r\n"
                self.transport.write(data)
                self.busy = False
                if close:
                    self.transport.loseConnection()
                else:
                    self._process()
                return
            self.transport.write(data)
            self.timer = reactor.callLater(self.factory.slow_interval, step)

        self.timer = reactor.callLater(self.factory.slow_interval, step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slow-interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    factory = Factory.forProtocol(FakeUpstream)
    factory.slow_interval = args.slow_interval
    factory.slow_active = factory.slow_peak = factory.slow_done = factory.connections = 0
    factory.noisy = False
    port = reactor.listenTCP(args.port, factory, backlog=4096, interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
