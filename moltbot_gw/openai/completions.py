"""Legacy OpenAI text completions (``POST /v1/completions``) as agent runs: the request's
``prompt`` becomes one user turn, the reply comes back as ``text_completion`` objects (one
JSON body, or SSE chunks). For clients that still default to it (llama-index ``OpenAILike``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..agents.run import RunEvent, RunResult
from ..json_text import compact_utf8
from .chat_request import chat_options
from .chat_response import CompletionStream
from .request_common import agent_from_model, model_field, parse_body, stream_flags
from .request_limits import count_text
from .usage import chat_usage_json
from .validation import bad_request, is_int

# Parameters a text completion may carry that an agent cannot honour: refused, not ignored,
# so a client relying on them learns it at once.
UNSUPPORTED = {
    "echo": "echo is not supported: an agent's reply never repeats the prompt",
    "logprobs": "logprobs are not supported by the gateway",
    "suffix": "suffix (insertion) is not supported by the gateway",
}


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    agent_id: Optional[str]                        # from the model field, if it names one
    prompt: str
    options: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False


def _prompt(value: Any) -> str:
    """A string, or a list holding exactly one string. Several prompts would ask for a batch
    of completions, token arrays for a tokenizer the gateway does not have."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, str) for p in value):
        raise bad_request("a list of several prompts is not supported: send one prompt per "
                          "request", "prompt", "unsupported_value")
    if not isinstance(value, str):
        raise bad_request("prompt must be a string (or a list of one string); token arrays "
                          "are not supported", "prompt", "invalid_type")
    if not value.strip():
        raise bad_request("prompt must not be empty", "prompt")
    return value


def parse_completion_request(body: bytes, max_chars: int) -> CompletionRequest:
    """Validate a ``/v1/completions`` body; a 400 naming the param otherwise. The prompt
    is held to chat completions' ``maxTotalChars``."""
    data = parse_body(body)
    for name, message in UNSUPPORTED.items():
        value = data.get(name)
        if value is not None and value is not False and value != "":
            raise bad_request(message, name, "unsupported_parameter")
    best_of = data.get("best_of")
    if best_of is not None and (not is_int(best_of) or best_of != 1):
        raise bad_request("best_of must be 1: the gateway returns one choice per request",
                          "best_of", "unsupported_value")
    model = model_field(data)
    if "prompt" not in data:
        raise bad_request("prompt is required", "prompt", "missing_required_parameter")
    if count_text(data["prompt"], max_chars) > max_chars:
        raise bad_request(f"prompt is longer than this gateway accepts: at most {max_chars} "
                          "characters per request (chatCompletions.maxTotalChars)", "prompt",
                          "too_many_characters")
    stream, include_usage = stream_flags(data)
    return CompletionRequest(
        model=model, agent_id=agent_from_model(model), prompt=_prompt(data["prompt"]),
        options=chat_options(data), stream=stream, include_usage=include_usage)


def completion_id(run_id: str) -> str:
    return "cmpl-" + run_id.removeprefix("run_")


def text_completion_body(result: RunResult, model: str, created: int) -> dict:
    return {"id": completion_id(result.run_id), "object": "text_completion",
            "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"text": result.text, "index": 0, "logprobs": None,
                         "finish_reason": result.finish_reason}],
            "usage": chat_usage_json(result.usage)}


class TextCompletionStream(CompletionStream):
    """Writes one run as ``text_completion`` SSE chunks: one per text delta, then one with
    the ``finish_reason``, then (``include_usage``) one with ``choices: []`` and ``usage``,
    then ``[DONE]``. Reasoning is not part of a text completion and is left out. ``models``
    is the run's model chain, as for ``ChatStream``: a ``fallback`` event moves to the next."""

    def __init__(self, request, run_id: str, models: tuple[str, ...], created: int,
                 include_usage: bool, keepalive_seconds: float, clock, flow=None):
        super().__init__(request, models, include_usage, keepalive_seconds, clock, flow)
        self._head = {"id": completion_id(run_id), "object": "text_completion",
                      "created": created, "model": models[0], "system_fingerprint": None}

    def _chunk(self, choices: list, **extra) -> None:
        if self.include_usage and "usage" not in extra:
            extra["usage"] = None
        self._write(b"data: " + compact_utf8({**self._head, "choices": choices, **extra})
                    + b"\n\n")

    def on_event(self, event: RunEvent) -> None:
        if event.stream == "assistant" and "delta" in event.data:
            self._output()
            self._chunk([{"text": event.data["delta"], "index": 0, "logprobs": None,
                          "finish_reason": None}])
        elif (event.stream == "lifecycle" and event.data.get("phase") == "fallback"
              and len(self._models) > 1 and event.data.get("model") == self._models[0]):
            self._models.pop(0)
            self._head["model"] = self._models[0]

    def _finish_chunk(self, finish_reason: str) -> None:
        self._chunk([{"text": "", "index": 0, "logprobs": None,
                      "finish_reason": finish_reason}])

    def _usage_chunk(self, usage: dict) -> None:
        self._chunk([], usage=usage)
