"""The Redis session store: the same public API as the file store (``ISessionStore``), shared
by every gateway process that uses the same Redis and key prefix.

Per agent, a hash ``<prefix>sessions:<agentId>`` (session key -> entry JSON, one field written
per change) and a sorted set ``<prefix>sessions-by-time:<agentId>`` (key by updatedAt, for
retention); the agents that have sessions in the set ``<prefix>agents``; each transcript a
Stream ``<prefix>transcript:<sessionId>``, one entry per record (field ``r``: the record's JSON,
as one JSONL line of the file store, header first). Every change is one Lua script
(``redis_scripts.py``); every command goes through ``RedisLink`` and is bounded in time.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Mapping, Optional, Sequence

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from moltbot_gw.config import AGENT_ID_RE, SessionConfig
from moltbot_gw.redis.connection import RedisLink
from moltbot_gw.sessions import redis_scripts as scripts
from moltbot_gw.sessions.index import SessionEntry, usage_token_counts
from moltbot_gw.sessions.interface import ISessionStore
from moltbot_gw.sessions.keys import check_agent_id, parse_session_key
from moltbot_gw.sessions.lease import LeaseLost, SessionLease
from moltbot_gw.sessions.redis_tail import StreamTail, StreamTails, stream_id_order
from moltbot_gw.sessions.retention import idle_cutoff_ms
from moltbot_gw.sessions.transcript import encode_records

HISTORY_PAGE = 64      # stream entries read per XREVRANGE while reading history from the tail
TAIL_CACHE_BYTES = 32 * 1024 * 1024   # transcript tails kept for the next turn (redis_tail.py)
# A transcript past session.maxTranscriptBytes keeps its newest turns up to this share of it
# (as in the file store).
COMPACTED_SHARE = 4
# A deleted session's transcript is renamed to <prefix>deleted:transcript:<id>:<ms> and kept
# this long (the file store renames it to <id>.jsonl.deleted-<ms>; memory is dearer than disk).
DELETED_TRANSCRIPT_SECONDS = 30 * 24 * 3600


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record as its JSONL line without the newline (the stream entry's ``r`` field)."""
    return encode_records([record])[:-1]


def decode_record(raw: Any) -> Optional[dict[str, Any]]:
    """A stream entry's record, or None when it is not a JSON object (as the file store
    skips an unreadable line)."""
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def stream_record(item: Sequence[Any]) -> Optional[dict[str, Any]]:
    """The record of one ``XRANGE``/``XREVRANGE`` item ``[id, [field, value, ...]]``."""
    raw = stream_raw(item)
    return None if raw is None else decode_record(raw)


def sized_record(item: Sequence[Any]) -> tuple[Optional[dict[str, Any]], int]:
    """The record of one stream item and the bytes of its JSON line."""
    raw = stream_raw(item)
    return (None, 0) if raw is None else (decode_record(raw), len(raw) + 1)


def stream_raw(item: Sequence[Any]) -> Optional[str]:
    """The ``r`` field of one ``XRANGE``/``XREVRANGE`` item ``[id, [field, value, ...]]``."""
    fields = item[1] if len(item) > 1 and isinstance(item[1], list) else []
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == "r":
            return fields[i + 1]
    return None


def _extend(tail: StreamTail, items: Sequence[Any]) -> None:
    """Add the entries appended after ``tail`` (``XRANGE`` items, oldest first) to it."""
    entries = []
    for item in items:
        record, line_bytes = sized_record(item)
        if record is not None:
            entries.append((item[0], record, line_bytes))
    tail.extend(entries)
    if items:   # unreadable entries at the end are not read again
        tail.newest_id = max(tail.newest_id, items[-1][0], key=stream_id_order)


def _read_everything(record: Mapping[str, Any]) -> bool:
    return False


