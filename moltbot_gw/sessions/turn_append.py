"""Writing one turn to its transcript file, unsynced, in a worker thread: the blocking half of
``SessionStore.record_turn`` (``group_commit.py`` fsyncs it), compacting the file first when
the turn would take it past ``session.maxTranscriptBytes``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from moltbot_gw.sessions.transcript import (
    append_encoded,
    compact_transcript,
    encode_records,
    transcript_path,
)
from moltbot_gw.state_dir import make_private_dirs

# A transcript past session.maxTranscriptBytes keeps its newest turns up to this share of it.
COMPACTED_SHARE = 4


def append_turn(state_dir: Path, sessions_dir: Path, session_id: str,
                records: list[dict[str, Any]], header: Mapping[str, Any], max_bytes: int,
                now_ms: int) -> tuple[int, Optional[int]]:
    """Append a turn unsynced; first compact the transcript if the turn would take it past
    ``max_bytes``. Returns the bytes written and those compaction dropped (or None).

    Runs once per stored turn: the records are encoded once, and the directories are made
    only for a new transcript (an existing file's directories exist)."""
    path = transcript_path(sessions_dir, session_id)
    payload = encode_records(records)
    dropped = None
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        size = 0
        make_private_dirs(state_dir, *sessions_dir.relative_to(state_dir).parts)
    if size and size + len(payload) > max_bytes:
        dropped = compact_transcript(path, header, max_bytes // COMPACTED_SHARE, now_ms)
    written = append_encoded(path, payload, header=header, sync=False)
    return written, dropped
