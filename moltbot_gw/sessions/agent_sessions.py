"""One agent's sessions as the file store holds them in memory: its index entries, the
updates not yet journalled, its transcript tails, its group committer, and the lock that
keeps its disk work in call order (``store.py`` runs the operations).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredLock

from moltbot_gw.sessions.group_commit import GroupCommitter
from moltbot_gw.sessions.index import SessionEntry
from moltbot_gw.sessions.tail_cache import TailCache

TAIL_CACHE_BYTES = 32 * 1024 * 1024   # per agent: transcript tails kept for the next turn


class AgentSessions:
    """One agent's entries in memory, and the lock that orders its disk work."""

    def __init__(self, agent_id: str, sessions_dir: Path, commits: GroupCommitter):
        self.agent_id = agent_id
        self.sessions_dir = sessions_dir
        self.lock = DeferredLock()
        self.commits = commits   # transcript appends, fsynced in groups off the lock
        # Least recently updated first, so retention finds its victims at the front.
        self.entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self.loaded = False
        self.dirty: dict[str, SessionEntry] = {}   # updates not yet in the journal
        self.save_timer: Optional[Any] = None      # a delayed journal write, if pending
        self.journal_lines = 0
        self.tails = TailCache(TAIL_CACHE_BYTES)
        self.compaction: Optional[Deferred] = None  # a snapshot being written off the lock
