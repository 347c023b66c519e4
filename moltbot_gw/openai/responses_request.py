"""Validate an OpenAI Responses API request body (``POST /v1/responses``) and map it onto an
agent turn.

Pure functions: bytes in, a ``ResponsesRequest`` (or an ``APIError`` naming the offending
``param``) out. Unknown extra fields are ignored, as for chat completions; features the
gateway cannot honour (hosted tools, background mode, server-side conversations) are 400s.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from ..config import ImagesConfig, ResponsesConfig
from ..content import TEXT_PART_TYPES  # a Responses message takes every text part type
from .conversation import Conversation, text_or_parts
from .errors import APIError
from .images import ImageBudget
from .request_common import (
    agent_from_model,
    check_tool_name,
    model_field,
    optional_bool,
    optional_string,
    parse_body,
    sampling_options,
    tool_list,
)
from .request_limits import RequestLimits, check_request_limits
from .validation import bad_request as _bad
from .validation import function_definition

# Looks up an earlier output item by id (``msg_``, ``fc_``, ``rs_``): the item, or None.
ItemResolver = Callable[[str], Optional[Mapping[str, Any]]]

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
IGNORED_PART_TYPES = ("refusal",)
IGNORED_ITEM_TYPES = ("reasoning",)      # clients resend a response's whole output
TOOL_CHOICE_MODES = ("none", "auto", "required")
TRUNCATION_MODES = ("auto", "disabled")
TEXT_FORMAT_TYPES = ("text", "json_object", "json_schema")
MAX_METADATA_PAIRS = 16


@dataclass(frozen=True)
class ResponsesRequest:
    model: str                                      # echoed back verbatim
    agent_id: Optional[str]                         # from the model field, if it names one
    input: tuple[Mapping[str, Any], ...]            # the turn's new user / tool messages
    history: tuple[Mapping[str, Any], ...]          # earlier items, as chat messages
    system_prompt: Optional[str]                    # instructions + system/developer items
    options: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False
    user: Optional[str] = None
    previous_response_id: Optional[str] = None
    tools: tuple[Mapping[str, Any], ...] = ()       # chat format, for the run
    tool_choice: Any = None                         # chat format, for the run
    parallel_tool_calls: Optional[bool] = None
    store: bool = True                              # keep the response for later reference
    # Echoed in the response object, in Responses terms:
    echo: Mapping[str, Any] = field(default_factory=dict)


def _content(item: Mapping, index: int, images: Optional[ImageBudget]) -> Any:
    """A message item's content as a string or a list of chat parts (text, and image parts
    with validated URIs when ``images`` is given)."""
    content = item.get("content")
    where = f"input[{index}].content"
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts", where,
                   "invalid_type")
    parts = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{here} must be an object with a type", here, "invalid_type")
        kind = part["type"]
        if kind in TEXT_PART_TYPES:
            if not isinstance(part.get("text"), str):
                raise _bad(f"{here}.text must be a string", f"{here}.text", "invalid_type")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            if images is not None:   # images count only in user messages
                parts.append(images.image_part(part, index, here))
        elif kind not in IGNORED_PART_TYPES:
            raise _bad(f'{here}.type "{kind}" is not supported; use input_text or '
                       "input_image (as a data: URI)", f"{here}.type", "unsupported_value")
    return text_or_parts(parts)


def _string_field(item: Mapping, name: str, where: str, *, required: bool = True,
                  default: Optional[str] = None) -> Optional[str]:
    value = item.get(name, default)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value and default is None):
        raise _bad(f"{where}.{name} must be a non-empty string", f"{where}.{name}",
                   "invalid_type")
    return value


def _tool_output(item: Mapping, where: str) -> str:
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, list):   # a list of input_text parts; their text is the result
        texts = []
        for j, part in enumerate(output):
            if (not isinstance(part, dict) or part.get("type") not in TEXT_PART_TYPES
                    or not isinstance(part.get("text"), str)):
                raise _bad(f"{where}.output[{j}] must be an input_text part",
                           f"{where}.output[{j}]", "invalid_type")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"{where}.output must be a string", f"{where}.output", "invalid_type")


def _referenced(item: Mapping, where: str, resolve: Optional[ItemResolver]) -> Mapping:
    """The stored output item an ``item_reference`` names; OpenAI's 404 if it is unknown."""
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise _bad(f"{where}.id must be the id of an earlier output item", f"{where}.id",
                   "invalid_type")
    found = resolve(item_id) if resolve is not None else None
    if found is None:
        raise APIError(404, f"Item with id '{item_id}' not found.", param="input",
                       code="item_not_found", type="invalid_request_error")
    return found


