"""``GuardedFetcher.fetch``: one bounded GET for a client — every hop checked, redirect
bodies discarded unread, one deadline and one byte budget for the whole fetch, no cookies.
Errors are typed; their ``reason`` is for logs only, never for the client."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, cast
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from .address_policy import DEFAULT_POLICY, AddressPolicy
from .resolver import GuardedReactor, GuardedResolver

REDIRECT_CODES = (301, 302, 303, 307, 308)
CONNECT_TIMEOUT_SECONDS = 5.0
USER_AGENT = b"moltbot-gw (fetch)"


class FetchError(Exception):
    """A fetch that gave no body. ``host`` is safe to show a client; ``reason`` is not
    (it may name an internal address, a status code or a content type)."""

    def __init__(self, host: str, reason: str):
        super().__init__(f"could not fetch from {host}")
        self.host = host
        self.reason = reason


class FetchRefused(FetchError):
    """The policy refused the URL or a redirect target before any connection to it."""


class FetchFailed(FetchError):
    """Network error, bad status, over the byte budget or past the deadline."""


@dataclass(frozen=True)
class FetchResult:
    final_url: str
    content_type: str    # media type only, lower case, "" when none was sent
    body: bytes
    charset: str = ""    # the content type's charset parameter, lower case, "" when none


def _producer(protocol: Protocol) -> IPushProducer:
    """The transport ``deliverBody`` gives a body protocol: documented as an
    ``IPushProducer``, typed by Twisted as the protocol's ``ITransport``."""
    return cast(IPushProducer, protocol.transport)


class _Discard(Protocol):
    """A redirect's body: never read; the connection is dropped at once."""

    def connectionMade(self) -> None:
        _producer(self).stopProducing()


class _BudgetedBody(Protocol):
    """Collects a body of at most ``max_bytes``; past that it stops reading and fails."""

    def __init__(self, host: str, max_bytes: int):
        self.host = host
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.received = 0
        self.done: defer.Deferred = defer.Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            _producer(self).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.received += len(data)
        if self.received > self.max_bytes:
            self._stop()
            self.done.errback(FetchFailed(self.host, f"body over {self.max_bytes} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(FetchFailed(self.host, f"body cut short: {reason.value!r}"))


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


class GuardedFetcher:
    """Owns a dedicated ``Agent`` (its own non-persistent pool, no cookie jar) whose reactor
    resolves names through ``GuardedResolver``. ``resolver`` defaults to the reactor's own;
    tests pass a scripted one and a ``policy`` that admits their loopback servers."""

    log = Logger()

    def __init__(self, reactor, policy: AddressPolicy = DEFAULT_POLICY, resolver=None):
        self.reactor = reactor
        self.policy = policy
        self.guarded_reactor = guarded = GuardedReactor(reactor, GuardedResolver(
            resolver if resolver is not None else reactor.nameResolver, policy))
        self.agent = Agent(guarded, connectTimeout=CONNECT_TIMEOUT_SECONDS,
                           pool=HTTPConnectionPool(guarded, persistent=False))

    async def fetch(self, url: str, *, max_bytes: int, deadline_seconds: float,
                    allowed_hosts: Iterable[str] = (), max_redirects: int = 3) -> FetchResult:
        """GET ``url``, following at most ``max_redirects`` redirects, all within one
        ``deadline_seconds`` and with at most ``max_bytes`` of body read."""
        allow = frozenset(h.lower() for h in allowed_hosts)
        attempt = defer.Deferred.fromCoroutine(self._fetch(url, max_bytes, allow,
                                                           max_redirects))
        attempt.addTimeout(deadline_seconds, self.reactor)
        try:
            return await attempt
        except defer.TimeoutError:
            error: FetchError = FetchFailed(_host(url), f"deadline of {deadline_seconds} s "
                                                        "passed")
        except FetchError as e:
            error = e
        self.log.info("outbound fetch from {host} refused or failed: {reason}",
                      host=error.host, reason=error.reason)
        raise error

    def _check(self, url: str, allow: frozenset) -> tuple[str, bytes]:
        """Refuse what no connection should be tried for; the bytes URL for the Agent."""
        host = _host(url)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise FetchRefused(host, "malformed URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused(host, f"scheme {parts.scheme!r} or missing host")
        if parts.username is not None or parts.password is not None:
            raise FetchRefused(host, "credentials in the URL")
        if allow and parts.hostname.lower() not in allow:
            raise FetchRefused(host, "host not in the allowlist")
        why = self.policy.refusal(parts.hostname)
        if why != "not an IP address" and why is not None:
            raise FetchRefused(host, f"address is {why}")  # literals never meet a resolver
        try:
            return host, url.encode("ascii")
        except UnicodeEncodeError:
            raise FetchRefused(host, "URL is not ASCII (punycode the host, quote the path)"
                               ) from None

    async def _fetch(self, url: str, max_bytes: int, allow: frozenset,
                     max_redirects: int) -> FetchResult:
        for _hop in range(max_redirects + 1):
            host, raw = self._check(url, allow)
            try:
                response = await self.agent.request(
                    b"GET", raw, Headers({b"user-agent": [USER_AGENT], b"accept": [b"*/*"]}))
            except defer.CancelledError:
                raise
            except Exception as e:
                raise FetchFailed(host, f"request failed: {e!r}") from e
            if response.code in REDIRECT_CODES:
                response.deliverBody(_Discard())
                location = response.headers.getRawHeaders(b"location", [b""])[0]
                if not location:
                    raise FetchFailed(host, f"redirect {response.code} without a location")
                url = urljoin(url, location.decode("latin-1"))
                continue
            if response.code != 200:
                response.deliverBody(_Discard())
                raise FetchFailed(host, f"HTTP status {response.code}")
            if response.length is not None and isinstance(response.length, int) \
                    and response.length > max_bytes:
                response.deliverBody(_Discard())
                raise FetchFailed(host, f"content-length {response.length} over {max_bytes}")
            body = _BudgetedBody(host, max_bytes)
            response.deliverBody(body)
            content = await body.done
            return FetchResult(url, _media_type(response.headers), content,
                               _charset(response.headers))
        raise FetchFailed(_host(url), f"more than {max_redirects} redirects")


def _media_type(headers: Headers) -> str:
    value: Optional[bytes] = headers.getRawHeaders(b"content-type", [b""])[0]
    return (value or b"").split(b";")[0].strip().decode("latin-1").lower()


def _charset(headers: Headers) -> str:
    value: Optional[bytes] = headers.getRawHeaders(b"content-type", [b""])[0]
    for param in (value or b"").split(b";")[1:]:
        key, _, val = param.partition(b"=")
        if key.strip().lower() == b"charset":
            return val.strip().strip(b'"').decode("latin-1").lower()
    return ""
