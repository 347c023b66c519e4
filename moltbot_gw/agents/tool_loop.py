"""The server-tool loop of a run: call the model, run the server tools it asks for (bounded
concurrency, results in call order, failures as ``{"error": ...}`` results), feed the results
back and call again, until a final answer, a client tool call or ``maxIterations``.

Transport-free: the runner hands in how to call the model; the loop only emits run events.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from ..config.agents import ToolLoopConfig
from ..providers.base import ModelResult, ToolCall, Usage
from ..tools.base import AgentTools, ToolContext, ToolError
from .run import InvalidRunRequest, Run, RunError

PREVIEW_CHARS = 200
log = Logger()

# (messages, tools offered) -> (the model's answer, its usage)
CallModel = Callable[[list, tuple], Awaitable[tuple[ModelResult, Usage]]]


class ToolLoopLimitReached(RunError):
    """The model still asked for server tools after ``maxIterations`` rounds: the model's
    fault (it loops), so a 502 to HTTP clients, never a silent stop."""

    kind = "tool_loop_limit"


def client_tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    names = set()
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def check_client_tools(server: AgentTools, client_tools: Sequence[Mapping[str, Any]]) -> None:
    """A client tool named like one of the agent's server tools would be ambiguous: 400."""
    clash = sorted(client_tool_names(client_tools) & server.names)
    if clash:
        raise InvalidRunRequest(
            f'tool "{clash[0]}" is a server tool of this agent; give the client tool '
            "another name", param="tools")


class CallRouter:
    """Says which calls the gateway runs (server calls) and renumbers the client calls of a
    reply from 0, so clients only ever see their own tools. A call is a server call when the
    agent has that tool, or when the agent has server tools and the client offered no tool of
    that name (an unknown name gets an error result, not a client call)."""

    def __init__(self, server: AgentTools, client_names: set[str]):
        self.server_names = server.names
        self.client_names = client_names
        self._client_index: dict[int, Optional[int]] = {}

    def is_server(self, name: str) -> bool:
        return name in self.server_names or (bool(self.server_names)
                                              and name not in self.client_names)

    def client_index(self, index: int, name: Optional[str]) -> Optional[int]:
        """The client's index of streamed call ``index`` (its name comes with its first
        fragment), or None for a server call."""
        if index not in self._client_index:
            client = name is None or not self.is_server(name)
            count = sum(1 for i in self._client_index.values() if i is not None)
            self._client_index[index] = count if client else None
        return self._client_index[index]

    def reset(self) -> None:
        self._client_index = {}


def loop_tool_choice(tool_choice: Any, calls_made: int) -> Any:
    """The client's ``tool_choice`` for the first model call; after tool results a forcing
    choice (``"required"``, a named function) becomes ``"auto"``, or the model could never
    give its final answer."""
    if calls_made and (tool_choice == "required" or isinstance(tool_choice, Mapping)):
        return "auto"
    return tool_choice


def sum_usage(usages: Sequence[Usage]) -> Usage:
    """The usage of a whole run: every model call's counts added up."""
    if len(usages) == 1:
        return usages[0]

    def details(name: str) -> Optional[dict[str, int]]:
        total: dict[str, int] = {}
        for usage in usages:
            for key, value in (getattr(usage, name) or {}).items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
        return total or None

    return Usage(prompt_tokens=sum(u.prompt_tokens for u in usages),
                 completion_tokens=sum(u.completion_tokens for u in usages),
                 prompt_tokens_details=details("prompt_tokens_details"),
                 completion_tokens_details=details("completion_tokens_details"),
                 source="estimated" if any(u.source == "estimated" for u in usages)
                 else "provider")


def capped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[truncated {len(text) - limit} characters]"


