"""The session store: per agent, ``sessions.json`` (session key -> entry) plus JSONL transcripts.

Disk I/O runs in a thread pool, one agent's operations strictly in call order. It stores
sessions; it does not decide who may use them or run anything.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, TypeVar

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from moltbot_gw.config import AGENT_ID_RE
from moltbot_gw.sessions.keys import parse_session_key
from moltbot_gw.sessions.transcript import (
    append_records,
    fsync_directory,
    read_transcript,
    session_header,
    transcript_path,
)

T = TypeVar("T")

SESSIONS_FILE_NAME = "sessions.json"
PRIVATE_DIR_MODE = 0o700
HISTORY_CACHE_SESSIONS = 256   # per agent: transcripts kept in memory for the next turn ...
HISTORY_CACHE_BYTES = 32 * 1024 * 1024  # ... as long as their files add up to at most this
SAVE_DELAY_SECONDS = 1.0       # sessions.json updates of existing sessions are batched
# Session ids name files, so an entry read from disk must not smuggle a path in.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)  # one per session ever used, all kept in memory
class SessionEntry:
    """One session as recorded in ``sessions.json``; times are epoch milliseconds."""

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
        """Build an entry from its ``sessions.json`` form; ``ValueError`` if it is malformed."""
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


def _usage_token_counts(usage: Any) -> tuple[int, int, Optional[int]]:
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


def _make_private_dirs(base: Path, *parts: str) -> Path:
    """Ensure ``base/parts...`` exist; each directory created here gets mode 0700.

    (``os.makedirs`` applies its mode to the leaf only, and the umask may narrow it.)
    """
    if not base.is_dir():
        os.makedirs(base, PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(base, PRIVATE_DIR_MODE)
    path = base
    for part in parts:
        path = path / part
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(path, PRIVATE_DIR_MODE)
        fsync_directory(path.parent)
    return path


def _write_sessions_atomically(path: Path, entries: Sequence[SessionEntry]) -> None:
    """Replace ``path`` by the entries as one JSON object, so readers see the old or the new
    file, never a mix.

    One entry per line, written as it is encoded: the file grows with every session, and
    building it as one string would make each rewrite allocate (and the allocator keep) a
    buffer as large as the whole file.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp_file:
            separator = "{\n  "
            for entry in sorted(entries, key=lambda each: each.key):
                temp_file.write(separator)
                temp_file.write(json.dumps(entry.key, ensure_ascii=False))
                temp_file.write(": ")
                temp_file.write(json.dumps(entry.to_json(), sort_keys=True,
                                           ensure_ascii=False, separators=(", ", ": ")))
                separator = ",\n  "
            temp_file.write("{}" if separator == "{\n  " else "\n}")
            temp_file.write("\n")
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
    fsync_directory(path.parent)


@dataclass(frozen=True)
class _SessionsFileContents:
    document: Mapping[str, Any]
    moved_aside_to: Optional[Path] = None
    problem: Optional[str] = None


def _read_sessions_file(path: Path, now_ms: int) -> _SessionsFileContents:
    """Read ``sessions.json``; a corrupt file is renamed aside and reads as empty."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _SessionsFileContents(document={})
    try:
        document = json.loads(raw.decode("utf-8"))
        if not isinstance(document, dict):
            raise ValueError("top level is %s, not an object" % type(document).__name__)
        return _SessionsFileContents(document=document)
    except ValueError as error:  # includes JSONDecodeError and UnicodeDecodeError
        aside = path.with_name("%s.corrupt-%d" % (path.name, now_ms))
        os.replace(path, aside)
        fsync_directory(path.parent)
        return _SessionsFileContents(document={}, moved_aside_to=aside, problem=str(error))


def _list_agent_dirs(state_dir: Path) -> list[str]:
    agents_dir = Path(state_dir) / "agents"
    try:
        names = os.listdir(agents_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names
                  if AGENT_ID_RE.fullmatch(name)
                  and (agents_dir / name / "sessions" / SESSIONS_FILE_NAME).is_file())


def _rename_if_present(source: Path, target: Path) -> bool:
    try:
        os.replace(source, target)
    except FileNotFoundError:
        return False
    fsync_directory(source.parent)
    return True


class _HistoryCache:
    """Transcript records of recently used sessions, so a turn does not re-read its whole
    transcript from disk; the file stays the truth.

    Bounded in sessions and in transcript bytes (long conversations are large), least
    recently used out first; a transcript larger than the whole budget is not kept.
    """

    def __init__(self, max_sessions: int, max_bytes: int):
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> Optional[list[dict[str, Any]]]:
        """The session's records (most recently used now), or None."""
        cached = self._entries.get(session_id)
        if cached is None:
            return None
        self._entries.move_to_end(session_id)
        return cached[0]

    def put(self, session_id: str, records: list[dict[str, Any]], size: int) -> None:
        self.pop(session_id)
        if size > self.max_bytes:
            return
        self._entries[session_id] = (records, size)
        self.bytes += size
        while len(self._entries) > self.max_sessions or self.bytes > self.max_bytes:
            _, (_, evicted_size) = self._entries.popitem(last=False)
            self.bytes -= evicted_size

    def extend(self, session_id: str, records: list[dict[str, Any]], size: int) -> None:
        """Add a turn to a cached session (nothing if it is not cached)."""
        cached = self._entries.get(session_id)
        if cached is not None:
            cached[0].extend(records)
            self.put(session_id, cached[0], cached[1] + size)

    def pop(self, session_id: str) -> None:
        cached = self._entries.pop(session_id, None)
        if cached is not None:
            self.bytes -= cached[1]


