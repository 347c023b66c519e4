"""The network-free ``builtin`` provider: ``builtin/echo`` streams the newest user message back
word by word. For first runs, demos and tests; it is not a model and counts words, not tokens.

One trick demos client tools offline: when the request offers a function tool ``N`` and the
newest user message is exactly ``call N {"json": "object"}``, ``echo`` answers with that tool
call instead of text. When the newest message is a tool result, it echoes the result's text.
``tool_choice`` narrows the trick: ``"none"`` allows no call, ``{"type": "function",
"function": {"name": X}}`` allows only ``X``; echo never invents a call the message did not
ask for, so where none is allowed (or asked) it echoes the text, ``"required"`` included.
"""
from __future__ import annotations

import json
import re
from functools import partial
from typing import Any, Callable, Mapping, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..content import content_text
from .base import DeltaSink, ModelRequest, ModelResult, ReasoningSink, ToolCall, ToolCallSink, Usage
from .errors import ProviderBadRequest, no_embeddings
from .interface import IProvider
from .tools import new_call_id

_WORD = re.compile(r"\s*\S+\s*")   # a word with its following (and, first, leading) whitespace
_CALL = re.compile(r"call\s+(\S+)\s+(.*)", re.DOTALL)


def split_words(text: str) -> list[str]:
    """Pieces whose concatenation is exactly ``text``, one word each."""
    pieces = _WORD.findall(text)
    if not pieces and text:
        return [text]
    return pieces


def offered_functions(tools: Any) -> set[str]:
    """Names of the function tools a request offers."""
    names = set()
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if (isinstance(function, Mapping) and tool.get("type", "function") == "function"
                and isinstance(function.get("name"), str)):
            names.add(function["name"])
    return names


def callable_functions(tools: Any, tool_choice: Any) -> set[str]:
    """The offered function tools ``tool_choice`` lets the model call: none for ``"none"``,
    only the named one for ``{"type": "function", "function": {"name": ...}}``, else all."""
    offered = offered_functions(tools)
    if tool_choice == "none":
        return set()
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        return {name} & offered if isinstance(name, str) else set()
    return offered


def parse_call(text: str, offered: set[str]) -> Optional[tuple[str, str]]:
    """``(name, compact JSON arguments)`` when ``text`` is ``call <offered name> <JSON object>``."""
    match = _CALL.fullmatch(text.strip())
    if match is None or match.group(1) not in offered:
        return None
    try:
        arguments = json.loads(match.group(2))
    except ValueError:
        return None
    if not isinstance(arguments, dict):
        return None
    return match.group(1), json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


@implementer(IProvider)
class BuiltinProvider:
    """Serves ``echo``. Deltas go out one per reactor turn, so the stream is real and
    cancellable; ``max_tokens`` (in words) cuts it short with ``finish_reason="length"``."""

    log = Logger()
    models = ("echo",)

    def __init__(self, reactor: IReactorTime, name: str = "builtin"):
        self.name = name
        self._reactor = reactor

    def stream(self, request: ModelRequest, on_delta: DeltaSink,
               on_tool_call: Optional[ToolCallSink] = None,
               on_reasoning: Optional[ReasoningSink] = None) -> Deferred:
        if request.model not in self.models:
            return fail(ProviderBadRequest(f'unknown builtin model "{request.model}"'))
        newest, newest_role = "", None
        for message in reversed(request.messages):
            if message.get("role") in ("user", "tool"):
                newest, newest_role = content_text(message.get("content")), message["role"]
                break
        prompt_words = len((request.system or "").split()) + sum(
            len(content_text(m.get("content")).split()) for m in request.messages)
        call = (parse_call(newest, callable_functions(request.tools, request.tool_choice))
                if newest_role == "user" and request.tools else None)
        if call is not None:
            name, arguments = call
            tool_call = ToolCall(id=new_call_id(), name=name, arguments=arguments)
            result = ModelResult(text="", finish_reason="tool_calls",
                                 usage=Usage(prompt_words, len(f"{name} {arguments}".split())),
                                 model=request.model, tool_calls=(tool_call,))

            def announce() -> None:
                if on_tool_call is not None:
                    on_tool_call(0, tool_call.id, tool_call.name, tool_call.arguments)

            return _Echo(self._reactor, [announce], result).start()
        pieces = split_words(newest)
        finish_reason = "stop"
        limit = request.options.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(pieces):
            pieces, finish_reason = pieces[:limit], "length"
        result = ModelResult(text="".join(pieces), finish_reason=finish_reason,
                             usage=Usage(prompt_words, len(pieces)), model=request.model)
        steps: list[Callable[[], None]] = [partial(on_delta, piece) for piece in pieces]
        return _Echo(self._reactor, steps, result).start()

    def complete(self, request: ModelRequest) -> Deferred:
        return self.stream(request, lambda _text: None)

    def embeddings(self, model: str, input: Any, encoding_format: Optional[str] = None,
                   dimensions: Optional[int] = None) -> Deferred:
        """Always fails with ``ProviderBadRequest``: echo has no embeddings."""
        return fail(no_embeddings(self.name))


class _Echo:
    """Runs one step (a delta or a tool call) per reactor turn, then fires with ``result``;
    cancelling stops the pending turn."""

    def __init__(self, reactor: IReactorTime, steps: list[Callable[[], None]],
                 result: ModelResult):
        self._reactor = reactor
        self._steps = steps
        self._result = result
        self._index = 0
        self._call: Optional[IDelayedCall] = None
        self.done: Deferred = Deferred(self._cancel)

    def start(self) -> Deferred:
        self._call = self._reactor.callLater(0, self._step)
        return self.done

    def _step(self) -> None:
        self._call = None
        if self._index >= len(self._steps):
            self.done.callback(self._result)
            return
        step = self._steps[self._index]
        self._index += 1
        try:
            step()
        except BaseException:
            self.done.errback(Failure())
            return
        if not self.done.called:   # the sink may have cancelled us
            self._call = self._reactor.callLater(0, self._step)

    def _cancel(self, _d: Deferred) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
