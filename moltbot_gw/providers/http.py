"""The HTTP client every model provider shares: one persistent connection pool, JSON POSTs whose
response body is handed over as it arrives, idle/connect timeouts, and upstream failures mapped
to typed ``ProviderError``s. It knows no provider's wire format beyond the shape of error bodies.
"""
from __future__ import annotations

import email.utils
import json
import re
import time
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol as TypingProtocol

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (Agent, HTTPConnectionPool, RequestTransmissionFailed,
                                ResponseDone, ResponseFailed, ResponseNeverReceived)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from .errors import (ProviderAuthError, ProviderBadRequest, ProviderError, ProviderRateLimited,
                     ProviderTimeout, ProviderUnavailable, no_embeddings)
from .sse import SSEError, SSEEvent, SSEParser

MAX_ERROR_MESSAGE_CHARS = 500
MAX_ERROR_BODY_BYTES = 64 * 1024

# Things that look like credentials in an upstream's error text ("Incorrect API key: sk-...")
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}|\bBearer\s+\S+", re.IGNORECASE)


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


class EventStreamSink:
    """A ``BodySink`` that accepts either an event stream or a plain JSON answer.

    Subclasses implement ``handle_event`` (one SSE event), ``handle_json`` (a whole JSON body,
    for upstreams that ignore ``stream: true``) and ``end`` (validate and build the result).
    The mode follows the content type, sniffing the first byte when that says neither.
    """

    max_json_bytes = 32 * 1024 * 1024

    def __init__(self, label: str, secrets: Iterable[Optional[str]] = ()):
        self.label = label
        self.secrets = tuple(secrets)
        self._mode: Optional[str] = None     # "sse" | "json"
        self._parser = SSEParser()
        self._json: list[bytes] = []
        self._json_size = 0

    def response_started(self, response: UpstreamResponse) -> None:
        ctype = response.content_type
        if ctype == "text/event-stream":
            self._mode = "sse"
        elif ctype == "application/json" or ctype.endswith("+json"):
            self._mode = "json"

    def data_received(self, data: bytes) -> None:
        if self._mode is None:
            head = data.lstrip()
            if not head:
                return
            self._mode = "json" if head[:1] in (b"{", b"[") else "sse"
        if self._mode == "json":
            self._json_size += len(data)
            if self._json_size > self.max_json_bytes:
                raise self.unavailable("sent a JSON answer larger than we accept")
            self._json.append(data)
            return
        try:
            events = self._parser.feed(data)
        except SSEError:
            raise self.unavailable("sent an event stream line larger than we accept") from None
        for event in events:
            self.handle_event(event)

    def finish(self):
        """Called once the body is complete; returns the subclass's result."""
        if self._mode == "json":
            try:
                payload = json.loads(b"".join(self._json).decode("utf-8", errors="replace"))
            except ValueError:
                raise self.unavailable("sent malformed JSON") from None
            if not isinstance(payload, dict):
                raise self.unavailable("sent JSON that is not an object")
            self.handle_json(payload)
        else:
            for event in self._parser.finish():
                self.handle_event(event)
        return self.end()

    def load(self, data: str) -> dict:
        """One event's JSON payload, or ProviderUnavailable."""
        try:
            payload = json.loads(data)
        except ValueError:
            raise self.unavailable("sent malformed JSON in its event stream") from None
        if not isinstance(payload, dict):
            raise self.unavailable("sent an event that is not a JSON object")
        return payload

    def unavailable(self, what: str) -> ProviderUnavailable:
        return ProviderUnavailable(f'provider "{self.label}" {what}')

    def upstream_error(self, error: Any, status: Optional[int] = None) -> ProviderError:
        """The typed error for an ``{"type", "message"}`` object the upstream sent in-band."""
        if not isinstance(error, dict):
            error = {"message": str(error)}
        kind = str(error.get("type") or error.get("code") or "")
        detail = clip_message(" ".join(redact(str(error.get("message") or kind or "unknown error"),
                                              self.secrets).split()))
        return error_for_type(kind, f'provider "{self.label}" reported an error: {detail}',
                              status=status)

    def handle_event(self, event: SSEEvent) -> None:
        raise NotImplementedError

    def handle_json(self, payload: dict) -> None:
        raise NotImplementedError

    def end(self):
        raise NotImplementedError


class JSONSink(EventStreamSink):
    """A ``BodySink`` for a plain, non-streamed JSON answer; ``finish()`` returns the object.
    An in-band ``{"error": ...}`` becomes the matching ``ProviderError``."""

    def __init__(self, label: str, secrets: Iterable[Optional[str]] = (),
                 max_bytes: Optional[int] = None):
        super().__init__(label, secrets)
        self._mode = "json"
        if max_bytes is not None:
            self.max_json_bytes = max_bytes
        self._payload: Optional[dict] = None

    def response_started(self, response: UpstreamResponse) -> None:
        pass    # JSON whatever the content type says

    def handle_json(self, payload: dict) -> None:
        if "error" in payload and payload["error"] is not None:
            raise self.upstream_error(payload["error"])
        self._payload = payload

    def end(self) -> dict:
        if self._payload is None:
            raise self.unavailable("sent an empty answer")
        return self._payload