def _is_reference(item: Mapping) -> bool:
    """An ``item_reference`` (its ``type`` is optional: an item with only an id is one)."""
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "role" not in item and "id" in item)


def _items(data: dict, images: ImageBudget,
           resolve: Optional[ItemResolver] = None) -> tuple[list, list, list[str]]:
    """(turn, history, system texts) of ``input``; ``item_reference`` items are replaced by
    the stored items they name."""
    raw = data.get("input")
    if raw is None:
        raise _bad("input is required: a string or a list of input items", "input",
                   "missing_required_parameter")
    if isinstance(raw, str):
        if not raw:
            raise _bad("input must not be empty", "input", "empty_input")
        return [{"role": "user", "content": raw}], [], []
    if not isinstance(raw, list):
        raise _bad("input must be a string or a list of input items", "input", "invalid_type")
    if not raw:
        raise _bad("input must contain at least one item", "input", "empty_input")
    conversation = Conversation()
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", where, "invalid_type")
        if _is_reference(item):
            item = _referenced(item, where, resolve)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in MESSAGE_ROLES:
                raise _bad(f"{where}.role must be one of {', '.join(MESSAGE_ROLES)}; got "
                           f"{json.dumps(role)}", f"{where}.role")
            conversation.add(role, _content(item, i, images if role == "user" else None),
                             where)
        elif kind == "function_call":
            call = {"id": _string_field(item, "call_id", where), "type": "function",
                    "function": {"name": _string_field(item, "name", where),
                                 "arguments": _string_field(item, "arguments", where,
                                                            default="") or "{}"}}
            messages = conversation.messages
            if messages and messages[-1]["role"] == "assistant":
                # the calls of one assistant turn follow its text: one chat message
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                conversation.add_assistant("", [call])
        elif kind == "function_call_output":
            call_id = _string_field(item, "call_id", where)
            assert call_id is not None  # required: a missing one has raised
            conversation.add_tool_result(call_id, _tool_output(item, where))
        elif kind in IGNORED_ITEM_TYPES:
            continue
        elif isinstance(kind, str):
            raise _bad(f'{where}.type "{kind}" is not supported; use message, function_call '
                       "or function_call_output items", f"{where}.type", "unsupported_value")
        else:
            raise _bad(f"{where} needs a type (or a role for a message)", f"{where}.type",
                       "invalid_type")
    turn, history = conversation.split()
    if not turn:
        raise _bad("input must end with at least one user message or function_call_output "
                   "after the last assistant item", "input", "missing_user_message")
    return turn, history, conversation.system


def _tools(data: dict) -> tuple[tuple, list, Any, Any]:
    """(chat-format tools, echoed tools, chat-format tool_choice, echoed tool_choice)."""
    names: set[str] = set()
    chat_tools, echoed = [], []
    for i, tool in enumerate(tool_list(data)):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"{where} must be an object", where, "invalid_type")
        if tool.get("type") != "function":
            raise _bad(f'{where}.type must be "function": only function tools are supported',
                       f"{where}.type", "unsupported_value")
        name = check_tool_name(tool.get("name"), names, f"{where}.name",
                               ' (Responses tools are flat: {type: "function", name, '
                               "description?, parameters?})")
        function = function_definition(name, tool, where)
        chat_tools.append({"type": "function", "function": function})
        echoed.append({"type": "function", "name": name,
                       "description": function.get("description"),
                       "parameters": function.get("parameters"),
                       "strict": function.get("strict")})
    choice = data.get("tool_choice")
    chat_choice: Any = None
    if choice is None:
        echoed_choice: Any = "auto"
    elif choice in TOOL_CHOICE_MODES:
        if choice == "required" and not chat_tools:
            raise _bad('tool_choice "required" needs tools', "tool_choice")
        chat_choice = choice if chat_tools else None
        echoed_choice = choice
    elif (isinstance(choice, dict) and choice.get("type") == "function"
          and isinstance(choice.get("name"), str)):
        if choice["name"] not in names:
            raise _bad(f'tool_choice names "{choice["name"]}", which is not in tools',
                       "tool_choice")
        chat_choice = {"type": "function", "function": {"name": choice["name"]}}
        echoed_choice = {"type": "function", "name": choice["name"]}
    else:
        raise _bad('tool_choice must be "none", "auto", "required" or {type: "function", '
                   "name}", "tool_choice")
    return tuple(chat_tools), echoed, chat_choice, echoed_choice


