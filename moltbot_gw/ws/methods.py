"""The methods of the WebSocket control protocol: each checks its params, calls the runtime
(runner, session store, agent registry) and shapes the payload. No framing or socket work
here; a method gets the connection only to send events and an early response through it.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Literal, Mapping, Optional, Protocol, overload

from twisted.logger import Logger

from .. import __version__
from ..agents.client_slots import RunSlots
from ..agents.failures import describe_failure
from ..agents.registry import Agent, AgentRegistry, UnknownAgent
from ..agents.run import InvalidRunRequest, Run, RunRequest
from ..agents.runner import AgentRunner
from ..config import LimitsConfig, normalize_agent_id
from ..redis.run_bus import RunBus
from ..sessions.interface import ISessionStore
from ..sessions.keys import KEY_PREFIX, parse_session_key, resolve_session_key
from ..sessions.transcript import current_branch
from .event_router import EventRouter
from .frames import PROTOCOL_VERSION, ErrorCode, ProtocolError, Request, failure_error, invalid
from .idempotency import expiring_cache
from .remote_runs import RemoteRun, RemoteRuns
from .run_admission import IDEMPOTENCY_TTL, WRITE_METHODS, RunAdmission
from .run_results import result_payload, run_error, wait_for  # noqa: F401 - re-exported

MAIN_SESSION = "main"
FINISHED_RUN_TTL = 600.0
MAX_FINISHED_RUNS = 1_000
MAX_IDEMPOTENCY_KEY_LENGTH = 256
DEFAULT_HISTORY_LIMIT = 200
MAX_HISTORY_LIMIT = 1000
HISTORY_FIELDS = ("role", "content", "ts", "runId", "status", "model", "finishReason",
                  "usage", "error")

EVENTS = ("agent", "tick", "shutdown")


class Connection(Protocol):
    """What methods need of a connection."""

    address: str                      # the client address (X-Forwarded-For aware)
    client_id: Optional[str]          # ``client.id`` of its connect request

    def send_event(self, event: str, payload: Mapping[str, Any]) -> None: ...

    def send_response(self, request_id: str, payload: Any) -> None: ...


# --- params ------------------------------------------------------------------------------

@overload
def _text(params: Mapping[str, Any], name: str, *, required: Literal[True],
          max_length: Optional[int] = None) -> str:
    ...


@overload
def _text(params: Mapping[str, Any], name: str, *, required: bool = False,
          max_length: Optional[int] = None) -> Optional[str]:
    ...


def _text(params: Mapping[str, Any], name: str, *, required: bool = False,
          max_length: Optional[int] = None) -> Optional[str]:
    value = params.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    if required and not value.strip():
        raise invalid(f"{name} must not be empty")
    if max_length is not None and not 1 <= len(value) <= max_length:
        raise invalid(f"{name} must be 1 to {max_length} characters")
    return value


def _count(params: Mapping[str, Any], name: str, default: Optional[int],
           maximum: Optional[int] = None) -> Optional[int]:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (
            maximum is not None and value > maximum):
        limit = f" and at most {maximum}" if maximum is not None else ""
        raise invalid(f"{name} must be an integer of at least 1{limit}")
    return value


# --- results -----------------------------------------------------------------------------

def _message_count_reaches(limit: int):
    """A transcript tail-read stop: once ``limit`` message records are in hand."""
    seen = 0

    def enough(record: Mapping[str, Any]) -> bool:
        nonlocal seen
        seen += record.get("type") == "message"
        return seen >= limit

    return enough


# --- the methods -------------------------------------------------------------------------

Handler = Callable[[Connection, Request], Awaitable[Any]]


class GatewayMethods:
    """The method table of the protocol, bound to one gateway's runtime."""

    log = Logger()

    def __init__(self, runner: AgentRunner, store: ISessionStore, agents: AgentRegistry, clock,
                 *, client_slots: Optional[RunSlots] = None,
                 limits: Optional[LimitsConfig] = None, run_bus: Optional[RunBus] = None):
        self.runner = runner
        self.store = store
        self.agents = agents
        self.clock = clock
        # The open connections, for ``status``; the factory adds and removes them.
        self.connections: set = set()
        self.started_at = clock.seconds()
        self.started_at_ms = int(self.started_at * 1000)
        self.router = EventRouter()
        self.admission = RunAdmission(clock, limits or LimitsConfig(), client_slots)
        # Runs of other gateway processes (Redis backend); None: this process is alone.
        self.remote = (RemoteRuns(run_bus, self.router, runner, IDEMPOTENCY_TTL)
                       if run_bus is not None else None)
        self.finished_runs = expiring_cache(clock, FINISHED_RUN_TTL, MAX_FINISHED_RUNS)
        self.table: dict[str, Handler] = {
            "health": self.health,
            "status": self.status,
            "agent": self.agent,
            "agent.wait": self.agent_wait,
            "chat.send": self.chat_send,
            "chat.history": self.chat_history,
            "chat.abort": self.chat_abort,
            "sessions.list": self.sessions_list,
            "sessions.reset": self.sessions_reset,
            "sessions.delete": self.sessions_delete,
            "models.list": self.models_list,
        }
        for name in WRITE_METHODS:
            self.table[name] = self.admission.rate_limited(self.table[name])

    @property
    def names(self) -> list[str]:
        return list(self.table)

    def connection_closed(self, connection: Connection) -> None:
        self.router.drop(connection)
        self.admission.connection_closed(connection)
        if self.remote is not None:
            self.remote.connection_closed()

    def reconfigure(self, agents: AgentRegistry, limits: LimitsConfig) -> None:
        """A config reload: the agents and limits of calls from now on."""
        self.agents = agents
        self.admission.limits = limits

    def _uptime_ms(self) -> int:
        return int((self.clock.seconds() - self.started_at) * 1000)

    # -- resolving agents and session keys --------------------------------------------

    def _agent(self, raw_id: Optional[str]) -> Agent:
        try:
            return self.agents.get(raw_id)
        except UnknownAgent as e:
            raise failure_error(describe_failure(e)) from e

    def _session(self, params: Mapping[str, Any], name: str, default: Optional[str],
                 configured_agent: bool = True) -> tuple[Optional[Agent], str]:
        """The agent and full session key that ``params[name]`` (with ``agentId``) names.

        With ``configured_agent=False`` a full key of an agent no longer configured is
        accepted (for cleaning up its sessions); the agent is then ``None``.
        """
        raw_key = _text(params, name, required=default is None)
        raw_agent = _text(params, "agentId")
        if raw_key is not None and raw_key.strip().startswith(KEY_PREFIX):
            try:
                key_agent, _ = parse_session_key(raw_key.strip())
            except ValueError as e:
                raise invalid(f"{name}: {e}") from e
            if raw_agent is None:
                if not configured_agent:
                    return (self.agents.get(key_agent) if key_agent in self.agents.ids
                            else None), raw_key.strip()
                raw_agent = key_agent
        agent = self._agent(raw_agent)
        given = raw_key if raw_key is not None else default
        assert given is not None  # without a default the key was required
        try:
            key = resolve_session_key(agent.id, given)
        except ValueError as e:
            raise invalid(f"{name}: {e}") from e
        return agent, key

    # -- runs ---------------------------------------------------------------------------

    async def _start_run(self, connection: Connection, method: str,
                         params: Mapping[str, Any]) -> tuple[Run | RemoteRun, bool]:
        """Start the run the params ask for once the client has a free run slot, or find the
        one their idempotency key names. Returns ``(run, deduplicated)``."""
        message = _text(params, "message", required=True)
        self.admission.check_message(message)
        idempotency_key = _text(params, "idempotencyKey",
                                max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
        extra = _text(params, "extraSystemPrompt")
        scope: Optional[tuple] = None
        asked = ""
        if idempotency_key is not None:
            asked = self.admission.asked(params)
            scope = self.admission.idempotency_scope(connection, method, idempotency_key)
            earlier = self.admission.earlier_run(scope, asked)
            if earlier is not None:
                return earlier, True
        agent, session_key = self._session(params, "sessionKey", MAIN_SESSION)
        assert agent is not None  # only configured_agent=False may yield None
        slot = await self.admission.slot(connection.address)
        claimed = False         # this request holds the key in Redis
        try:
            if scope is not None:   # the same request may have started while this waited
                earlier = self.admission.earlier_run(scope, asked)
                if earlier is not None:
                    slot.release()
                    return earlier, True
                if self.remote is not None:
                    shared = await self.remote.claim(scope, asked)
                    if shared is not None:
                        slot.release()
                        return self._shared_run(shared), True
                    claimed = True
            run = self.runner.run(RunRequest(
                input=({"role": "user", "content": message},), agent_id=agent.id,
                session_key=session_key, extra_system_prompt=extra or None, persist=True))
        except BaseException as e:
            slot.release()
            if claimed:
                self.remote.release(scope)      # type: ignore[union-attr, arg-type]
            if isinstance(e, InvalidRunRequest):
                raise failure_error(describe_failure(e)) from e
            raise
        run.wait().addBoth(lambda _: slot.release())   # the slot is held while the run runs
        self.router.watch(run)
        # Findable by agent.wait for a while after it ends, not only while it runs.
        self.finished_runs[run.run_id] = run

        def ended(_outcome) -> None:
            self.finished_runs[run.run_id] = run     # kept for FINISHED_RUN_TTL from the end

        run.wait().addBoth(ended)
        if scope is not None:
            self.admission.remember(scope, asked, run)
        if self.remote is not None:
            self.remote.started(run)
            if claimed:
                self.remote.claimed(scope, asked, run)   # type: ignore[arg-type]
        return run, False

    def _shared_run(self, record: Mapping[str, Any]) -> Run | RemoteRun:
        """The run an idempotency key in Redis names: ours if it runs or ran here."""
        run_id = record["runId"]
        return (self.runner.get(run_id) or self.finished_runs.get(run_id)
                or RemoteRun(run_id, record["agentId"], record["sessionKey"]))

    @staticmethod
    def _run_reference(run: Run | RemoteRun, status: str, deduplicated: bool) -> dict:
        payload: dict[str, Any] = {"runId": run.run_id, "agentId": run.agent_id,
                                   "sessionKey": run.session_key, "status": status}
        if deduplicated:
            payload["deduplicated"] = True
        return payload

    # -- methods ------------------------------------------------------------------------

    async def health(self, connection: Connection, request: Request) -> dict:
        return {"ok": True, "version": __version__, "uptimeMs": self._uptime_ms(),
                "ts": int(self.clock.seconds() * 1000)}

    async def status(self, connection: Connection, request: Request) -> dict:
        return {"version": __version__, "protocol": PROTOCOL_VERSION,
                "startedAt": self.started_at_ms, "uptimeMs": self._uptime_ms(),
                "agents": {"defaultId": self.agents.default_id, "ids": list(self.agents.ids)},
                "activeRuns": len(self.runner.active),
                "connections": len(self.connections)}

    async def agent(self, connection: Connection, request: Request) -> dict:
        run, deduplicated = await self._start_run(connection, "agent", request.params)
        if isinstance(run, RemoteRun):
            connection.send_response(request.id, self._run_reference(run, "accepted", True))
            return await self.remote.follow(run, connection)   # type: ignore[union-attr]
        self.router.add_asker(run, connection)
        connection.send_response(request.id,
                                 self._run_reference(run, "accepted", deduplicated))
        return await wait_for(run)

    async def agent_wait(self, connection: Connection, request: Request) -> dict:
        run_id = _text(request.params, "runId", required=True)
        run = self.runner.get(run_id) or self.finished_runs.get(run_id)
        if run is None and self.remote is not None:
            payload = await self.remote.wait(run_id)     # a run of another process
            if payload is not None:
                return payload
        if run is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f'no run "{run_id}" is known (runs are '
                                                     "kept for 10 minutes after they end)")
        return await wait_for(run)

    async def chat_send(self, connection: Connection, request: Request) -> dict:
        run, deduplicated = await self._start_run(connection, "chat.send", request.params)
        self.router.subscribe_session(connection, run.session_key)
        if self.remote is not None:
            try:
                await self.remote.subscribe_session(run.session_key)
            except ProtocolError as e:      # the run started: say so; only relaying is off
                self.log.warn("not relaying other processes' runs on {session_key}: {error}",
                              session_key=run.session_key, error=e.message)
        return self._run_reference(run, "started", deduplicated)

    async def chat_history(self, connection: Connection, request: Request) -> dict:
        params = request.params
        limit = _count(params, "limit", DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
        assert limit is not None  # it has a default
        _agent, key = self._session(params, "sessionKey", MAIN_SESSION)
        entry = await self.store.get(key)
        records = (await self.store.load_history(key, _message_count_reaches(limit))
                   if entry is not None else [])
        messages = [{name: record[name] for name in HISTORY_FIELDS if name in record}
                    for record in current_branch(records, every_message=True)]
        return {"sessionKey": key, "sessionId": entry.session_id if entry else None,
                "messages": messages[-limit:]}

    async def chat_abort(self, connection: Connection, request: Request) -> dict:
        params = request.params
        _agent, key = self._session(params, "sessionKey", None)
        run_id = _text(params, "runId")
        aborted = [run for run in list(self.runner.active.values())
                   if run.session_key == key and (run_id is None or run.run_id == run_id)]
        for run in aborted:
            run.cancel()
        if aborted:
            self.log.info("aborted {n} run(s) on {session_key}", n=len(aborted),
                          session_key=key)
        run_ids = [run.run_id for run in aborted]
        if self.remote is not None:     # other processes abort theirs when they hear it
            try:
                run_ids += await self.remote.abort(key, run_id)
            except ProtocolError:
                if not aborted:
                    raise
        return {"sessionKey": key, "aborted": bool(run_ids), "runIds": run_ids}

    async def sessions_list(self, connection: Connection, request: Request) -> dict:
        params = request.params
        raw_agent = _text(params, "agentId")
        limit = _count(params, "limit", None)
        agent_id = None
        if raw_agent is not None:
            agent_id = normalize_agent_id(raw_agent)
            if agent_id is None:
                raise invalid(f'agentId: "{raw_agent}" is not a valid agent id')
        entries = await self.store.list_sessions(agent_id)
        if limit is not None:
            entries = entries[:limit]
        sessions = [{"key": entry.key, "agentId": entry.agent_id, **entry.to_json()}
                    for entry in entries]
        return {"sessions": sessions, "count": len(sessions)}

    async def sessions_reset(self, connection: Connection, request: Request) -> dict:
        _agent, key = self._session(request.params, "key", None, configured_agent=False)
        existed = await self.store.reset(key)
        entry = await self.store.get(key) if existed else None
        return {"key": key, "reset": existed,
                "sessionId": entry.session_id if entry is not None else None}

    async def sessions_delete(self, connection: Connection, request: Request) -> dict:
        _agent, key = self._session(request.params, "key", None, configured_agent=False)
        return {"key": key, "deleted": await self.store.delete(key)}

    async def models_list(self, connection: Connection, request: Request) -> dict:
        return {"models": [{"id": f"moltbot:{agent.id}", "agentId": agent.id,
                            "name": agent.name, "default": agent.id == self.agents.default_id,
                            "model": agent.model.primary,
                            "fallbacks": list(agent.model.fallbacks)}
                           for agent in self.agents]}
