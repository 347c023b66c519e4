"""JSON text rules the HTTP and WebSocket layers share about lone UTF-16 surrogates.

``"\\ud800"`` is a valid JSON escape but not valid Unicode: ``json.loads`` returns a string
that no UTF-8 encoder takes (not an SSE stream, a WebSocket frame, a transcript or a provider
request). Client input holding one is refused; a model's output holding one is written back
as the same escape instead of failing.
"""
from __future__ import annotations

import json
import re
from json.encoder import encode_basestring
from typing import Any

# A JSON escape, or the (invalid) UTF-8 of a surrogate, that can decode to one: only text
# holding either needs the walk in has_lone_surrogate.
_SURROGATE_SOURCE = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(raw, document: Any) -> bool:
    """Whether a string (key or value) of ``document``, decoded from ``raw``, holds a lone
    surrogate. Iterative, as the document may nest as deep as ``json.loads`` allows."""
    source = raw if isinstance(raw, (bytes, bytearray)) else str(raw).encode(
        "utf-8", "surrogatepass")
    if not _SURROGATE_SOURCE.search(source):
        return False
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def compact_utf8(payload: Any) -> bytes:
    """Compact JSON in UTF-8. A lone surrogate can only stand inside a JSON string here, so
    backslashreplace writes it as that same escape (and it parses back to the same text)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "backslashreplace")


def json_string_utf8(text: str) -> bytes:
    """``compact_utf8(text)`` for a string, without the encoder's dispatch: the per-delta
    hot path of streamed answers. The same bytes (``json.dumps`` uses this very function)."""
    return encode_basestring(text).encode("utf-8", "backslashreplace")
