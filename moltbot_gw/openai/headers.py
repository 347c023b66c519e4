"""The gateway's own request headers on the OpenAI-shaped endpoints (agent, session key,
model override, and configured per-chat session headers) and how they name sessions."""
from __future__ import annotations

from dataclasses import dataclass
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
                       code="invalid_value") from e


@dataclass(frozen=True)
class HeaderSession:
    """A session a request's headers chose."""

    key: str
    client_owns_history: bool   # a configured per-chat header: the client resends it all


def session_from_headers(request, agent_id: str,
                         session_headers: tuple[bytes, ...]) -> Optional[HeaderSession]:
    """The session the headers name, in the order every OpenAI-shaped endpoint follows:
    ``x-moltbot-session-key`` (resolved and checked by the runner), then the first configured
    session header present (e.g. Open WebUI's chat id: the UI resends, edits and branches the
    whole conversation, so the client owns the history); ``None`` when they name none."""
    explicit = header(request, SESSION_KEY_HEADERS)
    if explicit is not None:
        return HeaderSession(explicit, client_owns_history=False)
    for name in session_headers:
        value = header(request, (name,))
        if value is not None:
            return HeaderSession(named_session(agent_id, f"openai-chat:{value}", name.decode()),
                                 client_owns_history=True)
    return None


def user_session(agent_id: str, user: str) -> str:
    """The session of an OpenAI ``user`` (shared by chat completions and Responses)."""
    return named_session(agent_id, f"openai-user:{user}", "user")
