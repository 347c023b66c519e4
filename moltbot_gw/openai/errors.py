"""OpenAI-shaped HTTP error bodies: ``{"error": {"message", "type", "param", "code"}}``.

Every HTTP error the gateway sends goes through here so clients see one shape; messages
are written for clients and never carry tracebacks or secrets.
"""
from __future__ import annotations

import json
from typing import Optional

from ..agents.failures import describe_failure

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    426: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}

# Which request header an invalid run request is about, by ``InvalidRunRequest.param``.
PARAM_HEADERS = {"model": "x-moltbot-model", "sessionKey": "x-moltbot-session-key"}


class APIError(Exception):
    """Raised by route code to answer with an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, type: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "api_error")
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None,
               code: Optional[str] = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param,
                                 "code": code}}).encode("utf-8")


def write_error(request, error: APIError) -> bytes:
    """Set status and headers for ``error`` on a twisted.web request; return the body."""
    note_refusal(request, error)
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    for name, value in error.headers.items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    return error.body()


def note_refusal(request, error: APIError) -> None:
    """Tell the access log why the request was refused: the error's ``code`` and ``param``,
    never its message (which may quote what the client sent)."""
    request.moltbot_error = (error.code, error.param)


def not_found(request) -> bytes:
    path = request.path.decode("utf-8", "replace")
    return write_error(request, APIError(404, f"no such endpoint: {path}", code="not_found"))


def method_not_allowed(request, valid_methods) -> bytes:
    allowed = ", ".join(sorted(valid_methods or []))
    method = request.method.decode("ascii", "replace")
    return write_error(request, APIError(405, f"method {method} is not allowed here",
                                         code="method_not_allowed",
                                         headers={"Allow": allowed}))


def api_error_for_run_failure(error: BaseException) -> APIError:
    """The OpenAI-shaped error of a failed run, provider call or refused run slot, as the
    failure table (``agents/failures.py``) describes it; only the shaping is HTTP's: a
    ``Retry-After`` header, the request header an invalid run request is about."""
    failure = describe_failure(error)
    kind = failure.kind
    headers: dict[str, str] = {}
    if failure.retry_after_seconds is not None:
        headers["Retry-After"] = str(failure.retry_after_seconds)
    return APIError(kind.http_status, failure.message, type=kind.openai_type,
                    code=kind.openai_code, param=PARAM_HEADERS.get(failure.param or ""),
                    headers=headers)
