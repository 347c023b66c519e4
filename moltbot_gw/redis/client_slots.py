"""Per-client run concurrency counted across gateway processes (``session.store.backend:
"redis"``): ``ClientSlots``' API, with a client's running runs held in Redis.

A client's slots are a sorted set ``<prefix>slots:<client>`` of holder ids scored by the end
of their lease (Redis time). A Lua script drops expired holders, then admits a new one while
fewer than ``perClientConcurrency`` hold; a held slot's lease is renewed every third of it
and the holder removed on release, which publishes ``slot-free`` so that waiters anywhere try
again -- only when some acquisition was refused since (a mark key the refusal sets), so a
release nobody waits for is one round trip. A process that dies holds its slots no longer
than the lease (``session.store.redis.lockLeaseSeconds``).

Acquisitions and releases of one client made in the same reactor turn go to Redis together
(one script: releases first, then admissions in arrival order): under load a request's two
slot round trips become a fraction of one.

The queue is per process: each process keeps up to ``perClientQueue`` waiters of a client,
first in first out among themselves, retried on a ``slot-free`` notice, on a local release
and every ``RETRY_SECONDS`` (a lost notice, a dead holder's lease running out). Across
processes the order is whoever asks first after a slot frees. Redis unavailable: ``acquire``
fails with ``RedisUnavailable`` (a 503), and so do the waiters at their next attempt. A
holder an outage left in doubt (an acquire or a release whose answer never came) is removed
by the client's next acquire here, not kept for a whole lease.
"""
from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..agents.client_slots import SlotBook
from .connection import LuaScript, RedisLink
from .notices import RedisNotices

CHANNEL = "slot-free"
RETRY_SECONDS = 1.0

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: the client's holders, its "someone was refused" mark; ARGV: limit, lease ms, channel,
# client, then a count and that many holder ids released, a count and that many holder ids of
# this process an outage left in doubt (both removed first), then the holder ids that ask to
# be admitted, in order. Publishes slot-free when a release frees a slot and a run was refused
# since the last release that published (a release nobody waits for sends nothing to every
# process). Returns how many of the askers were admitted (the first ones); a refusal leaves
# the mark, so that the next release publishes.
_EXCHANGE = LuaScript(_NOW + """
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local released = tonumber(ARGV[5])
local i = 6
for j = i, i + released - 1 do redis.call('ZREM', KEYS[1], ARGV[j]) end
i = i + released
local doubtful = tonumber(ARGV[i])
i = i + 1
for j = i, i + doubtful - 1 do redis.call('ZREM', KEYS[1], ARGV[j]) end
i = i + doubtful
if released > 0 and redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
if i > #ARGV then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
local admitted = 0
for j = i, #ARGV do
  if held >= limit then
    redis.call('SET', KEYS[2], '1', 'PX', lease)
    break
  end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[j])
  held = held + 1
  admitted = admitted + 1
end
if admitted > 0 then redis.call('PEXPIRE', KEYS[1], lease) end
return admitted
""")
# KEYS: the client's holders; ARGV: holder id, lease ms. 0 when the lease was already lost.
_RENEW = LuaScript(_NOW + """
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not ends or tonumber(ends) <= now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""")
class SharedClientSlot:
    """One held slot; ``release()`` (idempotent) frees it for every process."""

    def __init__(self, owner: "RedisClientSlots", client: str, holder: str):
        self._owner = owner
        self.client = client
        self.holder = holder
        self.released = False
        self._renewal = owner._clock.callLater(owner.lease / 3, self._renew)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self._renewal.active():
                self._renewal.cancel()
            self._owner._release(self)

    def _renew(self) -> None:
        d = self._owner._renew(self)

        def next_renewal(_) -> None:
            if not self.released:
                self._renewal = self._owner._clock.callLater(self._owner.lease / 3,
                                                              self._renew)
        d.addBoth(next_renewal)


