"""Validate an OpenAI Chat Completions request body and map it onto an agent turn.

Pure functions: bytes and header values in, a ``ChatRequest`` (or an ``APIError`` naming the
offending ``param``) out. Unknown extra fields are ignored — clients send many.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..config import ChatCompletionsConfig, ImagesConfig
from ..content import content_text
from .conversation import Conversation, text_or_parts
from .images import ImageBudget
from .request_common import (
    agent_from_model,
    check_tool_name,
    model_field,
    optional_bool,
    optional_string,
    parse_body,
    sampling_options,
    stream_flags,
    tool_list,
)
from .request_limits import RequestLimits, check_request_limits
from .validation import bad_request as _bad
from .validation import function_definition as _function_definition
from .validation import is_int as _is_int
from .validation import is_number as _is_number

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TEXT_PART_TYPES = ("text", "input_text")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
IMAGE_PART_TYPES = ("image_url", "input_image")
TASK_PROMPT_PREFIX = "### Task:"
CHAT_HISTORY_OPEN, CHAT_HISTORY_CLOSE = "<chat_history>", "</chat_history>"
RETRIEVED_CONTEXT_TAG = "<context>"


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
    return text_or_parts(parts)


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
    conversation = Conversation()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object", where, "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role must be one of {', '.join(ROLES)}; got "
                       f"{json.dumps(role)}", f"{where}.role")
        content = _content(message, i, images if role == "user" else None)
        if role == "assistant" and message.get("tool_calls"):
            conversation.add_assistant(content_text(content), _tool_calls(message, i))
        elif role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise _bad(f"{where}.tool_call_id must be the id of the call it answers",
                           f"{where}.tool_call_id", "invalid_type")
            conversation.add_tool_result(message["tool_call_id"], content_text(content))
        elif role != "function":
            conversation.add(role, content, where)
        # legacy "function" messages carry nothing we can replay faithfully; ignored
    turn, history = conversation.split()
    if not turn:
        raise _bad("messages must end with at least one user (or tool) message after the "
                   "last assistant message", "messages", "missing_user_message")
    return turn, history, "\n\n".join(conversation.system) or None


def chat_options(data: dict) -> dict:
    """The sampling options of a chat (or legacy text) completion."""
    n = data.get("n")
    if n is not None:
        if not _is_int(n) or n < 1:
            raise _bad("n must be a positive integer", "n")
        if n > 1:
            raise _bad("n > 1 is not supported: the gateway returns one choice per request",
                       "n", "unsupported_value")
    options = sampling_options(data, ("max_tokens", "max_completion_tokens"))
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
    names: set[str] = set()
    checked = []
    for i, tool in enumerate(tool_list(data)):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type") != "function"
                or not isinstance(function, dict)):
            raise _bad(f'tools[{i}] must be {{type: "function", function: {{name, '
                       f"description?, parameters?}}}}", f"tools[{i}]", "invalid_type")
        name = check_tool_name(function.get("name"), names, f"tools[{i}].function.name")
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
    return tuple(checked), choice, optional_bool(data, "parallel_tool_calls")


def parse_chat_request(body: bytes, images: Optional[ImageBudget] = None,
                       limits: Optional[RequestLimits] = None) -> ChatRequest:
    """Validate ``body``; image parts count against ``images`` (whose ``remote`` list then
    names the URLs the caller must fetch); sizes are checked against ``limits``."""
    data = parse_body(body)
    check_request_limits(data, limits or RequestLimits.for_chat(ChatCompletionsConfig()))
    model = model_field(data)
    stream, include_usage = stream_flags(data)
    user = optional_string(data, "user")
    tools, tool_choice, parallel_tool_calls = _tools(data)
    turn, history, system_prompt = _messages(data, images or ImageBudget(ImagesConfig()))
    return ChatRequest(model=model, agent_id=agent_from_model(model), input=tuple(turn),
                       history=tuple(history), system_prompt=system_prompt,
                       options=chat_options(data), stream=stream,
                       include_usage=include_usage, user=user, tools=tools,
                       tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
