"""The access log: one structured ``twisted.logger`` event per HTTP request (request id,
method, route, path, agent, status, duration, tokens and who counted them; for a refused
request the error's code and param), plus the request ids themselves and the bounded route
names that logs and metrics share. Never logs headers, bodies, queries or error messages.
"""
from __future__ import annotations

import contextvars
import os
import re
from typing import Optional

from twisted.logger import Logger

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")

# The HTTP request whose handler is running (set by the site around rendering; Twisted
# carries it into the handler's coroutine), so the runtime's observers can tell the access
# log which agent a request ran and what it cost without the routes passing it along.
current_request: contextvars.ContextVar = contextvars.ContextVar("moltbot_request",
                                                                  default=None)

ROUTES = {
    b"/": "/",
    b"/health": "/health",
    b"/metrics": "/metrics",
    b"/v1/chat/completions": "/v1/chat/completions",
    b"/v1/completions": "/v1/completions",
    b"/v1/models": "/v1/models",
    b"/v1/responses": "/v1/responses",
    b"/v1/embeddings": "/v1/embeddings",
}
MAX_LOGGED_PATH = 200
MAX_LOGGED_PARAM = 100

log = Logger(namespace="moltbot_gw.access")


def route_of(path: bytes) -> str:
    """The route label of a request path: one of ``ROUTES``, ``/v1/models/{id}`` or
    ``other`` — never the raw path, so metrics stay bounded whatever clients send."""
    route = ROUTES.get(path)
    if route is not None:
        return route
    if path.startswith(b"/v1/models/"):
        return "/v1/models/{id}"
    return "other"


# Characters that would let a client forge or hide parts of a log line: C0 and C1 controls
# (a newline starts a fake line), and bidi / line-separator format characters.
_UNLOGGABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                         "\u2060-\u2069\ufeff]")


def escape_for_log(text: str) -> str:
    """``text`` with every unloggable character written as a ``\\xNN`` / ``\\uNNNN`` escape."""
    return _UNLOGGABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def request_id_for(presented: Optional[bytes]) -> bytes:
    """The client's ``x-request-id`` when it is sane (1-64 of ``[A-Za-z0-9._-]``), else a
    fresh random one (16 hex digits)."""
    if presented is not None and _SANE_REQUEST_ID.fullmatch(presented):
        return presented
    return os.urandom(8).hex().encode("ascii")


def log_request(request, status: int, seconds: float) -> None:
    """Emit the access-log event of a finished (or abandoned) request."""
    path = escape_for_log(request.path.decode("latin-1"))
    if len(path) > MAX_LOGGED_PATH:
        path = path[:MAX_LOGGED_PATH] + "…"
    agent = getattr(request, "moltbot_agent", None)
    tokens = getattr(request, "moltbot_tokens", None)
    tokens_in, tokens_out, tokens_source = tokens if tokens is not None else (None, None, None)
    peer = request.getClientAddress()
    request_id = request.request_id.decode("ascii")
    method = request.method.decode("latin-1")
    duration_ms = round(seconds * 1000, 1)
    # Why it was refused (set by openai.errors.write_error): code and param, never a message.
    error_code, error_param = getattr(request, "moltbot_error", None) or (None, None)
    if isinstance(error_param, str) and len(error_param) > MAX_LOGGED_PARAM:
        error_param = error_param[:MAX_LOGGED_PARAM] + "…"
    # The line is written out here, once, rather than as a template the log observers
    # fill in field by field (string.Formatter is the slowest part of logging an event);
    # the fields stay in the event for structured (JSON) logs.
    line = f"{request_id} {method} {path} {status} {duration_ms}ms"
    if tokens is not None:
        # counts the gateway made itself (the provider sent none) say so in the line too
        line += f" agent={agent} tokens={tokens_in}/{tokens_out}"
        if tokens_source == "estimated":
            line += " (estimated)"
    elif agent is not None:
        line += f" agent={agent}"
    if error_code is not None or error_param is not None:
        line += f" error={error_code} param={error_param}"
    log.info(line.replace("{", "{{").replace("}", "}}"), request_id=request_id,
             method=method, path=path, route=route_of(request.path),
             status=status, duration_ms=duration_ms, agent=agent,
             tokens_in=tokens_in, tokens_out=tokens_out, tokens_source=tokens_source,
             error_code=error_code,
             error_param=error_param, client=getattr(peer, "host", None), access=True)
