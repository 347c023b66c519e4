"""Provider for the Anthropic Messages API (``POST /v1/messages`` with ``stream: true``).

Converts OpenAI-style chat messages to Anthropic's (top-level system, alternating roles, content
blocks, ``tool_use``/``tool_result`` blocks), OpenAI function tools to Anthropic tools, and its
event stream back into deltas, tool calls, thinking and a ``ModelResult``. Transport is
``upstream_client.py``'s. Anthropic has no embeddings endpoint.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Optional

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from ..content import content_text
from .base import DeltaSink, ModelRequest, ModelResult, ReasoningSink, ToolCallSink, Usage
from .errors import ProviderBadRequest
from .http_provider import HTTPProvider
from .sinks import ModelReplySink, nonempty_str, token_count
from .sse import SSEEvent

log = Logger()

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


class AnthropicMessagesProvider(HTTPProvider):
    """One configured Anthropic upstream."""

    log = Logger()
    default_base_url = DEFAULT_BASE_URL
    path = "/v1/messages"
    models_path = "/v1/models"           # what `moltbot-gw providers check` lists

    def _post(self, request: ModelRequest, on_delta: Optional[DeltaSink],
              on_tool_call: Optional[ToolCallSink], on_reasoning: Optional[ReasoningSink],
              stream: bool, flow=None) -> Deferred:
        config = self._config
        try:
            payload = self.payload(request, stream)
        except ProviderBadRequest as e:
            return fail(e)
        sink = MessagesSink(self.name, on_delta, secrets=self.secrets,
                            on_tool_call=on_tool_call, on_reasoning=on_reasoning)
        d = self._client.post_json(
            self.url, payload, sink, label=self.name, headers=self.headers(),
            connect_timeout=config.connectTimeoutSeconds,
            idle_timeout=self.idle_timeout(stream), secrets=self.secrets, flow=flow)
        d.addCallback(lambda _response: sink.finish())
        return d

    def base_url_check(self) -> str:
        return (f"models.providers.{self.name}.baseUrl (without /v1: the gateway adds "
                f"{self.path})")

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
        tools = convert_tools(request.tools, self.name)
        if tools:
            body["tools"] = tools
            choice = convert_tool_choice(request.tool_choice, request.parallel_tool_calls,
                                         self.name)
            if choice is not None:
                body["tool_choice"] = choice
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
    an assistant's ``tool_calls`` become ``tool_use`` blocks after its text and ``tool``
    messages become ``tool_result`` blocks of a user message (put before any text there);
    empty messages are skipped; consecutive same-role messages are merged because Anthropic
    requires alternation; leading assistant messages (and the results of their tool calls)
    are dropped so the first one is the user's.
    """
    system: list[str] = []
    out: list[dict] = []
    dropped_calls: set[str] = set()
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = content_text(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "tool":
            call_id = _tool_id(message.get("tool_call_id"))
            if call_id in dropped_calls:
                continue
            role, blocks = "user", [_tool_result(call_id, message.get("content"))]
        elif role == "assistant":
            blocks = _blocks(message.get("content")) + _tool_uses(message.get("tool_calls"))
        else:
            role, blocks = "user", _blocks(message.get("content"))
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        elif out or role == "user":
            out.append({"role": role, "content": blocks})
        else:
            dropped_calls.update(b["id"] for b in blocks if b["type"] == "tool_use")
    for message in out:
        content = message["content"]
        if message["role"] == "user":
            content.sort(key=lambda block: block["type"] != "tool_result")   # stable
        if len(content) == 1 and content[0]["type"] == "text":
            message["content"] = content[0]["text"]
    return system, out


def convert_tools(tools: Iterable[Mapping[str, Any]], label: str = "anthropic") -> list[dict]:
    """OpenAI function tools -> Anthropic tools (``name``, ``description``, ``input_schema``)."""
    out: list[dict] = []
    for tool in tools or ():
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            log.warn("provider {provider}: skipping a tool that is not a function",
                     provider=label)
            continue
        function = tool.get("function")
        if not isinstance(function, Mapping):
            function = {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ProviderBadRequest(f'provider "{label}": a tool has no function name')
        entry: dict[str, Any] = {"name": name}
        description = function.get("description")
        if isinstance(description, str) and description:
            entry["description"] = description
        parameters = function.get("parameters")
        entry["input_schema"] = (parameters if isinstance(parameters, Mapping) and parameters
                                 else {"type": "object", "properties": {}})
        out.append(entry)
    return out


def convert_tool_choice(choice: Any, parallel_tool_calls: Optional[bool],
                        label: str = "anthropic") -> Optional[dict]:
    """OpenAI ``tool_choice`` (+ ``parallel_tool_calls``) -> Anthropic ``tool_choice``."""
    result: Optional[dict]
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif (isinstance(choice, Mapping) and choice.get("type") == "function"
          and isinstance(choice.get("function"), Mapping)
          and isinstance(choice["function"].get("name"), str) and choice["function"]["name"]):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise ProviderBadRequest(f'provider "{label}": unsupported tool_choice')
    if parallel_tool_calls is False and (result is None or result["type"] != "none"):
        result = dict(result or {"type": "auto"}, disable_parallel_tool_use=True)
    return result


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _tool_id(value: Any) -> str:
    """Anthropic accepts ``[A-Za-z0-9_-]+`` ids; the same id maps the same way on both sides."""
    if not isinstance(value, str) or not value:
        return "toolu_unknown"
    return _ID_UNSAFE.sub("_", value)


def _tool_uses(tool_calls: Any) -> list[dict]:
    blocks: list[dict] = []
    if not isinstance(tool_calls, (list, tuple)):
        return blocks
    for call in tool_calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            function = {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            log.warn("skipping an assistant tool call without a function name")
            continue
        blocks.append({"type": "tool_use", "id": _tool_id(call.get("id")), "name": name,
                       "input": _arguments(function.get("arguments"), name)})
    return blocks


def _arguments(arguments: Any, name: str) -> dict:
    """A tool call's arguments as the object Anthropic wants; ``{}`` when they are not one."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warn("arguments of a {name} tool call are not a JSON object; sending {{}}",
                 name=name)
        return {}
    return value


def _tool_result(call_id: str, content: Any) -> dict:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    parts = _blocks(content)
    if any(part["type"] != "text" for part in parts):
        block["content"] = parts
    else:
        text = "".join(part["text"] for part in parts)
        if text:
            block["content"] = text
    return block


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


class MessagesSink(ModelReplySink):
    """Turns Anthropic stream events (or one ``message`` JSON) into a result."""

    def __init__(self, label: str, on_delta: Optional[DeltaSink], secrets=(),
                 on_tool_call: Optional[ToolCallSink] = None,
                 on_reasoning: Optional[ReasoningSink] = None):
        super().__init__(label, on_delta, secrets, on_tool_call, on_reasoning)
        self._tool_blocks: dict[Any, int] = {}    # content block index -> tool call ordinal
        self._stop_reason: Optional[str] = None
        self._input_tokens = 0
        self._output_tokens = 0
        self._cached_tokens: Optional[int] = None   # cache_read_input_tokens, when reported
        self._reported = False                       # any usage counts seen at all
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
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                ordinal = self._tool_blocks[payload.get("index")] = self._tools.open()
                initial = block.get("input")
                self._tools.add(ordinal, nonempty_str(block.get("id")),
                                nonempty_str(block.get("name")),
                                _compact(initial) if isinstance(initial, dict) and initial
                                else "")
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                self._emit(delta.get("text"))
            elif delta_type == "input_json_delta":
                known = self._tool_blocks.get(payload.get("index"))
                fragment = delta.get("partial_json")
                if known is not None and isinstance(fragment, str) and fragment:
                    self._tools.add(known, arguments=fragment)
            elif delta_type == "thinking_delta":
                self._reason(delta.get("thinking"))
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
        content = payload.get("content")
        if not isinstance(content, list):
            raise self.unavailable("sent a message without content")
        if isinstance(payload.get("model"), str):
            self._model = payload["model"]
        self._note_usage(payload.get("usage"))
        blocks = [block for block in content if isinstance(block, dict)]
        self._reason("".join(block["thinking"] for block in blocks
                             if block.get("type") == "thinking"
                             and isinstance(block.get("thinking"), str)))
        self._emit("".join(block["text"] for block in blocks
                           if block.get("type") == "text" and isinstance(block.get("text"), str)))
        for block in blocks:
            if block.get("type") == "tool_use":
                arguments = block.get("input")
                self._tools.add(self._tools.open(), nonempty_str(block.get("id")),
                                nonempty_str(block.get("name")),
                                _compact(arguments) if isinstance(arguments, dict) else "")
        self._stop_reason = str(payload.get("stop_reason") or "end_turn")
        self._stopped = True

    def _note_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self._reported = self._reported or any(
            isinstance(usage.get(k), int) for k in ("input_tokens", "output_tokens"))
        if "input_tokens" in usage:
            self._input_tokens = sum(token_count(usage.get(k)) for k in (
                "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        if "cache_read_input_tokens" in usage:   # OpenAI calls these cached_tokens
            self._cached_tokens = token_count(usage.get("cache_read_input_tokens"))
        if "output_tokens" in usage:
            self._output_tokens = token_count(usage.get("output_tokens"))

    def _usage(self) -> Optional[Usage]:
        """The reported counts, or ``None`` when the upstream sent none (then estimated)."""
        if not self._reported:
            return None
        return Usage(self._input_tokens, self._output_tokens,
                     prompt_tokens_details=None if self._cached_tokens is None
                     else {"cached_tokens": self._cached_tokens})

    def end(self) -> ModelResult:
        if not self._stopped and self._stop_reason is None:
            raise self.unavailable("closed the stream early")
        reason = _STOP_REASONS.get(self._stop_reason or "end_turn", "stop")
        tool_calls = self._tools.result()
        if tool_calls and reason == "stop":
            reason = "tool_calls"
        return ModelResult(text="".join(self._text), finish_reason=reason,
                           usage=self._usage(),
                           model=self._model,
                           tool_calls=tool_calls, reasoning="".join(self._reasoning))


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
