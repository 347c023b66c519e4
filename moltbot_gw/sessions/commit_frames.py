"""The wire format between the gateway and its transcript writer process: length-prefixed JSON
frames (4-byte big-endian length, then UTF-8 JSON), one per commit each way, and how one
append's outcome (its result, or the error that kept it from being durable) is told.
"""
from __future__ import annotations

import json
import struct
from typing import Any, Optional

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 2**32 - 1


def encode_json(value: Any) -> bytes:
    """Compact ASCII JSON: non-ASCII text and lone surrogates travel as ``\\u`` escapes, so
    the other side decodes exactly the strings that were sent."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def frame_of(body: bytes) -> bytes:
    """One frame: the length, then the JSON ``body``."""
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError("a transcript commit is too large for one frame")
    return HEADER.pack(len(body)) + body


def encode_frame(value: Any) -> bytes:
    """One frame holding the JSON of ``value``."""
    return frame_of(encode_json(value))


def list_frame(encoded_items: list[bytes]) -> bytes:
    """One frame holding a JSON array of already encoded items."""
    return frame_of(b"[" + b",".join(encoded_items) + b"]")


class FrameReader:
    """Splits a byte stream into frames, whatever chunks it arrives in."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; return the frames they completed, decoded, in order."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(json.loads(bytes(self._buffer[HEADER.size:end]).decode("utf-8")))
            del self._buffer[:end]
        return frames


def encode_outcome(outcome: Any) -> dict[str, Any]:
    """An append's outcome as JSON: ``{"ok": result}`` or ``{"error": {...}}`` (the
    exception's type name, errno and strerror or text: never a traceback)."""
    if not isinstance(outcome, BaseException):
        return {"ok": outcome}
    error: dict[str, Any] = {"type": type(outcome).__name__}
    if isinstance(outcome, OSError) and outcome.errno is not None:
        error["errno"] = outcome.errno
        error["strerror"] = outcome.strerror or ""
    else:
        error["message"] = str(outcome)
    return {"error": error}


def decode_outcome(value: dict[str, Any]) -> Any:
    """The parent's view of an outcome: the result as a tuple, or an exception of the same
    kind (an OSError with the errno, which Python maps to e.g. PermissionError; anything
    else a RuntimeError naming the type)."""
    if "ok" in value:
        result = value["ok"]
        return tuple(result) if isinstance(result, list) else result
    error = value.get("error") or {}
    errno: Optional[int] = error.get("errno")
    if errno is not None:
        return OSError(errno, error.get("strerror", ""))
    return RuntimeError(f"{error.get('type', 'Error')}: {error.get('message', '')}")
