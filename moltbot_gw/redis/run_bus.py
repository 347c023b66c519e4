"""Runs across gateway processes: the process that runs a run registers it in Redis, publishes
its events in order on its session's channel and stores its outcome for a while when it ends;
any process can look a run up, wait for its outcome, relay its events or ask its owner to
abort it. Transport-free: outcomes are opaque JSON objects the protocol layer chooses.

Keys (under ``keyPrefix``): ``run:<runId>`` (hash: owner, agentId, sessionKey; expires
``lockLeaseSeconds`` after its owner stopped renewing it), ``session-runs:<sessionKey>`` (set of
run ids), ``run-result:<runId>`` (``runResultSeconds``). Channels: ``run-events:<sessionKey>``,
``run-abort``.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from ..agents.run import Run
from .connection import LuaScript, RedisLink, RedisUnavailable
from .subscriber import Handler, RedisSubscriber

MAX_QUEUED_EVENTS = 10_000    # events of one run waiting for Redis; beyond, the oldest go
# One step, so the hash never exists without its expiry (the pool may reorder commands).
REGISTER = LuaScript("""
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'agentId', ARGV[2], 'sessionKey', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
""")


class RunLost(Exception):
    """The run's process stopped renewing it (it died) before storing an outcome."""


class _EventPump:
    """Publishes one run's messages in order: one ``PUBLISH`` in flight at a time (the pool
    would otherwise reorder them), events that queued meanwhile sent together."""

    def __init__(self, bus: "RunBus", run: Run):
        self.bus = bus
        self.run = run
        self.channel = bus.link.key("run-events", run.session_key)
        self.queue: list[tuple[str, Any]] = []
        self.sending = False
        self.dropped = 0

    def push(self, kind: str, data: Any) -> None:
        self.queue.append((kind, data))
        if len(self.queue) > MAX_QUEUED_EVENTS:
            del self.queue[0]
            self.dropped += 1
        if not self.sending:
            self._send()

    def _send(self) -> None:
        if not self.queue:
            self.sending = False
            return
        self.sending = True
        message: dict[str, Any] = {"owner": self.bus.owner, "runId": self.run.run_id,
                   "sessionKey": self.run.session_key}
        if self.queue[0][0] == "end":
            message["end"] = self.queue.pop(0)[1]
        else:
            events = []
            while self.queue and self.queue[0][0] == "event":
                events.append(self.queue.pop(0)[1])
            message["events"] = events
        d = self.bus.link.execute("PUBLISH", self.channel, json.dumps(message))
        d.addErrback(self.bus.failed, "publish the events of", self.run.run_id)
        d.addBoth(lambda _: self._send())


