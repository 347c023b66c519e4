"""Frames of the WebSocket control protocol (docs/ws-protocol.rst): parsing and checking
requests, encoding responses and events, the error and close codes. Pure functions; nothing
here sends, authenticates or runs anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, TypeGuard

from ..json_text import LONE_SURROGATE, compact_utf8, has_lone_surrogate

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 128
MAX_CLIENT_FIELD_LENGTH = 128


class ErrorCode:
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    HANDSHAKE_REQUIRED = "HANDSHAKE_REQUIRED"
    PROTOCOL_MISMATCH = "PROTOCOL_MISMATCH"
    UNAUTHORIZED = "UNAUTHORIZED"
    RATE_LIMITED = "RATE_LIMITED"
    HANDSHAKE_TIMEOUT = "HANDSHAKE_TIMEOUT"
    NOT_FOUND = "NOT_FOUND"
    ABORTED = "ABORTED"
    TIMEOUT = "TIMEOUT"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"


class CloseCode:
    GOING_AWAY = 1001
    AUTH_FAILED = 4001
    PROTOCOL_ERROR = 4002
    HANDSHAKE_TIMEOUT = 4008
    RATE_LIMITED = 4029


class ProtocolError(Exception):
    """An error response to send: ``code`` and ``message`` for the client, optionally
    ``retry_after_ms`` and ``details``. ``request_id`` is the id to answer, when known."""

    def __init__(self, code: str, message: str, *, retry_after_ms: Optional[int] = None,
                 details: Optional[Mapping[str, Any]] = None,
                 request_id: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.details = details
        self.request_id = request_id

    def to_json(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after_ms is not None:
            error["retryAfterMs"] = self.retry_after_ms
        if self.details is not None:
            error["details"] = dict(self.details)
        return error


def failure_error(failure, details: Optional[Mapping[str, Any]] = None) -> ProtocolError:
    """The error response of a failure as ``agents.failures.describe_failure`` describes it
    (its WebSocket code, message and ``retryAfterMs``)."""
    return ProtocolError(failure.kind.ws_code, failure.message,
                         retry_after_ms=failure.retry_after_ms, details=details)


def invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_REQUEST, message)


def _valid_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH


@dataclass(frozen=True)
class Request:
    id: str
    method: str
    params: Mapping[str, Any]


def parse_request(payload: bytes) -> Request:
    """Decode one text frame into a ``Request``; ``ProtocolError`` (``INVALID_REQUEST``, with
    the request id when one could be read) if it is not a well-formed request."""
    try:
        frame = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not for us
        raise invalid("the frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise invalid("a frame must be a JSON object")
    request_id = frame.get("id")
    if has_lone_surrogate(payload, frame):
        error = invalid("the frame holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                        "escape), which is not valid Unicode")
        if _valid_id(request_id) and not LONE_SURROGATE.search(request_id):
            error.request_id = request_id
        raise error
    if not _valid_id(request_id):
        raise invalid(f"id must be a string of 1 to {MAX_ID_LENGTH} characters")

    def fail(message: str) -> ProtocolError:
        error = invalid(message)
        error.request_id = request_id
        return error

    if frame.get("type") != "req":
        raise fail('type must be "req"')
    method = frame.get("method")
    if not isinstance(method, str) or not method:
        raise fail("method must be a non-empty string")
    params = frame.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise fail("params must be an object")
    return Request(request_id, method, params)


@dataclass(frozen=True)
class ConnectParams:
    protocol: int
    client_id: str
    client_version: Optional[str]
    client_platform: Optional[str]
    secret: Optional[str]


def parse_connect(params: Mapping[str, Any]) -> ConnectParams:
    """Check ``connect`` params and negotiate the protocol version.

    Raises ``ProtocolError``: ``INVALID_REQUEST`` for malformed params, ``PROTOCOL_MISMATCH``
    when the client's range does not include ``PROTOCOL_VERSION``.
    """
    low, high = params.get("minProtocol"), params.get("maxProtocol")
    for name, value in (("minProtocol", low), ("maxProtocol", high)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"connect: {name} must be an integer")
    assert isinstance(low, int) and isinstance(high, int)  # checked just above
    if low > high:
        raise invalid("connect: minProtocol is greater than maxProtocol")
    if not low <= PROTOCOL_VERSION <= high:
        raise ProtocolError(ErrorCode.PROTOCOL_MISMATCH,
                            f"the gateway speaks protocol {PROTOCOL_VERSION}; the client "
                            f"asked for {low}..{high}")
    client = params.get("client")
    if not isinstance(client, dict):
        raise invalid("connect: client must be an object with an id")
    client_id = client.get("id")
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= MAX_CLIENT_FIELD_LENGTH:
        raise invalid(f"connect: client.id must be a string of 1 to "
                      f"{MAX_CLIENT_FIELD_LENGTH} characters")
    extra = {}
    for name in ("version", "platform"):
        value = client.get(name)
        if value is not None and (not isinstance(value, str)
                                  or len(value) > MAX_CLIENT_FIELD_LENGTH):
            raise invalid(f"connect: client.{name} must be a string of at most "
                          f"{MAX_CLIENT_FIELD_LENGTH} characters")
        extra[name] = value
    auth = params.get("auth")
    if auth is None:
        auth = {}
    if not isinstance(auth, dict):
        raise invalid('connect: auth must be {"token": ...} or {"password": ...}')
    secret = auth.get("token")
    if secret is None:
        secret = auth.get("password")
    if secret is not None and not isinstance(secret, str):
        raise invalid("connect: the token or password must be a string")
    return ConnectParams(PROTOCOL_VERSION, client_id, extra["version"], extra["platform"],
                         secret or None)


def encode_response(request_id: Optional[str], payload: Any) -> bytes:
    return compact_utf8({"type": "res", "id": request_id, "ok": True, "payload": payload})


def encode_error(request_id: Optional[str], error: ProtocolError) -> bytes:
    return compact_utf8({"type": "res", "id": request_id, "ok": False, "error": error.to_json()})


def encode_event(event: str, payload: Any, seq: int) -> bytes:
    return compact_utf8({"type": "event", "event": event, "payload": payload, "seq": seq})
