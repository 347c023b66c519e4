"""A client of the WebSocket control protocol on autobahn's Twisted client, for the CLI:
connect and authenticate, call methods, follow an ``agent`` run. Not a general SDK.
"""
from __future__ import annotations

import itertools
import json
import platform
from typing import Any, Callable, Mapping, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.internet import defer
from twisted.internet import error as internet_error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from .. import __version__
from .frames import PROTOCOL_VERSION

EventHandler = Callable[[str, Mapping[str, Any]], None]


class GatewayUnreachable(Exception):
    """No WebSocket connection could be opened; ``reason`` says why, in a few words."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot reach the gateway at {url}: {reason}")
        self.url = url
        self.reason = reason


class GatewayError(Exception):
    """The gateway answered with an error, or closed the connection."""

    def __init__(self, code: str, message: str, details: Optional[Mapping] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def ws_url(url: str) -> str:
    """Accept ``http(s)://`` for the gateway's base URL too: same port, same host."""
    if url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    if url.count("/") == 2:
        url += "/"
    return url


class _Protocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client._received(payload)

    def onClose(self, wasClean, code, reason):
        self.factory.client._closed(code, reason)


class _Factory(WebSocketClientFactory):
    client: GatewayClient   # the client its protocol reports to (set before connecting)


