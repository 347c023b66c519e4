"""``moltbot-gw sessions migrate``: copy every agent's sessions and transcripts between the
file store (the state dir) and the Redis store, keeping session ids, entries and records as
they are. Idempotent: a session whose target transcript already holds as many records is
skipped, one cut short is completed, and one the target knows under another session id is
left alone (reported as a conflict). Gateways must be stopped while it runs.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Optional, Sequence

from twisted.internet.threads import deferToThread

from moltbot_gw.redis.connection import LuaScript, RedisLink
from moltbot_gw.sessions.index import SessionEntry, append_changes, put_op, read_index
from moltbot_gw.sessions.redis_store import RedisSessionStore, encode_record, stream_record
from moltbot_gw.sessions.retention import agent_ids_on_disk
from moltbot_gw.sessions.transcript import append_records, read_transcript, transcript_path
from moltbot_gw.state_dir import make_private_dirs

STREAM_PAGE = 1000     # stream entries read per XRANGE
WRITE_BATCH = 256      # records appended per script call

# KEYS: index hash, by-time zset, agents set, transcript stream. ARGV: session key, entry JSON,
# updatedAt, agent id, records the stream must hold now, 1 if this is the last batch, then
# records. Appends only if the stream still holds that many (else returns -1); the last batch
# writes the entry. Returns the stream's new length.
IMPORT_BATCH = LuaScript(r"""
if redis.call('XLEN', KEYS[4]) ~= tonumber(ARGV[5]) then return -1 end
for i = 7, #ARGV do redis.call('XADD', KEYS[4], '*', 'r', ARGV[i]) end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[4])
end
return redis.call('XLEN', KEYS[4])
""")


@dataclass
class MigrationReport:
    copied: int = 0            # sessions written (whole or completed)
    records: int = 0           # records appended
    unchanged: int = 0         # already in the target
    conflicts: list[str] = field(default_factory=list)   # keys the target has another id for

    def line(self) -> str:
        text = (f"copied {self.copied} session(s) ({self.records} record(s)), "
                f"{self.unchanged} already there")
        if self.conflicts:
            text += f", {len(self.conflicts)} left alone (another session id in the target)"
        return text


class FileSide:
    """The state dir's sessions, read and written in worker threads."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)

    def _dir(self, agent_id: str) -> Path:
        return self.state_dir / "agents" / agent_id / "sessions"

    async def sessions(self) -> AsyncIterator[tuple[SessionEntry, list[dict[str, Any]]]]:
        for agent_id in await deferToThread(agent_ids_on_disk, self.state_dir):
            contents = await deferToThread(read_index, self._dir(agent_id), agent_id, 0)
            for entry in contents.entries.values():
                transcript = await deferToThread(
                    read_transcript, transcript_path(self._dir(agent_id), entry.session_id))
                yield entry, list(transcript.records)

    async def put(self, entry: SessionEntry, records: Sequence[Mapping[str, Any]],
                  report: MigrationReport) -> None:
        await deferToThread(self._put, entry, records, report)

    def _put(self, entry: SessionEntry, records: Sequence[Mapping[str, Any]],
             report: MigrationReport) -> None:
        sessions_dir = make_private_dirs(self.state_dir, "agents", entry.agent_id, "sessions")
        existing = read_index(sessions_dir, entry.agent_id, 0).entries.get(entry.key)
        if existing is not None and existing.session_id != entry.session_id:
            report.conflicts.append(entry.key)
            return
        path = transcript_path(sessions_dir, entry.session_id)
        have = len(read_transcript(path).records)
        missing = list(records[have:])
        if missing:
            append_records(path, missing)
        if existing != entry:
            append_changes(sessions_dir, [put_op(entry)])
        if missing or existing != entry:
            report.copied += 1
            report.records += len(missing)
        else:
            report.unchanged += 1


