"""Append-only JSONL transcripts, one ``<sessionId>.jsonl`` file per session.

The file functions here block on disk I/O and must be called from a worker thread (the
``SessionStore`` does that and keeps writes ordered); ``history_messages`` is pure.

Records: a ``session`` header, ``message`` records (one per user, assistant or tool message)
and ``branch`` records ``{"type": "branch", "drop": D, "keep": K, "ts": ...}``. A branch
record says that the conversation continues from an earlier point (a chat UI's edit or
regenerate): the last ``D`` conversation messages before it (those ``branch_messages`` would
produce) are off the current branch; ``K`` messages were kept. Nothing is rewritten in place:
the dropped messages stay in the file. ``drop`` counts back from the marker, so history built
from a tail window of the file is still right; a ``drop`` reaching before the window drops
everything in the window before the marker. ``keep`` is informational.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional, Sequence

from twisted.logger import Logger

from ..content import content_text

log = Logger()

TRANSCRIPT_SUFFIX = ".jsonl"


@lru_cache(maxsize=4096)   # asked several times per turn; building a Path is not cheap
def transcript_path(sessions_dir: Path, session_id: str) -> Path:
    return Path(sessions_dir) / (session_id + TRANSCRIPT_SUFFIX)


def session_header(session_id: str, session_key: str, created_at_ms: int) -> dict[str, Any]:
    return {
        "type": "session",
        "sessionId": session_id,
        "sessionKey": session_key,
        "createdAt": created_at_ms,
    }


def encode_records(records: Iterable[Mapping[str, Any]]) -> bytes:
    """One compact JSON object per line, each line ending in ``\\n``."""
    lines = []
    for record in records:
        if not isinstance(record, Mapping):
            raise TypeError("transcript records must be mappings, not %s"
                            % type(record).__name__)
        lines.append(json.dumps(dict(record), separators=(",", ":"), ensure_ascii=False))
    # A lone surrogate (a model may stream a "\ud800" escape) can only stand inside a JSON
    # string here: backslashreplace writes it back as that escape, so the line still parses
    # to the same text, where strict UTF-8 would refuse the whole turn.
    return "".join(line + "\n" for line in lines).encode("utf-8", "backslashreplace")


def fsync_directory(directory: Path) -> None:
    """Make a created/renamed directory entry durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomically(path: Path, write: Callable[[BinaryIO], object],
                       mode: Optional[int] = None) -> None:
    """Replace ``path`` by what ``write`` puts in a temp file beside it (private, 0600,
    unless ``mode`` is given), synced before the rename and the rename synced after: a
    crash leaves the old file or the new, never a mix. Blocking."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp_file:
            write(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        if mode is not None:
            os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
    fsync_directory(path.parent)


def append_records(path: Path, records: Sequence[Mapping[str, Any]],
                   header: Optional[Mapping[str, Any]] = None, sync: bool = True) -> int:
    """Append ``records`` in one write, then flush and fsync; return the bytes written.
    Blocking. With ``sync`` false the caller fsyncs the file (and, if it was created, its
    directory) itself: group commit syncs many appends at once.

    ``header`` is written first when the file is new or empty. If the file does not end in a
    newline (a torn write before a crash), the new records start on a fresh line so the torn
    fragment stays a line of its own that readers skip.
    """
    return append_encoded(path, encode_records(records), header=header, sync=sync)


def append_encoded(path: Path, payload: bytes, header: Optional[Mapping[str, Any]] = None,
                   sync: bool = True) -> int:
    """``append_records`` of records already encoded by ``encode_records`` (a caller that
    needs their size first encodes them once)."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            if header is not None:
                payload = encode_records([header]) + payload
        elif os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload
        if not payload:
            return 0
        unwritten = memoryview(payload)
        while unwritten:   # O_APPEND: a short write's rest goes after it
            unwritten = unwritten[os.write(fd, unwritten):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if size == 0 and sync:
        fsync_directory(path.parent)
    return len(payload)


@dataclass(frozen=True)
class TranscriptContents:
    """What a transcript file held: the readable records and how many lines were skipped."""

    records: tuple[dict[str, Any], ...]
    skipped_lines: int = 0
    torn_last_line: bool = False
    size_bytes: int = 0       # of the lines read, readable or not


def _decode_line(raw: bytes) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class _ReadTally:
    """What reading a transcript found besides its records: unreadable lines, whether the
    last one was torn, bytes read."""

    def __init__(self) -> None:
        self.skipped = 0
        self.torn = False
        self.size = 0

    def contents(self, records: Iterable[dict[str, Any]]) -> TranscriptContents:
        return TranscriptContents(records=tuple(records), skipped_lines=self.skipped,
                                  torn_last_line=self.torn, size_bytes=self.size)


def _open_for_reading(path: Path) -> Optional[BinaryIO]:
    """The transcript file, or None when there is none: a missing file is an empty
    transcript (a session whose first turn has not been written yet)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def read_transcript(path: Path) -> TranscriptContents:
    """Read every record of a transcript, streaming line by line. Blocking.

    A missing file is an empty transcript. Unreadable lines are skipped with a warning; an
    unterminated, unparseable last line is the remains of a write cut short by a crash.
    """
    path = Path(path)
    transcript_file = _open_for_reading(path)
    if transcript_file is None:
        return TranscriptContents(records=())
    records: list[dict[str, Any]] = []
    tally = _ReadTally()
    with transcript_file:
        # Binary iteration splits on b"\n" only; str.splitlines would also split on U+2028,
        # which ensure_ascii=False leaves unescaped inside JSON strings.
        for line_number, raw in enumerate(transcript_file, start=1):
            tally.size += len(raw)
            terminated = raw.endswith(b"\n")
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            record = _decode_line(line)
            if record is not None:
                records.append(record)
                continue
            tally.skipped += 1
            if terminated:
                log.warn("skipped unreadable line {line_number} of transcript {path}",
                         line_number=line_number, path=str(path))
            else:
                tally.torn = True
                log.warn("ignored torn last line {line_number} of transcript {path}"
                         " ({length} bytes)", line_number=line_number, path=str(path),
                         length=len(raw))
    return tally.contents(records)


TAIL_BLOCK_BYTES = 64 * 1024


def read_transcript_tail(path: Path, enough: Callable[[dict[str, Any]], bool],
                         block_size: int = TAIL_BLOCK_BYTES) -> TranscriptContents:
    """Read a transcript backwards, a block at a time, until ``enough(record)`` (called with
    each readable record, newest first) says so; return those records in file order.
    Blocking.

    Turns older than what is needed are never read, however large they are. Lines are
    judged as ``read_transcript`` does: an unterminated, unparseable last line is torn.
    """
    transcript_file = _open_for_reading(path)
    if transcript_file is None:
        return TranscriptContents(records=())
    newest_first: list[dict[str, Any]] = []
    tally = _ReadTally()

    def take(raw: bytes, terminated: bool) -> bool:
        line = raw.rstrip(b"\r")
        if not line.strip():
            return False
        record = _decode_line(line)
        if record is None:
            tally.skipped += 1
            tally.torn = tally.torn or not terminated
            log.warn("skipped an unreadable line near the end of transcript {path}",
                     path=str(path))
            return False
        newest_first.append(record)
        return enough(record)

    with transcript_file:
        position = os.fstat(transcript_file.fileno()).st_size
        carry: list[bytes] = []   # pieces, newest first, of a line that starts further back
        at_end = True             # the next line handled is the file's last
        done = False
        while position > 0 and not done:
            step = min(block_size, position)
            position -= step
            transcript_file.seek(position)
            block = transcript_file.read(step)
            tally.size += len(block)
            pieces = block.split(b"\n")
            if len(pieces) == 1:
                carry.append(block)
                continue
            carry.reverse()
            lines = [pieces[-1] + b"".join(carry)] + pieces[-2:0:-1]
            carry = [pieces[0]]
            for raw in lines:
                done = take(raw, terminated=not at_end)
                at_end = False
                if done:
                    break
        if not done and position == 0 and carry:
            carry.reverse()
            take(b"".join(carry), terminated=not at_end)
    newest_first.reverse()
    return tally.contents(newest_first)


def compact_transcript(path: Path, header: Mapping[str, Any], keep_bytes: int,
                       now_ms: int) -> int:
    """Rewrite a transcript as its header, a ``compaction`` marker and its newest whole
    turns (records from a user message on) that fit in ``keep_bytes``; older turns are
    dropped, not archived. Atomic: a crash leaves the old file or the new. Blocking.
    Returns the bytes dropped."""
    path = Path(path)
    kept_bytes = 0

    def enough(record: Mapping[str, Any]) -> bool:
        nonlocal kept_bytes
        kept_bytes += len(encode_records([record]))
        return kept_bytes > keep_bytes

    tail = list(read_transcript_tail(path, enough).records)
    while tail and kept_bytes > keep_bytes:   # the record that crossed the budget goes
        kept_bytes -= len(encode_records([tail.pop(0)]))
    kept = [record for record in tail if record.get("type") not in ("session", "compaction")]
    while kept and not (kept[0].get("type") == "message" and kept[0].get("role") == "user"):
        kept.pop(0)   # never start with the answer to a question that was dropped
    old_size = os.stat(path).st_size
    marker = {"type": "compaction", "ts": now_ms, "reason": "maxTranscriptBytes"}
    payload = encode_records([header, marker, *kept])
    replace_atomically(path, lambda temp_file: temp_file.write(payload))
    return max(0, old_size - len(payload))


def _is_message(record: Mapping[str, Any], open_calls: set) -> bool:
    """Whether a record yields a conversation message (see ``_as_message``)."""
    if record.get("type") != "message":
        return False
    role = record.get("role")
    if role == "user":
        return True
    if role == "assistant":
        calls = record.get("tool_calls")
        return bool(isinstance(calls, list) and calls) or bool(content_text(
            record.get("content")))
    if role == "tool":
        return record.get("tool_call_id") in open_calls
    return False


def _call_ids(record: Mapping[str, Any]) -> list:
    calls = record.get("tool_calls")
    if record.get("role") != "assistant" or not isinstance(calls, list):
        return []
    return [call["id"] for call in calls
            if isinstance(call, Mapping) and isinstance(call.get("id"), str)]


def current_branch(records: Iterable[Mapping[str, Any]],
                   every_message: bool = False) -> list[Mapping[str, Any]]:
    """The message records of the current branch, oldest first, ``branch`` records applied.
    Records that yield no conversation message (empty replies of aborted turns, orphan tool
    results) are left out unless ``every_message`` (a transcript view for people)."""
    kept: list[tuple[Mapping[str, Any], bool]] = []   # (record, yields a message)
    open_calls: set = set()     # ids of kept tool calls still waiting for their result
    for record in records:
        kind = record.get("type")
        if kind == "message":
            role = record.get("role")
            # Every turn runs this over its whole history window: plain user messages and
            # text replies (nearly all records) take a short way with the same outcome.
            if role == "user":
                kept.append((record, True))
                continue
            if role == "assistant" and not record.get("tool_calls"):
                content = record.get("content")
                counted = bool(content if type(content) is str else content_text(content))
                if counted or every_message:
                    kept.append((record, counted))
                continue
            counted = _is_message(record, open_calls)
            if counted:
                if role == "tool":
                    open_calls.discard(record.get("tool_call_id"))
                open_calls.update(_call_ids(record))
            if counted or every_message:
                kept.append((record, counted))
        elif kind == "branch":
            drop = record.get("drop")
            if not isinstance(drop, int) or isinstance(drop, bool) or drop < 0:
                continue          # not a branch record this code can read: ignore it
            while drop and kept:
                gone, counted = kept.pop()
                if counted:
                    drop -= 1
                    open_calls.difference_update(_call_ids(gone))
                    if gone.get("role") == "tool":
                        open_calls.add(gone.get("tool_call_id"))
    return [record for record, _ in kept]


def _as_message(record: Mapping[str, Any]) -> dict[str, Any]:
    role = record.get("role")
    content = record.get("content")
    if type(content) is str:   # the common cases, as below
        if role == "user" or (role == "assistant" and not record.get("tool_calls")):
            return {"role": role, "content": content}
    if role == "user":
        if isinstance(content, list):
            content = [dict(part) if isinstance(part, Mapping) else part for part in content]
        elif not isinstance(content, str):
            content = content_text(content)
        return {"role": "user", "content": content}
    if role == "assistant":
        text = content_text(content)
        calls = record.get("tool_calls")
        if isinstance(calls, list) and calls:
            return {"role": "assistant", "content": text or None,
                    "tool_calls": [dict(call) for call in calls]}
        return {"role": "assistant", "content": text}
    return {"role": "tool", "tool_call_id": record.get("tool_call_id"),
            "content": content_text(content)}


def branch_messages(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The current branch as OpenAI-style chat messages, one per record of
    ``current_branch``, before unanswered tool calls are cleaned out. ``branch`` records
    count their ``drop`` in these messages."""
    return [_as_message(record) for record in current_branch(records)]


def history_messages(records: Iterable[Mapping[str, Any]],
                     answered_now: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Turn transcript records into OpenAI-style chat messages for the model.

    Only the current branch counts (see the module docstring). User turns always count.
    Assistant turns count with their text when it is non-empty;
    an aborted or failed turn thus contributes whatever partial text was streamed, and an
    empty assistant message (which some providers reject) is never sent. An assistant turn
    that called tools keeps its ``tool_calls`` only when every call's result follows, and a
    tool result is kept only after its call: providers reject anything else.
    ``answered_now`` are ids of calls whose results the new turn brings, so the last
    stored call is kept for them.
    """
    # records a cached tail served may know their messages already (tail_derivations.py)
    known = getattr(records, "known_messages", None)
    messages = known() if known is not None else None
    if messages is not None:
        return messages   # known only without tool traffic: nothing to clean
    # branch_messages' dicts are new: cleaned without the copy complete_tool_turns makes
    return _without_unanswered_calls(branch_messages(records), set(answered_now))


def complete_tool_turns(messages: Sequence[Mapping[str, Any]],
                        answered_now: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``messages`` without tool calls whose results are missing (and their partial
    results); ``answered_now`` are ids of calls the next message answers."""
    return _without_unanswered_calls([dict(m) for m in messages], set(answered_now))


def _without_unanswered_calls(messages: list[dict[str, Any]],
                              answered_now: set[str]) -> list[dict[str, Any]]:
    if not any(m["role"] == "tool" or m.get("tool_calls") is not None for m in messages):
        return messages   # no tool traffic: nothing to clean
    answered = {m["tool_call_id"] for m in messages if m["role"] == "tool"} | answered_now
    cleaned = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls is not None and not all(call.get("id") in answered for call in calls):
            # The tool turn was never completed: drop the calls and their partial results,
            # keeping any text the assistant said.
            answered -= {call.get("id") for call in calls}
            if not message["content"]:
                continue
            message = {"role": "assistant", "content": message["content"]}
        cleaned.append(message)
    return [m for m in cleaned if m["role"] != "tool" or m["tool_call_id"] in answered]