class _AgentSessions:
    """One agent's entries in memory, and the lock that orders its disk work."""

    def __init__(self, agent_id: str, sessions_dir: Path):
        self.agent_id = agent_id
        self.sessions_dir = sessions_dir
        self.sessions_file = sessions_dir / SESSIONS_FILE_NAME
        self.lock = DeferredLock()
        self.entries: dict[str, SessionEntry] = {}
        self.loaded = False
        self.history = _HistoryCache(HISTORY_CACHE_SESSIONS, HISTORY_CACHE_BYTES)
        self.save_timer: Optional[Any] = None  # a delayed sessions.json rewrite, if pending


def _uncancellable(work: Deferred) -> Deferred:
    """A Deferred for ``work`` whose cancellation stops only the waiting, never the work.

    Disk work that has started must finish under its agent's lock, or the next write could
    overtake it.
    """
    result: Deferred = Deferred()

    def deliver(outcome: Any) -> None:
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
        elif isinstance(outcome, Failure):
            _log_abandoned_failure(outcome)

    work.addBoth(deliver)
    return result


def _log_abandoned_failure(failure: Failure) -> None:
    SessionStore.log.failure("session store work failed after its caller stopped waiting",
                             failure=failure)


class SessionStore:
    """Sessions of all agents under ``<state_dir>/agents/<agentId>/sessions/``.

    Every public method returns a Deferred. Operations on one agent run one at a time in call
    order (so turns land in the transcript in the order they were recorded); different agents
    proceed in parallel on the thread pool.
    """

    log = Logger()

    def __init__(self, state_dir: Path, reactor: Any = None, threadpool: Any = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.state_dir = Path(state_dir)
        self._reactor = reactor
        self._threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._agents: dict[str, _AgentSessions] = {}

    # --- public API ----------------------------------------------------------------------

    def get_or_create(self, session_key: str) -> Deferred:
        """Fire with the key's ``SessionEntry``, creating (and persisting) it if absent."""
        return self._locked_for_key(session_key, self._get_or_create)

    def get(self, session_key: str) -> Deferred:
        """Fire with the key's ``SessionEntry``, or ``None``."""
        return self._locked_for_key(session_key, self._get)

    def load_history(self, session_key: str) -> Deferred:
        """Fire with the transcript records of the key's current session (``[]`` if none)."""
        return self._locked_for_key(session_key, self._load_history)

    def record_turn(self, session_key: str, records: Sequence[Mapping[str, Any]],
                    model: Optional[str] = None, usage: Any = None) -> Deferred:
        """Append one turn's records durably, then update the entry; fire with the entry.

        ``usage`` is a mapping or object with ``input_tokens``/``output_tokens`` (or the
        ``prompt_tokens``/``completion_tokens`` or camelCase spellings); it adds to the totals.
        """
        if not all(isinstance(record, Mapping) for record in records):
            return fail(TypeError("transcript records must be mappings"))
        # Copied now: the caller may reuse its dicts while the turn waits for the lock.
        records = [dict(record) for record in records]
        return self._locked_for_key(session_key, self._record_turn, records, model, usage)

    def reset(self, session_key: str) -> Deferred:
        """Start a new session id for the key, keeping the old transcript; fire with existed."""
        return self._locked_for_key(session_key, self._reset)

    def delete(self, session_key: str) -> Deferred:
        """Remove the key's entry and set its transcript aside; fire with whether it existed."""
        return self._locked_for_key(session_key, self._delete)

    def list_sessions(self, agent_id: Optional[str] = None) -> Deferred:
        """Fire with the entries of one agent (or of all), most recently updated first."""
        return _uncancellable(Deferred.fromCoroutine(self._list_sessions(agent_id)))

    # --- plumbing ------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def _in_thread(self, function: Callable[..., T], *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, function, *args)

    def _agent(self, agent_id: str) -> _AgentSessions:
        agent = self._agents.get(agent_id)
        if agent is None:
            sessions_dir = self.state_dir / "agents" / agent_id / "sessions"
            agent = self._agents[agent_id] = _AgentSessions(agent_id, sessions_dir)
        return agent

    def _locked_for_key(self, session_key: str,
                        operation: Callable[..., Awaitable[T]], *args: Any) -> Deferred:
        async def run() -> T:
            agent_id, _ = parse_session_key(session_key)
            agent = self._agent(agent_id)
            async with agent.lock:
                await self._ensure_loaded(agent)
                return await operation(agent, session_key, *args)

        return _uncancellable(Deferred.fromCoroutine(run()))

    async def _ensure_loaded(self, agent: _AgentSessions) -> None:
        if agent.loaded:
            return
        contents = await self._in_thread(_read_sessions_file, agent.sessions_file,
                                         self._now_ms())
        if contents.moved_aside_to is not None:
            self.log.warn("sessions file {path} of agent {agent_id} is corrupt ({problem});"
                          " moved it to {aside} and started empty",
                          path=str(agent.sessions_file), agent_id=agent.agent_id,
                          problem=contents.problem, aside=str(contents.moved_aside_to))
        entries = {}
        for key, data in contents.document.items():
            try:
                key_agent, _ = parse_session_key(key)
                if key_agent != agent.agent_id:
                    raise ValueError("key belongs to agent %r" % (key_agent,))
                if not isinstance(data, Mapping):
                    raise ValueError("entry is not an object")
                entries[key] = SessionEntry.from_json(key, agent.agent_id, data)
            except ValueError as error:
                self.log.warn("dropped unreadable entry {session_key} from {path}: {problem}",
                              session_key=key, path=str(agent.sessions_file),
                              problem=str(error))
        agent.entries = entries
        agent.loaded = True

    def _schedule_save(self, agent: _AgentSessions) -> None:
        if agent.save_timer is None:
            agent.save_timer = self._reactor.callLater(SAVE_DELAY_SECONDS, self._delayed_save,
                                                       agent)

    def _delayed_save(self, agent: _AgentSessions) -> Deferred:
        agent.save_timer = None

        async def save() -> None:
            async with agent.lock:
                await self._save(agent)

        return _uncancellable(Deferred.fromCoroutine(save()))

    def flush(self) -> Deferred:
        """Write every delayed sessions.json update now (on shutdown); fires when written."""
        pending = []
        for agent in self._agents.values():
            if agent.save_timer is not None:
                agent.save_timer.cancel()
                pending.append(self._delayed_save(agent))
        return DeferredList(pending, consumeErrors=True)

    async def _save(self, agent: _AgentSessions) -> None:
        if agent.save_timer is not None:  # this write covers the delayed one too
            agent.save_timer.cancel()
            agent.save_timer = None
        # Entries are immutable, so the thread can encode this snapshot while turns go on.
        entries = tuple(agent.entries.values())
        await self._in_thread(self._write_sessions_file, agent.sessions_dir, entries)

    def _write_sessions_file(self, sessions_dir: Path, entries: Sequence[SessionEntry]) -> None:
        relative = sessions_dir.relative_to(self.state_dir)
        _make_private_dirs(self.state_dir, *relative.parts)
        _write_sessions_atomically(sessions_dir / SESSIONS_FILE_NAME, entries)

    def _new_entry(self, agent: _AgentSessions, session_key: str) -> SessionEntry:
        now = self._now_ms()
        return SessionEntry(key=session_key, agent_id=agent.agent_id,
                            session_id=uuid.uuid4().hex, created_at=now, updated_at=now)

    # --- operations, each run under its agent's lock -------------------------------------

    async def _get(self, agent: _AgentSessions, session_key: str) -> Optional[SessionEntry]:
        return agent.entries.get(session_key)

    async def _get_or_create(self, agent: _AgentSessions, session_key: str) -> SessionEntry:
        entry = agent.entries.get(session_key)
        if entry is None:
            entry = agent.entries[session_key] = self._new_entry(agent, session_key)
            await self._save(agent)
            self.log.info("created session {session_id} for {session_key}",
                          session_id=entry.session_id, session_key=session_key)
        return entry

    async def _load_history(self, agent: _AgentSessions,
                            session_key: str) -> list[dict[str, Any]]:
        entry = agent.entries.get(session_key)
        if entry is None:
            return []
        cached = agent.history.get(entry.session_id)
        if cached is None:
            contents = await self._in_thread(
                read_transcript, transcript_path(agent.sessions_dir, entry.session_id))
            cached = list(contents.records)
            agent.history.put(entry.session_id, cached, contents.size_bytes)
        return list(cached)

    async def _record_turn(self, agent: _AgentSessions, session_key: str,
                           records: list[dict[str, Any]], model: Optional[str],
                           usage: Any) -> SessionEntry:
        entry = agent.entries.get(session_key)
        is_new = entry is None
        if entry is None:
            entry = self._new_entry(agent, session_key)
        if records:
            header = session_header(entry.session_id, session_key, entry.created_at)
            written = await self._in_thread(self._append_transcript, agent.sessions_dir,
                                            entry.session_id, records, header)
            if is_new:
                agent.history.put(entry.session_id, [header, *records], written)
            else:
                agent.history.extend(entry.session_id, records, written)
        input_tokens, output_tokens, total_tokens = _usage_token_counts(usage)
        if total_tokens is None:
            total_tokens = input_tokens + output_tokens
        entry = replace(entry,
                        updated_at=max(self._now_ms(), entry.updated_at),
                        model=model if model is not None else entry.model,
                        input_tokens=entry.input_tokens + input_tokens,
                        output_tokens=entry.output_tokens + output_tokens,
                        total_tokens=entry.total_tokens + total_tokens)
        agent.entries[session_key] = entry
        if is_new:
            # The key -> session id mapping must be on disk before the turn counts as stored.
            await self._save(agent)
        else:
            # Only timestamps and token totals changed; the transcript (already synced) holds
            # the turn. Many turns share one rewrite of sessions.json.
            self._schedule_save(agent)
        if is_new:
            self.log.info("created session {session_id} for {session_key}",
                          session_id=entry.session_id, session_key=session_key)
        return entry

    def _append_transcript(self, sessions_dir: Path, session_id: str,
                           records: list[dict[str, Any]], header: Mapping[str, Any]) -> int:
        relative = sessions_dir.relative_to(self.state_dir)
        _make_private_dirs(self.state_dir, *relative.parts)
        return append_records(transcript_path(sessions_dir, session_id), records, header=header)

    async def _reset(self, agent: _AgentSessions, session_key: str) -> bool:
        old = agent.entries.get(session_key)
        if old is None:
            return False
        agent.entries[session_key] = new = self._new_entry(agent, session_key)
        await self._save(agent)
        self.log.info("reset {session_key}: session {old_session_id} -> {session_id}",
                      session_key=session_key, old_session_id=old.session_id,
                      session_id=new.session_id)
        return True

    async def _delete(self, agent: _AgentSessions, session_key: str) -> bool:
        entry = agent.entries.pop(session_key, None)
        if entry is None:
            return False
        agent.history.pop(entry.session_id)
        # The entry goes first: a crash in between leaves an orphan transcript, not an entry
        # pointing at a missing file.
        await self._save(agent)
        source = transcript_path(agent.sessions_dir, entry.session_id)
        target = source.with_name("%s.deleted-%d" % (source.name, self._now_ms()))
        await self._in_thread(_rename_if_present, source, target)
        self.log.info("deleted {session_key} (session {session_id})",
                      session_key=session_key, session_id=entry.session_id)
        return True

    async def _list_sessions(self, agent_id: Optional[str]) -> list[SessionEntry]:
        if agent_id is not None:
            if not isinstance(agent_id, str) or not AGENT_ID_RE.fullmatch(agent_id):
                raise ValueError("invalid agent id %r" % (agent_id,))
            agent_ids = [agent_id]
        else:
            on_disk = await self._in_thread(_list_agent_dirs, self.state_dir)
            agent_ids = sorted(set(on_disk) | set(self._agents))
        entries: list[SessionEntry] = []
        for each_agent_id in agent_ids:
            agent = self._agent(each_agent_id)
            async with agent.lock:
                await self._ensure_loaded(agent)
                entries.extend(agent.entries.values())
        entries.sort(key=lambda entry: (-entry.updated_at, entry.key))
        return entries
