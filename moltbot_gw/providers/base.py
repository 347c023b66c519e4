"""What every model provider takes and gives back; the runner only sees these types."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ModelRequest:
    """One call to a model.

    ``messages`` are OpenAI-style chat messages without the system prompt:
    ``{"role": "user"|"assistant", "content": str | [parts]}``; parts are
    ``{"type": "text", "text": ...}``. ``options`` holds only the sampling fields the caller
    set: temperature, top_p, max_tokens, stop, seed, presence_penalty, frequency_penalty,
    response_format.
    """

    model: str                                   # the provider's own model id
    messages: tuple[Mapping[str, Any], ...]
    system: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelResult:
    text: str
    finish_reason: str = "stop"                  # "stop" | "length" | ...
    usage: Usage = Usage()
    model: Optional[str] = None                  # model name the upstream reported


DeltaSink = Callable[[str], None]


class Provider(Protocol):
    """A configured upstream. ``stream`` calls ``on_delta`` with each text fragment as it
    arrives and fires with a ``ModelResult``; it fails with a ``ProviderError``. Cancelling
    the returned Deferred aborts the upstream HTTP request (its connection is closed)."""

    name: str

    def stream(self, request: ModelRequest, on_delta: DeltaSink) -> Deferred: ...
