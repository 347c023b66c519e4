"""Provider for upstreams speaking OpenAI Chat Completions (OpenAI, Ollama, vLLM, LiteLLM, …).

Translates a ``ModelRequest`` into ``POST {baseUrl}/chat/completions`` and the streamed chunks
back into deltas, tool calls, reasoning and a ``ModelResult``; ``embeddings`` posts
``{baseUrl}/embeddings``. Transport, timeouts and HTTP errors live in ``upstream_client.py``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ..content import content_text
from .base import DeltaSink, ModelRequest, ModelResult, ReasoningSink, ToolCallSink, Usage
from .errors import ProviderUnavailable
from .http_provider import HTTPProvider
from .interface import IEmbeddingProvider
from .sinks import JSONSink, ModelReplySink, json_object, nonempty_str, token_count
from .sse import SSEEvent
from .tools import arguments_text

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_EMBEDDINGS_BYTES = 256 * 1024 * 1024
REASONING_KEYS = ("reasoning_content", "reasoning")   # vLLM/DeepSeek name; OpenRouter/Ollama name
_REASONING_KEY_SET = frozenset(REASONING_KEYS)


@implementer(IEmbeddingProvider)
class OpenAICompletionsProvider(HTTPProvider):
    """One configured OpenAI-compatible upstream."""

    log = Logger()
    default_base_url = DEFAULT_BASE_URL
    path = "/chat/completions"
    models_path = "/models"              # what `moltbot-gw providers check` lists

    def embeddings(self, model: str, input: Any, encoding_format: Optional[str] = None,
                   dimensions: Optional[int] = None) -> Deferred:
        """``POST {baseUrl}/embeddings``; fires with the upstream's JSON object as it is."""
        config = self._config
        body: dict[str, Any] = {"model": model, "input": input}
        if encoding_format is not None:
            body["encoding_format"] = encoding_format
        if dimensions is not None:
            body["dimensions"] = dimensions
        sink = JSONSink(self.name, secrets=self.secrets, max_bytes=MAX_EMBEDDINGS_BYTES)
        headers = {"Accept": "application/json"}
        headers.update(self.headers())
        d = self._client.post_json(
            self.base_url + "/embeddings", body, sink, label=self.name, headers=headers,
            connect_timeout=config.connectTimeoutSeconds,
            idle_timeout=config.idleTimeoutSeconds, secrets=self.secrets)
        d.addCallback(lambda _response: sink.finish())
        d.addCallback(self._check_embeddings)
        return d.addErrback(self._explain, model)

    def _check_embeddings(self, payload: dict) -> dict:
        if not isinstance(payload.get("data"), list):
            raise ProviderUnavailable(f'provider "{self.name}" sent an embeddings answer '
                                      "without data")
        return payload

    def _post(self, request: ModelRequest, on_delta: Optional[DeltaSink],
              on_tool_call: Optional[ToolCallSink], on_reasoning: Optional[ReasoningSink],
              stream: bool, flow=None) -> Deferred:
        config = self._config
        sink = ChatCompletionSink(self.name, on_delta, secrets=self.secrets,
                                  on_tool_call=on_tool_call, on_reasoning=on_reasoning)
        d = self._client.post_json(
            self.url, self.payload(request, stream), sink, label=self.name,
            headers=self.headers(), connect_timeout=config.connectTimeoutSeconds,
            idle_timeout=self.idle_timeout(stream), secrets=self.secrets, flow=flow)
        d.addCallback(lambda _response: sink.finish())
        return d

    def headers(self) -> dict[str, str]:
        headers = {}
        if self._config.apiKey:
            headers["Authorization"] = f"Bearer {self._config.apiKey}"
        headers.update(self._config.headers)
        return headers

    @staticmethod
    def payload(request: ModelRequest, stream: bool) -> dict[str, Any]:
        messages: list[Any] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend(request.messages)      # already OpenAI format, tool turns included
        body: dict[str, Any] = dict(request.options)
        body.update(model=request.model, messages=messages, stream=stream)
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.tools:
            # OpenAI rejects tool_choice / parallel_tool_calls without tools
            body["tools"] = list(request.tools)
            if request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = bool(request.parallel_tool_calls)
        return body