class RedisSide:
    """The Redis store's sessions, under the link's key prefix."""

    def __init__(self, link: RedisLink):
        self.link = link
        self.store = RedisSessionStore(link)

    async def sessions(self) -> AsyncIterator[tuple[SessionEntry, list[dict[str, Any]]]]:
        for agent_id in await self.store.agent_ids():
            for entry in await self.store.entries(agent_id):
                yield entry, await self._records(entry.session_id)

    async def _records(self, session_id: str) -> list[dict[str, Any]]:
        stream = self.store.transcript_key(session_id)
        records: list[dict[str, Any]] = []
        start = "-"
        while True:
            page = await self.link.execute("XRANGE", stream, start, "+", "COUNT", STREAM_PAGE)
            for item in page or ():
                record = stream_record(item)
                if record is not None:
                    records.append(record)
            if not page or len(page) < STREAM_PAGE:
                return records
            start = "(" + page[-1][0]

    async def put(self, entry: SessionEntry, records: Sequence[Mapping[str, Any]],
                  report: MigrationReport) -> None:
        store = self.store
        index = store.index_key(entry.agent_id)
        raw = await self.link.execute("HGET", index, entry.key)
        existing: Optional[SessionEntry] = None
        if raw is not None:
            existing = SessionEntry.from_json(entry.key, entry.agent_id, json.loads(raw))
            if existing.session_id != entry.session_id:
                report.conflicts.append(entry.key)
                return
        stream = store.transcript_key(entry.session_id)
        have = int(await self.link.execute("XLEN", stream))
        lines = [encode_record(record) for record in records]
        if have >= len(lines) and existing == entry:
            report.unchanged += 1
            return
        document = dict(entry.to_json(), transcriptBytes=sum(len(line) + 1 for line in lines))
        keys = [index, store.by_time_key(entry.agent_id), store.agents_key(), stream]
        missing = lines[have:]
        batches = [missing[i:i + WRITE_BATCH] for i in range(0, len(missing), WRITE_BATCH)]
        for number, batch in enumerate(batches or [[]], start=1):
            length = await self.link.script(IMPORT_BATCH, keys, [
                entry.key, json.dumps(document), entry.updated_at, entry.agent_id, have,
                "1" if number == max(len(batches), 1) else "0", *batch])
            if length < 0:
                raise RuntimeError(f"the transcript of {entry.key} changed while it was "
                                   "copied: is a gateway running on this Redis?")
            have = length
        report.copied += 1
        report.records += len(missing)


async def migrate(source: Any, target: Any) -> MigrationReport:
    """Copy every session of ``source`` into ``target`` (a ``FileSide`` or ``RedisSide``)."""
    report = MigrationReport()
    async for entry, records in source.sessions():
        await target.put(entry, records, report)
    return report


async def migrate_command(reactor: Any, config: Any, args: Any) -> int:
    """``sessions migrate --from file|redis --to redis|file``: print what was copied; exit 1
    if Redis did not answer or a gateway holds the state dir."""
    from moltbot_gw.redis.connection import RedisUnavailable
    from moltbot_gw.state_dir import StateDirBusy, StateDirLock, prepare_state_dir

    if args.source == args.target:
        print("moltbot-gw: --from and --to must differ", file=sys.stderr)
        return 2
    from moltbot_gw.sessions.backend import redis_link_for

    link = redis_link_for(config, reactor, pool_size=1)
    try:
        prepare_state_dir(config.state_dir)
        lock = StateDirLock.acquire(config.state_dir)   # no file-store gateway may run
    except StateDirBusy as busy:
        print(f"moltbot-gw: {busy}", file=sys.stderr)
        return 1
    try:
        await link.connect()
        sides = {"file": FileSide(config.state_dir), "redis": RedisSide(link)}
        report = await migrate(sides[args.source], sides[args.target])
    except RedisUnavailable as error:
        print(f"moltbot-gw: {error}", file=sys.stderr)
        return 1
    finally:
        lock.release()
        await link.disconnect()
    print(f"{args.source} -> {args.target} ({link.shown_url}, key prefix "
          f"{link.key_prefix!r}): {report.line()}")
    for key in report.conflicts:
        print(f"  left alone: {key}")
    return 0
