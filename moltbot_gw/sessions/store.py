"""The session store: per agent, an index (session key -> entry; ``index.py``) plus one JSONL
transcript per session, with retention (``retention.py``) and a size cap per transcript.

Disk I/O runs in a thread pool, one agent's operations strictly in call order (an agent's
state: ``agent_sessions.py``); transcript appends (``turn_append.py``) are group-committed
(``group_commit.py``), the daemon's by a child process (``commit_process.py``). It stores
sessions; it does not decide who may use them or run anything.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, TypeVar

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from moltbot_gw.config import SessionConfig
from moltbot_gw.sessions.agent_sessions import AgentSessions
from moltbot_gw.sessions.commit_process import TranscriptWriter, append_job
from moltbot_gw.sessions.group_commit import GroupCommitter
from moltbot_gw.sessions.index import (  # noqa: F401 - SessionEntry is part of this API
    SessionEntry,
    append_changes,
    begin_compaction,
    del_op,
    finish_compaction,
    put_op,
    read_index,
    usage_token_counts,
)
from moltbot_gw.sessions.interface import ISessionStore
from moltbot_gw.sessions.keys import check_agent_id, parse_session_key
from moltbot_gw.sessions.lease import SessionLease
from moltbot_gw.sessions.retention import agent_ids_on_disk, remove_transcripts, take_pruned
from moltbot_gw.sessions.tail_cache import skipping
from moltbot_gw.sessions.transcript import read_transcript_tail, session_header, transcript_path
from moltbot_gw.sessions.turn_append import append_turn
from moltbot_gw.sessions.uncancellable import uncancellable as _uncancellable
from moltbot_gw.state_dir import make_private_dirs, rename_if_present

T = TypeVar("T")

SAVE_DELAY_SECONDS = 1.0       # index updates of existing sessions are batched
# The journal is folded into a new sessions.json once it has this many lines and more
# than twice as many as there are sessions, so the rewrite's cost is spread over many turns.
COMPACT_MIN_JOURNAL_LINES = 10_000


def _read_everything(record: Mapping[str, Any]) -> bool:
    return False


@implementer(ISessionStore)
class SessionStore:
    """Sessions of all agents under ``<state_dir>/agents/<agentId>/sessions/``.

    Every public method returns a Deferred. Operations on one agent run one at a time in call
    order (so turns land in the transcript in the order they were recorded); different agents
    proceed in parallel on the thread pool.
    """

    log = Logger()

    def __init__(self, state_dir: Path, reactor: Any = None, threadpool: Any = None,
                 limits: Optional[SessionConfig] = None,
                 fsync: Optional[Callable[[int], None]] = None,
                 writer_process: bool | TranscriptWriter = False):
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.state_dir = Path(state_dir)
        self.limits = limits if limits is not None else SessionConfig()  # see reconfigure
        self._reactor = reactor
        self._threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._agents: dict[str, AgentSessions] = {}
        self._fsync = fsync   # of transcript group commits; tests count the calls
        # The daemon's commits run in a child process (commit_process.py); a store with a
        # custom fsync keeps the worker thread, where that fsync is called.
        self._writer: Optional[TranscriptWriter] = None
        if writer_process and fsync is None:
            self._writer = (writer_process if isinstance(writer_process, TranscriptWriter)
                            else TranscriptWriter(reactor))

    def reconfigure(self, limits: SessionConfig) -> None:
        """A config reload: retention and transcript limits from now on."""
        self.limits = limits

    # --- public API ----------------------------------------------------------------------

    def get_or_create(self, session_key: str) -> Deferred:
        """Fire with the key's ``SessionEntry``, creating (and persisting) it if absent."""
        return self._locked_for_key(session_key, self._get_or_create)

    def get(self, session_key: str) -> Deferred:
        """Fire with the key's ``SessionEntry``, or ``None``."""
        return self._locked_for_key(session_key, self._get)

    def load_history(self, session_key: str,
                     enough: Optional[Callable[[Mapping[str, Any]], bool]] = None) -> Deferred:
        """Fire with the newest transcript records of the key's current session (``[]`` if
        none), in file order. The transcript is read from its end until ``enough(record)``
        (called newest first, in a worker thread) is true; without it, all of it."""
        return self._locked_for_key(session_key, self._load_history,
                                    enough or _read_everything)

    def record_turn(self, session_key: str, records: Sequence[Mapping[str, Any]],
                    model: Optional[str] = None, usage: Any = None,
                    lease: Optional[SessionLease] = None, release: bool = False) -> Deferred:
        """Append one turn's records durably, then update the entry; fire with the entry
        once the records are fsynced. Turns of one agent queued while a commit runs share the
        next (``group_commit.py``); the agent's lock is not held while they wait for it.

        ``usage`` is a mapping or object with ``input_tokens``/``output_tokens`` (or the
        ``prompt_tokens``/``completion_tokens`` or camelCase spellings); it adds to the totals.
        ``lease`` (sessions/lease.py) and ``release`` matter to the Redis store only: one
        process's lane already orders the runs of a session here.
        """
        if not all(isinstance(record, Mapping) for record in records):
            return fail(TypeError("transcript records must be mappings"))
        # Copied now: the caller may reuse its dicts while the turn waits for the lock.
        records = [dict(record) for record in records]

        async def record() -> SessionEntry:
            entry, committed = await self._under_lock(session_key, self._record_turn, records,
                                                      model, usage)
            await committed
            return entry

        return _uncancellable(Deferred.fromCoroutine(record()))

    def reset(self, session_key: str) -> Deferred:
        """Start a new session id for the key, keeping the old transcript; fire with existed."""
        return self._locked_for_key(session_key, self._reset)

    def delete(self, session_key: str) -> Deferred:
        """Remove the key's entry and set its transcript aside; fire with whether it existed."""
        return self._locked_for_key(session_key, self._delete)

    def list_sessions(self, agent_id: Optional[str] = None) -> Deferred:
        """Fire with the entries of one agent (or of all), most recently updated first."""
        return _uncancellable(Deferred.fromCoroutine(self._list_sessions(agent_id)))

    def flush(self) -> Deferred:
        """Write every delayed index update now and wait for snapshots being written (on
        shutdown); fires when done."""
        pending = []
        for agent in self._agents.values():
            if agent.save_timer is not None:
                agent.save_timer.cancel()
                pending.append(self._delayed_save(agent))
            if agent.compaction is not None:
                pending.append(Deferred.fromCoroutine(self._wait_compaction(agent)))
            pending.append(agent.commits.settled())
        done = DeferredList(pending, consumeErrors=True)
        if self._writer is not None:   # a later commit starts a new writer process
            writer = self._writer
            done.addCallback(lambda results: writer.stop().addCallback(lambda _: results))
        return done

    # --- plumbing ------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def _in_thread(self, function: Callable[..., T], *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, function, *args)

    def _agent(self, agent_id: str) -> AgentSessions:
        agent = self._agents.get(agent_id)
        if agent is None:
            sessions_dir = self.state_dir / "agents" / agent_id / "sessions"
            commits = GroupCommitter(self._writer or self._in_thread, self._fsync)
            agent = self._agents[agent_id] = AgentSessions(agent_id, sessions_dir, commits)
        return agent

    def _locked_for_key(self, session_key: str,
                        operation: Callable[..., Awaitable[T]], *args: Any) -> Deferred:
        return _uncancellable(Deferred.fromCoroutine(
            self._under_lock(session_key, operation, *args)))

    async def _under_lock(self, session_key: str, operation: Callable[..., Awaitable[T]],
                          *args: Any) -> T:
        agent_id, _ = parse_session_key(session_key)
        agent = self._agent(agent_id)
        async with agent.lock:
            await self._ensure_loaded(agent)
            return await operation(agent, session_key, *args)

    async def _ensure_loaded(self, agent: AgentSessions) -> None:
        if agent.loaded:
            return
        contents = await self._in_thread(read_index, agent.sessions_dir, agent.agent_id,
                                         self._now_ms())
        if contents.moved_aside_to is not None:
            self.log.warn("sessions file of agent {agent_id} is corrupt; moved it to {aside}"
                          " and started from the journal alone",
                          agent_id=agent.agent_id, aside=str(contents.moved_aside_to))
        for problem in contents.problems:
            self.log.warn("session index of agent {agent_id}: {problem}",
                          agent_id=agent.agent_id, problem=problem)
        agent.entries = contents.entries
        agent.journal_lines = contents.journal_lines
        agent.loaded = True
        if contents.compaction_pending:   # a compaction was cut short: finish it now
            await self._in_thread(finish_compaction, agent.sessions_dir,
                                  tuple(agent.entries.values()))
        await self._persist(agent, [])

    async def _persist(self, agent: AgentSessions, changes: list[dict[str, Any]],
                       keep: Optional[str] = None) -> None:
        """Apply retention, then append ``changes`` and the removals to the journal (synced)
        and delete the pruned transcripts."""
        pruned = take_pruned(agent.entries, self.limits, self._now_ms(), keep=keep)
        for entry in pruned:
            agent.dirty.pop(entry.key, None)
        changes = changes + [del_op(entry.key) for entry in pruned]
        if not changes:
            return
        for entry in pruned:   # their queued turns land before the files go
            await agent.commits.settled(transcript_path(agent.sessions_dir, entry.session_id))
        await self._in_thread(self._write_changes, agent.sessions_dir, changes,
                              [entry.session_id for entry in pruned])
        agent.journal_lines += len(changes)
        if pruned:
            self.log.info("pruned {n} session(s) of agent {agent_id} (session.idleDays /"
                          " session.maxSessionsPerAgent); {kept} kept", n=len(pruned),
                          agent_id=agent.agent_id, kept=len(agent.entries))
        await self._maybe_compact(agent)

    def _write_changes(self, sessions_dir: Path, changes: list[dict[str, Any]],
                       removed_session_ids: list[str]) -> None:
        relative = sessions_dir.relative_to(self.state_dir)
        make_private_dirs(self.state_dir, *relative.parts)
        # Entries go first: a crash in between leaves orphan transcripts, not entries
        # pointing at missing files.
        append_changes(sessions_dir, changes)
        remove_transcripts(sessions_dir, removed_session_ids)

    async def _maybe_compact(self, agent: AgentSessions) -> None:
        """Fold the journal into a new snapshot once it is long: the journal is set aside
        under the lock (a rename), the snapshot is written after it is released."""
        if (agent.compaction is not None or agent.journal_lines < COMPACT_MIN_JOURNAL_LINES
                or agent.journal_lines < 2 * len(agent.entries)):
            return
        if not await self._in_thread(begin_compaction, agent.sessions_dir):
            return
        agent.journal_lines = 0
        entries = tuple(agent.entries.values())   # immutable: safe to encode in a thread
        compaction = self._in_thread(finish_compaction, agent.sessions_dir, entries)

        def done(outcome: Any) -> None:
            agent.compaction = None
            if isinstance(outcome, Failure):
                self.log.failure("could not write the session index of agent {agent_id}",
                                 failure=outcome, agent_id=agent.agent_id)

        agent.compaction = compaction
        compaction.addBoth(done)

    async def _wait_compaction(self, agent: AgentSessions) -> None:
        while agent.compaction is not None:
            # fires when the compaction does, passing its outcome on untouched
            await DeferredList([agent.compaction])

    def _schedule_save(self, agent: AgentSessions) -> None:
        if agent.save_timer is None:
            agent.save_timer = self._reactor.callLater(SAVE_DELAY_SECONDS, self._delayed_save,
                                                       agent)

    def _delayed_save(self, agent: AgentSessions) -> Deferred:
        agent.save_timer = None

        async def save() -> None:
            async with agent.lock:
                changes = [put_op(entry) for entry in agent.dirty.values()]
                agent.dirty.clear()
                await self._persist(agent, changes)

        return _uncancellable(Deferred.fromCoroutine(save()))

    def _new_entry(self, agent: AgentSessions, session_key: str) -> SessionEntry:
        now = self._now_ms()
        return SessionEntry(key=session_key, agent_id=agent.agent_id,
                            session_id=uuid.uuid4().hex, created_at=now, updated_at=now)

    def _store_entry(self, agent: AgentSessions, entry: SessionEntry) -> None:
        """Put ``entry`` in memory as the most recently used."""
        agent.entries[entry.key] = entry
        agent.entries.move_to_end(entry.key)

    # --- operations, each run under its agent's lock -------------------------------------

    async def _get(self, agent: AgentSessions, session_key: str) -> Optional[SessionEntry]:
        return agent.entries.get(session_key)

    async def _get_or_create(self, agent: AgentSessions, session_key: str) -> SessionEntry:
        entry = agent.entries.get(session_key)
        if entry is None:
            entry = self._new_entry(agent, session_key)
            self._store_entry(agent, entry)
            await self._persist(agent, [put_op(entry)], keep=session_key)
            self.log.info("created session {session_id} for {session_key}",
                          session_id=entry.session_id, session_key=session_key)
        return entry

    async def _load_history(self, agent: AgentSessions, session_key: str,
                            enough: Callable[[Mapping[str, Any]], bool]
                            ) -> list[dict[str, Any]]:
        entry = agent.entries.get(session_key)
        if entry is None:
            return []
        # read your writes: this session's queued turns first
        await agent.commits.settled(transcript_path(agent.sessions_dir, entry.session_id))
        cached = agent.tails.get(entry.session_id)
        if cached is not None:
            served = cached.serve(enough)
            if served is not None:
                return served
            enough = skipping(len(cached.records), enough)   # it has seen those already
        contents = await self._in_thread(
            read_transcript_tail, transcript_path(agent.sessions_dir, entry.session_id), enough)
        records = list(contents.records)
        whole = bool(records) and records[0].get("type") == "session"
        agent.tails.put(entry.session_id, records, contents.size_bytes, whole)
        return list(records)

    async def _record_turn(self, agent: AgentSessions, session_key: str,
                           records: list[dict[str, Any]], model: Optional[str],
                           usage: Any) -> tuple[SessionEntry, Deferred]:
        """Queue the turn's append and update the entry; return it and the Deferred of the
        append's commit. A new session's commit is awaited here, before its entry is
        journalled."""
        entry = agent.entries.get(session_key)
        is_new = entry is None
        if entry is None:
            entry = self._new_entry(agent, session_key)
        committed: Deferred = succeed(None)
        if records:
            committed = self._queue_append(agent, entry, records, is_new)
            if is_new:
                await committed
                committed = succeed(None)
        input_tokens, output_tokens, total_tokens = usage_token_counts(usage)
        if total_tokens is None:
            total_tokens = input_tokens + output_tokens
        entry = replace(entry,
                        updated_at=max(self._now_ms(), entry.updated_at),
                        model=model if model is not None else entry.model,
                        input_tokens=entry.input_tokens + input_tokens,
                        output_tokens=entry.output_tokens + output_tokens,
                        total_tokens=entry.total_tokens + total_tokens)
        self._store_entry(agent, entry)
        if is_new:
            # The key -> session id mapping must be on disk before the turn counts as stored.
            agent.dirty.pop(session_key, None)
            await self._persist(agent, [put_op(entry)], keep=session_key)
            self.log.info("created session {session_id} for {session_key}",
                          session_id=entry.session_id, session_key=session_key)
        else:
            # Only timestamps and token totals changed; the transcript (already synced) holds
            # the turn. Many turns share one journal write.
            agent.dirty[session_key] = entry
            self._schedule_save(agent)
        return entry, committed

    def _queue_append(self, agent: AgentSessions, entry: SessionEntry,
                      records: list[dict[str, Any]], is_new: bool) -> Deferred:
        """Queue a turn's append for the next group commit; the tail cache follows once it is
        durable. Fires with None."""
        header = session_header(entry.session_id, entry.key, entry.created_at)
        now_ms = self._now_ms()
        write = partial(append_turn, self.state_dir, agent.sessions_dir, entry.session_id,
                        records, header, self.limits.maxTranscriptBytes, now_ms)
        job = None if self._writer is None else append_job(   # for the writer process
            self.state_dir, agent.sessions_dir, entry.session_id, records, header,
            self.limits.maxTranscriptBytes, now_ms)
        committed = agent.commits.submit(
            transcript_path(agent.sessions_dir, entry.session_id), write, job)

        def landed(outcome: tuple[int, Optional[int]]) -> None:
            written, dropped = outcome
            if is_new:
                agent.tails.put(entry.session_id, [dict(header), *records], written, True)
            elif dropped is None:
                agent.tails.extend(entry.session_id, records, written)
            else:
                agent.tails.pop(entry.session_id)
                self.log.info("transcript of {session_key} passed session.maxTranscriptBytes:"
                              " compacted to its newest turns ({dropped} bytes dropped)",
                              session_key=entry.key, dropped=dropped)

        def lost(failure: Failure) -> Failure:
            agent.tails.pop(entry.session_id)   # the file may hold part of the turn
            return failure

        return committed.addCallbacks(landed, lost)

    async def _reset(self, agent: AgentSessions, session_key: str) -> bool:
        old = agent.entries.get(session_key)
        if old is None:
            return False
        new = self._new_entry(agent, session_key)
        self._store_entry(agent, new)
        agent.dirty.pop(session_key, None)
        await self._persist(agent, [put_op(new)], keep=session_key)
        self.log.info("reset {session_key}: session {old_session_id} -> {session_id}",
                      session_key=session_key, old_session_id=old.session_id,
                      session_id=new.session_id)
        return True

    async def _delete(self, agent: AgentSessions, session_key: str) -> bool:
        entry = agent.entries.pop(session_key, None)
        if entry is None:
            return False
        agent.dirty.pop(session_key, None)
        # The entry goes first: a crash in between leaves an orphan transcript, not an entry
        # pointing at a missing file.
        await self._persist(agent, [del_op(session_key)])
        source = transcript_path(agent.sessions_dir, entry.session_id)
        await agent.commits.settled(source)   # its queued turns land before it is moved
        target = source.with_name("%s.deleted-%d" % (source.name, self._now_ms()))
        await self._in_thread(rename_if_present, source, target)
        self.log.info("deleted {session_key} (session {session_id})",
                      session_key=session_key, session_id=entry.session_id)
        return True

    async def _list_sessions(self, agent_id: Optional[str]) -> list[SessionEntry]:
        if agent_id is not None:
            check_agent_id(agent_id)
            agent_ids = [agent_id]
        else:
            on_disk = await self._in_thread(agent_ids_on_disk, self.state_dir)
            agent_ids = sorted(set(on_disk) | set(self._agents))
        entries: list[SessionEntry] = []
        for each_agent_id in agent_ids:
            agent = self._agent(each_agent_id)
            async with agent.lock:
                await self._ensure_loaded(agent)
                entries.extend(agent.entries.values())
        entries.sort(key=lambda entry: (-entry.updated_at, entry.key))
        return entries
