"""The HTTP client every model provider shares: one persistent connection pool, JSON POSTs whose
response body is handed to a sink as it arrives, idle/connect timeouts, one retry of a pooled
connection the upstream had closed (no idle timer with ``idle_timeout=None``: a whole answer
is silent until it is complete). Failures become typed ``ProviderError``s (classified by
``upstream_errors``); it knows no provider's wire format.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Optional, cast
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

from hyperlink import EncodedURL
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    ContentDecoderAgent,
    GzipDecoder,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from ..shared_message import compact_body
from .errors import ProviderError, ProviderTimeout, ProviderUnavailable
from .upstream_errors import error_from_status

MAX_ERROR_BODY_BYTES = 64 * 1024

# How a finished body's connectionLost is called when nobody gives a reason.
CONNECTION_DONE = Failure(ResponseDone())


@dataclass(frozen=True)
class UpstreamResponse:
    """What a body sink learns before the first body byte."""

    status: int
    headers: Headers

    @property
    def content_type(self) -> str:
        values = self.headers.getRawHeaders(b"content-type") or [b""]
        return values[0].split(b";", 1)[0].strip().decode("latin-1").lower()


class BodySink(TypingProtocol):
    """Receives a successful (2xx) response body. Raising from either method aborts the
    request: the connection is closed and the call fails with that exception."""

    def response_started(self, response: UpstreamResponse) -> None: ...

    def data_received(self, data: bytes) -> None: ...


def _jsonable(value: Any) -> Any:
    # request messages arrive as read-only mappings (MappingProxyType) from frozen config/state
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class UpstreamClient:
    """Shared HTTP machinery for providers; one instance (and one pool) per gateway.

    ``clock`` drives the idle timeouts and defaults to ``reactor``; tests may pass a
    ``task.Clock`` to step time by hand. ``agent`` (an ``IAgent``) replaces the pooled
    ``Agent`` and its connect timeout: tests pass treq's ``RequestTraversalAgent`` to drive a
    provider in memory against a resource that speaks its wire format.
    """

    log = Logger()
    metrics = None  # a GatewayMetrics, told of every call

    def __init__(self, reactor, pool: Optional[HTTPConnectionPool] = None,
                 clock: Optional[IReactorTime] = None, agent: Optional[IAgent] = None):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 128
        self.pool = pool
        self._agent = agent
        self._agents: dict[float, IAgent] = {}

    def _agent_for(self, connect_timeout: float) -> IAgent:
        """The pooled agent with this connect timeout: gzip answers decoded, no redirects
        followed and no cookies kept (upstream APIs need none; one jar would be shared)."""
        agent = self._agents.get(connect_timeout)
        if agent is None:
            base = self._agent if self._agent is not None else Agent.usingEndpointFactory(
                self._reactor, _EndpointPerOrigin(self._reactor, connect_timeout),
                pool=self.pool)
            agent = self._agents[connect_timeout] = ContentDecoderAgent(
                base, [(b"gzip", GzipDecoder)])
        return agent

    def post_json(self, url: str, payload: Mapping[str, Any], sink: BodySink, *,
                  label: str, headers: Mapping[str, str] | None = None,
                  connect_timeout: float = 10.0, idle_timeout: Optional[float] = 120.0,
                  secrets: Iterable[Optional[str]] = (), flow=None) -> Deferred:
        """POST ``payload`` as JSON and hand a 2xx body to ``sink`` as it arrives.

        ``idle_timeout`` bounds each silence (before the headers, between body bytes);
        ``None`` sets no such limit, for an answer that is silent until it is whole: the
        caller's own deadline (the run's timeout) must then cancel it.
        Fires with the ``UpstreamResponse`` once the body is complete; fails with a
        ``ProviderError`` (or whatever ``sink`` raised). Cancelling it aborts the request and
        closes the connection, also mid-body. ``flow`` (a ``FlowControl``) may pause reading
        the body while its consumer catches up.
        """
        body = compact_body(payload, default=_jsonable)   # stored history: encoded once
        all_headers = {"Content-Type": "application/json",
                       "Accept": "text/event-stream, application/json"}
        all_headers.update(headers or {})
        exchange = _Exchange(label, sink, self._clock, idle_timeout, connect_timeout,
                             tuple(secrets))
        exchange.call = "POST " + (urlsplit(url).path or "/")
        exchange.flow = flow
        agent = self._agent_for(connect_timeout)
        uri = request_uri(url)
        request_headers = Headers({k: [v] for k, v in all_headers.items()})

        def send() -> Deferred:
            # The agent as treq would wrap it for us (gzip decoding; no redirect: it must
            # not carry our key away; no cookies), without re-parsing the URL every call.
            return agent.request(b"POST", uri, request_headers.copy(), _BytesBody(body))

        if self.metrics is not None:
            self.metrics.upstream_call(label, exchange.result)
        exchange.start(send)
        return exchange.result

    def close(self) -> Deferred:
        """Close idle pooled connections; fires when they are gone."""
        return self.pool.closeCachedConnections()


@lru_cache(maxsize=256)
def request_uri(url: str) -> bytes:
    """``url`` as the request URI bytes, exactly as treq makes them (percent-encoded path,
    IDNA host); cached: parsing and IDNA cost more than the rest of sending a request."""
    return EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


@implementer(IAgentEndpointFactory)
class _EndpointPerOrigin:
    """The endpoints Agent would make (TCP for http, TCP+TLS with browser-like certificate
    checks for https), one per origin: Agent asks for an endpoint on every request, pooled
    connection or not, and building one IDNA-checks the host each time, while one endpoint
    serves every request (each ``connect`` is independent). Origins are the configured
    providers': a handful."""

    max_origins = 256

    def __init__(self, reactor: Any, connect_timeout: float):
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple, Any] = {}

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= self.max_origins:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = self._endpoint(uri)
        return endpoint

    def _endpoint(self, uri) -> Any:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {uri.host!r} is not ASCII") from None
        endpoint = HostnameEndpoint(self._reactor, host, uri.port,
                                    timeout=self._connect_timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


@implementer(IBodyProducer)
class _BytesBody:
    """A request body already in memory, written in one go: treq's default producer for bytes
    ticks on the global reactor's cooperator, which an in-memory agent never runs."""

    def __init__(self, body: bytes):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Exchange:
    """One request/response: owns the idle timer and the body transport so it can abort."""

    log = Logger()

    def __init__(self, label: str, sink: BodySink, clock: IReactorTime,
                 idle_timeout: Optional[float],
                 connect_timeout: float, secrets: tuple):
        self.label = label
        self.result: Deferred = Deferred(self._cancel)
        self._sink = sink
        self._clock = clock
        self._idle = idle_timeout
        self._connect_timeout = connect_timeout
        self._secrets = secrets
        self._request_d: Optional[Deferred] = None
        self._send: Optional[Callable[[], Deferred]] = None
        self._retried = False
        self._response: Optional[UpstreamResponse] = None
        self._body_transport: Optional[IPushProducer] = None
        self._timer: Optional[IDelayedCall] = None
        self._done = False
        self.flow = None  # a FlowControl, when the caller wants backpressure
        self.call = ""    # "POST /v1/chat/completions": named in 404 and 401/403 errors

    def start(self, send: Callable[[], Deferred]) -> None:
        self._send = send
        if self._idle is not None:
            self._timer = self._clock.callLater(self._idle, self._timed_out)
        self._issue()

    def _issue(self) -> None:
        assert self._send is not None  # start() set it
        self._request_d = self._send()
        self._request_d.addCallbacks(self._got_response, self._request_failed)

    # --- events -----------------------------------------------------------------------

    def _got_response(self, response) -> None:
        if self._done:
            return
        self._touch()
        info = self._response = UpstreamResponse(response.code, response.headers)
        if 200 <= response.code < 300:
            try:
                self._sink.response_started(info)
            except BaseException:
                self._body_transport = None
                response.deliverBody(_Discard())
                self._fail(Failure())
                return
            response.deliverBody(_BodyReader(self, self._sink.data_received, None))
        else:
            reader = _BodyReader(self, None, MAX_ERROR_BODY_BYTES)
            response.deliverBody(reader)
            reader.finished.addCallback(
                lambda body: self._fail(error_from_status(
                    self.label, response.code, response.headers, body, self._secrets,
                    now=self._clock.seconds(), call=self.call)))

    def _request_failed(self, failure: Failure) -> None:
        if self._done:
            return
        if not self._retried and _closed_before_response(failure):
            # A pooled keep-alive connection the upstream closed just as we sent on it; the
            # upstream answered nothing, so one more try on a fresh connection is safe enough
            # (the official SDKs retry connection errors too).
            self._retried = True
            self.log.info("upstream {provider} closed a connection before answering; retrying",
                          provider=self.label)
            self._issue()
            return
        self._fail(self._translate(failure))

    def _timed_out(self) -> None:
        self._timer = None
        if self._done:
            return
        phase = "body" if self._body_transport is not None else "response"
        self.log.info("upstream {provider} idle for {seconds}s waiting for {phase}",
                      provider=self.label, seconds=self._idle, phase=phase)
        self._fail(ProviderTimeout(
            f'provider "{self.label}" sent nothing for {self._idle:g}s'))

    def _touch(self) -> None:
        if self._timer is not None and self._timer.active() and self._idle is not None:
            self._timer.reset(self._idle)

    def body_finished(self) -> None:
        if self._done:
            return
        self._finish()
        self.result.callback(self._response)

    def body_failed(self, failure: Failure | BaseException) -> None:
        self._fail(failure)

    # --- ending ----------------------------------------------------------------------

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fail(self, reason: Failure | BaseException) -> None:
        if self._done:
            return
        self._finish()
        self._abort()
        failure = reason if isinstance(reason, Failure) else Failure(reason)
        error = failure.value
        if isinstance(error, ProviderError):
            self.log.info("upstream {provider} failed: {kind} {status}", provider=self.label,
                          kind=error.kind, status=error.status)
        self.result.errback(failure)

    def _abort(self) -> None:
        if self._body_transport is not None:
            transport, self._body_transport = self._body_transport, None
            transport.stopProducing()   # closes the TCP connection; it never returns to the pool
        elif self._request_d is not None:
            # also when "called": it may be paused on the connection's own request Deferred,
            # and cancel() forwards to that one (which aborts the connection)
            self._request_d.cancel()

    def _cancel(self, _result: Deferred) -> None:
        # Deferred.cancel() errbacks ``result`` with CancelledError once we return
        if self._done:
            return
        self._finish()
        self._abort()

    def _translate(self, failure: Failure) -> ProviderError:
        where = f'provider "{self.label}"'
        if failure.check(net_error.TimeoutError, DeferredTimeout):
            return ProviderTimeout(f"{where}: could not connect within {self._connect_timeout:g}s")
        if failure.check(net_error.ConnectionRefusedError):
            return ProviderUnavailable(f"{where}: connection refused")
        if failure.check(net_error.DNSLookupError):
            return ProviderUnavailable(f"{where}: host name not found")
        if failure.check(net_error.ConnectError, net_error.ConnectingCancelledError):
            return ProviderUnavailable(f"{where}: could not connect")
        if failure.check(CancelledError):
            return ProviderUnavailable(f"{where}: request cancelled")
        if failure.check(ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed):
            return ProviderUnavailable(f"{where}: connection lost before a response")
        self.log.failure("unexpected upstream failure from {provider}", failure,
                         provider=self.label)
        return ProviderUnavailable(f"{where}: request failed")


def _closed_before_response(failure: Failure) -> bool:
    if not failure.check(ResponseNeverReceived):
        return False
    reasons = getattr(failure.value, "reasons", None) or []
    return bool(reasons) and all(
        isinstance(r, Failure) and r.check(net_error.ConnectionDone, net_error.ConnectionLost)
        for r in reasons)


def _producer(protocol: Protocol) -> IPushProducer:
    """The transport ``deliverBody`` gives a body protocol: documented as an
    ``IPushProducer``, typed by Twisted as the protocol's ``ITransport``."""
    return cast(IPushProducer, protocol.transport)


class _BodyReader(Protocol):
    """Delivers body bytes to the exchange's sink (2xx) or collects an error body (non-2xx)."""

    def __init__(self, exchange: _Exchange, on_data, limit: Optional[int]):
        self._exchange = exchange
        self._on_data = on_data
        self._limit = limit
        self._collected: list[bytes] = []
        self._size = 0
        self.finished: Deferred = Deferred()

    def connectionMade(self) -> None:
        self._exchange._body_transport = _producer(self)
        if self._on_data is not None and self._exchange.flow is not None:
            self._exchange.flow.attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange._done:
            return
        exchange._touch()
        if self._on_data is None:
            assert self._limit is not None  # an error body is collected up to a limit
            room = self._limit - self._size
            if room > 0:
                self._collected.append(data[:room])
                self._size += min(room, len(data))
            if self._size >= self._limit:
                _producer(self).stopProducing()
            return
        try:
            self._on_data(data)
        except BaseException:
            exchange.body_failed(Failure())

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        exchange = self._exchange
        exchange._body_transport = None
        if self._on_data is not None and exchange.flow is not None:
            exchange.flow.detach()
        if self._on_data is None:
            self.finished.callback(b"".join(self._collected))
            return
        if exchange._done:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            exchange.body_finished()
        else:
            exchange.body_failed(ProviderUnavailable(
                f'provider "{exchange.label}" closed the connection mid-response'))


class _Discard(Protocol):
    def connectionMade(self) -> None:
        _producer(self).stopProducing()