def error_result(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def call_message(text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The assistant message of a reply that called tools, as the next model call sees it."""
    return {"role": "assistant", "content": text or None,
            "tool_calls": [{"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}}
                           for c in calls]}


class ToolExecutor:
    """Runs one reply's server tool calls for a run, at most ``max_parallel`` at once."""

    def __init__(self, run: Run, tools: AgentTools, limits: ToolLoopConfig, context: ToolContext,
                 reactor):
        self.run = run
        self.tools = tools
        self.limits = limits
        self.context = context
        self.reactor = reactor

    async def run_calls(self, calls: Sequence[ToolCall]) -> list[str]:
        """Each call's result text, in call order. Cancelling cancels every running tool."""
        semaphore = defer.DeferredSemaphore(self.limits.maxParallel)
        pending = [semaphore.run(self._one, call) for call in calls]
        try:
            return await defer.gatherResults(pending, consumeErrors=True)
        except defer.FirstError as e:   # only a cancellation gets here: _one never fails else
            for d in pending:
                d.cancel()
            e.subFailure.raiseException()
            raise  # pragma: no cover - raiseException raises

    async def _one(self, call: ToolCall) -> str:
        started = self.reactor.seconds()
        self.run.emit("tool", {"phase": "start", "callId": call.id, "name": call.name,
                               "arguments": call.arguments})
        ok = True
        try:
            text = await self._invoke(call)
        except defer.CancelledError:
            raise
        except ToolError as e:
            ok, text = False, error_result(e.message)
        except Exception as e:
            # No traceback in the log or to the model: a tool's error may hold private data.
            log.error("run {run_id}: tool {tool} failed unexpectedly ({error})",
                      run_id=self.run.run_id, tool=call.name, error=type(e).__name__)
            ok, text = False, error_result(f'the tool "{call.name}" failed unexpectedly')
        text = capped(text, self.limits.maxResultChars)
        self.run.emit("tool", {"phase": "end", "callId": call.id, "name": call.name, "ok": ok,
                               "durationMs": int((self.reactor.seconds() - started) * 1000),
                               "preview": text[:PREVIEW_CHARS]})
        return text

    async def _invoke(self, call: ToolCall) -> str:
        tool = self.tools.get(call.name)
        if tool is None:
            raise ToolError(f'unknown tool "{call.name}"')
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            raise ToolError("the arguments are not valid JSON") from None
        if not isinstance(arguments, dict):
            raise ToolError("the arguments must be a JSON object")
        missing = [name for name in (tool.parameters or {}).get("required", ())
                   if name not in arguments]
        if missing:
            raise ToolError(f"missing required argument(s): {', '.join(missing)}")
        result = await defer.maybeDeferred(tool.call, arguments, self.context)
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False,
                                                                   default=str)


async def tool_loop(run: Run, call_model: CallModel, messages: list, offered: tuple,
                    router: CallRouter, executor: ToolExecutor,
                    steps: list) -> tuple[ModelResult, Usage]:
    """Call the model until it answers without server calls. Returns the last answer (its
    ``tool_calls`` only the client's) and the run's summed usage.
    ``steps`` receives every assistant tool-call message and tool result, for the transcript."""
    usages: list[Usage] = []
    iterations = 0
    while True:
        text_start = len(run.text)
        router.reset()
        answer, usage = await call_model(messages, offered)
        usages.append(usage)
        text = run.text[text_start:]
        server = [c for c in answer.tool_calls if router.is_server(c.name)]
        client = tuple(c for c in answer.tool_calls if not router.is_server(c.name))
        if not server:
            return answer, sum_usage(usages)
        if iterations >= executor.limits.maxIterations:
            raise ToolLoopLimitReached(
                f"the model still asked for tools after {iterations} rounds of tool calls "
                "(agents.defaults.tools.maxIterations)")
        iterations += 1
        results = await executor.run_calls(server)
        step = [call_message(text, server)] + [
            {"role": "tool", "tool_call_id": c.id, "content": result}
            for c, result in zip(server, results, strict=True)]
        steps += step
        messages = messages + step
        if client:
            return (ModelResult(text="", finish_reason="tool_calls", usage=answer.usage,
                                model=answer.model, tool_calls=client,
                                reasoning=answer.reasoning), sum_usage(usages))
