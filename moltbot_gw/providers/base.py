"""What every model provider takes and gives back; the runner only sees these types. What a
provider is (its methods and capabilities) is declared in ``interface.py``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional


@dataclass(frozen=True)
class Usage:
    """Token counts of one model call. The details are the upstream's own breakdowns, passed
    through when it reports them (OpenAI names: ``{"cached_tokens": n}`` for the prompt,
    ``{"reasoning_tokens": n}`` for the completion), else ``None``. ``source`` says who
    counted: ``"provider"`` (the upstream reported them) or ``"estimated"`` (the gateway's
    tokenizer, ``token_estimate.py``); logs and metrics show it, clients' usage never does."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: Optional[Mapping[str, int]] = None
    completion_tokens_details: Optional[Mapping[str, int]] = None
    source: str = "provider"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is JSON text (an object)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ModelRequest:
    """One call to a model.

    ``messages`` are OpenAI-style chat messages without the system prompt:

    * ``{"role": "user"|"assistant", "content": str | [parts]}``; parts are
      ``{"type": "text", "text": ...}`` or ``{"type": "image_url", "image_url": {"url":
      "data:<mime>;base64,<data>"}}`` (already validated data URIs);
    * assistant messages may carry ``tool_calls``
      (``[{"id", "type": "function", "function": {"name", "arguments"}}]``) with ``content``
      ``None`` or a string;
    * ``{"role": "tool", "tool_call_id": ..., "content": ...}`` answers one tool call.

    ``options`` holds only the sampling fields the caller set: temperature, top_p, max_tokens,
    stop, seed, presence_penalty, frequency_penalty, response_format.

    ``tools`` are OpenAI function tools (``{"type": "function", "function": {"name",
    "description"?, "parameters"?}}``); ``tool_choice`` is ``"auto"``, ``"none"``,
    ``"required"`` or ``{"type": "function", "function": {"name": ...}}``; both (and
    ``parallel_tool_calls``) are only sent upstream when ``tools`` is not empty.
    """

    model: str                                   # the provider's own model id
    messages: tuple[Mapping[str, Any], ...]
    system: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: Optional[bool] = None


@dataclass(frozen=True)
class ModelResult:
    text: str
    finish_reason: str = "stop"                  # "stop" | "length" | "tool_calls" | ...
    usage: Optional[Usage] = None                # None: the upstream reported no counts
    model: Optional[str] = None                  # model name the upstream reported
    tool_calls: tuple[ToolCall, ...] = ()        # in index order
    reasoning: str = ""                          # thinking text, never part of ``text``


DeltaSink = Callable[[str], None]
# (index, id, name, arguments_fragment): id and name only in a call's first fragment, else None
ToolCallSink = Callable[[int, Optional[str], Optional[str], str], None]
ReasoningSink = Callable[[str], None]


class FlowControl:
    """Backpressure from the run's consumers to the upstream read.

    A provider attaches the producer of the upstream body (its transport) while the body
    arrives; a consumer that cannot keep up (a client not reading its stream) pauses it, so
    the gateway stops reading from the upstream instead of buffering without bound.
    """

    def __init__(self):
        self.paused = False
        self._producer = None

    def attach(self, producer) -> None:
        self._producer = producer
        if self.paused:
            producer.pauseProducing()

    def detach(self) -> None:
        self._producer = None

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            if self._producer is not None:
                self._producer.pauseProducing()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self._producer is not None:
                self._producer.resumeProducing()
