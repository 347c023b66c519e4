"""The lock that runs one turn of a session at a time across gateway processes: a Redis key
per session holding the token of the run that owns it, with a lease (``PX``) that the holder
renews while it lives, so a crashed holder frees the session when its lease runs out.

Every acquisition gets a new token ``"<fence>:<process>:<uuid>"``, its fence number taken
from a per-session counter; the Redis session store appends a turn only while the lock still
holds the writer's token (``sessions/lease.py``), so a holder that stalled past its lease
cannot write after another process took the session over (fencing).

Waiters learn of a release through pub/sub (one subscriber connection per process, one
channel for all sessions; a release publishes only when an acquisition found the lock taken
since, which it marks) and also retry on a timer: a dead holder publishes nothing. Across
processes the order of waiters is approximate (whoever asks first after a release wins);
within one process the in-memory lane (``agents/lanes.py``) keeps them FIFO.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Optional

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, DeferredList, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .connection import LuaScript, RedisLink, RedisUnavailable
from .subscriber import RedisSubscriber

# Take the lock if free; the fence number only grows when a run takes it. Free → the token;
# taken → the milliseconds left of the holder's lease, and a mark (KEYS[3]) that someone
# waits, so that the release publishes.
ACQUIRE = LuaScript("""
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
  return redis.call('PTTL', KEYS[1])
end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local token = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
""")
# Extend the lease only while the lock is still ours: 1 renewed, 0 lost.
RENEW = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""")
# Free the lock only while it is ours, and tell the waiters of every process -- if an
# acquisition found it taken since the last release that told them (KEYS[3]): a release
# nobody waits for sends no message to every process.
RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('DEL', KEYS[3]) == 1 then
    redis.call('PUBLISH', KEYS[2], ARGV[2])
  end
  return 1