def redact(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """Remove our secrets (and anything shaped like an API key) from upstream-provided text."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def error_for_type(error_type: str, message: str, *, status: Optional[int] = None,
                   retry_after: Optional[float] = None,
                   default: type[ProviderError] = ProviderUnavailable) -> ProviderError:
    """Map an upstream's error ``type``/``code`` (OpenAI or Anthropic vocabulary) to our class."""
    kind = (error_type or "").lower()
    if kind in ("rate_limit_error", "rate_limit_exceeded", "insufficient_quota", "tokens"):
        cls: type[ProviderError] = ProviderRateLimited
    elif kind in ("invalid_request_error", "not_found_error", "request_too_large",
                  "context_length_exceeded", "invalid_request", "model_not_found"):
        cls = ProviderBadRequest
    elif kind in ("authentication_error", "permission_error", "invalid_api_key"):
        cls = ProviderAuthError
    elif kind in ("overloaded_error", "api_error", "server_error", "service_unavailable"):
        cls = ProviderUnavailable
    else:
        cls = default
    return cls(message, status=status, retry_after=retry_after)


def extract_error_message(body: bytes) -> tuple[Optional[str], Optional[str]]:
    """``(message, type)`` from an OpenAI ``{"error": {...}}`` or Anthropic
    ``{"type": "error", "error": {...}}`` body; ``(None, None)`` when it is neither."""
    try:
        payload = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    err = payload.get("error")
    if isinstance(err, dict):
        message = err.get("message")
        kind = err.get("type") or err.get("code")
        return (str(message) if message is not None else None,
                str(kind) if kind is not None else None)
    if isinstance(err, str):
        return err, None
    if isinstance(payload.get("message"), str):
        return payload["message"], None
    return None, None


def parse_retry_after(value: Optional[bytes], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``None`` if absent or bad."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def error_from_status(label: str, status: int, headers: Headers, body: bytes,
                      secrets: Iterable[Optional[str]] = ()) -> ProviderError:
    """The typed error for a non-2xx upstream answer."""
    upstream_message, upstream_type = extract_error_message(body)
    if upstream_message is None:
        text = body.decode("utf-8", errors="replace").strip()
        # an HTML error page tells a client nothing useful
        upstream_message = "" if text.startswith("<") else text
    detail = clip_message(" ".join(redact(upstream_message, secrets).split()))
    message = f'provider "{label}" returned HTTP {status}' + (f": {detail}" if detail else "")
    if status in (401, 403):
        return ProviderAuthError(message, status=status)
    if status == 429:
        retry_after = parse_retry_after((headers.getRawHeaders(b"retry-after") or [None])[0])
        return ProviderRateLimited(message, status=status, retry_after=retry_after)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status in (400, 404, 413, 422):
        if upstream_type:
            # a 400 that is really "context too long" or "rate limited" keeps its own type
            return error_for_type(upstream_type, message, status=status, default=ProviderBadRequest)
        return ProviderBadRequest(message, status=status)
    if 400 <= status < 500:
        return ProviderBadRequest(message, status=status)
    return ProviderUnavailable(message, status=status)


def clip_message(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    # request messages arrive as read-only mappings (MappingProxyType) from frozen config/state
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class UpstreamClient:
    """Shared HTTP machinery for providers; one instance (and one pool) per gateway.

    ``clock`` drives the idle timeouts and defaults to ``reactor``; tests may pass a
    ``task.Clock`` to step time by hand.
    """

    log = Logger()
    metrics = None  # a GatewayMetrics, told of every call

    def __init__(self, reactor, pool: Optional[HTTPConnectionPool] = None,
                 clock: Optional[IReactorTime] = None):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 128
        self.pool = pool
        self._clients: dict[float, HTTPClient] = {}

    def _http(self, connect_timeout: float) -> HTTPClient:
        client = self._clients.get(connect_timeout)
        if client is None:
            agent = Agent(self._reactor, pool=self.pool, connectTimeout=connect_timeout)
            # no cookies: upstream APIs do not need them and one jar would be shared by all
            client = self._clients[connect_timeout] = HTTPClient(
                agent, cookiejar=IndexableCookieJar(DefaultCookiePolicy(allowed_domains=[])))
        return client

    def post_json(self, url: str, payload: Mapping[str, Any], sink: BodySink, *,
                  label: str, headers: Mapping[str, str] | None = None,
                  connect_timeout: float = 10.0, idle_timeout: float = 120.0,
                  secrets: Iterable[Optional[str]] = (), flow=None) -> Deferred:
        """POST ``payload`` as JSON and hand a 2xx body to ``sink`` as it arrives.

        Fires with the ``UpstreamResponse`` once the body is complete; fails with a
        ``ProviderError`` (or whatever ``sink`` raised). Cancelling it aborts the request and
        closes the connection, also mid-body. ``flow`` (a ``FlowControl``) may pause reading
        the body while its consumer catches up.
        """
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                          default=_jsonable).encode("utf-8")
        all_headers = {"Content-Type": "application/json",
                       "Accept": "text/event-stream, application/json"}
        all_headers.update(headers or {})
        exchange = _Exchange(label, sink, self._clock, idle_timeout, connect_timeout,
                             tuple(secrets))
        exchange.flow = flow
        http = self._http(connect_timeout)

        def send() -> Deferred:
            return http.request(
                "POST", url, data=body, headers={k: [v] for k, v in all_headers.items()},
                unbuffered=True, allow_redirects=False)  # a redirect must not carry our key away

        if self.metrics is not None:
            self.metrics.upstream_call(label, exchange.result)
        exchange.start(send)
        return exchange.result

    def close(self) -> Deferred:
        """Close idle pooled connections; fires when they are gone."""
        return self.pool.closeCachedConnections()


class _Exchange:
    """One request/response: owns the idle timer and the body transport so it can abort."""

    log = Logger()

    def __init__(self, label: str, sink: BodySink, clock: IReactorTime, idle_timeout: float,
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
        self._body_transport = None
        self._timer: Optional[IDelayedCall] = None
        self._done = False
        self.flow = None  # a FlowControl, when the caller wants backpressure

    def start(self, send: Callable[[], Deferred]) -> None:
        self._send = send
        self._timer = self._clock.callLater(self._idle, self._timed_out)
        self._issue()

    def _issue(self) -> None:
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
                    self.label, response.code, response.headers, body, self._secrets)))

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
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)

    def body_finished(self) -> None:
        if self._done:
            return
        self._finish()
        self.result.callback(self._response)

    def body_failed(self, failure: Failure) -> None:
        self._fail(failure)

    # --- ending ----------------------------------------------------------------------

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fail(self, reason) -> None:
        if self._done:
            return
        self._finish()
        self._abort()
        failure = reason if isinstance(reason, Failure) else Failure(reason)
        if failure.check(ProviderError):
            self.log.info("upstream {provider} failed: {kind} {status}", provider=self.label,
                          kind=failure.value.kind, status=failure.value.status)
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
        self._exchange._body_transport = self.transport
        if self._on_data is not None and self._exchange.flow is not None:
            self._exchange.flow.attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange._done:
            return
        exchange._touch()
        if self._on_data is None:
            room = self._limit - self._size
            if room > 0:
                self._collected.append(data[:room])
                self._size += min(room, len(data))
            if self._size >= self._limit:
                self.transport.stopProducing()
            return
        try:
            self._on_data(data)
        except BaseException:
            exchange.body_failed(Failure())

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:
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
        self.transport.stopProducing()


