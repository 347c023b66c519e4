"""One agent's session index on disk: a ``sessions.json`` snapshot plus a ``sessions.journal``
of entry changes appended since, so creating a session writes one line, never the whole index.

Blocking functions, for a worker thread (or the offline ``sessions prune`` command); the
``SessionStore`` decides when they run. Nothing here knows about transcripts' contents.
"""
from __future__ import annotations

import io
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Optional, Sequence

from moltbot_gw.sessions.keys import parse_session_key
from moltbot_gw.sessions.transcript import append_records, fsync_directory, replace_atomically

SESSIONS_FILE_NAME = "sessions.json"
# Changes since the snapshot, one JSON object a line: {"op": "put", "key", "entry"} or
# {"op": "del", "key"}. Replaying a journal twice gives the same index, so a crash in the
# middle of a compaction loses nothing.
JOURNAL_FILE_NAME = "sessions.journal"
# The journal being folded into a new snapshot (renamed so new changes go to a fresh one).
COMPACTING_FILE_NAME = "sessions.journal.compacting"
# Session ids name files, so an entry read from disk must not smuggle a path in.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)  # one per session kept, all in memory
class SessionEntry:
    """One session of the index; times are epoch milliseconds."""

    key: str
    agent_id: str
    session_id: str
    created_at: int
    updated_at: int
    model: Optional[str] = None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "model": self.model,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.total_tokens,
        }

    @classmethod
    def from_json(cls, key: str, agent_id: str, data: Mapping[str, Any]) -> "SessionEntry":
        """Build an entry from its JSON form; ``ValueError`` if it is malformed."""
        key_agent, _ = parse_session_key(key)
        if key_agent != agent_id:
            raise ValueError("key belongs to agent %r" % (key_agent,))
        if not isinstance(data, Mapping):
            raise ValueError("entry is not an object")
        session_id = data.get("sessionId")
        if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
            raise ValueError("bad sessionId %r" % (session_id,))
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError("bad model %r" % (model,))

        def whole_number(name: str) -> int:
            value = data.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("bad %s %r" % (name, value))
            return value

        created_at = whole_number("createdAt")
        return cls(key=key, agent_id=agent_id, session_id=session_id,
                   created_at=created_at,
                   updated_at=whole_number("updatedAt") or created_at,
                   model=model,
                   input_tokens=whole_number("inputTokens"),
                   output_tokens=whole_number("outputTokens"),
                   total_tokens=whole_number("totalTokens"))


def usage_token_counts(usage: Any) -> tuple[int, int, Optional[int]]:
    """``(input, output, total-or-None)`` from a usage mapping or object, in either naming."""
    if usage is None:
        return 0, 0, None

    def lookup(*names: str) -> Optional[int]:
        for name in names:
            value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    input_tokens = lookup("input_tokens", "inputTokens", "prompt_tokens") or 0
    output_tokens = lookup("output_tokens", "outputTokens", "completion_tokens") or 0
    return input_tokens, output_tokens, lookup("total_tokens", "totalTokens")


def put_op(entry: SessionEntry) -> dict[str, Any]:
    return {"op": "put", "key": entry.key, "entry": entry.to_json()}


def del_op(key: str) -> dict[str, Any]:
    return {"op": "del", "key": key}


@dataclass
class IndexContents:
    """What the files held: entries least recently updated first, and what went wrong."""

    entries: "OrderedDict[str, SessionEntry]"
    journal_lines: int = 0
    compaction_pending: bool = False     # a compacting journal was left by a crash
    moved_aside_to: Optional[Path] = None
    problems: list[str] = field(default_factory=list)


def read_index(sessions_dir: Path, agent_id: str, now_ms: int) -> IndexContents:
    """Snapshot, then the compacting journal (if a compaction was cut short), then the
    journal. A corrupt snapshot is renamed aside; unreadable entries and journal lines are
    skipped and reported in ``problems``."""
    sessions_dir = Path(sessions_dir)
    contents = IndexContents(entries=OrderedDict())
    found: dict[str, SessionEntry] = {}
    snapshot = sessions_dir / SESSIONS_FILE_NAME
    document = _read_snapshot(snapshot, now_ms, contents)
    for key, data in document.items():
        try:
            found[key] = SessionEntry.from_json(key, agent_id, data)
        except ValueError as error:
            contents.problems.append("entry %s: %s" % (key, error))
    compacting = sessions_dir / COMPACTING_FILE_NAME
    contents.compaction_pending = compacting.exists()
    for journal in (compacting, sessions_dir / JOURNAL_FILE_NAME):
        contents.journal_lines += _replay_journal(journal, agent_id, found, contents.problems)
    for entry in sorted(found.values(), key=lambda each: (each.updated_at, each.key)):
        contents.entries[entry.key] = entry
    return contents


