"""The WebSocket endpoint at ``/``: one autobahn protocol instance per connection. It runs the
``connect`` handshake (auth, version, timeout), dispatches requests to ``GatewayMethods``,
numbers the events it sends and sends ticks. The contract is docs/ws-protocol.rst.
"""
from __future__ import annotations

import uuid
from typing import Any, Mapping, Optional, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, ITCPTransport
from twisted.logger import Logger

from .. import __version__
from ..agents.failures import describe_failure
from ..auth import NOT_EXEMPTABLE_HEADERS, Authenticator, BadForwardedFor, client_address
from ..auth_refusal import (
    LOCKED_OUT,
    MISSING_CREDENTIAL,
    WRONG_CREDENTIAL,
    credential_refusal,
    forwarded_for_refusal,
)
from ..redis.connection import RedisUnavailable
from ..request_log import escape_for_log
from .backlog import MAX_BACKLOG_BYTES, SendBacklog
from .frames import (
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    ProtocolError,
    Request,
    encode_error,
    encode_event,
    encode_response,
    failure_error,
    invalid,
    parse_connect,
    parse_request,
)
from .methods import EVENTS, GatewayMethods

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024   # after connect; gateway.ws.maxFrameBytes
# Before a successful connect nobody has proven anything: a connect frame is well under
# 1 KiB, and a bigger cap would let anyone make the reactor parse megabytes of JSON.
PRE_AUTH_MAX_BYTES = 16 * 1024
TICK_INTERVAL = 15.0
HANDSHAKE_TIMEOUT = 10.0
SHUTDOWN_CLOSE_WAIT = 5.0
SERVER_NAME = "moltbot-gw"
HOW_TO_SEND = 'auth {"token": ...} in connect'   # the hint for a connect without a secret
# How a refused connect is answered (auth_refusal.py words it): error code, close code.
REFUSALS = {
    MISSING_CREDENTIAL: (ErrorCode.UNAUTHORIZED, CloseCode.AUTH_FAILED),
    WRONG_CREDENTIAL: (ErrorCode.UNAUTHORIZED, CloseCode.AUTH_FAILED),
    LOCKED_OUT: (ErrorCode.RATE_LIMITED, CloseCode.RATE_LIMITED),
}


