"""Slow clients: trickled headers and bodies, idle keep-alive connections.

Raw TCP clients (so nothing smooths the byte timing over) against a real gateway with short
``gateway.http`` timeouts; the request deadlines are checked in memory, bytes fed to the
gateway's site on a clock the test advances (exact times, no real sleeps). A request that
misses its deadline gets an OpenAI-shaped 408 and the connection closes; an idle connection
is closed; a connection that is busy answering (a long stream, a WebSocket) is not cut off.
"""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport

from moltbot_gw.config import parse_config, with_overrides
from moltbot_gw.service import GatewayService

from .conftest import CHAT_ENABLED, TOKEN
from .test_ws_protocol import open_client, upstream_config

PATH = b"/v1/chat/completions"


def timeouts(headers=5.0, request=5.0, idle=5.0, base=CHAT_ENABLED) -> dict:
    config = json.loads(json.dumps(base))
    config.setdefault("gateway", {}).setdefault("http", {}).update(
        headersTimeoutSeconds=headers, requestTimeoutSeconds=request, idleTimeoutSeconds=idle)
    return config


class RawClient(Protocol):
    """Collects everything the gateway sends; ``closed`` fires with it when it hangs up."""

    def __init__(self):
        self.received = b""
        self.closed: Deferred = Deferred()
        self.closed_at = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed_at = reactor.seconds()
        self.closed.callback(self.received)

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


async def connect(port: int) -> RawClient:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient())


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


async def trickle(client: RawClient, data: bytes, interval: float, piece: int = 1) -> None:
    """Send ``data`` ``piece`` bytes at a time until it is all sent or the gateway hangs up."""
    for start in range(0, len(data), piece):
        if not client.is_open:
            return
        client.transport.write(data[start:start + piece])
        await sleep(interval)


def chat_request(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + PATH + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
            + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n")


def assert_408(raw: bytes, what: str) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), raw[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "timeout_error"
    assert error["code"] == "request_timeout"
    assert what in error["message"]


class ClockReactor(MemoryReactorClock):
    """A reactor whose time the test advances. The session store is built but not used by
    these tests; it gets the real reactor's thread pool."""

    def getThreadPool(self):
        return reactor.getThreadPool()


class MemoryClient:
    """One HTTP connection to a gateway's site in memory (no socket), on ``clock``: what the
    gateway wrote is ``transport.value()``; ``closed_at`` is the clock's time when it hung up.
    """

    def __init__(self, service: GatewayService, clock: ClockReactor):
        client, server = (IPv4Address("TCP", "127.0.0.1", 40000),
                          IPv4Address("TCP", "127.0.0.1", 18789))
        self.clock = clock
        self.closed_at = None
        self.transport = StringTransport(hostAddress=server, peerAddress=client)
        self.channel = service.site.buildProtocol(client)
        self.channel.makeConnection(self.transport)

    def trickle(self, data: bytes, interval: float, piece: int = 1) -> None:
        """Send ``data`` ``piece`` bytes at a time, ``interval`` seconds apart, until it is all
        sent or the gateway hangs up."""
        for start in range(0, len(data), piece):
            if self.transport.disconnecting:
                return
            self.channel.dataReceived(data[start:start + piece])
            self.clock.advance(interval)
            if self.transport.disconnecting and self.closed_at is None:
                self.closed_at = self.clock.seconds()


def memory_gateway(state_dir, raw: dict) -> tuple[GatewayService, ClockReactor]:
    """A gateway whose HTTP deadlines run on a clock the test advances (not started: its
    site is fed bytes directly)."""
    clock = ClockReactor()
    config = with_overrides(parse_config(raw, env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN},
                                         state_dir=state_dir), port=0)
    return GatewayService(config, reactor=clock), clock


def test_headers_trickled_byte_by_byte_get_408_at_the_headers_deadline(state_dir):
    service, clock = memory_gateway(state_dir, timeouts(headers=0.5))
    client = MemoryClient(service, clock)
    started = clock.seconds()
    # One byte every 50 ms keeps resetting the idle timeout (5 s); the deadline does not move.
    client.trickle(chat_request(b"{}") * 10, interval=0.05)
    elapsed = client.closed_at - started
    assert 0.45 <= elapsed < 1.5, elapsed
    assert_408(client.transport.value(), "request headers did not arrive within 0.5 s")