def _text_format(data: dict) -> tuple[Optional[dict], dict]:
    """(chat ``response_format`` option or None, echoed ``text`` config)."""
    text = data.get("text")
    if text is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(text, dict):
        raise _bad("text must be an object", "text", "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return None, {"format": {"type": "text"}}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in TEXT_FORMAT_TYPES:
        raise _bad("text.format.type must be one of " + ", ".join(TEXT_FORMAT_TYPES),
                   "text.format.type")
    if kind == "text":
        return None, {"format": {"type": "text"}}
    if kind == "json_object":
        return {"type": "json_object"}, {"format": {"type": "json_object"}}
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str) or not name:
        raise _bad("text.format.name must be a non-empty string", "text.format.name",
                   "invalid_type")
    if not isinstance(schema, dict):
        raise _bad("text.format.schema must be a JSON Schema object", "text.format.schema",
                   "invalid_type")
    json_schema: dict[str, Any] = {"name": name, "schema": schema}
    echoed: dict[str, Any] = {"type": "json_schema", "name": name, "schema": schema}
    for key, check in (("strict", bool), ("description", str)):
        if fmt.get(key) is not None:
            if not isinstance(fmt[key], check):
                raise _bad(f"text.format.{key} must be a {check.__name__}",
                           f"text.format.{key}", "invalid_type")
            json_schema[key] = echoed[key] = fmt[key]
    return {"type": "json_schema", "json_schema": json_schema}, {"format": echoed}


def _metadata(data: dict) -> dict:
    metadata = data.get("metadata")
    if metadata is None:
        return {}
    if (not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS
            or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                       and len(v) <= 512 for k, v in metadata.items())):
        raise _bad(f"metadata must be an object of at most {MAX_METADATA_PAIRS} string "
                   "pairs (keys up to 64 characters, values up to 512)", "metadata")
    return dict(metadata)


def parse_responses_request(body: bytes, images: Optional[ImageBudget] = None,
                            resolve: Optional[ItemResolver] = None,
                            limits: Optional[RequestLimits] = None) -> ResponsesRequest:
    """Validate ``body``; image parts count against ``images`` (whose ``remote`` list then
    names the URLs the caller must fetch); ``resolve`` finds the items ``item_reference``
    inputs name (without it every reference is unknown); sizes are checked against
    ``limits``."""
    data = parse_body(body)
    check_request_limits(data, limits or RequestLimits.for_responses(ResponsesConfig()),
                         data.get("instructions"))
    model = model_field(data)
    stream = optional_bool(data, "stream")
    user = optional_string(data, "user")
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("instructions must be a string", "instructions", "invalid_type")
    previous = data.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _bad("previous_response_id must be the id of an earlier response",
                   "previous_response_id", "invalid_type")
    if data.get("background"):
        raise _bad("background responses are not supported", "background",
                   "unsupported_value")
    if data.get("conversation") is not None:
        raise _bad("conversation objects are not supported; continue a conversation with "
                   "previous_response_id", "conversation", "unsupported_value")
    store = optional_bool(data, "store")
    truncation = data.get("truncation")
    if truncation is not None and truncation not in TRUNCATION_MODES:
        raise _bad('truncation must be "auto" or "disabled"', "truncation")
    parallel = optional_bool(data, "parallel_tool_calls")
    metadata = _metadata(data)
    tools, echoed_tools, tool_choice, echoed_choice = _tools(data)
    options = sampling_options(data, ("max_output_tokens",))
    response_format, echoed_text = _text_format(data)
    if response_format is not None:
        options["response_format"] = response_format
    turn, history, system = _items(data, images or ImageBudget(ImagesConfig()), resolve)
    system_parts = ([instructions] if instructions else []) + system
    echo = {
        "instructions": instructions,
        "max_output_tokens": options.get("max_tokens"),
        "metadata": metadata,
        "parallel_tool_calls": True if parallel is None else parallel,
        "previous_response_id": previous,
        "temperature": options.get("temperature"),
        "text": echoed_text,
        "tool_choice": echoed_choice,
        "tools": echoed_tools,
        "top_p": options.get("top_p"),
        "truncation": truncation or "disabled",
        "user": user,
        "store": True if store is None else store,
    }
    return ResponsesRequest(
        model=model, agent_id=agent_from_model(model), input=tuple(turn),
        history=tuple(history), system_prompt="\n\n".join(system_parts) or None,
        options=options, stream=bool(stream), user=user, previous_response_id=previous,
        tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
        store=True if store is None else store, echo=echo)


def referenced_item_ids(body: bytes) -> list[str]:
    """The ids the ``item_reference`` inputs of ``body`` name, so that the endpoint can look
    them up (asynchronously, in Redis too) before the synchronous parse resolves them. A body
    that does not parse names none: ``parse_responses_request`` then says what is wrong."""
    if b'"id"' not in body:
        return []
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):     # deep nesting too: the parse says what is wrong
        return []
    raw = data.get("input") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return []
    return [item["id"] for item in raw
            if isinstance(item, dict) and _is_reference(item) and isinstance(item.get("id"), str)]
