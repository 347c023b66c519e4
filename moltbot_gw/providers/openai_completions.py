"""Provider for upstreams speaking OpenAI Chat Completions (OpenAI, Ollama, vLLM, LiteLLM, …).

Translates a ``ModelRequest`` into ``POST {baseUrl}/chat/completions`` and the streamed chunks
back into deltas and a ``ModelResult``. Transport, timeouts and HTTP errors live in ``http.py``.
"""
from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..config import ProviderConfig
from .base import DeltaSink, ModelRequest, ModelResult, Usage
from .http import EventStreamSink, UpstreamClient
from .sse import SSEEvent

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAICompletionsProvider:
    """One configured OpenAI-compatible upstream."""

    log = Logger()

    def __init__(self, name: str, config: ProviderConfig, client: UpstreamClient):
        self.name = name
        self._config = config
        self._client = client
        self.url = (config.baseUrl or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"

    def stream(self, request: ModelRequest, on_delta: DeltaSink) -> Deferred:
        """Stream a completion: ``on_delta`` per text fragment; fires with a ``ModelResult``."""
        return self._post(request, on_delta, stream=True)

    def complete(self, request: ModelRequest) -> Deferred:
        """Ask for a non-streamed completion (``stream: false``); fires with a ``ModelResult``."""
        return self._post(request, None, stream=False)

    def _post(self, request: ModelRequest, on_delta: Optional[DeltaSink], stream: bool) -> Deferred:
        config = self._config
        sink = ChatCompletionSink(self.name, on_delta, secrets=(config.apiKey,))
        d = self._client.post_json(
            self.url, self.payload(request, stream), sink, label=self.name,
            headers=self.headers(), connect_timeout=config.connectTimeoutSeconds,
            idle_timeout=config.idleTimeoutSeconds, secrets=(config.apiKey,))
        d.addCallback(lambda _response: sink.finish())
        d.addCallback(self._finished)
        return d

    def _finished(self, result: ModelResult) -> ModelResult:
        self.log.debug("provider {provider} finished: {finish_reason}, {completion_tokens} tokens",
                       provider=self.name, finish_reason=result.finish_reason,
                       completion_tokens=result.usage.completion_tokens)
        return result

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
        messages.extend(request.messages)
        body: dict[str, Any] = dict(request.options)
        body.update(model=request.model, messages=messages, stream=stream)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body


class ChatCompletionSink(EventStreamSink):
    """Turns ``chat.completion.chunk`` events (or one ``chat.completion``) into a result."""

    def __init__(self, label: str, on_delta: Optional[DeltaSink], secrets=()):
        super().__init__(label, secrets)
        self._on_delta = on_delta
        self._text: list[str] = []
        self._finish_reason: Optional[str] = None
        self._usage = Usage()
        self._model: Optional[str] = None
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
        self._note_common(chunk)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text.append(content)
                if self._on_delta is not None:
                    self._on_delta(content)
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
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = _text_of(message.get("content"))
        if content:
            self._text.append(content)
            if self._on_delta is not None:
                self._on_delta(content)
        self._finish_reason = str(choice.get("finish_reason") or "stop")
        self._done = True

    def _note_common(self, chunk: dict) -> None:
        if isinstance(chunk.get("model"), str):
            self._model = chunk["model"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = Usage(prompt_tokens=_int(usage.get("prompt_tokens")),
                                completion_tokens=_int(usage.get("completion_tokens")))

    def end(self) -> ModelResult:
        if not self._done and self._finish_reason is None:
            raise self.unavailable("closed the stream early")
        return ModelResult(text="".join(self._text), finish_reason=self._finish_reason or "stop",
                           usage=self._usage, model=self._model)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
