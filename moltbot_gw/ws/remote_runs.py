"""The WebSocket methods' view of runs on other gateway processes (Redis backend): results
and aborts through ``RunBus``, other processes' events relayed to this process's connections,
idempotency keys shared through Redis. Translation only; the bus does the Redis work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Optional, TypeVar

from twisted.logger import Logger

from ..agents.run import Run
from ..redis.connection import RedisUnavailable
from ..redis.idempotency_keys import SharedIdempotencyKeys
from ..redis.run_bus import RunBus, RunLost
from .event_router import EventRouter, EventTarget
from .frames import ErrorCode, ProtocolError
from .run_results import from_outcome_json, outcome_json

T = TypeVar("T")


@dataclass(frozen=True)
class RemoteRun:
    """A run another gateway process runs, as far as this one knows it."""

    run_id: str
    agent_id: str
    session_key: str


def unavailable(error: RedisUnavailable) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAVAILABLE,
                         f"the gateway's shared state (Redis) is unavailable: {error}")


async def _shared(work: Awaitable[T]) -> T:
    """``work``, with Redis being unavailable answered as ``UNAVAILABLE``."""
    try:
        return await work
    except RedisUnavailable as e:
        raise unavailable(e) from e


class RemoteRuns:
    log = Logger()

    def __init__(self, bus: RunBus, router: EventRouter, runner: Any,
                 idempotency_ttl: float):
        self.bus = bus
        self.keys = SharedIdempotencyKeys(bus.link, bus.reactor, int(idempotency_ttl))
        self.router = router
        self.runner = runner
        bus.on_abort = self._abort_here
        self._subscribed: set[str] = set()        # session keys of chat.send subscribers
        self._followers: dict[str, int] = {}      # session key -> runs followed there
        self._listening: set[str] = set()         # session channels listened to

    # -- runs of this process -----------------------------------------------------------

    def started(self, run: Run) -> None:
        self.bus.track(run, lambda outcome: outcome_json(run, outcome))

    def _abort_here(self, session_key: str, run_id: Optional[str]) -> None:
        """Another process's ``chat.abort``: cancel the matching runs running here."""
        runs = [run for run in list(self.runner.active.values())
                if run.session_key == session_key and run_id in (None, run.run_id)]
        for run in runs:
            run.cancel()
        if runs:
            self.log.info("aborted {n} run(s) on {session_key} at another process's request",
                          n=len(runs), session_key=session_key)

    # -- runs anywhere ------------------------------------------------------------------

    async def wait(self, run_id: str) -> Optional[dict]:
        """The result payload of a run of another process once it ends (raises its error
        response); None when no process knows it."""
        try:
            outcome = await _shared(self.bus.wait(run_id))
        except RunLost as e:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(e),
                                details={"runId": run_id, "status": "error"}) from e
        return None if outcome is None else from_outcome_json(outcome)

    async def follow(self, run: RemoteRun, connection: EventTarget) -> dict:
        """``agent`` repeated on this process for a run of another: its remaining events
        reach ``connection``, then its result."""
        self.router.watch_remote(run.run_id)
        self.router.add_asker_id(run.run_id, connection)
        try:
            await self._relay(run.session_key)
            try:
                result = await self.wait(run.run_id)
            finally:
                self._unrelay(run.session_key)
        finally:
            self.router.forget_remote(run.run_id)
        if result is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f'run "{run.run_id}" is no longer known')
        return result

    async def abort(self, session_key: str, run_id: Optional[str]) -> list[str]:
        """Ask every process to abort; the ids of matching runs other processes run."""
        return await _shared(self.bus.request_abort(session_key, run_id))

    # -- events of other processes' runs ------------------------------------------------
    # A session's channel is listened to while a connection here subscribes to the session
    # (``chat.send``) or follows one of its runs (``follow``).

    async def subscribe_session(self, session_key: str) -> None:
        if session_key in self._subscribed:
            return
        self._subscribed.add(session_key)
        try:
            await self._listen(session_key)
        except ProtocolError:
            self._subscribed.discard(session_key)
            raise

    async def _relay(self, session_key: str) -> None:
        self._followers[session_key] = self._followers.get(session_key, 0) + 1
        try:
            await self._listen(session_key)
        except ProtocolError:
            self._unrelay(session_key)
            raise

    def _unrelay(self, session_key: str) -> None:
        self._followers[session_key] -= 1
        if not self._followers[session_key]:
            del self._followers[session_key]
        self._maybe_unlisten(session_key)

    async def _listen(self, session_key: str) -> None:
        if session_key not in self._listening:
            self._listening.add(session_key)
            try:
                await _shared(self.bus.listen_session(session_key, self._deliver))
            except ProtocolError:
                self._listening.discard(session_key)
                raise

    def _maybe_unlisten(self, session_key: str) -> None:
        if (session_key in self._listening and session_key not in self._subscribed
                and session_key not in self._followers):
            self._listening.discard(session_key)
            self.bus.unlisten_session(session_key, self._deliver)

    def connection_closed(self) -> None:
        """Stop relaying sessions no connection here subscribes to any more."""
        for key in [k for k in self._subscribed if not self.router.has_session(k)]:
            self._subscribed.discard(key)
            self._maybe_unlisten(key)

    def _deliver(self, message: dict) -> None:
        run_id, session_key = message.get("runId"), message.get("sessionKey")
        if not (isinstance(run_id, str) and isinstance(session_key, str)):
            return
        for event in message.get("events", ()):
            self.router.deliver(run_id, session_key, {**event, "sessionKey": session_key})

    # -- idempotency keys ---------------------------------------------------------------

    async def claim(self, scope: tuple, asked: str) -> Optional[dict]:
        """None: this request holds the key; otherwise the earlier request's record
        (``IDEMPOTENCY_CONFLICT`` when it asked something else)."""
        earlier = await _shared(self.keys.claim(scope, asked))
        if earlier is not None and earlier.get("asked") != asked:
            raise ProtocolError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                "idempotencyKey was already used for a different request (message, "
                "sessionKey, agentId or extraSystemPrompt differ); use a new key",
                details={"runId": earlier.get("runId")})
        return earlier

    def claimed(self, scope: tuple, asked: str, run: Run) -> None:
        self.keys.started(scope, asked, run.run_id, run.agent_id, run.session_key,
                          self.bus.owner)

    def release(self, scope: tuple) -> None:
        self.keys.release(scope)
