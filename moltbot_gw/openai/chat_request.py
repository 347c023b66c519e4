"""Validate an OpenAI Chat Completions request body and map it onto an agent turn.

Pure functions: bytes and header values in, a ``ChatRequest`` (or an ``APIError`` naming the
offending ``param``) out. Unknown extra fields are ignored — clients send many.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..content import content_text
from ..config import ChatCompletionsConfig, ImagesConfig
from ..json_text import has_lone_surrogate
from .validation import bad_request as _bad
from .validation import function_definition as _function_definition
from .validation import is_int as _is_int
from .validation import is_number as _is_number
from .images import ImageBudget
from .request_limits import RequestLimits, check_request_limits

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TEXT_PART_TYPES = ("text", "input_text")
AGENT_MODEL_PREFIXES = ("moltbot:", "agent:", "clawdbot:")
BARE_MODEL_NAMES = ("moltbot", "clawdbot", "agent")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
IMAGE_PART_TYPES = ("image_url", "input_image")
TASK_PROMPT_PREFIX = "### Task:"
CHAT_HISTORY_OPEN, CHAT_HISTORY_CLOSE = "<chat_history>", "</chat_history>"
RETRIEVED_CONTEXT_TAG = "<context>"
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ChatRequest:
    model: str                                      # echoed back verbatim
    agent_id: Optional[str]                         # from the model field, if it names one
    input: tuple[Mapping[str, Any], ...]            # the turn's new user message(s)
    history: tuple[Mapping[str, Any], ...]          # earlier messages the client sent
    system_prompt: Optional[str]
    options: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    user: Optional[str] = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: Optional[bool] = None








def parse_body(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not for us
        raise _bad("We could not parse the JSON body of your request. Send valid JSON "
                   "with Content-Type: application/json.", None, "invalid_json")
    if not isinstance(data, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_json")
    if has_lone_surrogate(body, data):   # as OpenAI does: not valid Unicode, not for us
        raise _bad("We could not parse the JSON body of your request: it contains a lone "
                   "UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not valid "
                   "Unicode.", None, "invalid_json")
    return data


def is_task_prompt(chat: "ChatRequest") -> bool:
    """Open WebUI's background tasks (title, tags, follow-ups, search queries, autocomplete):
    the turn is one user message that starts with ``### Task:`` and carries the chat it is
    about in a ``<chat_history>…</chat_history>`` block, with no retrieved ``<context>``
    outside that block. A file-attached (RAG) turn also starts with ``### Task:`` but holds
    ``<context>`` and the user's query instead: it is a real turn of the chat."""
    if len(chat.input) != 1 or chat.input[0]["role"] != "user":
        return False
    text = content_text(chat.input[0]["content"]).lstrip()
    if not text.startswith(TASK_PROMPT_PREFIX):
        return False
    start, end = text.find(CHAT_HISTORY_OPEN), text.rfind(CHAT_HISTORY_CLOSE)
    if start < 0 or end < start:
        return False
    template = text[:start] + text[end + len(CHAT_HISTORY_CLOSE):]
    return RETRIEVED_CONTEXT_TAG not in template


def agent_from_model(model: str) -> Optional[str]:
    """The agent id a ``model`` string names (``moltbot:<id>``, ``agent:<id>``,
    ``clawdbot:<id>``), or ``None`` when it names none (then headers or the default decide).
    """
    lowered = model.strip().lower()
    for prefix in AGENT_MODEL_PREFIXES:
        if lowered.startswith(prefix):
            return model.strip()[len(prefix):]
    return None


