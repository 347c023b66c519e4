"""Which sessions retention removes (``session.maxSessionsPerAgent``, ``session.idleDays``) and
the offline ``moltbot-gw sessions prune`` that applies it to a state dir.

The choice is pure; removing files blocks and runs in a worker thread (the store) or in the
command. It does not decide when retention runs.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from moltbot_gw.config import AGENT_ID_RE, SessionConfig
from moltbot_gw.sessions.index import (
    SessionEntry,
    append_changes,
    del_op,
    read_index,
    rewrite_index,
)
from moltbot_gw.sessions.transcript import fsync_directory, transcript_path

DAY_MS = 24 * 60 * 60 * 1000


def idle_cutoff_ms(limits: SessionConfig, now_ms: int) -> Optional[int]:
    """Sessions last updated before this are idle past ``idleDays`` (None: never)."""
    if limits.idleDays is None:
        return None
    return now_ms - int(limits.idleDays * DAY_MS)


def take_pruned(entries: "OrderedDict[str, SessionEntry]", limits: SessionConfig,
                now_ms: int, keep: Optional[str] = None) -> list[SessionEntry]:
    """Remove from ``entries`` (least recently updated first) those retention drops, and
    return them: the idle ones, then the oldest beyond ``maxSessionsPerAgent``. ``keep`` (the
    session being used right now) is never taken. Costs O(removed)."""
    taken: list[SessionEntry] = []
    cutoff = idle_cutoff_ms(limits, now_ms)
    while entries:
        key, oldest = next(iter(entries.items()))
        over_limit = len(entries) > limits.maxSessionsPerAgent
        idle = cutoff is not None and oldest.updated_at < cutoff
        if not (over_limit or idle):
            break
        if key == keep:
            entries.move_to_end(key)
            if len(entries) == 1:
                break
            continue
        del entries[key]
        taken.append(oldest)
    return taken


def remove_transcripts(sessions_dir: Path, session_ids: list[str]) -> None:
    """Delete the pruned sessions' transcripts (pruning frees the disk; it archives nothing)."""
    for session_id in session_ids:
        try:
            os.unlink(transcript_path(sessions_dir, session_id))
        except FileNotFoundError:
            pass
    if session_ids:
        fsync_directory(Path(sessions_dir))


@dataclass(frozen=True)
class PruneReport:
    agent_id: str
    kept: int
    pruned: tuple[SessionEntry, ...]


def agent_ids_on_disk(state_dir: Path) -> list[str]:
    agents_dir = Path(state_dir) / "agents"
    try:
        names = os.listdir(agents_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names
                  if AGENT_ID_RE.fullmatch(name) and (agents_dir / name / "sessions").is_dir())


def prune_agent(state_dir: Path, agent_id: str, limits: SessionConfig, now_ms: int,
                dry_run: bool = False) -> PruneReport:
    """Apply retention to one agent's sessions on disk; the gateway must not be running on
    this state dir (its in-memory index would not see the change)."""
    sessions_dir = Path(state_dir) / "agents" / agent_id / "sessions"
    contents = read_index(sessions_dir, agent_id, now_ms)
    entries = contents.entries
    pruned = take_pruned(entries, limits, now_ms)
    if not dry_run and (pruned or contents.journal_lines):
        # The journal first: once the entries are gone, a crash leaves orphan files, never
        # an entry pointing at a removed transcript.
        append_changes(sessions_dir, [del_op(entry.key) for entry in pruned])
        remove_transcripts(sessions_dir, [entry.session_id for entry in pruned])
        rewrite_index(sessions_dir, entries.values())
    return PruneReport(agent_id=agent_id, kept=len(entries), pruned=tuple(pruned))