class RedisClientSlots(SlotBook):
    """``ClientSlots`` over Redis; ``running``/``waiting`` count this process's own."""

    log = Logger()

    def __init__(self, redis: RedisLink, notices: RedisNotices, clock, per_client: int,
                 queue_size: int, lease: float):
        self.redis = redis
        self.notices = notices
        self._clock = clock
        super().__init__(per_client, queue_size)
        self.lease = lease
        self._trying: set[str] = set()
        self._retry = None
        # holder ids an outage left in doubt (an acquire or release without an answer),
        # by client: removed by the client's next acquire
        self._in_doubt: dict[str, set[str]] = {}
        self._exchanges: dict[str, _Exchange] = {}   # this reactor turn's, by client
        self._flush_call = None
        notices.listen(CHANNEL, self._hand_on)

    def acquire(self, client: str) -> Deferred:
        """As ``ClientSlots.acquire``: a slot now, later (after this process's earlier
        waiters), ``ClientBusy`` when this process's queue for the client is full, or
        ``RedisUnavailable``."""
        if self.waiting(client):
            return self._enqueue(client)
        d = self._try(client)

        def admitted(slot: Optional[SharedClientSlot]):
            return slot if slot is not None else self._enqueue(client)
        return d.addCallback(admitted)

    # -- the queue ------------------------------------------------------------------------

    def _enqueue(self, client: str) -> Deferred:
        d = super()._enqueue(client)
        if not d.called:
            self._schedule_retry()
        return d

    def _leave_queue(self, client: str, d: Deferred) -> None:
        super()._leave_queue(client, d)
        if not self._waiting:
            self.stop()

    def _hand_on(self, client: str) -> None:
        """Try to admit the oldest local waiters of ``client`` (one attempt at a time)."""
        if not self._waiting.get(client) or client in self._trying:
            return
        self._trying.add(client)

        def tried(slot):
            self._trying.discard(client)
            queue = self._waiting.get(client)
            if isinstance(slot, Failure):
                # Redis did not answer within its bound: the waiters are told so now (a
                # 503), as a new request would be, rather than waiting out the outage.
                self.log.warn("Client slots: Redis did not answer: {problem}",
                              problem=str(slot.value))
                waiters = self._waiting.pop(client, deque())
                for waiter in waiters:
                    waiter.errback(slot)
                return None
            if slot is None:
                return None
            if not queue:       # the waiter left meanwhile
                slot.release()
                return None
            waiter = queue.popleft()
            if not queue:
                del self._waiting[client]
            waiter.callback(slot)
            self._hand_on(client)
            return None
        self._try(client).addBoth(tried)

    def _schedule_retry(self) -> None:
        if self._retry is None or not self._retry.active():
            self._retry = self._clock.callLater(RETRY_SECONDS, self._retry_all)

    def _retry_all(self) -> None:
        for client in list(self._waiting):
            self._hand_on(client)
        if self._waiting:
            self._schedule_retry()

    def stop(self) -> None:
        """The process stops: no more retries (waiters are cancelled with their requests)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    # -- Redis ----------------------------------------------------------------------------

    def _key(self, client: str) -> str:
        return self.redis.key("slots", client)

    def _refused_key(self, client: str) -> str:
        return self.redis.key("slots-refused", client)

    def _lease_ms(self) -> int:
        return max(1, int(self.lease * 1000))

    def _try(self, client: str) -> Deferred:
        """A Deferred of a slot, or None when the client's slots are all held."""
        holder = uuid.uuid4().hex
        asked: Deferred = Deferred()
        self._exchange(client).asks.append((holder, asked))

        def answered(admitted: bool) -> Optional[SharedClientSlot]:
            if not admitted:
                return None
            self._running[client] = self.running(client) + 1
            return SharedClientSlot(self, client, holder)
        return asked.addCallback(answered)

    def _exchange(self, client: str) -> "_Exchange":
        """The client's exchange of this reactor turn, sent to Redis once the turn ends."""
        exchange = self._exchanges.get(client)
        if exchange is None:
            exchange = self._exchanges[client] = _Exchange()
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)
        return exchange

    def _flush(self) -> None:
        self._flush_call = None
        exchanges, self._exchanges = self._exchanges, {}
        for client, exchange in exchanges.items():
            self._send(client, exchange)

    def _send(self, client: str, exchange: "_Exchange") -> None:
        doubtful = self._in_doubt.pop(client, set())
        asking = [holder for holder, _ in exchange.asks]
        d = self.redis.script(
            _EXCHANGE, [self._key(client), self._refused_key(client)],
            [self.per_client, self._lease_ms(), self.notices.channel(CHANNEL), client,
             len(exchange.releases), *exchange.releases, len(doubtful), *doubtful, *asking])

        def answered(admitted) -> None:
            for index, (_, asked) in enumerate(exchange.asks):
                asked.callback(index < int(admitted))
            if exchange.releases:
                self._hand_on(client)

        def unanswered(failure: Failure) -> None:
            # Redis may have applied the exchange (or not): its holder ids are in doubt, and
            # with them the ones before; the client's next exchange removes them, so an
            # outage does not keep the client's slots taken for a whole lease.
            self._doubt(client, doubtful | set(asking) | set(exchange.releases))
            if exchange.releases:
                self.log.warn("Client slots: a release was not recorded (the client's next "
                              "run, or the lease, frees the slot): {problem}",
                              problem=str(failure.value))
            for _, asked in exchange.asks:
                asked.errback(failure)
        d.addCallbacks(answered, unanswered)

    def _doubt(self, client: str, holders: set) -> None:
        self._in_doubt.setdefault(client, set()).update(holders)

    def _renew(self, slot: SharedClientSlot) -> Deferred:
        d = self.redis.script(_RENEW, [self._key(slot.client)], [slot.holder, self._lease_ms()])

        def renewed(still) -> None:
            if int(still) != 1 and not slot.released:
                self.log.warn("Client slots: the lease of a run of {client} ran out; another "
                              "run may have taken its slot", client=slot.client)

        def unrenewed(failure: Failure) -> None:
            self.log.warn("Client slots: lease not renewed: {problem}",
                          problem=str(failure.value))
        return d.addCallbacks(renewed, unrenewed)

    def _release(self, slot: SharedClientSlot) -> None:
        left = self.running(slot.client) - 1
        if left > 0:
            self._running[slot.client] = left
        else:
            self._running.pop(slot.client, None)
        self._exchange(slot.client).releases.append(slot.holder)


@dataclass
class _Exchange:
    """What one client's slots ask of Redis at the end of a reactor turn: holder ids to
    release, and holder ids to admit (in order) with the Deferreds waiting for the answer."""

    releases: list[str] = field(default_factory=list)
    asks: list[tuple[str, Deferred]] = field(default_factory=list)