@implementer(ISessionStore)
class RedisSessionStore:
    """Sessions of all agents in Redis. Every public method returns a Deferred; a Redis that
    does not answer fails it with ``RedisUnavailable`` within the link's command timeout."""

    log = Logger()

    def __init__(self, link: RedisLink, limits: Optional[SessionConfig] = None,
                 reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.link = link
        self.limits = limits if limits is not None else SessionConfig()
        self._reactor = reactor
        self.tails = StreamTails(TAIL_CACHE_BYTES)

    def reconfigure(self, limits: SessionConfig) -> None:
        """A config reload: retention and transcript limits from now on."""
        self.limits = limits

    # --- keys ----------------------------------------------------------------------------

    def index_key(self, agent_id: str) -> str:
        return self.link.key("sessions", agent_id)

    def by_time_key(self, agent_id: str) -> str:
        return self.link.key("sessions-by-time", agent_id)

    def agents_key(self) -> str:
        return self.link.key("agents")

    def transcript_key(self, session_id: str) -> str:
        return self.transcript_prefix() + session_id

    def transcript_prefix(self) -> str:
        return self.link.key("transcript", "")

    # --- public API ----------------------------------------------------------------------

    def get_or_create(self, session_key: str) -> Deferred:
        """Fire with the key's ``SessionEntry``, creating it (one script) if absent."""
        return Deferred.fromCoroutine(self._get_or_create(session_key))

    def get(self, session_key: str) -> Deferred:
        """Fire with the key's ``SessionEntry``, or ``None``."""
        return Deferred.fromCoroutine(self._get(session_key))

    def load_history(self, session_key: str,
                     enough: Optional[Callable[[Mapping[str, Any]], bool]] = None) -> Deferred:
        """Fire with the newest records of the key's current session in file order, read
        from the stream's end a page at a time until ``enough(record)`` (newest first). Not
        re-read: only what any process appended since this process's last read is fetched
        (``redis_tail.py``)."""
        return Deferred.fromCoroutine(
            self._load_history(session_key, enough or _read_everything))

    def record_turn(self, session_key: str, records: Sequence[Mapping[str, Any]],
                    model: Optional[str] = None, usage: Any = None,
                    lease: Optional[SessionLease] = None, release: bool = False) -> Deferred:
        """Append the turn's records and update the entry in one script; fire with the entry
        only once Redis has answered (the turn is then stored, on disk too with
        ``appendfsync always``). With ``lease``, nothing is written unless the lock still
        holds its token: ``LeaseLost``; with ``release`` too (the run's last write), the
        same script frees the lock."""
        if not all(isinstance(record, Mapping) for record in records):
            return fail(TypeError("transcript records must be mappings"))
        lines = [encode_record(record) for record in records]   # copied now, as the file store
        return Deferred.fromCoroutine(self._record_turn(session_key, lines, model, usage, lease,
                                                        release and lease is not None))

    def reset(self, session_key: str) -> Deferred:
        """Start a new session id for the key, keeping the old transcript; fire with existed."""
        return Deferred.fromCoroutine(self._reset(session_key))

    def delete(self, session_key: str) -> Deferred:
        """Remove the key's entry and set its transcript aside; fire with whether it existed."""
        return Deferred.fromCoroutine(self._delete(session_key))

    def list_sessions(self, agent_id: Optional[str] = None) -> Deferred:
        """Fire with the entries of one agent (or of all), most recently updated first; idle
        sessions (``session.idleDays``) are pruned first."""
        return Deferred.fromCoroutine(self._list_sessions(agent_id))

    def flush(self) -> Deferred:
        """Nothing is delayed: every change is in Redis when its Deferred fires."""
        return succeed(None)

    # --- operations ----------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def _new_entry(self, session_key: str, agent_id: str) -> SessionEntry:
        now = self._now_ms()
        return SessionEntry(key=session_key, agent_id=agent_id, session_id=uuid.uuid4().hex,
                            created_at=now, updated_at=now)

    def _entry(self, session_key: str, agent_id: str, raw: Any) -> Optional[SessionEntry]:
        try:
            return SessionEntry.from_json(session_key, agent_id, json.loads(raw))
        except (TypeError, ValueError) as error:
            self.log.warn("session index of agent {agent_id}: entry {session_key}: {problem}",
                          agent_id=agent_id, session_key=session_key, problem=str(error))
            return None

    async def _get(self, session_key: str) -> Optional[SessionEntry]:
        agent_id, _ = parse_session_key(session_key)
        raw = await self.link.execute("HGET", self.index_key(agent_id), session_key)
        return None if raw is None else self._entry(session_key, agent_id, raw)

    async def _get_or_create(self, session_key: str) -> Optional[SessionEntry]:
        agent_id, _ = parse_session_key(session_key)
        new = self._new_entry(session_key, agent_id)
        raw, created = await self.link.script(
            scripts.GET_OR_CREATE,
            [self.index_key(agent_id), self.by_time_key(agent_id), self.agents_key()],
            [session_key, json.dumps(new.to_json()), new.updated_at, agent_id])
        if created:
            self.log.info("created session {session_id} for {session_key}",
                          session_id=new.session_id, session_key=session_key)
            await self._prune(agent_id, keep=session_key)
        return self._entry(session_key, agent_id, raw)

    async def _load_history(self, session_key: str,
                            enough: Callable[[Mapping[str, Any]], bool]) -> list[dict[str, Any]]:
        agent_id, _ = parse_session_key(session_key)
        tail = self.tails.get(session_key)
        # the entry and either what was appended since the cached tail or the newest page,
        # in one round trip
        head = await self.link.script(
            scripts.HISTORY_HEAD, [self.index_key(agent_id)],
            [session_key, self.transcript_prefix(), HISTORY_PAGE,
             *((tail.oldest_id, tail.newest_id, tail.session_id) if tail else ("", "", ""))])
        entry = self._entry(session_key, agent_id, head[0]) if head else None
        if entry is None or len(head) < 3:
            self.tails.pop(session_key)
            return []
        first_page = head[2] or []
        if int(head[1]) == 1 and tail is not None:
            if len(first_page) < HISTORY_PAGE:       # everything appended since
                _extend(tail, first_page)
                self.tails.put(session_key, tail)
                served = tail.serve(enough)
                if served is not None:
                    return served
            first_page = None                        # too much new or too short: read anew
        records, tail = await self._read_tail(entry, enough, first_page)
        if tail is None:
            self.tails.pop(session_key)
        else:
            self.tails.put(session_key, tail)
        return records

    async def _read_tail(self, entry: SessionEntry, enough: Callable[[Mapping[str, Any]], bool],
                         page: Optional[list]) -> tuple[list[dict[str, Any]],
                                                        Optional[StreamTail]]:
        """Read the transcript from its end a page at a time (the first page given, when the
        caller has it) until ``enough``; the records in file order and the tail to cache."""
        stream = self.transcript_key(entry.session_id)
        newest_first: list[dict[str, Any]] = []
        end = "+"
        skipped = size = 0
        oldest_id = newest_id = ""
        whole = False
        if page is None:
            page = await self.link.execute("XREVRANGE", stream, end, "-", "COUNT", HISTORY_PAGE)
        while True:
            done = False
            for item in page or ():
                record, line_bytes = sized_record(item)
                if record is None:
                    skipped += 1
                    continue
                newest_first.append(record)
                size += line_bytes
                oldest_id = item[0]
                newest_id = newest_id or item[0]
                if enough(record):
                    done = True
                    break
            if done or not page or len(page) < HISTORY_PAGE:
                whole = not done
                break
            end = "(" + page[-1][0]
            page = await self.link.execute("XREVRANGE", stream, end, "-", "COUNT", HISTORY_PAGE)
        if skipped:
            self.log.warn("skipped {n} unreadable record(s) near the end of transcript"
                          " {session_id}", n=skipped, session_id=entry.session_id)
        newest_first.reverse()
        if not newest_first:
            return newest_first, None
        return newest_first, StreamTail(list(newest_first), oldest_id, newest_id, size, whole,
                                        entry.session_id)

    async def _record_turn(self, session_key: str, lines: list[bytes], model: Optional[str],
                           usage: Any, lease: Optional[SessionLease],
                           release: bool) -> Optional[SessionEntry]:
        agent_id, _ = parse_session_key(session_key)
        new = self._new_entry(session_key, agent_id)
        input_tokens, output_tokens, total_tokens = usage_token_counts(usage)
        if total_tokens is None:
            total_tokens = input_tokens + output_tokens
        index = self.index_key(agent_id)
        max_bytes = self.limits.maxTranscriptBytes
        keys = [index, self.by_time_key(agent_id), self.agents_key(),
                lease.key if lease is not None else index]
        if release and lease is not None:
            keys += lease.release_keys()[1:]         # the channel, the waited mark
        try:
            raw, dropped, created = await self.link.script(
                scripts.RECORD_TURN, keys,
                [session_key, lease.token if lease is not None else "",
                 json.dumps(new.to_json()), self._now_ms(), model or "", input_tokens,
                 output_tokens, total_tokens, self.transcript_prefix(), max_bytes,
                 max_bytes // COMPACTED_SHARE, agent_id, *lines])
        except txredisapi.ResponseError as error:
            if "FENCED" in str(error):
                raise LeaseLost(f"the lease on {session_key} was lost; the turn was not "
                                "written") from None
            raise
        if release and lease is not None:
            lease.released_with_turn()
        if dropped >= 0:
            self.log.info("transcript of {session_key} passed session.maxTranscriptBytes:"
                          " compacted to its newest turns ({dropped} bytes dropped)",
                          session_key=session_key, dropped=dropped)
        if created:
            self.log.info("created session {session_id} for {session_key}",
                          session_id=new.session_id, session_key=session_key)
            await self._prune(agent_id, keep=session_key)
        return self._entry(session_key, agent_id, raw)

    async def _reset(self, session_key: str) -> bool:
        agent_id, _ = parse_session_key(session_key)
        new = self._new_entry(session_key, agent_id)
        existed = await self.link.script(
            scripts.RESET, [self.index_key(agent_id), self.by_time_key(agent_id)],
            [session_key, json.dumps(new.to_json()), new.updated_at])
        if existed:
            self.log.info("reset {session_key}: new session {session_id}",
                          session_key=session_key, session_id=new.session_id)
        return bool(existed)

    async def _delete(self, session_key: str) -> bool:
        agent_id, _ = parse_session_key(session_key)
        existed = await self.link.script(
            scripts.DELETE, [self.index_key(agent_id), self.by_time_key(agent_id)],
            [session_key, self.transcript_prefix(), self.link.key("deleted", "transcript", ""),
             self._now_ms(), DELETED_TRANSCRIPT_SECONDS])
        if existed:
            self.log.info("deleted {session_key}", session_key=session_key)
        return bool(existed)

    def prune(self, agent_id: str, dry_run: bool = False) -> Deferred:
        """Apply retention to one agent now (``moltbot-gw sessions prune``); fire with the
        keys removed (with ``dry_run``: that would be)."""
        return Deferred.fromCoroutine(self._prune(agent_id, dry_run=dry_run))

    async def _prune(self, agent_id: str, keep: Optional[str] = None,
                     dry_run: bool = False) -> list[str]:
        cutoff = idle_cutoff_ms(self.limits, self._now_ms())
        pruned = await self.link.script(
            scripts.PRUNE, [self.index_key(agent_id), self.by_time_key(agent_id)],
            [self.limits.maxSessionsPerAgent, "" if cutoff is None else cutoff, keep or "",
             self.transcript_prefix(), "1" if dry_run else "0"])
        if pruned and not dry_run:
            self.log.info("pruned {n} session(s) of agent {agent_id} (session.idleDays /"
                          " session.maxSessionsPerAgent)", n=len(pruned), agent_id=agent_id)
        return list(pruned or ())

    async def agent_ids(self) -> list[str]:
        """The agents that have sessions in Redis."""
        members = await self.link.execute("SMEMBERS", self.agents_key())
        return sorted(m for m in members or () if AGENT_ID_RE.fullmatch(m))

    async def _list_sessions(self, agent_id: Optional[str]) -> list[SessionEntry]:
        if agent_id is not None:
            check_agent_id(agent_id)
            agent_ids = [agent_id]
        else:
            agent_ids = await self.agent_ids()
        entries: list[SessionEntry] = []
        for each in agent_ids:
            await self._prune(each)
            entries += await self.entries(each)
        entries.sort(key=lambda entry: (-entry.updated_at, entry.key))
        return entries

    async def entries(self, agent_id: str) -> list[SessionEntry]:
        """Every readable entry of one agent, as stored (no retention applied)."""
        flat = await self.link.execute("HGETALL", self.index_key(agent_id))
        pairs = (flat.items() if isinstance(flat, dict)
                 else zip(flat[::2], flat[1::2], strict=True))
        found = (self._entry(key, agent_id, raw) for key, raw in pairs)
        return [entry for entry in found if entry is not None]