class GatewayWSProtocol(WebSocketServerProtocol):
    # Not ``log``: autobahn's own (txaio, debug-filtered) logger lives there.
    _log = Logger()

    def __init__(self):
        super().__init__()
        self.conn_id = "conn_" + uuid.uuid4().hex[:16]
        self.address = "unknown"
        # False for a browser page (it sent Origin) or a relayed client: never exempt from
        # the failed-auth lockout, even from loopback (docs/operations.rst).
        self.exemptable = False
        self._charged = False
        self.authenticated = False
        self.client_id: Optional[str] = None
        self._seq = 0
        self._refused = False
        self._handshake_timer = None
        self._ticker: Optional[task.LoopingCall] = None
        self._pending: set[defer.Deferred] = set()
        self._backlog: Optional[SendBacklog] = None

    # -- connection lifecycle --------------------------------------------------------

    def onConnect(self, request):
        assert self.transport is not None  # connected
        peer = self.transport.getPeer()
        forwarded = request.headers.get("x-forwarded-for")
        try:
            self.address = client_address(getattr(peer, "host", None) or "unknown", forwarded,
                                          self.factory.auth.trusted_proxies)
        except BadForwardedFor as error:
            raise ConnectionDeny(400, forwarded_for_refusal(error).message) from error
        self.exemptable = not any(name in request.headers for name in NOT_EXEMPTABLE_HEADERS)
        return None

    def onOpen(self):
        self.factory.connections.add(self)
        # The transport still names the HTTP channel it served before the upgrade as its
        # producer; from now on it tells this connection's backlog when it is full.
        self._backlog = SendBacklog(self.factory.max_backlog, self._client_too_slow)
        transport = cast(IConsumer, self.transport)  # a TCP transport: a consumer too
        transport.unregisterProducer()
        transport.registerProducer(self._backlog, True)
        self._handshake_timer = self.factory.reactor.callLater(
            self.factory.handshake_timeout, self._handshake_timed_out)

    def onClose(self, wasClean, code, reason):
        self.factory.connection_closed(self)
        if not self.authenticated and getattr(self, "failedByMe", False):
            # autobahn failed the connection before connect: an oversized frame (1009),
            # invalid UTF-8 (1007) or broken framing (1002). That is a failed attempt too.
            self._charge()
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        # Stops this connection's waits; the runs themselves go on (docs: runs outlive
        # their connection).
        for d in list(self._pending):
            d.cancel()
        if self.authenticated:
            self._log.debug("WebSocket {conn_id} from {address} closed ({code})",
                           conn_id=self.conn_id, address=self.address, code=code)

    # -- sending ------------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        return self.state == WebSocketProtocol.STATE_OPEN

    def send_response(self, request_id: Optional[str], payload: Any) -> None:
        if self.can_send:
            self._send_frame(encode_response(request_id, payload))

    def send_error(self, request_id: Optional[str], error: ProtocolError) -> None:
        if self.can_send:
            self._send_frame(encode_error(request_id, error))

    def send_event(self, event: str, payload: Mapping[str, Any]) -> None:
        if self.can_send:
            self._seq += 1
            self._send_frame(encode_event(event, payload, self._seq))

    def _send_frame(self, frame: bytes) -> None:
        # Not ``_send``: autobahn's own ``_send()`` (chopped/synced writes) must not be
        # overridden.
        self.sendMessage(frame)
        if self._backlog is not None:
            self._backlog.wrote(len(frame))

    def _client_too_slow(self, waiting: int) -> None:
        self._log.warn("WebSocket {conn_id} from {address} stopped reading ({waiting} bytes"
                       " waiting); dropping it", conn_id=self.conn_id, address=self.address,
                       waiting=waiting)
        self._refused = True
        # a close frame would wait behind the backlog
        cast(ITCPTransport, self.transport).abortConnection()

    def close_with(self, code: int, reason: str) -> None:
        """Close with ``code`` (including 1001, which autobahn's ``sendClose`` reserves)."""
        self._refused = True
        if not self.can_send:
            return
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(code, reason)
        else:
            self.sendCloseFrame(code, reason.encode("utf-8"))

    def _charge(self) -> None:
        """Count this connection's malformed handshake as a failed auth attempt (once)."""
        if not self._charged:
            self._charged = True
            self.factory.auth.charge(self.address, exemptable=self.exemptable)

    def _refuse(self, request_id: Optional[str], error: ProtocolError, close_code: int) -> None:
        self.send_error(request_id, error)
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self.close_with(close_code, error.message[:120])

    # -- receiving ------------------------------------------------------------------------

    def onMessage(self, payload, isBinary):
        if self._refused:
            return
        try:
            if isBinary:
                raise invalid("binary frames are not supported; send JSON in text frames")
            request = parse_request(payload)
        except ProtocolError as error:
            if not self.authenticated:
                self._charge()
                self._refuse(error.request_id, ProtocolError(
                    ErrorCode.HANDSHAKE_REQUIRED,
                    f"the first frame must be a connect request ({error.message})"),
                    CloseCode.PROTOCOL_ERROR)
            else:
                self.send_error(error.request_id, error)
            return
        if not self.authenticated:
            self._handshake(request)
            return
        if request.method == "connect":
            self.send_error(request.id, invalid("this connection is already connected"))
            return
        handler = self.factory.methods.table.get(request.method)
        if handler is None:
            self.send_error(request.id, ProtocolError(
                ErrorCode.UNKNOWN_METHOD, f'unknown method "{request.method[:64]}"'))
            return
        self._dispatch(handler, request)

    def _dispatch(self, handler, request: Request) -> None:
        d = defer.Deferred.fromCoroutine(handler(self, request))
        self._pending.add(d)

        def settled(result):
            self._pending.discard(d)
            return result

        d.addBoth(settled)
        d.addCallbacks(lambda payload: self.send_response(request.id, payload),
                       self._failed, errbackArgs=(request,))

    def _failed(self, failure, request: Request) -> None:
        if failure.check(defer.CancelledError):
            return  # the connection closed while the method waited
        if failure.check(ProtocolError):
            self.send_error(request.id, failure.value)
            return
        if failure.check(RedisUnavailable):   # a session-store method while Redis is gone
            self.send_error(request.id, failure_error(describe_failure(failure.value)))
            return
        self._log.failure("method {method} failed on {conn_id}", failure,
                         method=request.method, conn_id=self.conn_id)
        self.send_error(request.id, ProtocolError(ErrorCode.INTERNAL, "internal error"))

    # -- handshake ------------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        if request.method != "connect":
            self._charge()
            self._refuse(request.id, ProtocolError(
                ErrorCode.HANDSHAKE_REQUIRED,
                "the first request must be connect; got " f'"{request.method[:64]}"'),
                CloseCode.PROTOCOL_ERROR)
            return
        try:
            hello = parse_connect(request.params)
        except ProtocolError as error:
            if error.code != ErrorCode.PROTOCOL_MISMATCH:  # a version skew is no attack
                self._charge()
            self._refuse(request.id, error, CloseCode.PROTOCOL_ERROR)
            return
        outcome = self.factory.auth.authenticate(self.address, hello.secret,
                                                 exemptable=self.exemptable)
        refusal = credential_refusal(outcome, hello.secret, HOW_TO_SEND)
        if refusal is not None:
            code, close_code = REFUSALS[refusal.reason]
            self._refuse(request.id, ProtocolError(code, refusal.message,
                                                   retry_after_ms=refusal.retry_after_ms),
                         close_code)
            return
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self.authenticated = True
        self.client_id = hello.client_id
        # Only now may frames be as large as the post-auth limit (before sending hello-ok:
        # autobahn applies the limit to what it sends, too).
        self.maxFramePayloadSize = self.factory.max_payload
        self.maxMessagePayloadSize = self.factory.max_payload
        self._log.info("WebSocket {conn_id} from {address}: client {client} {version} on "
                      "{platform}", conn_id=self.conn_id, address=self.address,
                      client=escape_for_log(hello.client_id),
                      version=escape_for_log(hello.client_version or "?"),
                      platform=escape_for_log(hello.client_platform or "?"))
        self.send_response(request.id, self.factory.hello_payload(self.conn_id))
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = self.factory.reactor
        self._ticker.start(self.factory.tick_interval, now=False)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        seconds = self.factory.handshake_timeout
        self._refuse(None, ProtocolError(ErrorCode.HANDSHAKE_TIMEOUT,
                                         f"no connect request within {seconds:g} s"),
                     CloseCode.HANDSHAKE_TIMEOUT)

    def _tick(self) -> None:
        self.send_event("tick", {"ts": int(self.factory.reactor.seconds() * 1000)})


