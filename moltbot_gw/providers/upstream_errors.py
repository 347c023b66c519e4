"""Classifies what a failed upstream said into typed ``ProviderError``s: a non-2xx status and
its error body, or an in-band ``{"type", "message"}`` error object, with secrets redacted and
the text clipped. No I/O: ``upstream_client`` and the response sinks call these.
"""
from __future__ import annotations

import email.utils
import json
import re
from http import HTTPStatus
from typing import Iterable, Optional

from twisted.web.http_headers import Headers

from .errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)

MAX_ERROR_MESSAGE_CHARS = 500

# Things that look like credentials in an upstream's error text ("Incorrect API key: sk-...")
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}|\bBearer\s+\S+", re.IGNORECASE)

def redact(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """Remove our secrets (and anything shaped like an API key) from upstream-provided text."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def error_for_type(error_type: str, message: str, *, status: Optional[int] = None,
                   retry_after: Optional[float] = None,
                   default: type[ProviderError] = ProviderUnavailable) -> ProviderError:
    """Map an upstream's error ``type``/``code`` (OpenAI or Anthropic vocabulary) to our class."""
    kind = (error_type or "").lower()
    if kind in ("rate_limit_error", "rate_limit_exceeded", "insufficient_quota", "tokens"):
        cls: type[ProviderError] = ProviderRateLimited
    elif kind in ("invalid_request_error", "not_found_error", "request_too_large",
                  "context_length_exceeded", "invalid_request", "model_not_found"):
        cls = ProviderBadRequest
    elif kind in ("authentication_error", "permission_error", "invalid_api_key"):
        cls = ProviderAuthError
    elif kind in ("overloaded_error", "api_error", "server_error", "service_unavailable"):
        cls = ProviderUnavailable
    else:
        cls = default
    return cls(message, status=status, retry_after=retry_after)


def extract_error_message(body: bytes) -> tuple[Optional[str], Optional[str]]:
    """``(message, type)`` from an OpenAI ``{"error": {...}}`` or Anthropic
    ``{"type": "error", "error": {...}}`` body; ``(None, None)`` when it is neither."""
    try:
        payload = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    err = payload.get("error")
    if isinstance(err, dict):
        message = err.get("message")
        kind = err.get("type") or err.get("code")
        return (str(message) if message is not None else None,
                str(kind) if kind is not None else None)
    if isinstance(err, str):
        return err, None
    if isinstance(payload.get("message"), str):
        return payload["message"], None
    return None, None


def parse_retry_after(value: Optional[bytes], now: float) -> Optional[float]:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (counted from ``now``, the
    reactor's time); ``None`` if absent or bad."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def error_from_status(label: str, status: int, headers: Headers, body: bytes,
                      secrets: Iterable[Optional[str]] = (), *, now: float,
                      call: str = "") -> ProviderError:
    """The typed error for a non-2xx upstream answer; ``now`` (the reactor's time) dates an
    HTTP-date ``Retry-After``; ``call`` ("POST /v1/chat/completions", no host, no query) is
    what the gateway asked, named in 404 and 401/403 messages: those are its configuration's
    fault (a ``baseUrl`` path, a model, a key), not the client's."""
    call = redact(call, secrets)     # a path may carry a key (some gateways put one there)
    upstream_message, upstream_type = extract_error_message(body)
    if upstream_message is None:
        text = body.decode("utf-8", errors="replace").strip()
        # an HTML error page tells a client nothing useful
        upstream_message = "" if text.startswith("<") else text
    detail = clip_message(" ".join(redact(upstream_message, secrets).split()))
    message = f'provider "{label}" returned HTTP {status}' + (f": {detail}" if detail else "")
    answered = f'provider "{label}" answered {status} {_reason(status)}' + (
        f" for {call}" if call else "")
    if status in (401, 403):
        # none of the upstream's text: it may quote part of the key it refused, which the
        # redaction (whole secrets, "sk-..." shapes) would not recognise
        auth = ProviderAuthError(f"{answered}: it refused the gateway's credentials",
                                 status=status)
        auth.call = call or None
        return auth
    if status == 404:
        not_found = ProviderNotFound(answered + (f": {detail}" if detail else ""), status=status)
        not_found.call, not_found.detail = call or None, detail
        return not_found
    if status == 429:
        values = headers.getRawHeaders(b"retry-after")
        retry_after = parse_retry_after(values[0] if values else None, now)
        return ProviderRateLimited(message, status=status, retry_after=retry_after)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status in (400, 413, 422):
        if upstream_type:
            # a 400 that is really "context too long" or "rate limited" keeps its own type
            return error_for_type(upstream_type, message, status=status, default=ProviderBadRequest)
        return ProviderBadRequest(message, status=status)
    if 400 <= status < 500:
        return ProviderBadRequest(message, status=status)
    return ProviderUnavailable(message, status=status)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def clip_message(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters: an upstream may quote a whole request back."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def in_band_error(label: str, error: object, secrets: Iterable[Optional[str]] = (),
                  status: Optional[int] = None) -> ProviderError:
    """The typed error for an ``{"type", "message"}`` object an upstream sent inside a 2xx
    answer (an SSE error event, a JSON ``{"error": ...}``)."""
    if not isinstance(error, dict):
        error = {"message": str(error)}
    kind = str(error.get("type") or error.get("code") or "")
    detail = clip_message(" ".join(redact(str(error.get("message") or kind or "unknown error"),
                                          secrets).split()))
    return error_for_type(kind, f'provider "{label}" reported an error: {detail}', status=status)
