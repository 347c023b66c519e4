"""When the client owns a session's history (a chat UI that resends the whole conversation
every turn): line the stored branch up with the conversation the client sent, and say what
stays, what the client's version replaces, and which branch point to record.

Pure: chat messages in, an ``Alignment`` out. The runner applies it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..content import content_text


@dataclass(frozen=True)
class Alignment:
    """``keep`` stored messages stay (they matched the client's, with the stored tool
    records between them); ``drop`` stored messages after them leave the current branch;
    ``rest`` are the client's messages from the first divergence on."""

    keep: int
    drop: int
    rest: tuple[Mapping[str, Any], ...]


def _tool_call_ids(message: Mapping[str, Any]) -> tuple:
    return tuple(call.get("id") for call in message.get("tool_calls") or ()
                 if isinstance(call, Mapping))


def same_message(stored: Mapping[str, Any], sent: Mapping[str, Any]) -> bool:
    """Same role and text (and, for tool traffic, the same call ids): what a client that
    resends its conversation can be held to. Images and formatting are not compared."""
    if stored.get("role") != sent.get("role"):
        return False
    if content_text(stored.get("content")) != content_text(sent.get("content")):
        return False
    if stored.get("role") == "tool":
        return stored.get("tool_call_id") == sent.get("tool_call_id")
    if sent.get("tool_calls"):
        return _tool_call_ids(stored) == _tool_call_ids(sent)
    return True


def _client_never_saw(message: Mapping[str, Any]) -> bool:
    """Tool calls and results the client may not resend (a UI that shows only text)."""
    return message.get("role") == "tool" or bool(message.get("tool_calls"))


def align(stored: Sequence[Mapping[str, Any]],
          sent: Sequence[Mapping[str, Any]]) -> Alignment:
    """Walk the stored branch and the client's conversation together, in order. A stored
    tool call or result the client did not resend is kept in place when a matching message
    follows it; the first message that differs ends the match, and the client's version
    wins from there."""
    keep = i = j = 0
    while i < len(stored) and j < len(sent):
        if same_message(stored[i], sent[j]):
            i += 1
            j += 1
            keep = i
        elif _client_never_saw(stored[i]):
            i += 1        # kept only if a match follows
        else:
            break
    return Alignment(keep=keep, drop=len(stored) - keep, rest=tuple(sent[j:]))