class GatewayWSFactory(WebSocketServerFactory):
    """What every connection shares: auth, the methods (bound to the runtime), the limits,
    and the set of open connections (for ``status`` and shutdown)."""

    protocol = GatewayWSProtocol

    def __init__(self, auth: Authenticator, methods: GatewayMethods, *, reactor=None,
                 tick_interval: float = TICK_INTERVAL,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 max_payload: int = MAX_PAYLOAD_BYTES,
                 max_backlog: int = MAX_BACKLOG_BYTES):
        # server=: the Server header of the 101 answer names us, not AutobahnPython/<version>
        super().__init__(reactor=reactor, server=SERVER_NAME)
        self.auth = auth
        self.methods = methods
        self.tick_interval = tick_interval
        self.handshake_timeout = handshake_timeout
        self.max_backlog = max_backlog  # unread bytes after which a client is dropped
        # One set, shared with the methods (``status`` counts them).
        self.connections: set[GatewayWSProtocol] = methods.connections
        self._idle_waiters: list[defer.Deferred] = []
        self.set_max_payload(max_payload)

    def set_max_payload(self, max_payload: int) -> None:
        """Messages (and frames) larger than this, once connected, close the connection with
        1009; before connect the limit is ``PRE_AUTH_MAX_BYTES`` (or this, if smaller).
        Autobahn checks a frame's length from its header, before buffering its payload."""
        self.max_payload = max_payload
        pre_auth = min(PRE_AUTH_MAX_BYTES, max_payload)
        # failByDrop=False: on a protocol violation send the close code (1009, 1007, ...)
        # instead of dropping the TCP connection without a word.
        self.setProtocolOptions(maxFramePayloadSize=pre_auth,
                                maxMessagePayloadSize=pre_auth, failByDrop=False)

    def hello_payload(self, conn_id: str) -> dict:
        return {"type": "hello-ok", "protocol": PROTOCOL_VERSION,
                "server": {"name": SERVER_NAME, "version": __version__, "connId": conn_id},
                "features": {"methods": self.methods.names, "events": list(EVENTS)},
                "policy": {"maxPayload": self.max_payload,
                           "tickIntervalMs": int(self.tick_interval * 1000)}}

    def connection_closed(self, connection: GatewayWSProtocol) -> None:
        self.connections.discard(connection)
        self.methods.connection_closed(connection)
        if not self.connections:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def close_all(self, code: int = CloseCode.GOING_AWAY,
                  reason: str = "gateway shutting down") -> defer.Deferred:
        """Tell every client, close every connection; fires once all are gone (connections
        that do not finish the closing handshake in time are dropped)."""
        for connection in list(self.connections):
            connection.send_event("shutdown", {"reason": reason})
            connection.close_with(code, reason)
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(d)
        timer = self.reactor.callLater(SHUTDOWN_CLOSE_WAIT, self._abort_remaining)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done)

    def _abort_remaining(self) -> None:
        for connection in list(self.connections):
            if connection.transport is not None:
                cast(ITCPTransport, connection.transport).abortConnection()
