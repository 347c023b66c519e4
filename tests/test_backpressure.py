"""Backpressure: a client that stops reading its SSE stream pauses the gateway's read from
the upstream, so nothing is buffered without bound; when it reads again, every byte comes."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN
from .test_chat_completions import until, within

WORD = "y" * 99_999 + " "       # 100 kB a "word", so the fake upstream is never the limit
WORDS = 200                     # a 20 MB reply, streamed as fast as the upstream can


class SlowReader(Protocol):
    """Counts what arrives (cheaply) and notices the end of the stream."""

    def __init__(self, end_marker: bytes):
        self.received = 0
        self.letters = 0
        self._tail = b""
        self._end_marker = end_marker
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += len(data)
        self.letters += data.count(b"y")
        joined = self._tail + data
        self._tail = joined[-20:]
        if self._end_marker in joined and not self.done.called:
            self.done.callback(None)


ENDPOINTS = {
    "chat": (PATH, {"model": "moltbot:beta", "stream": True,
                    "messages": [{"role": "user", "content": "go"}]}, b"data: [DONE]"),
    "responses": ("/v1/responses", {"model": "moltbot:beta", "stream": True, "input": "go"},
                  b"event: response.completed"),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_pauses_the_upstream_read(start_gateway, upstream,
                                                                    endpoint):
    raw = config(upstream, gateway={"http": {"endpoints": {
        "chatCompletions": {"enabled": True}, "responses": {"enabled": True}}}})
    raw["agents"]["defaults"] = {"maxReplyChars": 2 * WORDS * len(WORD)}  # let it all through
    gw = await start_gateway(raw)
    upstream.script(text=WORD * WORDS)
    path, payload, end_marker = ENDPOINTS[endpoint]
    body = json.dumps(payload).encode()
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port),
                                   SlowReader(end_marker))
    client.transport.pauseProducing()          # the client will not read
    client.transport.write(
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await deferLater(reactor, 1.0, lambda: None)
    [run] = gw.service.runner.active.values()
    first = len(run.text)
    await deferLater(reactor, 1.0, lambda: None)
    relayed = len(run.text)
    # Only what fits in the kernel's socket buffers (which grow a little on their own) and
    # one transport buffer got through; the rest of the 20 MB waits upstream.
    assert relayed < 8_000_000, relayed
    assert relayed - first < 1_000_000, (first, relayed)
    assert run.flow.paused

    client.transport.resumeProducing()          # the client reads again: everything arrives
    await within(client.done, 30)
    # all of it (the Responses API repeats the text in its closing events)
    assert client.letters >= WORDS * 99_999
    client.transport.loseConnection()


# --- a runaway reply ------------------------------------------------------------------------

LIMIT = 50_000


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest_twisted.ensureDeferred
async def test_a_reply_longer_than_max_reply_chars_is_cut_off_and_reported(
        start_gateway, upstream, http, stream):
    """An upstream that never stops talking (here 2 MB against a 50,000-character limit) is
    cut off: the client gets the documented error, the upstream connection is closed, and the
    transcript keeps what was relayed."""
    raw = config(upstream)
    raw["agents"]["defaults"] = {"maxReplyChars": LIMIT}
    gw = await start_gateway(raw)
    upstream.script(text=("z" * 999 + " ") * 2000)
    response = await within(http.post(
        gw.url + PATH, headers=gw.auth_headers,
        json={"model": "moltbot:beta", "stream": stream, "user": "runaway",
              "messages": [{"role": "user", "content": "talk"}]}), 10)
    body = await within(response.content(), 10)
    message = f"longer than the gateway's limit of {LIMIT} characters"
    if stream:
        assert response.code == 200
        frames = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert frames[-1] == b"[DONE]"
        error = json.loads(frames[-2])["error"]
        assert message in error["message"]
        relayed = sum(len(choice["delta"].get("content") or "")
                      for frame in frames[:-2] for choice in json.loads(frame)["choices"])
        assert 0 < relayed <= LIMIT
        # the rest was not read: the stream's connection was closed, not returned to the pool
        await until(lambda: upstream.open_connections == 0, 5)
    else:
        # one JSON body (bounded on its own) was read whole; only then is it too long
        assert response.code == 502
        error = json.loads(body)["error"]
        assert message in error["message"] and error["code"] == "upstream_reply_too_large"
    assert gw.service.runner.active == {}
    [turn] = [r for r in await gw.service.store.load_history(
        "agent:beta:openai-user:runaway") if r.get("role") == "assistant"]
    assert turn["status"] == "error" and len(turn["content"]) <= LIMIT