class RunBus:
    log = Logger()

    def __init__(self, link: RedisLink, reactor: Any, *, lease_seconds: float,
                 result_seconds: int, subscriber: Optional[RedisSubscriber] = None):
        self.link = link
        self.reactor = reactor
        self.lease_seconds = lease_seconds
        self.result_seconds = result_seconds
        # The process's pub/sub connection (GatewayService's); without one, our own.
        self._own_subscriber = subscriber is None
        self.subscriber = subscriber if subscriber is not None else RedisSubscriber(link, reactor)
        self.owner = "gw_" + uuid.uuid4().hex          # this process
        # Called with (sessionKey, runId or None) when any process asks for an abort.
        self.on_abort: Callable[[str, Optional[str]], None] = lambda key, run_id: None
        self._renewals: dict[str, Any] = {}
        self._storing: set[Deferred] = set()       # outcomes being stored (see stop)
        self._filters: dict[tuple[str, Handler], Handler] = {}   # see listen_session

    def start(self) -> None:
        if self._own_subscriber:
            self.subscriber.start()
        # Subscribed on every (re)connection of the pub/sub connection, without waiting.
        self.subscriber.add_listener(self.link.key("run-abort"), self._abort_asked)

    async def stop(self) -> None:
        """Store the outcomes of the runs that just ended (a stop cancels runs), then close
        the pub/sub connection."""
        await DeferredList(list(self._storing), consumeErrors=True)
        for timer in self._renewals.values():
            if timer.active():
                timer.cancel()
        self._renewals.clear()
        self.subscriber.unlisten(self.link.key("run-abort"), self._abort_asked)
        if self._own_subscriber:
            await self.subscriber.stop()

    def failed(self, failure, what: str, run_id: str) -> None:
        failure.trap(RedisUnavailable)
        self.log.warn("could not {what} run {run_id}: {error}", what=what, run_id=run_id,
                      error=str(failure.value))

    # -- the owner's side ---------------------------------------------------------------

    def track(self, run: Run, outcome_json: Callable[[Any], dict]) -> None:
        """Register ``run`` as running here, publish its events, and store
        ``outcome_json(result or Failure)`` when it ends."""
        key, runs = self.link.key("run", run.run_id), self.link.key("session-runs",
                                                                    run.session_key)
        lease = str(max(1, round(self.lease_seconds)))
        self.link.script(REGISTER, [key, runs], [
            self.owner, run.agent_id, run.session_key, lease, run.run_id,
            str(self.result_seconds)]).addErrback(self.failed, "register", run.run_id)
        pump = _EventPump(self, run)
        run.subscribe(lambda event: pump.push("event", event.to_json()))
        self._renew(run.run_id, key, lease)

        def ended(outcome: Any) -> None:
            storing = Deferred.fromCoroutine(self._ended(run, pump, outcome_json(outcome)))
            self._storing.add(storing)
            storing.addBoth(lambda _: self._storing.discard(storing))

        run.wait().addBoth(ended)

    def _renew(self, run_id: str, key: str, lease: str) -> None:
        def renew() -> None:
            self.link.execute("EXPIRE", key, lease).addErrback(self.failed, "renew", run_id)
            self._renewals[run_id] = self.reactor.callLater(self.lease_seconds / 3, renew)
        self._renewals[run_id] = self.reactor.callLater(self.lease_seconds / 3, renew)

    async def _ended(self, run: Run, pump: _EventPump, outcome: dict) -> None:
        timer = self._renewals.pop(run.run_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        try:
            await self.link.execute("SET", self.link.key("run-result", run.run_id),
                                    json.dumps(outcome), "EX", str(self.result_seconds))
            await self.link.execute("DEL", self.link.key("run", run.run_id))
            await self.link.execute("SREM", self.link.key("session-runs", run.session_key),
                                    run.run_id)
        except RedisUnavailable as e:
            self.log.warn("could not store the outcome of run {run_id}: {error}",
                          run_id=run.run_id, error=str(e))
        pump.push("end", outcome)

    def _abort_asked(self, message: dict) -> None:
        key, run_id = message.get("sessionKey"), message.get("runId")
        if isinstance(key, str):
            self.on_abort(key, run_id if isinstance(run_id, str) else None)

    # -- any process's side -------------------------------------------------------------

    async def outcome(self, run_id: str) -> Optional[dict]:
        """The stored outcome of a run that ended, if it is still kept."""
        stored = await self.link.execute("GET", self.link.key("run-result", run_id))
        return json.loads(stored) if stored else None

    async def running(self, run_id: str) -> Optional[dict]:
        """``{"owner", "agentId", "sessionKey"}`` of a run registered as running."""
        owner, agent_id, session_key = await self.link.execute(
            "HMGET", self.link.key("run", run_id), "owner", "agentId", "sessionKey")
        if not (owner and session_key):
            return None
        return {"owner": owner, "agentId": agent_id, "sessionKey": session_key}

    async def wait(self, run_id: str) -> Optional[dict]:
        """The run's outcome once it ends (at once if stored); None for a run no process
        knows. Raises ``RunLost`` when its process died without storing one."""
        stored = await self.outcome(run_id)
        if stored is not None:
            return stored
        info = await self.running(run_id)
        if info is None:
            return None
        ended: Deferred = Deferred()

        def heard(message: dict) -> None:
            if message.get("runId") == run_id and "end" in message and not ended.called:
                ended.callback(message["end"])

        await self.listen_session(info["sessionKey"], heard)
        timer = None
        try:
            # Subscribed first, then read again: an end published in between is not missed.
            stored = await self.outcome(run_id)
            if stored is not None:
                return stored

            async def check() -> None:
                nonlocal timer
                if ended.called:
                    return
                try:
                    stored = await self.outcome(run_id)
                    alive = stored is not None or await self.running(run_id) is not None
                except RedisUnavailable:
                    alive, stored = True, None       # keep waiting; Redis may come back
                if ended.called:
                    return
                if stored is not None:
                    ended.callback(stored)
                elif not alive:
                    ended.errback(RunLost(f"the gateway process running {run_id} stopped "
                                          "before it ended"))
                else:
                    timer = self.reactor.callLater(self.lease_seconds / 3, poll)

            def poll() -> None:
                Deferred.fromCoroutine(check())

            timer = self.reactor.callLater(self.lease_seconds / 3, poll)
            return await ended
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            self.unlisten_session(info["sessionKey"], heard)

    async def listen_session(self, session_key: str, handler: Handler) -> None:
        """Messages (events and ends) of the runs on ``session_key`` run by other processes."""
        def others(message: dict) -> None:
            if message.get("owner") != self.owner:   # our own runs are delivered locally
                handler(message)
        self._filters[(session_key, handler)] = others
        try:
            await self.subscriber.listen(self.link.key("run-events", session_key), others)
        except RedisUnavailable:
            self._filters.pop((session_key, handler), None)
            raise

    def unlisten_session(self, session_key: str, handler: Handler) -> None:
        others = self._filters.pop((session_key, handler), None)
        if others is not None:
            self.subscriber.unlisten(self.link.key("run-events", session_key), others)

    async def request_abort(self, session_key: str, run_id: Optional[str]) -> list[str]:
        """Ask every process to abort the runs of ``session_key`` (only ``run_id`` if given);
        returns the ids of the matching runs registered by other processes."""
        members = await self.link.execute("SMEMBERS",
                                          self.link.key("session-runs", session_key))
        remote = []
        for member in members or ():
            if run_id is not None and member != run_id:
                continue
            info = await self.running(member)
            if info is not None and info["owner"] != self.owner:
                remote.append(member)
        await self.link.execute("PUBLISH", self.link.key("run-abort"), json.dumps(
            {"sessionKey": session_key, "runId": run_id, "from": self.owner}))
        return remote

