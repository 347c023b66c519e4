"""One gateway process's connection to Redis: a ``txredisapi`` pool (Twisted-native, so the
reactor never waits on Redis) behind a small API whose every command is bounded in time.

A command that gets no answer within ``commandTimeoutSeconds`` — Redis stopped, the network
gone, the pool still reconnecting — fails with ``RedisUnavailable``, which the HTTP and
WebSocket layers answer as 503 ``service_unavailable``: a request never hangs on Redis. The pool
reconnects by itself, so the gateway recovers without a restart once Redis is back.
Replies are parsed by hiredis (a C parser txredisapi picks when installed; install_requires).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

import hiredis
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from .in_flight import InFlight

# How long the pool waits between reconnection attempts at most (txredisapi's default is 10 s;
# a shorter ceiling makes recovery after a Redis restart quicker).
RECONNECT_MAX_DELAY = 2.0


class RedisUnavailable(Exception):
    """Redis did not answer in time or refused the command; the message names neither the
    password nor the data."""


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    username: Optional[str]
    password: Optional[str]
    tls: bool


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[user:password@]host[:port][/db]``; ``rediss://`` for TLS. The config has
    already checked the shape (``config/store.py``)."""
    parts = urlsplit(url)
    db = parts.path.strip("/")
    return RedisAddress(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                        db=int(db) if db else 0,
                        username=unquote(parts.username) if parts.username else None,
                        password=unquote(parts.password) if parts.password else None,
                        tls=parts.scheme == "rediss")


def masked_url(url: str) -> str:
    """The URL as logs and errors show it: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class LuaScript:
    """A Lua script sent once per connection lifetime by its SHA1 (``EVALSHA``), and in full
    when Redis does not know it (after a restart or a ``SCRIPT FLUSH``)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


