"""Session keys of the form ``agent:<agentId>:<rest>``: building, parsing and checking them.

Pure functions only; which agent a request may use is decided by the caller, not here.
"""
from __future__ import annotations

import re
import uuid
from typing import Optional

from moltbot_gw.config import AGENT_ID_RE

KEY_PREFIX = "agent:"
MAX_SESSION_KEY_LENGTH = 512


# C0 controls, DEL, C1 controls, and the format characters that rearrange or break what a
# log line shows: bidi marks, embeddings, overrides and isolates (U+202E turns text around),
# line and paragraph separators (U+2028/9), zero-width characters and the BOM.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                                "\u2060-\u2069\ufeff]")


def _has_control_character(text: str) -> bool:
    # keys end up in logs and on the wire
    return _CONTROL_CHARACTER.search(text) is not None


def _check_key_text(key: str) -> None:
    if not key:
        raise ValueError("session key is empty")
    if len(key) > MAX_SESSION_KEY_LENGTH:
        raise ValueError("session key is longer than %d characters" % MAX_SESSION_KEY_LENGTH)
    if _has_control_character(key):
        raise ValueError("session key contains a control character")


def check_agent_id(agent_id: str) -> None:
    """``ValueError`` unless ``agent_id`` is a valid agent id (the stores' listing uses it)."""
    if not isinstance(agent_id, str) or not AGENT_ID_RE.fullmatch(agent_id):
        raise ValueError("invalid agent id %r: expected [a-z0-9][a-z0-9_-]{0,63}" % (agent_id,))


def make_session_key(agent_id: str, rest: str) -> str:
    """Build ``agent:<agent_id>:<rest>``; raise ``ValueError`` if the result is not a valid key."""
    check_agent_id(agent_id)
    if not isinstance(rest, str) or not rest:
        raise ValueError("session key needs a non-empty part after the agent id")
    key = KEY_PREFIX + agent_id + ":" + rest
    _check_key_text(key)
    return key


def parse_session_key(key: str) -> tuple[str, str]:
    """Split a full session key into ``(agent_id, rest)``; ``ValueError`` if it is not one."""
    if not isinstance(key, str):
        raise ValueError("session key must be a string, not %s" % type(key).__name__)
    _check_key_text(key)
    if not key.startswith(KEY_PREFIX):
        raise ValueError("session key %r does not start with %r" % (key, KEY_PREFIX))
    agent_id, sep, rest = key[len(KEY_PREFIX):].partition(":")
    if not sep:
        raise ValueError("session key %r is not of the form agent:<agentId>:<rest>" % (key,))
    check_agent_id(agent_id)
    if not rest:
        raise ValueError("session key %r has nothing after the agent id" % (key,))
    return agent_id, rest


def resolve_session_key(agent_id: str, value: str) -> str:
    """Turn a client-supplied key (full, or a bare rest) into a full key for ``agent_id``.

    Surrounding whitespace is dropped (header values often carry it). A full key must name
    ``agent_id``; a bare rest gets the ``agent:<agent_id>:`` prefix.
    """
    check_agent_id(agent_id)
    if not isinstance(value, str):
        raise ValueError("session key must be a string, not %s" % type(value).__name__)
    value = value.strip()
    _check_key_text(value)
    if value.startswith(KEY_PREFIX):
        named_agent, _ = parse_session_key(value)
        if named_agent != agent_id:
            raise ValueError("session key names agent %r, not %r" % (named_agent, agent_id))
        return value
    return make_session_key(agent_id, value)


def openai_session_key(agent_id: str, user: Optional[str] = None) -> str:
    """The key for an OpenAI-compatible request: per ``user`` when given, else fresh each time."""
    if user:
        return make_session_key(agent_id, "openai-user:" + user)
    return make_session_key(agent_id, "openai:" + str(uuid.uuid4()))