def _content(message: Mapping, index: int, images: Optional[ImageBudget] = None) -> Any:
    """Text content as a string or a list of parts (text, and ``image_url`` parts with
    validated data URIs when ``images`` is given); other part types are ignored."""
    content = message.get("content")
    where = f"messages[{index}].content"
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts", where,
                   "invalid_type")
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}[{j}] must be an object with a type", f"{where}[{j}]",
                       "invalid_type")
        if part["type"] in TEXT_PART_TYPES:
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{j}].text must be a string", f"{where}[{j}].text",
                           "invalid_type")
            parts.append({"type": "text", "text": part["text"]})
        elif part["type"] in IMAGE_PART_TYPES and images is not None:
            parts.append(images.image_part(part, index, f"{where}[{j}]"))
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts) if len(parts) <= 1 else parts
    return parts




def _tool_calls(message: Mapping, index: int) -> list:
    calls = message.get("tool_calls")
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise _bad(f"{where} must be a list", where, "invalid_type")
    checked = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call, dict) or not isinstance(call.get("id"), str)
                or not isinstance(function, dict) or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments", ""), str)):
            raise _bad(f"{where}[{j}] must be {{id, type: \"function\", function: {{name, "
                       f"arguments}}}}", f"{where}[{j}]", "invalid_type")
        checked.append({"id": call["id"], "type": "function",
                        "function": {"name": function["name"],
                                     "arguments": function.get("arguments") or "{}"}})
    return checked


def _messages(data: dict, images: ImageBudget) -> tuple[list, list, Optional[str]]:
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise _bad("messages must be a list of message objects", "messages", "invalid_type")
    if not messages:
        raise _bad("messages must contain at least one message", "messages")
    system_parts: list[str] = []
    conversation: list[dict] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(ROLES)}; got "
                       f"{json.dumps(role)}", f"messages[{i}].role")
        content = _content(message, i, images if role == "user" else None)
        if role in ("system", "developer"):
            text = content_text(content)
            if text:
                system_parts.append(text)
        elif role == "user":
            if content == "" or content == []:
                raise _bad(f"messages[{i}] has no text or image content", f"messages[{i}]"
                           ".content", "empty_message")
            conversation.append({"role": "user", "content": content})
        elif role == "assistant":
            entry = {"role": "assistant", "content": content_text(content) or None}
            if message.get("tool_calls"):
                entry["tool_calls"] = _tool_calls(message, i)
            elif not entry["content"]:
                continue  # an empty assistant message says nothing; providers reject it
            conversation.append(entry)
        elif role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise _bad(f"messages[{i}].tool_call_id must be the id of the call it answers",
                           f"messages[{i}].tool_call_id", "invalid_type")
            conversation.append({"role": "tool", "tool_call_id": message["tool_call_id"],
                                 "content": content_text(content)})
        # legacy "function" messages carry nothing we can replay faithfully; ignored
    last_assistant = max((i for i, m in enumerate(conversation) if m["role"] == "assistant"),
                         default=-1)
    turn = [m for m in conversation[last_assistant + 1:] if m["role"] in ("user", "tool")]
    if not turn:
        raise _bad("messages must end with at least one user (or tool) message after the "
                   "last assistant message", "messages", "missing_user_message")
    history = conversation[:last_assistant + 1]
    return turn, history, "\n\n".join(system_parts) or None


