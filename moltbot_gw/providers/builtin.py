"""The network-free ``builtin`` provider: ``builtin/echo`` streams the newest user message back
word by word. For first runs, demos and tests; it is not a model and counts words, not tokens.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .base import DeltaSink, ModelRequest, ModelResult, Usage
from .errors import ProviderBadRequest

_WORD = re.compile(r"\s*\S+\s*")   # a word with its following (and, first, leading) whitespace


def split_words(text: str) -> list[str]:
    """Pieces whose concatenation is exactly ``text``, one word each."""
    pieces = _WORD.findall(text)
    if not pieces and text:
        return [text]
    return pieces


def message_text(content: Any) -> str:
    """A message's text: a string, or the concatenated ``text``/``input_text`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(part["text"] for part in content
                       if isinstance(part, Mapping) and part.get("type") in ("text", "input_text")
                       and isinstance(part.get("text"), str))
    return ""


class BuiltinProvider:
    """Serves ``echo``. Deltas go out one per reactor turn, so the stream is real and
    cancellable; ``max_tokens`` (in words) cuts it short with ``finish_reason="length"``."""

    log = Logger()
    models = ("echo",)

    def __init__(self, reactor: IReactorTime, name: str = "builtin"):
        self.name = name
        self._reactor = reactor

    def stream(self, request: ModelRequest, on_delta: DeltaSink) -> Deferred:
        if request.model not in self.models:
            return fail(ProviderBadRequest(f'unknown builtin model "{request.model}"'))
        newest = ""
        for message in reversed(request.messages):
            if message.get("role") == "user":
                newest = message_text(message.get("content"))
                break
        pieces = split_words(newest)
        finish_reason = "stop"
        limit = request.options.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(pieces):
            pieces, finish_reason = pieces[:limit], "length"
        prompt_words = len((request.system or "").split()) + sum(
            len(message_text(m.get("content")).split()) for m in request.messages)
        result = ModelResult(text="".join(pieces), finish_reason=finish_reason,
                             usage=Usage(prompt_words, len(pieces)), model=request.model)
        return _Echo(self._reactor, pieces, on_delta, result).start()

    def complete(self, request: ModelRequest) -> Deferred:
        return self.stream(request, lambda _text: None)


class _Echo:
    """Emits one piece per reactor turn; cancelling stops the pending turn."""

    def __init__(self, reactor: IReactorTime, pieces: list[str], on_delta: DeltaSink,
                 result: ModelResult):
        self._reactor = reactor
        self._pieces = pieces
        self._on_delta = on_delta
        self._result = result
        self._index = 0
        self._call: Optional[IDelayedCall] = None
        self.done: Deferred = Deferred(self._cancel)

    def start(self) -> Deferred:
        self._call = self._reactor.callLater(0, self._step)
        return self.done

    def _step(self) -> None:
        self._call = None
        if self._index >= len(self._pieces):
            self.done.callback(self._result)
            return
        piece = self._pieces[self._index]
        self._index += 1
        try:
            self._on_delta(piece)
        except BaseException:
            self.done.errback(Failure())
            return
        if not self.done.called:   # on_delta may have cancelled us
            self._call = self._reactor.callLater(0, self._step)

    def _cancel(self, _d: Deferred) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
