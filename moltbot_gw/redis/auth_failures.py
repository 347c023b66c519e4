"""The failed-auth limiter counted across gateway processes (``session.store.backend:
"redis"``), while the check itself stays synchronous and local.

Each process's ``FailureLimiter`` remains the authority ``GatewayAuth.authenticate`` asks.
Every failure is also counted in Redis (``<prefix>authfail:<limiter key>``, expiring with the
window, one Lua script); when the shared count reaches ``maxFailures`` the script records a
lock (sorted set ``<prefix>auth-locks``, scored by its end) and publishes it on the
``auth-locks`` channel, and every process applies it to its local limiter. A process that
(re)connects loads the locks in force. A success resets the address in Redis too.

Eventually consistent within one Redis round trip: a burst spread over processes can exceed
the limit by at most the number of processes x the attempts in flight meanwhile. Redis
unavailable: each local limiter still limits on its own (never no limit, never everyone
locked out).
"""
from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure

from ..auth import FailureLimiter
from .connection import LuaScript, RedisLink
from .notices import RedisNotices

CHANNEL = "auth-locks"

# KEYS: the address's counter, the lock set; ARGV: limiter key, max failures, window ms,
# the channel. Returns the lock's length in ms, 0 while under the limit.
_FAILED = LuaScript("""
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if n < tonumber(ARGV[2]) then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then ttl = tonumber(ARGV[3]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. ttl)
return ttl
""")

# KEYS: the lock set. Returns [limiter key, ms left, ...] of the locks in force.
_LOCKS = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local found = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
  out[#out + 1] = found[i]
  out[#out + 1] = tostring(tonumber(found[i + 1]) - now)
end
return out
""")


class SharedAuthFailures:
    """``GatewayAuth.shared``: counts failures in Redis and applies shared locks locally."""

    log = Logger()

    def __init__(self, redis: RedisLink, notices: RedisNotices, limiter: FailureLimiter):
        self.redis = redis
        self.notices = notices
        self.limiter = limiter
        self._failing = False           # Redis refused the last update (logged once)
        notices.listen(CHANNEL, self._notice)
        notices.on_connect(self.load_locks)

    def failed(self, key: str) -> None:
        d = self.redis.script(_FAILED, [self.redis.key("authfail", key),
                                        self.redis.key("auth-locks")],
                              [key, self.limiter.max_failures,
                               max(1, int(self.limiter.window * 1000)),
                               self.notices.channel(CHANNEL)])
        d.addCallbacks(lambda ttl: self._applied(key, ttl), self._unshared)

    def succeeded(self, key: str) -> None:
        d = self.redis.execute("DEL", self.redis.key("authfail", key))
        d.addCallback(lambda _: self.redis.execute("ZREM", self.redis.key("auth-locks"), key))
        d.addCallbacks(lambda _: self._shared_again(), self._unshared)

    def load_locks(self):
        """Apply the locks in force (at start and after the notices reconnect)."""
        d = self.redis.script(_LOCKS, [self.redis.key("auth-locks")], [])

        def apply(flat: list) -> None:
            for key, left in zip(flat[::2], flat[1::2], strict=True):
                self.limiter.lock(key, int(left) / 1000)
            self._shared_again()

        return d.addCallbacks(apply, self._unshared)

    def _applied(self, key: str, ttl) -> None:
        self._shared_again()
        if int(ttl) > 0:     # the notice brings the same; applying now spares the wait
            self.limiter.lock(key, int(ttl) / 1000)

    def _notice(self, message: str) -> None:
        key, _, ttl = message.rpartition(" ")
        if key and ttl.isdigit():
            self.limiter.lock(key, int(ttl) / 1000)

    def _shared_again(self) -> None:
        if self._failing:
            self._failing = False
            self.log.info("Failed-auth counting is shared through Redis again")

    def _unshared(self, failure: Failure) -> None:
        if not self._failing:
            self._failing = True
            self.log.warn("Failed-auth counting is local only until Redis answers: "
                          "{problem}", problem=str(failure.value))
