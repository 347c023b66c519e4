"""Provider for the Anthropic Messages API (``POST /v1/messages`` with ``stream: true``).

Converts OpenAI-style chat messages to Anthropic's (top-level system, alternating roles, content
blocks) and its event stream back into deltas and a ``ModelResult``. Transport is ``http.py``'s.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from ..config import ProviderConfig
from .base import DeltaSink, ModelRequest, ModelResult, Usage
from .errors import ProviderBadRequest
from .http import EventStreamSink, UpstreamClient
from .sse import SSEEvent

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


class AnthropicMessagesProvider:
    """One configured Anthropic upstream."""

    log = Logger()

    def __init__(self, name: str, config: ProviderConfig, client: UpstreamClient):
        self.name = name
        self._config = config
        self._client = client
        self.url = (config.baseUrl or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages"

    def stream(self, request: ModelRequest, on_delta: DeltaSink) -> Deferred:
        """Stream a reply: ``on_delta`` per text fragment; fires with a ``ModelResult``."""
        return self._post(request, on_delta, stream=True)

    def complete(self, request: ModelRequest) -> Deferred:
        """Ask for a non-streamed reply (``stream: false``); fires with a ``ModelResult``."""
        return self._post(request, None, stream=False)

    def _post(self, request: ModelRequest, on_delta: Optional[DeltaSink], stream: bool) -> Deferred:
        config = self._config
        try:
            payload = self.payload(request, stream)
        except ProviderBadRequest as e:
            return fail(e)
        sink = MessagesSink(self.name, on_delta, secrets=(config.apiKey,))
        d = self._client.post_json(
            self.url, payload, sink, label=self.name, headers=self.headers(),
            connect_timeout=config.connectTimeoutSeconds,
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
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self._config.apiKey:
            headers["x-api-key"] = self._config.apiKey
        headers.update(self._config.headers)
        return headers

    def payload(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        system_parts, messages = convert_messages(request.messages)
        if not messages:
            raise ProviderBadRequest(f'provider "{self.name}": no user message to send')
        if request.system:
            system_parts.insert(0, request.system)
        options = request.options
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": (options.get("max_tokens") or options.get("max_completion_tokens")
                           or DEFAULT_MAX_TOKENS),
        }
        if system_parts:
            body["system"] = "\n\n".join(system_parts)
        body["messages"] = messages
        for key in ("temperature", "top_p"):
            if options.get(key) is not None:
                body[key] = options[key]
        stop = options.get("stop")
        if isinstance(stop, str):
            body["stop_sequences"] = [stop]
        elif isinstance(stop, (list, tuple)) and stop:
            body["stop_sequences"] = [str(s) for s in stop]
        body["stream"] = stream
        return body


def convert_messages(messages: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[dict]]:
    """OpenAI-style messages -> (system texts, Anthropic messages).

    System/developer messages move to the system prompt; other roles become user or assistant;
    empty messages are skipped; consecutive same-role messages are merged because Anthropic
    requires alternation; leading assistant messages are dropped so the first one is the user's.
    """
    system: list[str] = []
    out: list[dict] = []
    for message in messages:
        role = message.get("role")
        blocks = _blocks(message.get("content"))
        if role in ("system", "developer"):
            text = "".join(b["text"] for b in blocks if b["type"] == "text")
            if text:
                system.append(text)
            continue
        role = "assistant" if role == "assistant" else "user"
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        elif out or role == "user":
            out.append({"role": role, "content": blocks})
    for message in out:
        content = message["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            message["content"] = content[0]["text"]
    return system, out


def _blocks(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict] = []
    if not isinstance(content, (list, tuple)):
        return blocks
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text") and isinstance(part.get("text"), str) and part["text"]:
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = _image_block(part.get("image_url"))
            if image is not None:
                blocks.append(image)
    return blocks


def _image_block(image_url: Any) -> Optional[dict]:
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            return None
        return {"type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


class MessagesSink(EventStreamSink):
    """Turns Anthropic stream events (or one ``message`` JSON) into a result."""

    def __init__(self, label: str, on_delta: Optional[DeltaSink], secrets=()):
        super().__init__(label, secrets)
        self._on_delta = on_delta
        self._text: list[str] = []
        self._stop_reason: Optional[str] = None
        self._input_tokens = 0
        self._output_tokens = 0
        self._model: Optional[str] = None
        self._stopped = False

    def handle_event(self, event: SSEEvent) -> None:
        if self._stopped or event.event == "ping":
            return
        payload = self.load(event.data)
        kind = payload.get("type") or event.event
        if kind == "error" or event.event == "error":
            raise self.upstream_error(payload.get("error", payload))
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("model"), str):
                    self._model = message["model"]
                self._note_usage(message.get("usage"))
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                self._emit(delta.get("text"))
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = str(delta["stop_reason"])
            self._note_usage(payload.get("usage"))
        elif kind == "message_stop":
            self._stopped = True

    def handle_json(self, payload: dict) -> None:
        if payload.get("type") == "error" or "error" in payload:
            raise self.upstream_error(payload.get("error", payload))
        if not isinstance(payload.get("content"), list):
            raise self.unavailable("sent a message without content")
        if isinstance(payload.get("model"), str):
            self._model = payload["model"]
        self._note_usage(payload.get("usage"))
        self._emit("".join(block.get("text", "") for block in payload["content"]
                           if isinstance(block, dict) and block.get("type") == "text"
                           and isinstance(block.get("text"), str)))
        self._stop_reason = str(payload.get("stop_reason") or "end_turn")
        self._stopped = True

    def _emit(self, text: Any) -> None:
        if isinstance(text, str) and text:
            self._text.append(text)
            if self._on_delta is not None:
                self._on_delta(text)

    def _note_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if "input_tokens" in usage:
            self._input_tokens = sum(_int(usage.get(k)) for k in (
                "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        if "output_tokens" in usage:
            self._output_tokens = _int(usage.get("output_tokens"))

    def end(self) -> ModelResult:
        if not self._stopped and self._stop_reason is None:
            raise self.unavailable("closed the stream early")
        reason = self._stop_reason or "end_turn"
        return ModelResult(text="".join(self._text),
                           finish_reason=_STOP_REASONS.get(reason, "stop"),
                           usage=Usage(self._input_tokens, self._output_tokens), model=self._model)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
