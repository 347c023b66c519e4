"""The request fields Chat Completions, legacy completions and the Responses API read the same
way: the JSON body, ``model`` (and the agent it names), flags, sampling options and tool names.
Only fields with one meaning everywhere live here; shape-specific parsing stays with its API.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

from ..json_text import has_lone_surrogate
from .validation import bad_request, is_int, is_number

AGENT_MODEL_PREFIXES = ("moltbot:", "agent:", "clawdbot:")
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def parse_body(body: bytes) -> dict:
    """The request body as a JSON object, or the 400 ``invalid_json`` saying why not."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not for us
        raise bad_request("We could not parse the JSON body of your request. Send valid JSON "
                          "with Content-Type: application/json.", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_json")
    if has_lone_surrogate(body, data):   # as OpenAI does: not valid Unicode, not for us
        raise bad_request("We could not parse the JSON body of your request: it contains a "
                          "lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which "
                          "is not valid Unicode.", None, "invalid_json")
    return data


def agent_from_model(model: str) -> Optional[str]:
    """The agent id a ``model`` string names (``moltbot:<id>``, ``agent:<id>``,
    ``clawdbot:<id>``), or ``None`` when it names none (then headers or the default decide).
    """
    lowered = model.strip().lower()
    for prefix in AGENT_MODEL_PREFIXES:
        if lowered.startswith(prefix):
            return model.strip()[len(prefix):]
    return None


def model_field(data: dict) -> str:
    """``model``, echoed back verbatim; ``moltbot`` (the default agent) when absent."""
    model = data.get("model", "moltbot")
    if not isinstance(model, str) or not model.strip():
        raise bad_request('model must be a non-empty string, e.g. "moltbot:main"', "model",
                          "invalid_type")
    return model


def optional_bool(data: dict, name: str) -> Optional[bool]:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean", name, "invalid_type")
    return value


def optional_string(data: dict, name: str) -> Optional[str]:
    """A string field; an empty string counts as absent."""
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{name} must be a string", name, "invalid_type")
    return value or None


def stream_flags(data: dict) -> tuple[bool, bool]:
    """(``stream``, ``stream_options.include_usage``) of a chat or text completion."""
    stream = optional_bool(data, "stream")
    stream_options = data.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise bad_request("stream_options must be an object", "stream_options", "invalid_type")
    return bool(stream), bool(stream_options and stream_options.get("include_usage") is True)


def sampling_options(data: dict, max_tokens_params: tuple[str, ...]) -> dict:
    """``temperature``, ``top_p`` and the token cap (named ``max_tokens`` in the run whatever
    the API calls it: the last of ``max_tokens_params`` present wins)."""
    options: dict[str, Any] = {}
    temperature = data.get("temperature")
    if temperature is not None:
        if not is_number(temperature) or not 0 <= temperature <= 2:
            raise bad_request("temperature must be a number between 0 and 2", "temperature")
        options["temperature"] = temperature
    top_p = data.get("top_p")
    if top_p is not None:
        if not is_number(top_p) or not 0 <= top_p <= 1:
            raise bad_request("top_p must be a number between 0 and 1", "top_p")
        options["top_p"] = top_p
    for name in max_tokens_params:
        value = data.get(name)
        if value is not None:
            if not is_int(value) or value < 1:
                raise bad_request(f"{name} must be a positive integer", name)
            options["max_tokens"] = value
    return options


def tool_list(data: dict) -> list:
    """``tools``: a list (empty when absent); each API checks its entries' own shape."""
    tools = data.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("tools must be a list of function tools", "tools", "invalid_type")
    return tools


def check_tool_name(name: Any, offered: set[str], param: str, shape_hint: str = "") -> str:
    """A function tool's name: the pattern providers accept, offered once per request
    (``offered`` collects the names). ``shape_hint`` ends the pattern error."""
    if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
        raise bad_request(f"{param} must match ^[a-zA-Z0-9_-]{{1,64}}${shape_hint}", param)
    if name in offered:
        raise bad_request(f'{param} "{name}" is offered twice', param)
    offered.add(name)
    return name