class ChatCompletionSink(ModelReplySink):
    """Turns ``chat.completion.chunk`` events (or one ``chat.completion``) into a result."""

    def __init__(self, label: str, on_delta: Optional[DeltaSink], secrets=(),
                 on_tool_call: Optional[ToolCallSink] = None,
                 on_reasoning: Optional[ReasoningSink] = None):
        super().__init__(label, on_delta, secrets, on_tool_call, on_reasoning)
        self._by_index: dict[int, int] = {}     # upstream tool-call index -> our ordinal
        self._finish_reason: Optional[str] = None
        self._usage: Optional[Usage] = None     # None until the upstream reports counts
        self._done = False

    def handle_event(self, event: SSEEvent) -> None:
        if self._done:
            return
        data = event.data.strip()
        if data == "[DONE]":
            self._done = True
            return
        if not data:
            return
        chunk = self.load(data)
        if "error" in chunk:
            raise self.upstream_error(chunk["error"])
        # _note_common, inlined: this runs for every event of every streamed answer.
        model = chunk.get("model")
        if isinstance(model, str):
            self._model = model
        if chunk.get("usage") is not None:
            self._note_usage(chunk["usage"])
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if not _REASONING_KEY_SET.isdisjoint(delta):   # most deltas carry text only
                self._reason(_reasoning_of(delta))
            self._emit(delta.get("content"))
            fragments = delta.get("tool_calls")
            if isinstance(fragments, list):
                for fragment in fragments:
                    if isinstance(fragment, dict):
                        self._tool_fragment(fragment)
        if choice.get("finish_reason"):
            self._finish_reason = str(choice["finish_reason"])

    def handle_json(self, payload: dict) -> None:
        if "error" in payload:
            raise self.upstream_error(payload["error"])
        self._note_common(payload)
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self.unavailable("sent a completion without choices")
        choice = choices[0]
        message = json_object(choice.get("message"))
        self._reason(_reasoning_of(message))
        self._emit(content_text(message.get("content")))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if not isinstance(call, dict):
                    continue
                function = json_object(call.get("function"))
                ordinal = self._tools.open()
                self._tools.add(ordinal, nonempty_str(call.get("id")),
                                nonempty_str(function.get("name")),
                                arguments_text(function.get("arguments")))
        self._finish_reason = str(choice.get("finish_reason") or "stop")
        self._done = True

    def _tool_fragment(self, fragment: dict) -> None:
        """One ``delta.tool_calls[]`` entry: ``index`` says which call it continues; the first
        fragment of a call carries ``id`` and ``function.name``."""
        function = json_object(fragment.get("function"))
        call_id = nonempty_str(fragment.get("id"))
        index = fragment.get("index")
        tools = self._tools
        ordinal: Optional[int]
        if isinstance(index, int) and not isinstance(index, bool):
            ordinal = self._by_index.get(index)
            if ordinal is not None and call_id and tools.id_of(ordinal) not in (None, call_id):
                ordinal = None                      # a server reusing an index for a new call
            if ordinal is None:
                ordinal = self._by_index[index] = tools.open()
        elif call_id:                               # no index (some servers): ids tell calls apart
            known = [i for i in range(len(tools)) if tools.id_of(i) == call_id]
            ordinal = known[0] if known else tools.open()
        else:
            ordinal = len(tools) - 1 if len(tools) else tools.open()
        tools.add(ordinal, call_id, nonempty_str(function.get("name")),
                  arguments_text(function.get("arguments")))

    def _note_common(self, chunk: dict) -> None:
        if isinstance(chunk.get("model"), str):
            self._model = chunk["model"]
        self._note_usage(chunk.get("usage"))

    def _note_usage(self, usage: Any) -> None:
        if isinstance(usage, dict) and _has_counts(usage, ("prompt_tokens", "completion_tokens")):
            self._usage = Usage(prompt_tokens=token_count(usage.get("prompt_tokens")),
                                completion_tokens=token_count(usage.get("completion_tokens")),
                                prompt_tokens_details=_counts(usage.get("prompt_tokens_details")),
                                completion_tokens_details=_counts(
                                    usage.get("completion_tokens_details")))

    def end(self) -> ModelResult:
        if not self._done and self._finish_reason is None:
            raise self.unavailable("closed the stream early")
        tool_calls = self._tools.result()
        finish_reason = self._finish_reason or "stop"
        if tool_calls and finish_reason == "stop":
            finish_reason = "tool_calls"     # some servers say "stop" after calling tools
        return ModelResult(text="".join(self._text), finish_reason=finish_reason,
                           usage=self._usage, model=self._model, tool_calls=tool_calls,
                           reasoning="".join(self._reasoning))


def _reasoning_of(message: Mapping[str, Any]) -> Optional[str]:
    for key in REASONING_KEYS:
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _has_counts(usage: dict, names: tuple[str, ...]) -> bool:
    """Whether a usage object carries a count at all: ``{}`` or ``null`` counts are no
    report (some servers send them), so the gateway estimates instead of saying 0."""
    return any(isinstance(usage.get(name), int) and not isinstance(usage.get(name), bool)
               for name in names)


def _counts(details: Any) -> Optional[dict[str, int]]:
    """A usage details object (``{"cached_tokens": 12, ...}``) with its counts only: what
    clients are told is a number per name, never other upstream data."""
    if not isinstance(details, dict):
        return None
    counts = {str(name): value for name, value in details.items()
              if isinstance(value, int) and not isinstance(value, bool) and value >= 0}
    return counts or None