class GatewayClient:
    def __init__(self, reactor, url: str, on_event: Optional[EventHandler] = None):
        self.reactor = reactor
        self.url = ws_url(url)
        self.on_event = on_event
        self.hello: Optional[dict] = None
        self._protocol: Optional[_Protocol] = None     # once the WebSocket is open
        self._connection: Optional[IProtocol] = None    # once TCP is connected
        self._open: defer.Deferred = defer.Deferred()
        self._handlers: dict[str, Callable[[dict], bool]] = {}
        self._ids = itertools.count(1)
        self._close_reason: Optional[GatewayError] = None
        self._close_waiters: list[defer.Deferred] = []

    @classmethod
    async def connect(cls, reactor, url: str, auth: Optional[Mapping[str, str]],
                      timeout: float = 10.0, on_event: Optional[EventHandler] = None,
                      client_id: str = "moltbot-cli") -> "GatewayClient":
        """Open the connection and run the handshake. Raises ``GatewayUnreachable`` when
        nothing answers, ``GatewayError`` when the gateway refuses."""
        client = cls(reactor, url, on_event)
        await client._connect(timeout)
        try:
            client.hello = await client.call("connect", {
                "minProtocol": PROTOCOL_VERSION, "maxProtocol": PROTOCOL_VERSION,
                "client": {"id": client_id, "version": __version__,
                           "platform": platform.system().lower() or "unknown"},
                "auth": dict(auth or {})}).addTimeout(timeout, reactor)
        except defer.TimeoutError:
            client._abort()
            raise GatewayError("TIMEOUT", f"no answer to connect within {timeout:g} s") from None
        return client

    async def _connect(self, timeout: float) -> None:
        try:
            secure, host, port, _resource, _path, _params = parse_url(self.url)
        except Exception as e:
            raise GatewayUnreachable(self.url, f"not a WebSocket URL ({e})") from e
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self.reactor, host, port,
                                                           timeout=timeout)
        if secure:
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        factory = _Factory(self.url, reactor=self.reactor)
        factory.protocol = _Protocol
        factory.client = self
        try:
            self._connection = await endpoint.connect(factory)
        except internet_error.ConnectionRefusedError:
            raise GatewayUnreachable(self.url, "connection refused") from None
        except (internet_error.TimeoutError, internet_error.DNSLookupError,
                internet_error.ConnectError) as e:
            raise GatewayUnreachable(self.url, _describe(e)) from e
        try:
            await self._open.addTimeout(timeout, self.reactor)
        except defer.TimeoutError:
            self._abort()
            raise GatewayUnreachable(self.url, "no WebSocket handshake within "
                                               f"{timeout:g} s") from None
        except GatewayError as e:
            raise GatewayUnreachable(self.url,
                                     f"the WebSocket handshake failed ({e.message})") from e

    # -- calls ----------------------------------------------------------------------------

    def call(self, method: str, params: Optional[Mapping] = None) -> defer.Deferred:
        """Fires with the payload of the (first) response; ``GatewayError`` on an error."""
        d: defer.Deferred = defer.Deferred()

        def handle(frame: dict) -> bool:
            _settle(d, frame)
            return True

        self._send(method, params, handle, d)
        return d

    def agent(self, params: Mapping, on_accepted: Optional[Callable[[dict], None]] = None
              ) -> defer.Deferred:
        """Call ``agent``: ``on_accepted`` gets the first response's payload; fires with the
        run's result payload (second response)."""
        d: defer.Deferred = defer.Deferred()
        state = {"accepted": False}

        def handle(frame: dict) -> bool:
            if frame.get("ok") and not state["accepted"]:
                state["accepted"] = True
                if on_accepted is not None:
                    on_accepted(frame.get("payload") or {})
                return False
            _settle(d, frame)
            return True

        self._send("agent", params, handle, d)
        return d

    def close(self) -> None:
        if self._protocol is not None and self._protocol.state == _Protocol.STATE_OPEN:
            self._protocol.sendClose(1000)

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Close and wait (a little) for the closing handshake, so the gateway sees a clean
        close rather than a dropped connection."""
        self.close()
        if self._protocol is None or self._close_reason is not None:
            return
        waiting: defer.Deferred = defer.Deferred()
        self._close_waiters.append(waiting)
        try:
            await waiting.addTimeout(timeout, self.reactor)
        except defer.TimeoutError:
            self._abort()

    def _abort(self) -> None:
        transport = getattr(self._connection, "transport", None)
        if transport is not None:
            transport.abortConnection()

    # -- plumbing -------------------------------------------------------------------------

    def _send(self, method, params, handle, d) -> None:
        if self._close_reason is not None or self._protocol is None:
            d.errback(self._close_reason or GatewayError("CLOSED", "not connected"))
            return
        request_id = f"r{next(self._ids)}"
        self._handlers[request_id] = handle
        self._protocol.sendMessage(_encode({"type": "req", "id": request_id,
                                            "method": method, "params": dict(params or {})}))

    def _opened(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        if not self._open.called:
            self._open.callback(None)

    def _received(self, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        # Any: the fields as the gateway sent them (a str event name, a str id)
        event: Any = frame.get("event")
        request_id: Any = frame.get("id")
        if frame.get("type") == "event":
            if self.on_event is not None:
                self.on_event(event, frame.get("payload") or {})
        elif frame.get("type") == "res":
            handle = self._handlers.get(request_id)
            if handle is not None and handle(frame):
                self._handlers.pop(request_id, None)

    def _closed(self, code: Optional[int], reason: Optional[str]) -> None:
        text = f"the gateway closed the connection ({code}: {reason})" if code else \
            "the connection was lost"
        self._close_reason = GatewayError("CLOSED", text, {"closeCode": code})
        if not self._open.called:
            self._open.errback(self._close_reason)
        handlers, self._handlers = self._handlers, {}
        for handle in handlers.values():
            handle({"ok": False, "error": {"code": "CLOSED", "message": text,
                                           "details": {"closeCode": code}}})
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(code)


def _settle(d: defer.Deferred, frame: dict) -> None:
    if d.called:
        return
    if frame.get("ok"):
        d.callback(frame.get("payload"))
        return
    error = frame.get("error") or {}
    d.errback(GatewayError(str(error.get("code", "ERROR")),
                           str(error.get("message", "the gateway answered with an error")),
                           error.get("details")))


def _encode(frame: dict) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode("utf-8")


def _describe(error: Exception) -> str:
    if isinstance(error, internet_error.TimeoutError):
        return "connection timed out"
    if isinstance(error, internet_error.DNSLookupError):
        return "host name not found"
    return str(error) or type(error).__name__