end
return 0
""")

MIN_RETRY_SECONDS = 0.1          # the fastest a waiter asks again under contention
FENCE_KEEP_MS = 30 * 86400_000   # a session's fence counter outlives 30 idle days


class Lease:
    """A held lock on one session: renews itself every lease/3 until released; ``lost``
    once a renewal found the lock gone or someone else's (the lease had expired)."""

    log = Logger()

    def __init__(self, locks: "SessionLocks", session_key: str, key: str, token: str):
        self.session_key = session_key
        self.key = key
        self.token = token
        self.lost = False
        self._locks = locks
        self._released = False
        self._timer: Any = None
        self._schedule()

    @property
    def fence(self) -> int:
        """The acquisition's number: larger for every later holder of the session."""
        return int(self.token.split(":", 1)[0])

    def _schedule(self) -> None:
        self._timer = self._locks.reactor.callLater(self._locks.lease_seconds / 3, self._renew)

    def _renew(self) -> None:
        self._timer = None
        d = self._locks.link.script(RENEW, [self.key], [self.token, self._locks.lease_ms])
        d.addCallbacks(self._renewed, self._not_renewed)

    def _renewed(self, answer: Any) -> None:
        if self._released or self._locks.closed:
            return
        if int(answer) == 1:
            self._schedule()
            return
        self.lost = True
        self.log.warn("lost the lock of session {session_key}: its lease expired before it "
                      "was renewed (session.store.redis.lockLeaseSeconds)",
                      session_key=self.session_key)

    def _not_renewed(self, failure: Failure) -> None:
        """Redis did not answer: try again at the next tick; the lease may still be ours."""
        if self._released or self._locks.closed:
            return
        self.log.warn("could not renew the lock of session {session_key}: {error}",
                      session_key=self.session_key, error=str(failure.value))
        self._schedule()

    def stop_renewing(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def release_keys(self) -> list[str]:
        return self._locks.release_keys(self.session_key)

    def released_with_turn(self) -> None:
        """The turn's script freed the lock (``RECORD_TURN`` runs ``RELEASE``'s steps):
        nothing left to send."""
        self._released = True
        self.stop_renewing()
        self._locks._held.discard(self)

    def release(self) -> Deferred:
        """Free the lock if it is still ours and wake the waiters; never fails (a lock that
        cannot be freed now frees itself when its lease runs out)."""
        if self._released:
            return succeed(None)
        self._released = True
        self.stop_renewing()
        self._locks._held.discard(self)
        d = self._locks.link.script(RELEASE, self._locks.release_keys(self.session_key),
                                    [self.token, self.session_key])

        def failed(failure: Failure) -> None:
            self.log.warn("could not release the lock of session {session_key} ({error}); "
                          "it frees itself when its lease runs out",
                          session_key=self.session_key, error=str(failure.value))
            self._locks._maybe_left(self.session_key, self.token.split(":", 1)[1])

        d.addCallbacks(lambda _: None, failed)
        releasing = self._locks._releasing
        releasing.add(d)
        return d.addBoth(lambda _: releasing.discard(d))


class SessionLocks:
    """The session locks of one gateway process, over its ``RedisLink``."""

    log = Logger()

    def __init__(self, link: RedisLink, lease_seconds: float, reactor: Any,
                 process_id: Optional[str] = None,
                 subscriber: Optional[RedisSubscriber] = None):
        self.link = link
        self.lease_seconds = lease_seconds
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.reactor = reactor
        self.process_id = process_id or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.channel = link.key("lock-released")
        self.closed = False
        self._held: set[Lease] = set()
        self._releasing: set[Deferred] = set()      # releases on their way to Redis
        self._wakers: dict[str, set[Callable[[], None]]] = {}
        # session -> (owner, when): a lock of this process Redis may still hold after an
        # outage (a release or an acquire whose answer never came); the next run of the
        # session here frees it first, rather than waiting out the lease of a run long over
        self._left: dict[str, tuple[str, float]] = {}
        # The process's pub/sub connection (GatewayService's); without one, our own.
        self._own_subscriber = subscriber is None
        self.subscriber = subscriber if subscriber is not None else RedisSubscriber(link, reactor)
        self._listening = False

    def start(self) -> None:
        """Hear releases on the pub/sub connection (it resubscribes after a reconnect)."""
        if not self._listening:
            self._listening = True
            self.subscriber.add_listener(self.channel, self._released, text=True)
        if self._own_subscriber:
            self.subscriber.start()

    @inlineCallbacks
    def close(self) -> Any:
        """Let releases on their way reach Redis, then stop renewing the leases still held
        (as a process that dies would: they expire) and stop listening."""
        yield DeferredList(list(self._releasing))
        self.closed = True
        for lease in list(self._held):
            lease.stop_renewing()
        self._held.clear()
        if self._listening:
            self._listening = False
            self.subscriber.unlisten(self.channel, self._released)
        if self._own_subscriber:
            yield self.subscriber.stop()

    def acquire(self, session_key: str) -> Deferred:
        """Fire with a ``Lease`` once this process holds the session; cancelling stops the
        wait (and frees a lock that was taken in the meantime). Fails with
        ``RedisUnavailable`` when Redis does not answer."""
        return Deferred.fromCoroutine(self._acquire(session_key))

    async def _acquire(self, session_key: str) -> Lease:
        key, fence_key = self.link.key("lock", session_key), self.link.key("fence", session_key)
        owner = f"{self.process_id}:{uuid.uuid4().hex}"
        await self._release_stale(session_key)
        while True:
            # Listen before asking: a release published while the answer is on its way
            # must still wake this waiter.
            heard = self._release_heard(session_key)
            try:
                answer = await self._attempt(key, fence_key, owner, session_key)
            except RedisUnavailable:
                _drop(heard)
                self._maybe_left(session_key, owner)   # Redis may have applied it
                raise
            except BaseException:
                _drop(heard)
                raise
            if isinstance(answer, str):
                _drop(heard)
                lease = Lease(self, session_key, key, answer)
                self._held.add(lease)
                return lease
            # taken: wake on a release, or ask again once the holder's lease may be over
            left = max(0.0, int(answer) / 1000.0)
            await self._within(heard, min(self.lease_seconds / 4, max(MIN_RETRY_SECONDS, left)))

    def _maybe_left(self, session_key: str, owner: str) -> None:
        """Remember a lock Redis may hold for us, until its lease would have run out."""
        now = self.reactor.seconds()
        for each, (_, since) in list(self._left.items()):
            if now - since > self.lease_seconds:
                del self._left[each]
        self._left[session_key] = (owner, now)

    async def _release_stale(self, session_key: str) -> None:
        """Free this process's own lock left from an outage, if Redis still holds it
        (compare-and-delete: a no-op once another run took the session); fails with
        ``RedisUnavailable`` while Redis does not answer, within the command timeout."""
        left = self._left.get(session_key)
        if left is None:
            return
        key = self.link.key("lock", session_key)
        token = await self.link.execute("GET", key)
        if isinstance(token, str) and token.split(":", 1)[-1] == left[0]:
            await self.link.script(RELEASE, self.release_keys(session_key), [token, session_key])
        if self._left.get(session_key) is left:
            del self._left[session_key]

    def release_keys(self, session_key: str) -> list[str]:
        """The KEYS of ``RELEASE``: the lock, the channel, the mark that someone waits."""
        return [self.link.key("lock", session_key), self.channel,
                self.link.key("lock-waited", session_key)]

    def _attempt(self, key: str, fence_key: str, owner: str, session_key: str) -> Deferred:
        """One try at the lock; a try cancelled in flight frees the lock if it got it."""
        attempt = self.link.script(ACQUIRE, [key, fence_key,
                                             self.link.key("lock-waited", session_key)],
                                   [owner, self.lease_ms, FENCE_KEEP_MS])
        outer: Deferred = Deferred(lambda _: None)

        def settle(result: Any) -> None:
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)
            elif isinstance(result, str):      # cancelled while Redis gave us the lock
                Lease(self, session_key, key, result).release()
            elif isinstance(result, Failure):
                result.trap(RedisUnavailable, txredisapi.ResponseError)

        attempt.addBoth(settle)
        return outer

    def _release_heard(self, session_key: str) -> Deferred:
        """Fires when a release of the session is heard; cancelling forgets it."""
        wakers = self._wakers.setdefault(session_key, set())

        def forget() -> None:
            wakers.discard(wake)
            if not wakers and self._wakers.get(session_key) is wakers:
                del self._wakers[session_key]

        def wake() -> None:
            forget()
            if not heard.called:
                heard.callback(None)

        heard: Deferred = Deferred(lambda _: forget())
        wakers.add(wake)
        return heard

    def _within(self, heard: Deferred, seconds: float) -> Deferred:
        """``heard``, or after ``seconds`` if no release comes first."""
        def elapsed() -> None:
            if not heard.called:
                heard.cancel()

        timer = self.reactor.callLater(seconds, elapsed)

        def done(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure) and not timer.called:
                return result       # type: ignore[return-value]  # cancelled by our caller
            return None

        return heard.addBoth(done)

    def _released(self, session_key: str) -> None:
        for wake in list(self._wakers.get(session_key, ())):
            wake()


def _drop(heard: Deferred) -> None:
    """Stop listening for a release nobody waits for any more."""
    heard.addErrback(lambda failure: failure.trap(CancelledError))
    heard.cancel()