__all__ = ["BodySink", "EventStreamSink", "JSONSink", "UpstreamClient", "UpstreamResponse",
           "clip_message", "error_for_type", "error_from_status", "extract_error_message",
           "parse_retry_after", "redact"]


class HTTPProvider:
    """What every HTTP provider shares: its config, the shared client, the URL it posts to,
    and the ``stream``/``complete`` entry points around the subclass's ``_post``."""

    default_base_url = ""
    path = ""
    supports_embeddings = False
    supports_flow_control = True

    def __init__(self, name: str, config, client: UpstreamClient,
                 secrets: Optional[tuple[str, ...]] = None):
        self.name = name
        self._config = config
        self._client = client
        # Blanked out of upstream error text: the registry passes every configured secret
        # (all providers' keys and header values, the gateway's own), not just this one's.
        self.secrets = secrets if secrets is not None else tuple(
            s for s in (config.apiKey, *config.headers.values()) if s)
        self.base_url = (config.baseUrl or self.default_base_url).rstrip("/")
        self.url = self.base_url + self.path

    def stream(self, request, on_delta, on_tool_call=None, on_reasoning=None,
               flow=None) -> Deferred:
        """Stream a reply: ``on_delta`` per text fragment, ``on_tool_call`` per tool-call
        fragment, ``on_reasoning`` per reasoning fragment; fires with a ``ModelResult``.
        ``flow`` (a ``FlowControl``) lets a slow consumer pause the upstream read."""
        return self._post(request, on_delta, on_tool_call, on_reasoning, stream=True,
                          flow=flow)

    def complete(self, request) -> Deferred:
        """Ask for a reply in one piece (``stream: false``); fires with a ``ModelResult``."""
        return self._post(request, None, None, None, stream=False)

    def embeddings(self, model: str, input: Any, encoding_format: Optional[str] = None,
                   dimensions: Optional[int] = None) -> Deferred:
        """Fails with ``ProviderBadRequest`` unless the provider overrides it."""
        return fail(no_embeddings(self.name))

    def _post(self, request, on_delta, on_tool_call, on_reasoning, stream: bool,
              flow=None) -> Deferred:
        raise NotImplementedError
