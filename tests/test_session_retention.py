"""Session store growth and transcript bounds (issue 13, items 5 and 6): the journalled index,
retention (``session.maxSessionsPerAgent``, ``session.idleDays``), ``moltbot-gw sessions
prune``, tail reads of history and compaction at ``session.maxTranscriptBytes``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest_twisted
from twisted.internet import reactor as real_reactor
from twisted.internet import task

from moltbot_gw.agents.runner import history_budget
from moltbot_gw.config import HistoryConfig, SessionConfig
from moltbot_gw.sessions import store as store_module
from moltbot_gw.sessions.index import (COMPACTING_FILE_NAME, JOURNAL_FILE_NAME, SessionEntry,
                                       append_changes, load_index_document, put_op,
                                       write_snapshot)
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.transcript import (append_records, history_messages,
                                            read_transcript, read_transcript_tail,
                                            session_header, transcript_path)

from .chat_helpers import PATH, http, no_leftovers  # noqa: F401

DAY = 24 * 60 * 60


def user(text, run_id="r"):
    return {"type": "message", "role": "user", "content": text, "runId": run_id, "ts": 1}


def assistant(text, run_id="r"):
    return {"type": "message", "role": "assistant", "content": text, "runId": run_id,
            "ts": 2, "status": "ok"}


def sessions_dir(state_dir, agent_id="main"):
    return state_dir / "agents" / agent_id / "sessions"


class ClockedReactor:
    """The real reactor for threads, a ``task.Clock`` for time: retention by age is tested
    without waiting days."""

    def __init__(self, clock):
        self.clock = clock

    def seconds(self):
        return self.clock.seconds()

    def callLater(self, *args, **kwargs):
        return self.clock.callLater(*args, **kwargs)

    def callFromThread(self, *args, **kwargs):
        return real_reactor.callFromThread(*args, **kwargs)

    def getThreadPool(self):
        return real_reactor.getThreadPool()


def seed_index(state_dir, count, now_ms, agent_id="main"):
    directory = sessions_dir(state_dir, agent_id)
    directory.mkdir(parents=True, exist_ok=True)
    entries = [SessionEntry(key=f"agent:{agent_id}:openai-user:seed-{n}", agent_id=agent_id,
                            session_id=f"seed{n:08d}", created_at=now_ms - n,
                            updated_at=now_ms - n)
               for n in range(count)]
    write_snapshot(directory / "sessions.json", entries)
    return directory


# --- the index: one appended line per new session --------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_new_session_among_100k_appends_one_journal_line_and_leaves_the_index_file(
        tmp_path):
    directory = seed_index(tmp_path, 100_000, int(time.time() * 1000))
    snapshot = directory / "sessions.json"
    before = (snapshot.stat().st_ino, snapshot.stat().st_size, snapshot.stat().st_mtime_ns)
    store = SessionStore(tmp_path, limits=SessionConfig(maxSessionsPerAgent=200_000))

    entry = await store.record_turn("agent:main:openai-user:newcomer", [user("hi")])

    after = (snapshot.stat().st_ino, snapshot.stat().st_size, snapshot.stat().st_mtime_ns)
    assert after == before                     # the 100k-entry file was not rewritten
    journal = (directory / JOURNAL_FILE_NAME).read_text().splitlines()
    assert [json.loads(line)["key"] for line in journal] == ["agent:main:openai-user:newcomer"]
    restarted = SessionStore(tmp_path, limits=SessionConfig(maxSessionsPerAgent=200_000))
    assert await restarted.get("agent:main:openai-user:newcomer") == entry
    assert len(await restarted.list_sessions("main")) == 100_001


@pytest_twisted.ensureDeferred
async def test_a_long_journal_is_folded_into_a_new_snapshot_that_a_restart_reads(
        tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_MIN_JOURNAL_LINES", 10)
    store = SessionStore(tmp_path)
    for n in range(12):   # 3 sessions, 12 journal lines (creations, batched updates)
        await store.record_turn(f"agent:main:k{n % 3}", [user(str(n))],
                                usage={"input_tokens": 1})
        await store.flush()
    await store.delete("agent:main:k0")
    await store.flush()
    directory = sessions_dir(tmp_path)
    snapshot = json.loads((directory / "sessions.json").read_text())
    assert set(snapshot) <= {"agent:main:k0", "agent:main:k1", "agent:main:k2"}
    assert snapshot                            # a compaction ran
    assert not (directory / COMPACTING_FILE_NAME).exists()
    entries = await SessionStore(tmp_path).list_sessions()
    assert sorted(entry.key for entry in entries) == ["agent:main:k1", "agent:main:k2"]
    assert [entry.input_tokens for entry in entries] == [4, 4]


@pytest_twisted.ensureDeferred
async def test_a_compaction_cut_short_by_a_crash_is_finished_on_load(tmp_path):
    directory = seed_index(tmp_path, 2, 1000)
    gone, kept = "agent:main:openai-user:seed-0", "agent:main:openai-user:seed-1"
    # The crash came after the journal was set aside and before the new snapshot.
    append_changes(directory, [{"op": "del", "key": gone}])
    os.replace(directory / JOURNAL_FILE_NAME, directory / COMPACTING_FILE_NAME)
    newer = SessionEntry(key="agent:main:late", agent_id="main", session_id="late",
                         created_at=5000, updated_at=5000)
    append_changes(directory, [put_op(newer)])

    store = SessionStore(tmp_path)
    assert [e.key for e in await store.list_sessions("main")] == ["agent:main:late", kept]
    assert not (directory / COMPACTING_FILE_NAME).exists()
    assert set(json.loads((directory / "sessions.json").read_text())) == {
        kept, "agent:main:late"}


# --- retention ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_least_recently_used_session_is_pruned_with_its_transcript(tmp_path):
    clock = task.Clock()
    clock.advance(1000)
    store = SessionStore(tmp_path, reactor=ClockedReactor(clock),
                         limits=SessionConfig(maxSessionsPerAgent=3))
    entries = {}
    for name in ("a", "b", "c"):
        clock.advance(1)
        entries[name] = await store.record_turn(f"agent:main:{name}", [user(name)])
    clock.advance(1)
    await store.record_turn("agent:main:a", [user("a again")])   # b is now the oldest
    clock.advance(1)
    await store.record_turn("agent:main:d", [user("d")])

    assert await store.get("agent:main:b") is None
    assert not transcript_path(sessions_dir(tmp_path), entries["b"].session_id).exists()
    assert transcript_path(sessions_dir(tmp_path), entries["a"].session_id).exists()
    await store.flush()
    assert set(load_index_document(sessions_dir(tmp_path), "main")) == {
        "agent:main:a", "agent:main:c", "agent:main:d"}


@pytest_twisted.ensureDeferred
async def test_sessions_idle_past_idle_days_are_pruned_and_recent_ones_kept(tmp_path):
    clock = task.Clock()
    clock.advance(100 * DAY)
    limits = SessionConfig(idleDays=1)
    store = SessionStore(tmp_path, reactor=ClockedReactor(clock), limits=limits)
    old = await store.record_turn("agent:main:old", [user("q")])
    clock.advance(DAY / 2)
    await store.record_turn("agent:main:recent", [user("q")])
    clock.advance(DAY * 0.75)          # old: 1.25 days idle, recent: 0.75
    await store.record_turn("agent:main:new", [user("q")])

    assert await store.get("agent:main:old") is None
    assert await store.get("agent:main:recent") is not None
    assert not transcript_path(sessions_dir(tmp_path), old.session_id).exists()

    await store.flush()
    clock.advance(DAY)                 # a gateway started later prunes on load
    restarted = SessionStore(tmp_path, reactor=ClockedReactor(clock), limits=limits)
    assert [entry.key for entry in await restarted.list_sessions("main")] == ["agent:main:new"]


def test_sessions_prune_cli_applies_the_limits_to_a_stopped_gateways_state_dir(tmp_path):
    state_dir = tmp_path / "state"
    now_ms = int(time.time() * 1000)
    directory = sessions_dir(state_dir)
    directory.mkdir(parents=True)
    ages_days = {"stale": 10, "oldest-recent": 0.3, "middle": 0.2, "newest": 0.1}
    entries = {}
    for name, days in ages_days.items():
        stamp = now_ms - int(days * DAY * 1000)
        entries[name] = SessionEntry(key=f"agent:main:{name}", agent_id="main",
                                     session_id=name.replace("-", "_"), created_at=stamp,
                                     updated_at=stamp)
        append_records(transcript_path(directory, entries[name].session_id), [user(name)])
    write_snapshot(directory / "sessions.json", list(entries.values())[:2])
    append_changes(directory, [put_op(entry) for entry in list(entries.values())[2:]])
    config = tmp_path / "moltbot.json"
    config.write_text(json.dumps({"session": {"idleDays": 1, "maxSessionsPerAgent": 2}}))
    env = {**os.environ, "MOLTBOT_STATE_DIR": str(state_dir)}
    command = [sys.executable, "-m", "moltbot_gw.cli", "sessions", "prune",
               "--config", str(config)]

    dry = subprocess.run(command + ["--dry-run"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "agent main: would prune 2 session(s), kept 2" in dry.stdout
    assert "agent:main:stale" in dry.stdout and "agent:main:oldest-recent" in dry.stdout
    assert all(transcript_path(directory, e.session_id).exists() for e in entries.values())

    done = subprocess.run(command + ["--agent", "main"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "agent main: pruned 2 session(s), kept 2" in done.stdout
    left = {name for name, entry in entries.items()
            if transcript_path(directory, entry.session_id).exists()}
    assert left == {"middle", "newest"}
    assert set(json.loads((directory / "sessions.json").read_text())) == {
        "agent:main:middle", "agent:main:newest"}
    assert not (directory / JOURNAL_FILE_NAME).exists()


# --- history from the tail; the transcript cap -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_is_read_from_the_tail_without_touching_a_huge_old_turn(tmp_path):
    store = SessionStore(tmp_path)
    key = "agent:main:long"
    entry = await store.record_turn(key, [user("first")])
    path = transcript_path(sessions_dir(tmp_path), entry.session_id)
    with open(path, "ab") as transcript:   # 8 MB of an old turn nobody may parse again
        transcript.write(b'{"type":"message","role":"user","content":"' + b"x" * 8_000_000
                         + b"\xff\n")
    for n in range(30):
        await store.record_turn(key, [user(f"q{n}"), assistant(f"a{n}")])

    limits = HistoryConfig(maxMessages=10, maxTokens=10_000)
    store = SessionStore(tmp_path)   # restarted: nothing of the transcript in memory
    read = []
    real_tail = store_module.read_transcript_tail

    def counting_tail(*args):
        contents = real_tail(*args)
        read.append(contents)
        return contents

    store_module.read_transcript_tail = counting_tail
    try:
        records = await store.load_history(key, history_budget(limits))
    finally:
        store_module.read_transcript_tail = real_tail
    assert read[0].size_bytes < 100_000 and read[0].skipped_lines == 0
    messages = history_messages(records)
    assert messages[-2:] == [{"role": "user", "content": "q29"},
                             {"role": "assistant", "content": "a29"}]
    assert len(messages) >= 10 and "first" not in [m["content"] for m in messages]


def test_tail_read_keeps_the_torn_last_line_rule(tmp_path):
    path = tmp_path / "t.jsonl"
    append_records(path, [user("one"), user("two")], header=session_header("s", "k", 1))
    with open(path, "ab") as transcript:
        transcript.write(b'{"type":"message","role":"us')      # cut short by a crash
    everything = read_transcript_tail(path, lambda record: False, block_size=7)
    assert everything.records == read_transcript(path).records
    assert everything.torn_last_line and everything.skipped_lines == 1
    newest = read_transcript_tail(path, lambda record: True, block_size=7)
    assert [r["content"] for r in newest.records] == ["two"]


@pytest_twisted.ensureDeferred
async def test_a_transcript_at_max_transcript_bytes_is_compacted_to_its_newest_turns(tmp_path):
    store = SessionStore(tmp_path, limits=SessionConfig(maxTranscriptBytes=8000))
    key = "agent:main:chatty"
    for n in range(40):
        entry = await store.record_turn(key, [user(f"q{n} " + "u" * 150),
                                              assistant(f"a{n} " + "v" * 150)])
    path = transcript_path(sessions_dir(tmp_path), entry.session_id)
    assert path.stat().st_size <= 8000
    records = read_transcript(path).records
    assert records[0]["type"] == "session" and records[0]["sessionId"] == entry.session_id
    assert records[1]["type"] == "compaction"
    messages = history_messages(await SessionStore(tmp_path).load_history(key))
    assert messages[0]["role"] == "user"
    assert messages[-1]["content"].startswith("a39 ")
    assert not any(m["content"].startswith("q0 ") for m in messages)
    assert [name for name in os.listdir(path.parent) if name.endswith(".tmp")] == []
    await store.flush()   # its batched index save, not left to a timer


def test_tail_read_matches_a_forward_read_for_every_block_size(tmp_path):
    path = tmp_path / "t.jsonl"
    append_records(path, [user("é" * n + "\u2028") for n in range(12)],
                   header=session_header("s", "k", 1))
    with open(path, "ab") as transcript:
        transcript.write(b"\n\nnot json\n")
    append_records(path, [assistant("last")])
    forward = read_transcript(path)
    for block_size in range(1, 80, 3):
        backward = read_transcript_tail(path, lambda record: False, block_size=block_size)
        assert backward.records == forward.records, block_size
        assert (backward.skipped_lines, backward.torn_last_line) == (1, False)
        assert backward.size_bytes == path.stat().st_size


@pytest_twisted.ensureDeferred
async def test_a_gateway_past_the_cap_still_replays_the_newest_history(
        start_gateway, upstream, http, state_dir):
    gw = await start_gateway({
        "gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
        "models": {"providers": {"up": {"api": "openai-completions",
                                         "baseUrl": upstream.base_url}}},
        "agents": {"list": [{"id": "main", "model": "up/m",
                             "history": {"maxMessages": 6}}]},
        "session": {"maxTranscriptBytes": 6000},
    })
    for n in range(15):
        upstream.script(text=f"answer {n} " + "z" * 200)
        response = await http.post(gw.url + PATH, json.dumps({
            "model": "moltbot:main", "user": "carol",
            "messages": [{"role": "user", "content": f"question {n} " + "y" * 300}]}).encode(),
            headers={**gw.auth_headers, "Content-Type": "application/json"})
        assert response.code == 200, await response.content()
        await response.content()

    sent = [m for m in upstream.requests[-1].body["messages"] if m["role"] != "system"]
    # maxMessages (6) of history, all from the compacted transcript's newest turns, then the
    # new question.
    assert [m["content"].split(" ")[:2] for m in sent] == [
        [kind, str(n)] for n in (11, 12, 13) for kind in ("question", "answer")
    ] + [["question", "14"]]
    transcripts = list(sessions_dir(state_dir).glob("*.jsonl"))
    assert len(transcripts) == 1 and transcripts[0].stat().st_size <= 6000
    assert read_transcript(transcripts[0]).records[1]["type"] == "compaction"