def test_a_body_trickled_past_the_request_deadline_gets_408(state_dir):
    service, clock = memory_gateway(state_dir, timeouts(request=1.0))
    client = MemoryClient(service, clock)
    started = clock.seconds()
    body = json.dumps({"model": "moltbot", "messages": [
        {"role": "user", "content": "x" * 5000}]}).encode()
    client.channel.dataReceived(chat_request(body))
    client.trickle(body, interval=0.05, piece=10)
    elapsed = client.closed_at - started
    assert 0.95 <= elapsed < 2.0, elapsed
    assert_408(client.transport.value(), "whole request did not arrive within 1 s")


@pytest_twisted.ensureDeferred
async def test_a_slow_but_timely_request_is_answered_and_the_deadlines_restart(start_gateway):
    gw = await start_gateway(timeouts(headers=0.6, request=1.2))
    client = await connect(gw.port)
    body = json.dumps({"model": "moltbot", "messages": [
        {"role": "user", "content": "pacing"}]}).encode()
    for _ in range(2):  # two requests on one keep-alive connection, each taking 0.6-0.8 s
        client.received = b""
        await trickle(client, chat_request(body), interval=0.4,
                      piece=len(chat_request(body)) // 2 + 1)
        await trickle(client, body, interval=0.2, piece=len(body) // 2 + 1)
        for _ in range(100):
            if b'"pacing"' in client.received:
                break
            await sleep(0.02)
        assert client.received.startswith(b"HTTP/1.1 200 "), client.received[:300]
        assert client.is_open
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_idle_keepalive_connection_is_closed_after_the_idle_timeout(start_gateway):
    gw = await start_gateway(timeouts(idle=0.5))
    client = await connect(gw.port)
    client.transport.write(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    await sleep(0.2)
    assert client.received.startswith(b"HTTP/1.1 200 "), client.received
    assert client.is_open
    answered = reactor.seconds()
    await client.closed
    assert 0.2 <= client.closed_at - answered < 1.5


@pytest_twisted.ensureDeferred
async def test_a_connection_that_never_sends_a_byte_is_closed(start_gateway):
    gw = await start_gateway(timeouts(idle=0.5))
    started = reactor.seconds()
    client = await connect(gw.port)
    raw = await client.closed
    assert raw == b""  # nothing was asked, so there is nothing to answer
    assert 0.45 <= client.closed_at - started < 1.5


@pytest_twisted.ensureDeferred
async def test_a_stream_longer_than_every_deadline_is_not_cut_off(start_gateway, upstream):
    # 8 chunks 0.2 s apart: 1.6 s of answering against 0.5 s deadlines.
    upstream.script(text="one two three four five six seven eight", delay=0.2)
    gw = await start_gateway(timeouts(headers=0.5, request=0.5, idle=0.5,
                                      base={**upstream_config(upstream), **CHAT_ENABLED}))
    client = await connect(gw.port)
    body = json.dumps({"model": "moltbot", "stream": True,
                       "messages": [{"role": "user", "content": "go"}]}).encode()
    client.transport.write(chat_request(body) + body)
    for _ in range(300):
        if b"data: [DONE]" in client.received:
            break
        await sleep(0.02)
    assert b"data: [DONE]" in client.received, client.received[-300:]
    assert b"eight" in client.received
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_idle_websocket_outlives_the_http_idle_timeout(start_gateway):
    gw = await start_gateway(timeouts(headers=0.3, request=0.3, idle=0.3))
    ws = await threads.deferToThread(open_client, gw.ws_url)
    try:
        await sleep(1.0)
        reply = await threads.deferToThread(ws.call, "health")
        assert reply["ok"], reply
    finally:
        await threads.deferToThread(ws.close)


@pytest_twisted.ensureDeferred
async def test_timeouts_are_validated_and_reloadable(start_gateway):
    from moltbot_gw.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as refused:
        parse_config({"gateway": {"http": {"headersTimeoutSeconds": 0}}}, env={})
    assert refused.value.errors[0].startswith(
        "gateway.http.headersTimeoutSeconds: expected a positive number")

    gw = await start_gateway(timeouts(headers=5.0))
    reloaded = parse_config(timeouts(headers=0.3), env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN},
                            state_dir=gw.service.config.state_dir)
    gw.service.reload(reloaded)
    client = await connect(gw.port)
    started = reactor.seconds()
    client.transport.write(b"GET /hea")
    raw = await client.closed
    assert_408(raw, "within 0.3 s")
    assert client.closed_at - started < 1.5