class RedisLink:
    """The pool of one gateway process, with every command bounded by the command timeout."""

    log = Logger()

    def __init__(self, url: str, reactor: Any, *, key_prefix: str = "moltbot:",
                 connect_timeout: float = 5.0, command_timeout: float = 5.0,
                 pool_size: int = 8):
        self.url = url
        self.shown_url = masked_url(url)
        self.address = parse_redis_url(url)
        self.key_prefix = key_prefix
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._reactor = reactor
        self._pool_size = pool_size
        self._pool: Any = None
        self._in_flight = InFlight(reactor, command_timeout)   # commands awaiting an answer
        self.last_error: Optional[str] = None    # why the newest command failed, for /health

    # -- lifetime -----------------------------------------------------------------------

    def connect(self) -> Deferred:
        """Open the pool and prove the server answers (``PING``); fails with
        ``RedisUnavailable`` naming the masked URL and the reason after the connect timeout."""
        a = self.address
        self._pool = txredisapi.lazyConnectionPool(
            host=a.host, port=a.port, dbid=a.db, poolsize=self._pool_size, reconnect=True,
            password=a.password, username=a.username, ssl_context_factory=a.tls,
            connectTimeout=self.connect_timeout, replyTimeout=self.command_timeout,
            convertNumbers=False)   # a stuck connection is dropped and made anew
        self._pool._factory.maxDelay = RECONNECT_MAX_DELAY
        # The lazy pool's "every connection is up" Deferred, which nobody awaits: a connection
        # lost while it starts (a disconnect right after connect, Redis restarting) fails it,
        # and an unhandled failure would be logged as an error when collected. The pool
        # reconnects by itself; commands report an outage.
        self._pool._factory.deferred.addErrback(lambda _: None)
        d = self._bounded(self._pool.ping(), InFlight(self._reactor, self.connect_timeout),
                          "PING")

        def refused(failure: Failure) -> Failure:
            failure.trap(RedisUnavailable)
            return Failure(RedisUnavailable(
                f"Redis at {self.shown_url} did not answer: {failure.value}"))

        return d.addErrback(refused)

    def disconnect(self) -> Deferred:
        pool, self._pool = self._pool, None
        if pool is None:
            return succeed(None)
        return pool.disconnect().addErrback(lambda _: None)

    # -- commands -----------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A key under this gateway's prefix: ``key("sess", agent_id)`` → ``moltbot:sess:main``."""
        return self.key_prefix + ":".join(parts)

    def execute(self, *args: Any) -> Deferred:
        """One Redis command, e.g. ``execute("XADD", key, "*", "r", data)``."""
        if self._pool is None:
            return self._failed("not connected")
        return self._send(args, str(args[0]))

    def script(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Deferred:
        """Run ``script`` atomically on the server (``EVALSHA``, falling back to ``EVAL``)."""
        if self._pool is None:
            return self._failed("not connected")

        def unknown(failure: Failure) -> Deferred:
            if "NOSCRIPT" not in str(failure.value):
                return failure   # type: ignore[return-value]
            return self._send(("EVAL", script.source, len(keys), *keys, *args), "EVAL")

        return self._send(("EVALSHA", script.sha, len(keys), *keys, *args),
                          "EVALSHA").addErrback(unknown)

    # -- sending, and the bound ---------------------------------------------------------

    def _failed(self, reason: str) -> Deferred:
        self.last_error = reason
        return fail(RedisUnavailable(reason))

    def _ready_connection(self) -> Any:
        """A connection of the pool that is up (the first: commands sent in one reactor
        turn then leave in one write), or None while the pool reconnects."""
        for connection in self._pool._factory.pool:
            if connection.connected:
                return connection
        return None

    def _send(self, args: Sequence[Any], command: str) -> Deferred:
        """Send one command and fire with its answer, or with ``RedisUnavailable`` once
        ``command_timeout`` passes first. On a connection that is up, the command is packed
        by hiredis and written directly, its answer taken from the connection's queue of
        replies (as txredisapi's ``execute_command`` does, without its per-command Deferred
        chain and timers: ~10–13 instead of ~35–50 µs of CPU per command, measured with
        ``benchmarks/redis_commands.py``); while the pool reconnects, txredisapi's path
        waits for a connection."""
        connection = self._ready_connection()
        if connection is not None:
            try:
                packed = hiredis.pack_command(tuple(args))
            except TypeError:
                connection = None
        if connection is not None:
            connection.transport.write(packed)
            inner = connection.replyQueue.get()
        else:
            inner = self._pool.execute_command(*args)
        return self._bounded(inner, self._in_flight, command, connection)

    def bounded(self, inner: Deferred, command: str) -> Deferred:
        """``inner`` (an operation on Redis not sent through this link, such as a
        subscription) within the command timeout, failing with ``RedisUnavailable``."""
        return self._bounded(inner, self._in_flight, command)

    def _bounded(self, inner: Deferred, in_flight: InFlight, command: str,
                 connection: Any = None) -> Deferred:
        """``inner``'s outcome, or ``RedisUnavailable`` after ``in_flight``'s bound (and the
        connection that did not answer dropped). Our own Deferred takes the outcome so that a
        late answer after the bound is dropped quietly."""
        outer: Deferred = Deferred()

        def expire() -> None:
            if outer.called:
                return
            self.last_error = f"no answer to {command} within {in_flight.seconds:g} s"
            if connection is not None and connection.transport is not None:
                connection.transport.abortConnection()
            outer.errback(RedisUnavailable(self.last_error))

        number = in_flight.add(expire)

        def settle(outcome: Any) -> None:
            in_flight.done(number)
            if outer.called:
                return
            if isinstance(outcome, Exception):      # a reply the connection's queue holds
                outcome = Failure(outcome)
            if isinstance(outcome, Failure):
                error = outcome.value
                if isinstance(error, txredisapi.ResponseError):
                    outer.errback(outcome)      # Redis answered with an error: not an outage
                    return
                if isinstance(error, (CancelledError, DeferredTimeout)):
                    reason = f"{command} was cancelled"
                else:
                    reason = f"{type(error).__name__}: {error}"
                self.last_error = reason
                outer.errback(RedisUnavailable(reason))
                return
            self.last_error = None
            outer.callback(outcome)

        inner.addBoth(settle)
        return outer