def _options(data: dict) -> dict:
    options: dict[str, Any] = {}
    n = data.get("n")
    if n is not None:
        if not _is_int(n) or n < 1:
            raise _bad("n must be a positive integer", "n")
        if n > 1:
            raise _bad("n > 1 is not supported: the gateway returns one choice per request",
                       "n", "unsupported_value")
    temperature = data.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 2:
            raise _bad("temperature must be a number between 0 and 2", "temperature")
        options["temperature"] = temperature
    top_p = data.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise _bad("top_p must be a number between 0 and 1", "top_p")
        options["top_p"] = top_p
    for name in ("max_tokens", "max_completion_tokens"):
        value = data.get(name)
        if value is not None:
            if not _is_int(value) or value < 1:
                raise _bad(f"{name} must be a positive integer", name)
            options["max_tokens"] = value
    stop = data.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            options["stop"] = [stop]
        elif (isinstance(stop, list) and 1 <= len(stop) <= 4
              and all(isinstance(s, str) for s in stop)):
            options["stop"] = list(stop)
        else:
            raise _bad("stop must be a string or a list of at most 4 strings", "stop")
    seed = data.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise _bad("seed must be an integer", "seed")
        options["seed"] = seed
    for name in ("presence_penalty", "frequency_penalty"):
        value = data.get(name)
        if value is not None:
            if not _is_number(value) or not -2 <= value <= 2:
                raise _bad(f"{name} must be a number between -2 and 2", name)
            options[name] = value
    response_format = data.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in RESPONSE_FORMAT_TYPES:
            raise _bad("response_format.type must be one of "
                       + ", ".join(RESPONSE_FORMAT_TYPES), "response_format")
        if kind == "json_schema" and not isinstance(response_format.get("json_schema"), dict):
            raise _bad("response_format.json_schema must be an object when type is "
                       "json_schema", "response_format.json_schema")
        if kind != "text":
            options["response_format"] = response_format
    return options


def _tools(data: dict) -> tuple[tuple, Any, Optional[bool]]:
    tools = data.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise _bad("tools must be a list of function tools", "tools", "invalid_type")
    names = set()
    checked = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type") != "function"
                or not isinstance(function, dict)):
            raise _bad(f'tools[{i}] must be {{type: "function", function: {{name, '
                       f"description?, parameters?}}}}", f"tools[{i}]", "invalid_type")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
            raise _bad(f"tools[{i}].function.name must match ^[a-zA-Z0-9_-]{{1,64}}$",
                       f"tools[{i}].function.name")
        if name in names:
            raise _bad(f'tools[{i}].function.name "{name}" is offered twice',
                       f"tools[{i}].function.name")
        names.add(name)
        entry = _function_definition(name, function, f"tools[{i}].function")
        checked.append({"type": "function", "function": entry})
    choice = data.get("tool_choice")
    if choice is not None:
        named = (choice.get("function", {}).get("name")
                 if isinstance(choice, dict) and choice.get("type") == "function"
                 and isinstance(choice.get("function"), dict) else None)
        if choice not in ("none", "auto", "required") and named is None:
            raise _bad('tool_choice must be "none", "auto", "required" or {type: "function", '
                       "function: {name}}", "tool_choice")
        if named is not None and named not in names:
            raise _bad(f'tool_choice names "{named}", which is not in tools', "tool_choice")
        if choice != "none" and not checked:
            raise _bad("tool_choice needs tools", "tool_choice")
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls must be a boolean", "parallel_tool_calls",
                   "invalid_type")
    return tuple(checked), choice, parallel


def parse_chat_request(body: bytes, images: Optional[ImageBudget] = None,
                       limits: Optional[RequestLimits] = None) -> ChatRequest:
    """Validate ``body``; image parts count against ``images`` (whose ``remote`` list then
    names the URLs the caller must fetch); sizes are checked against ``limits``."""
    data = parse_body(body)
    check_request_limits(data, limits or RequestLimits.for_chat(ChatCompletionsConfig()))
    model = data.get("model", "moltbot")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model must be a non-empty string, e.g. \"moltbot:main\"", "model",
                   "invalid_type")
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream", "invalid_type")
    include_usage = False
    stream_options = data.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise _bad("stream_options must be an object", "stream_options", "invalid_type")
        include_usage = stream_options.get("include_usage") is True
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user must be a string", "user", "invalid_type")
    tools, tool_choice, parallel_tool_calls = _tools(data)
    turn, history, system_prompt = _messages(data, images or ImageBudget(ImagesConfig()))
    return ChatRequest(model=model, agent_id=agent_from_model(model), input=tuple(turn),
                       history=tuple(history), system_prompt=system_prompt,
                       options=_options(data), stream=bool(stream),
                       include_usage=include_usage, user=user or None, tools=tools,
                       tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
