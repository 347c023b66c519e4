"""The gateway's own request headers on the OpenAI-shaped endpoints (agent, session key,
model override, and configured per-chat session headers) and how they name sessions."""
from __future__ import annotations

from typing import Optional

from ..names import AGENT_ID_HEADERS, MODEL_HEADERS, SESSION_KEY_HEADERS  # noqa: F401
from ..sessions.keys import resolve_session_key
from .errors import APIError


def header(request, names) -> Optional[str]:
    """The first non-blank value among header ``names``, decoded and trimmed."""
    for name in names:
        value = request.getHeader(name)
        if value is not None and value.strip():
            return value.decode("utf-8", "replace").strip()
    return None


def session_header_names(config) -> tuple[bytes, ...]:
    """``gateway.http.sessionHeaders`` as lower-case header names."""
    return tuple(name.lower().encode("ascii") for name in config.gateway.http.sessionHeaders)


def named_session(agent_id: str, rest: str, param: str) -> str:
    """``agent:<agentId>:<rest>``; a value that cannot name a session is a 400 on ``param``."""
    try:
        return resolve_session_key(agent_id, rest)
    except ValueError as e:  # too long, control characters: the client's mistake
        raise APIError(400, f"{param} cannot name a session: {e}", param=param,
                       code="invalid_value")
