"""``AgentRunner``: executes one turn of an agent — lane, history, system prompt, provider
with fallbacks, timeout, cancellation, transcript — and reports it as run events.

It is the one code path every protocol uses; it knows nothing of HTTP or WebSocket.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config import parse_model_ref
from ..providers.base import ModelRequest, ModelResult
from ..providers.errors import ProviderError, ProviderReplyTooLarge
from ..providers.interface import IFlowControlledProvider
from ..providers.slots import ProviderSlot
from ..providers.token_estimate import usage_of
from ..redis.connection import RedisUnavailable
from ..sessions.interface import ISessionStore
from ..sessions.keys import openai_session_key, resolve_session_key
from ..sessions.lease import LeaseLost
from ..sessions.transcript import branch_messages, complete_tool_turns, history_messages
from ..tools.base import NO_TOOLS, AgentTools, ToolContext
from . import session_order
from .client_history import align
from .history_window import cap_history, client_history_budget, estimate_tokens, history_budget  # noqa: F401 - cap_history, estimate_tokens: re-exported
from .lanes import Lanes
from .registry import Agent, AgentRegistry
from .run import (
    SAMPLING_OPTIONS,
    InvalidRunRequest,
    Run,
    RunCancelled,
    RunRequest,
    RunResult,
    RunTimedOut,
    client_model_error,
)
from .session_order import TAKEN_OVER, HeldSession, SessionLocking
from .tool_loop import (
    CallRouter,
    ToolExecutor,
    ToolLoopLimitReached,
    check_client_tools,
    client_tool_names,
    loop_tool_choice,
    tool_loop,
)
from .turn_records import error_message, message_record, turn_records

WORKSPACE_FILES = ("AGENTS.md", "SOUL.md")


def _read_workspace(folder: str) -> list[str]:
    parts = []
    for name in WORKSPACE_FILES:
        path = Path(folder).expanduser() / name
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if text:
            parts.append(text)
    return parts


def _checked_ref(ref: str) -> tuple[str, str]:
    """``(provider, model)`` of a ref the config or ``_model_chain`` has already checked."""
    parsed = parse_model_ref(ref)
    assert parsed is not None, ref
    return parsed


class AgentRunner:
    log = Logger()

    def __init__(self, agents: AgentRegistry, providers, store: ISessionStore, reactor,
                 max_concurrent: int = 64, metrics=None,
                 tools_for: Callable[[Agent], AgentTools] = lambda agent: NO_TOOLS,
                 session_locks: Optional[SessionLocking] = None):
        self.agents = agents
        self.providers = providers
        self.store = store
        self.reactor = reactor
        self.lanes = Lanes(max_concurrent)
        self.active: dict[str, Run] = {}
        self.metrics = metrics  # a GatewayMetrics, told of every run started, or None
        self.tools_for = tools_for  # the server tools an agent may use (its tool policy)
        # orders a session's runs across processes (Redis), after the local lane; or None
        self.session_locks = session_locks

    def reconfigure(self, agents: AgentRegistry, providers,
                    tools_for: Optional[Callable[[Agent], AgentTools]] = None) -> None:
        """A config reload: runs from now on use these; runs in flight keep theirs."""
        self.agents = agents
        self.providers = providers
        if tools_for is not None:
            self.tools_for = tools_for

    def run(self, request: RunRequest) -> Run:
        """Start a run and return its handle at once. Raises ``UnknownAgent`` or
        ``InvalidRunRequest`` (bad session key, model not allowed) before anything starts."""
        agent = self.agents.get(request.agent_id)
        if request.session_key:
            try:
                session_key = resolve_session_key(agent.id, request.session_key)
            except ValueError as e:
                raise InvalidRunRequest(str(e), param="sessionKey") from e
        else:
            session_key = openai_session_key(agent.id)
        chain = self._model_chain(agent, request.model)
        tools = self.tools_for(agent)
        check_client_tools(tools, request.tools)
        run = Run("run_" + uuid.uuid4().hex, agent.id, session_key)
        execution = defer.Deferred.fromCoroutine(
            self._execute(run, agent, chain, request, tools))
        run._canceller = execution.cancel
        self.active[run.run_id] = run
        execution.addBoth(self._finished, run)
        if self.metrics is not None:
            self.metrics.run_started(run)
        return run

    def get(self, run_id: str) -> Optional[Run]:
        return self.active.get(run_id)

    def _finished(self, outcome, run: Run) -> None:
        self.active.pop(run.run_id, None)
        run.finish(outcome)

    def _model_chain(self, agent: Agent, override: Optional[str]) -> tuple[str, ...]:
        if override is None:
            chain = agent.model.chain
        else:
            if parse_model_ref(override) is None:
                raise InvalidRunRequest(
                    f'model override must be "provider/model", got "{override}"', param="model")
            if agent.allowed_models and override not in agent.allowed_models:
                raise InvalidRunRequest(
                    f'model "{override}" is not allowed for agent "{agent.id}"', param="model")
            chain = (override,)
        for ref in chain:
            provider, _ = _checked_ref(ref)
            if provider not in self.providers:
                raise InvalidRunRequest(f'model provider "{provider}" is not configured',
                                        param="model")
        return chain

    async def _system_prompt(self, agent: Agent, extra: Optional[str]) -> Optional[str]:
        parts = [agent.system_prompt] if agent.system_prompt else []
        if agent.workspace:
            parts += await threads.deferToThread(_read_workspace, agent.workspace)
        if extra:
            parts.append(extra)
        return "\n\n".join(parts) or None

    async def _execute(self, run: Run, agent: Agent, chain: tuple[str, ...],
                       request: RunRequest, tools: AgentTools) -> RunResult:
        timer = self.reactor.callLater(agent.timeout_seconds, run.cancel, "timeout")
        try:
            # Start on the next reactor turn, so whoever called run() has subscribed
            # before the first event.
            await task.deferLater(self.reactor, 0, lambda: None)
            # A run that neither reads nor writes its session has nothing for another
            # process to order against: the local lane only (no Redis round trips).
            locks = self.session_locks if request.persist else None
            lease = await session_order.enter_session(self.lanes, locks, run.session_key)
        except BaseException as e:
            if timer.active():
                timer.cancel()
            if isinstance(e, defer.CancelledError):
                raise self._as_run_error(Failure(), run) from None
            raise       # RedisUnavailable: the session's lock could not be asked
        try:
            run.emit("lifecycle", {"phase": "start", "agentId": agent.id,
                                   "sessionKey": run.session_key, "startedAt": self._now_ms()})
            before: list = []    # records the turn writes before its own (a branch point)
            steps: list = []     # the tool loop's assistant tool calls and tool results
            try:
                history, before = await self._history(run, agent, request)
                result = await self._turn(run, agent, chain, request, history, tools, steps)
            except BaseException:
                failure = Failure()
                error = client_model_error(self._as_run_error(failure, run), request.model)
                status = "aborted" if isinstance(error, (RunCancelled, RunTimedOut)) else "error"
                await self._record(run, request, status=status, error=error, before=before,
                                   steps=steps, lease=lease)
                run.emit("lifecycle", {"phase": "error", "error": {
                    "kind": getattr(error, "kind", "error"), "message": error_message(error)}})
                self.log.info("run {run_id} of {agent} ended: {kind}", run_id=run.run_id,
                              agent=agent.id, kind=getattr(error, "kind", "error"))
                raise error from None
            try:
                await self._record(run, request, status="ok", result=result, before=before,
                                   steps=steps, lease=lease)
            except LeaseLost:
                run.emit("lifecycle", {"phase": "error", "error": {
                    "kind": "session_taken_over", "message": TAKEN_OVER}})
                raise
            run.emit("lifecycle", {"phase": "end", "finishReason": result.finish_reason,
                                   "model": result.model})
            return result
        finally:
            if timer.active():
                timer.cancel()
            session_order.leave_session(self.lanes, lease, run.session_key)

    def _now_ms(self) -> int:
        """Record timestamps come from the reactor's clock (a test's Clock drives them)."""
        return int(self.reactor.seconds() * 1000)

    def _as_run_error(self, failure: Failure, run: Run) -> Exception:
        if failure.check(defer.CancelledError):
            if run.cancel_reason == "timeout":
                return RunTimedOut("the run took longer than its timeout")
            return RunCancelled("the run was cancelled")
        if failure.check(ProviderError, InvalidRunRequest, RunTimedOut, ToolLoopLimitReached,
                         RedisUnavailable):
            assert isinstance(failure.value, Exception)  # one of those five
            return failure.value
        self.log.failure("run {run_id} failed unexpectedly", failure, run_id=run.run_id)
        return ProviderError("internal error while running the agent")

    async def _history(self, run: Run, agent: Agent,
                       request: RunRequest) -> tuple[list, list]:
        """The conversation before the turn's input, and the records to write before the
        turn's own. The stored history wins unless the client owns it (``history_owner``):
        then the client's conversation wins, stored records fill in where they match it,
        and a divergence is recorded as a branch point followed by the client's version."""
        answered_now = [m["tool_call_id"] for m in request.input if m.get("role") == "tool"]
        if not request.persist:
            return list(request.client_history), []
        if request.history_owner != "client":
            records = await self.store.load_history(run.session_key,
                                                    history_budget(agent.history))
            stored = history_messages(records, answered_now=answered_now)
            return (stored if stored else list(request.client_history)), []
        records = await self.store.load_history(
            run.session_key, client_history_budget(len(request.client_history)))
        stored = branch_messages(records)
        alignment = align(stored, request.client_history)
        before: list = []
        now = self._now_ms()
        if alignment.drop:
            before.append({"type": "branch", "drop": alignment.drop, "keep": alignment.keep,
                           "runId": run.run_id, "ts": now})
            self.log.info("run {run_id}: the client's history leaves {drop} stored message(s)"
                          " of {session_key} on an earlier branch", run_id=run.run_id,
                          drop=alignment.drop, session_key=run.session_key)
        before += [message_record(message, run.run_id, now, origin="client")
                   for message in alignment.rest]
        history = complete_tool_turns(stored[:alignment.keep] + list(alignment.rest),
                                      answered_now)
        return history, before

    async def _turn(self, run: Run, agent: Agent, chain: tuple[str, ...],
                    request: RunRequest, history: list, tools: AgentTools,
                    steps: list) -> RunResult:
        """The turn's tool loop (``tool_loop.py``) over ``_model_call``: deltas stream as they
        come, text said before a tool call included; the client's tool calls only."""
        messages = cap_history(history, agent.history) + list(request.input)
        system = await self._system_prompt(agent, request.extra_system_prompt)
        options = {k: v for k, v in request.options.items() if k in SAMPLING_OPTIONS}

        def spend(chars: int) -> None:
            """Count output against the agent's limit; raising here makes the provider stop
            reading (and close) the upstream reply."""
            run.output_chars += chars
            if run.output_chars > agent.max_reply_chars:
                raise ProviderReplyTooLarge(
                    f"the model's reply is longer than the gateway's limit of "
                    f"{agent.max_reply_chars} characters (agents.defaults.maxReplyChars)")
            run.produced_output = True

        def on_delta(text: str) -> None:
            if text:
                spend(len(text))
                run.add_text(text)
                run.emit("assistant", {"delta": text})

        def on_reasoning(text: str) -> None:
            if text:
                spend(len(text))
                run.emit("assistant", {"reasoning": text})

        router = CallRouter(tools, client_tool_names(request.tools))

        def on_tool_call(index: int, call_id, name, fragment: str) -> None:
            spend(len(fragment or "") + len(name or ""))
            client_index = router.client_index(index, name)
            if client_index is None:
                return      # a server tool: the loop runs it, clients never see the call
            data = {"index": client_index, "argumentsDelta": fragment}
            if call_id is not None:
                data["id"] = call_id
            if name is not None:
                data["name"] = name
            run.emit("tool", data)

        models_used: list[str] = []   # the model ref that answered each call

        async def call_model(messages: list, offered: tuple) -> tuple[ModelResult, Any]:
            """One model call, through the fallback chain; its answer and usage."""
            last_error: Optional[ProviderError] = None
            for ref in chain:
                provider_name, model = _checked_ref(ref)
                provider = self.providers.get(provider_name)
                model_request = ModelRequest(
                    model=model, messages=tuple(messages), system=system, options=options,
                    tools=offered, tool_choice=loop_tool_choice(request.tool_choice,
                                                                len(models_used)),
                    parallel_tool_calls=request.parallel_tool_calls)
                slot: Optional[ProviderSlot] = None
                try:
                    slot = await self._provider_slot(run, agent, provider_name)
                    if request.stream:
                        extra: dict[str, Any] = {}
                        if request.tools:
                            extra["on_tool_call"] = on_tool_call
                        if IFlowControlledProvider.providedBy(provider):
                            extra["flow"] = run.flow
                        answer: ModelResult = await provider.stream(
                            model_request, on_delta, on_reasoning=on_reasoning, **extra)
                    else:
                        answer = await provider.complete(model_request)
                        on_reasoning(answer.reasoning)
                        on_delta(answer.text)
                        for i, call in enumerate(answer.tool_calls):
                            on_tool_call(i, call.id, call.name, call.arguments)
                except ProviderError as e:
                    last_error = e
                    if e.retryable and not run.produced_output and ref != chain[-1]:
                        self.log.warn("model {ref} failed ({kind}: {message}); trying the next",
                                      ref=ref, kind=e.kind, message=e.message)
                        run.emit("lifecycle", {"phase": "fallback", "model": ref,
                                               "error": {"kind": e.kind, "message": e.message}})
                        continue
                    raise
                finally:
                    if slot is not None:
                        slot.release()   # before anything else: the next waiter may go
                # the provider's counts, or (none reported) the gateway's estimate
                usage = await usage_of(model_request, answer)
                models_used.append(ref)
                return answer, usage
            assert last_error is not None  # pragma: no cover - the loop returns or raises
            raise last_error  # pragma: no cover

        context = tools.context or ToolContext(
            agent.id, Path(agent.workspace).expanduser() if agent.workspace else None,
            self.reactor)
        executor = ToolExecutor(run, tools, agent.tool_limits, context, self.reactor)
        offered = tuple(tools.schemas()) + tuple(request.tools)
        answer, usage = await tool_loop(run, call_model, messages, offered, router, executor,
                                        steps)
        return RunResult(run_id=run.run_id, agent_id=agent.id, session_key=run.session_key,
                         text=run.text, finish_reason=answer.finish_reason, usage=usage,
                         model=models_used[-1], tool_calls=answer.tool_calls,
                         reasoning=answer.reasoning)

    async def _provider_slot(self, run: Run, agent: Agent, provider_name: str) -> ProviderSlot:
        """Wait for a free slot of the provider (``maxConcurrent``). The wait counts against
        the run's timeout, and a cancelled run (its client left) leaves the queue at once;
        a full queue fails with ``ProviderBusy``, which the fallback loop treats as retryable."""
        slots = self.providers.slots(provider_name)
        try:
            return await slots.acquire()
        except defer.CancelledError:
            if run.cancel_reason == "timeout":
                raise RunTimedOut(
                    f"the run took longer than its timeout ({agent.timeout_seconds:g} s) "
                    f'while waiting for provider "{provider_name}" (maxConcurrent '
                    f"{slots.max_concurrent})") from None
            raise

    async def _record(self, run: Run, request: RunRequest, status: str,
                      result: Optional[RunResult] = None, error: Optional[Exception] = None,
                      before: Sequence[Mapping[str, Any]] = (),
                      steps: Sequence[Mapping[str, Any]] = (),
                      lease: Optional[HeldSession] = None) -> None:
        """Write the turn to the transcript before anyone hears that it ended; ``before``
        (a branch point and the client's version of earlier messages) goes first, the tool
        loop's ``steps`` (assistant tool calls, tool results) between input and reply.
        ``LeaseLost`` (another process took the session) fails an ok turn, nothing else."""
        if not (request.persist and request.record):
            return
        records, usage = turn_records(run, request.input, status, self._now_ms(), result,
                                      error, before, steps)
        try:
            session_order.check_lease(lease)
            # the run's last write to its session: it frees the session's lock too
            await self.store.record_turn(run.session_key, records, lease=lease, release=True,
                                         model=result.model if result else None, usage=usage)
        except LeaseLost:
            self.log.warn("run {run_id}: {session_key} was taken over; turn not recorded",
                          run_id=run.run_id, session_key=run.session_key)
            if error is None:
                raise
        except defer.CancelledError:
            # The client left while the turn was being written. The store finishes the
            # write regardless; the turn itself is complete, so the run still ends well.
            self.log.info("run {run_id}: caller left while its turn was being recorded",
                          run_id=run.run_id)
        except RedisUnavailable:
            # Not stored means not acknowledged: the run fails (503) rather than end well.
            raise
        except Exception:
            self.log.failure("could not record run {run_id} in its transcript",
                             run_id=run.run_id)