def _read_snapshot(path: Path, now_ms: int, contents: IndexContents) -> Mapping[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        document = json.loads(raw.decode("utf-8"))
        if not isinstance(document, dict):
            raise ValueError("top level is %s, not an object" % type(document).__name__)
        return document
    except ValueError as error:  # includes JSONDecodeError and UnicodeDecodeError
        aside = path.with_name("%s.corrupt-%d" % (path.name, now_ms))
        os.replace(path, aside)
        fsync_directory(path.parent)
        contents.moved_aside_to = aside
        contents.problems.append("%s is corrupt (%s); moved it to %s" % (path, error, aside))
        return {}


def _replay_journal(path: Path, agent_id: str, entries: dict[str, SessionEntry],
                    problems: list[str]) -> int:
    try:
        journal = open(path, "rb")
    except FileNotFoundError:
        return 0
    lines = 0
    with journal:
        for raw in journal:
            lines += 1
            if not raw.strip():
                continue
            try:
                change = json.loads(raw.decode("utf-8"))
                key = change["key"]
                if change["op"] == "put":
                    entries[key] = SessionEntry.from_json(key, agent_id, change["entry"])
                elif change["op"] == "del":
                    entries.pop(key, None)
                else:
                    raise ValueError("unknown op")
            except (ValueError, KeyError, TypeError) as error:
                # A torn last line (a crash mid-append) lands here too: that change was
                # never acknowledged.
                problems.append("%s line %d skipped: %s" % (path.name, lines, error))
    return lines


def append_changes(sessions_dir: Path, changes: Sequence[Mapping[str, Any]]) -> None:
    """Append changes to the journal in one write and fsync them."""
    if changes:
        append_records(Path(sessions_dir) / JOURNAL_FILE_NAME, changes)


def begin_compaction(sessions_dir: Path) -> bool:
    """Set the journal aside for folding; False if there is nothing to fold."""
    sessions_dir = Path(sessions_dir)
    compacting = sessions_dir / COMPACTING_FILE_NAME
    if compacting.exists():
        return True   # an earlier compaction did not finish: fold it with this one
    try:
        os.replace(sessions_dir / JOURNAL_FILE_NAME, compacting)
    except FileNotFoundError:
        return False
    fsync_directory(sessions_dir)
    return True


def finish_compaction(sessions_dir: Path, entries: Iterable[SessionEntry]) -> None:
    """Write ``entries`` (which include every change of the compacting journal) as the new
    snapshot, then drop the compacting journal."""
    sessions_dir = Path(sessions_dir)
    write_snapshot(sessions_dir / SESSIONS_FILE_NAME, entries)
    try:
        os.unlink(sessions_dir / COMPACTING_FILE_NAME)
    except FileNotFoundError:
        pass
    fsync_directory(sessions_dir)


def write_snapshot(path: Path, entries: Iterable[SessionEntry]) -> None:
    """Replace ``path`` by the entries as one JSON object, so readers see the old or the new
    file, never a mix.

    One entry per line, written as it is encoded: building the whole file as one string
    would make each rewrite allocate (and the allocator keep) a buffer as large as the file.
    """
    def write(binary_file: BinaryIO) -> None:
        text_file = io.TextIOWrapper(binary_file, encoding="utf-8")
        separator = "{\n  "
        for entry in sorted(entries, key=lambda each: each.key):
            text_file.write(separator)
            text_file.write(json.dumps(entry.key, ensure_ascii=False))
            text_file.write(": ")
            text_file.write(json.dumps(entry.to_json(), sort_keys=True,
                                       ensure_ascii=False, separators=(", ", ": ")))
            separator = ",\n  "
        text_file.write("{}" if separator == "{\n  " else "\n}")
        text_file.write("\n")
        text_file.flush()
        text_file.detach()   # the binary file stays open for the sync

    replace_atomically(path, write)


def rewrite_index(sessions_dir: Path, entries: Iterable[SessionEntry]) -> None:
    """Fold everything into one snapshot and remove both journals (only with the index not
    in use elsewhere: the offline ``sessions prune``)."""
    sessions_dir = Path(sessions_dir)
    write_snapshot(sessions_dir / SESSIONS_FILE_NAME, entries)
    for name in (COMPACTING_FILE_NAME, JOURNAL_FILE_NAME):
        try:
            os.unlink(sessions_dir / name)
        except FileNotFoundError:
            pass
    fsync_directory(sessions_dir)


def load_index_document(sessions_dir: Path, agent_id: str) -> dict[str, dict[str, Any]]:
    """The index as ``sessions.json`` would show it if it were rewritten now (for tools and
    tests that inspect a state dir); never renames anything aside."""
    found: dict[str, SessionEntry] = {}
    sessions_dir = Path(sessions_dir)
    try:
        document = json.loads((sessions_dir / SESSIONS_FILE_NAME).read_text("utf-8"))
    except FileNotFoundError:
        document = {}
    for key, data in document.items():
        found[key] = SessionEntry.from_json(key, agent_id, data)
    for name in (COMPACTING_FILE_NAME, JOURNAL_FILE_NAME):
        _replay_journal(sessions_dir / name, agent_id, found, [])
    return {key: entry.to_json() for key, entry in found.items()}
