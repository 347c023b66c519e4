"""Tests for session keys, JSONL transcripts and the session store."""
from __future__ import annotations

import json
import os
import stat
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.python import threadable

from moltbot_gw.sessions import store as store_module
from moltbot_gw.sessions.keys import (
    make_session_key,
    openai_session_key,
    parse_session_key,
    resolve_session_key,
)
from moltbot_gw.sessions.index import load_index_document
from moltbot_gw.sessions.store import SessionEntry, SessionStore
from moltbot_gw.sessions.transcript import (
    append_records,
    history_messages,
    read_transcript,
    session_header,
)


def user(text, run_id="r1"):
    return {"type": "message", "role": "user", "content": text, "runId": run_id, "ts": 1}


def assistant(text, status="ok", run_id="r1", **extra):
    record = {"type": "message", "role": "assistant", "content": text, "runId": run_id,
              "ts": 2, "status": status}
    record.update(extra)
    return record


@pytest.fixture
def captured_log_events():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def warnings_about(events, word):
    return [event for event in events
            if event.get("log_level") is not None and event["log_level"].name == "warn"
            and word in event.get("log_format", "")]


# --- keys ---------------------------------------------------------------------------------

def test_make_session_key_prefixes_the_agent():
    assert make_session_key("main", "chat:1") == "agent:main:chat:1"


def test_parse_session_key_splits_at_the_agent_id_and_keeps_colons_in_rest():
    assert parse_session_key("agent:ops-2:openai-user:a:b") == ("ops-2", "openai-user:a:b")


@pytest.mark.parametrize("bad_key", [
    "",
    "main:chat",
    "agent:",
    "agent:main",
    "agent:main:",
    "agent::chat",
    "agent:Main:chat",
    "agent:ma in:chat",
    "agent:main:chat\n",
    "agent:main:ch\x00at",
    "agent:main:" + "x" * 600,
])
def test_parse_session_key_rejects_malformed_keys(bad_key):
    with pytest.raises(ValueError):
        parse_session_key(bad_key)


def test_resolve_session_key_prefixes_a_bare_rest():
    assert resolve_session_key("main", " my-chat ") == "agent:main:my-chat"


def test_resolve_session_key_accepts_a_full_key_for_the_same_agent():
    assert resolve_session_key("main", "agent:main:x") == "agent:main:x"


def test_resolve_session_key_rejects_a_full_key_for_another_agent():
    with pytest.raises(ValueError, match="session key names agent 'ops', not 'main'"):
        resolve_session_key("main", "agent:ops:x")


@pytest.mark.parametrize("bad_value", ["", "   ", "a\tb", "a\x7fb", "x" * 513])
def test_resolve_session_key_rejects_empty_control_and_overlong_values(bad_value):
    with pytest.raises(ValueError):
        resolve_session_key("main", bad_value)


def test_resolve_session_key_rejects_a_value_that_becomes_overlong_with_the_prefix():
    with pytest.raises(ValueError, match="longer than 512"):
        resolve_session_key("main", "x" * 505)


def test_openai_session_key_is_fresh_per_request_without_user():
    first, second = openai_session_key("main"), openai_session_key("main")
    assert first != second
    agent_id, rest = parse_session_key(first)
    assert agent_id == "main"
    kind, _, value = rest.partition(":")
    assert kind == "openai"
    uuid.UUID(value)


def test_openai_session_key_is_stable_per_user():
    assert openai_session_key("main", "alice") == "agent:main:openai-user:alice"
    assert openai_session_key("main", "alice") == openai_session_key("main", "alice")


def test_openai_session_key_rejects_a_user_with_control_characters():
    with pytest.raises(ValueError):
        openai_session_key("main", "al\nice")


# --- transcripts --------------------------------------------------------------------------

def test_transcript_round_trip_writes_header_once_and_compact_lines(tmp_path):
    path = tmp_path / "s1.jsonl"
    header = session_header("s1", "agent:main:x", 1000)
    append_records(path, [user("héllo \u2028 there")], header=header)
    append_records(path, [assistant("hi", usage={"input_tokens": 3}, model="m")], header=header)

    records = list(read_transcript(path).records)
    assert records == [
        {"type": "session", "sessionId": "s1", "sessionKey": "agent:main:x", "createdAt": 1000},
        user("héllo \u2028 there"),
        assistant("hi", usage={"input_tokens": 3}, model="m"),
    ]
    raw = (tmp_path / "s1.jsonl").read_bytes()
    assert raw.count(b"\n") == 3 and raw.endswith(b"\n")
    assert b", " not in raw and "héllo".encode() in raw


def test_transcript_of_a_missing_file_is_empty(tmp_path):
    assert read_transcript(tmp_path / "nope.jsonl").records == ()


def test_torn_last_line_is_skipped_and_next_append_starts_on_a_fresh_line(
        tmp_path, captured_log_events):
    path = tmp_path / "s.jsonl"
    append_records(path, [user("one")])
    with open(path, "ab") as transcript_file:
        transcript_file.write(b'{"type":"message","role":"assist')  # crash mid-write

    contents = read_transcript(path)
    assert contents.records == (user("one"),)
    assert contents.torn_last_line and contents.skipped_lines == 1
    assert warnings_about(captured_log_events, "torn last line")

    append_records(path, [user("two")])
    contents = read_transcript(path)
    assert contents.records == (user("one"), user("two"))
    assert not contents.torn_last_line and contents.skipped_lines == 1


def test_complete_last_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(json.dumps(user("one")).encode())
    assert read_transcript(path).records == (user("one"),)
    append_records(path, [user("two")])
    assert read_transcript(path).records == (user("one"), user("two"))


def test_garbage_middle_line_is_skipped_with_a_warning(tmp_path, captured_log_events):
    path = tmp_path / "s.jsonl"
    path.write_bytes(json.dumps(user("one")).encode() + b"\nnot json\xff\n[1,2]\n\n"
                     + json.dumps(user("two")).encode() + b"\n")
    contents = read_transcript(path)
    assert contents.records == (user("one"), user("two"))
    assert contents.skipped_lines == 2 and not contents.torn_last_line
    assert len(warnings_about(captured_log_events, "unreadable line")) == 2


def test_history_messages_maps_turns_and_keeps_only_nonempty_partial_answers():
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]
    records = [
        {"type": "session", "sessionId": "s", "sessionKey": "agent:main:x", "createdAt": 0},
        user("q1"),
        assistant("a1"),
        user(parts),
        assistant("partial", status="aborted"),
        user("q3"),
        assistant("", status="error", error="boom"),
        user("q4"),
        assistant([{"type": "text", "text": "a"}, {"type": "text", "text": "4"}]),
    ]
    assert history_messages(records) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": "partial"},
        {"role": "user", "content": "q3"},
        {"role": "user", "content": "q4"},
        {"role": "assistant", "content": "a4"},
    ]


# --- store --------------------------------------------------------------------------------

KEY = "agent:main:chat"


def sessions_dir(state_dir, agent_id="main"):
    return state_dir / "agents" / agent_id / "sessions"


def index_on_disk(state_dir, agent_id="main"):
    """The index as a restarted gateway would read it (snapshot plus journal)."""
    return load_index_document(sessions_dir(state_dir, agent_id), agent_id)


@pytest_twisted.ensureDeferred
async def test_get_or_create_creates_once_and_persists(tmp_path):
    store = SessionStore(tmp_path / "state")
    entry = await store.get_or_create(KEY)
    assert isinstance(entry, SessionEntry)
    assert (entry.key, entry.agent_id, entry.total_tokens) == (KEY, "main", 0)
    assert len(entry.session_id) == 32 and entry.created_at == entry.updated_at > 0
    assert await store.get_or_create(KEY) == entry
    assert await store.get("agent:main:other") is None

    assert index_on_disk(tmp_path / "state") == {KEY: entry.to_json()}


@pytest_twisted.ensureDeferred
async def test_record_turn_appends_transcript_and_accumulates_tokens(tmp_path):
    store = SessionStore(tmp_path)
    await store.record_turn(KEY, [user("q1"), assistant("a1")], model="p/m1",
                            usage={"input_tokens": 10, "output_tokens": 5})
    entry = await store.record_turn(KEY, [user("q2"), assistant("a2")], model="p/m2",
                                    usage={"prompt_tokens": 1, "completion_tokens": 2})
    assert (entry.model, entry.input_tokens, entry.output_tokens, entry.total_tokens) == (
        "p/m2", 11, 7, 18)

    history = await store.load_history(KEY)
    assert history[0]["type"] == "session" and history[0]["sessionId"] == entry.session_id
    assert history_messages(history) == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
    ]
    await store.flush()   # its batched index save, not left to a timer


@pytest_twisted.ensureDeferred
async def test_load_history_of_an_unknown_session_is_empty(tmp_path):
    assert await SessionStore(tmp_path).load_history(KEY) == []


@pytest_twisted.ensureDeferred
async def test_malformed_key_fails_the_deferred_with_value_error(tmp_path):
    with pytest.raises(ValueError):
        await SessionStore(tmp_path).get_or_create("main:chat")


@pytest_twisted.ensureDeferred
async def test_the_index_is_journalled_in_private_directories(tmp_path):
    state_dir = tmp_path / "state"
    store = SessionStore(state_dir)
    for n in range(3):
        await store.record_turn(KEY, [user("q%d" % n)])
    entry = await store.get(KEY)

    directory = sessions_dir(state_dir)
    assert sorted(os.listdir(directory)) == sorted(["sessions.journal",
                                                    entry.session_id + ".jsonl"])
    for path in (state_dir, state_dir / "agents", state_dir / "agents" / "main", directory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((directory / "sessions.journal").stat().st_mode) == 0o600
    assert index_on_disk(state_dir)[KEY]["sessionId"] == entry.session_id
    await store.flush()   # its batched index save, not left to a timer


@pytest_twisted.ensureDeferred
async def test_corrupt_sessions_json_is_moved_aside_and_store_starts_empty(
        tmp_path, captured_log_events):
    directory = sessions_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "sessions.json").write_text('{"agent:main:chat": {"sessionId": ')

    store = SessionStore(tmp_path)
    assert await store.get(KEY) is None
    entry = await store.get_or_create(KEY)

    asides = [name for name in os.listdir(directory) if name.startswith("sessions.json.corrupt-")]
    assert len(asides) == 1
    assert (directory / asides[0]).read_text().startswith('{"agent:main:chat"')
    assert index_on_disk(tmp_path)[KEY]["sessionId"] == entry.session_id
    assert warnings_about(captured_log_events, "corrupt")


@pytest_twisted.ensureDeferred
async def test_entry_with_path_like_session_id_is_dropped_on_load(tmp_path):
    directory = sessions_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "sessions.json").write_text(json.dumps({
        KEY: {"sessionId": "../../etc/passwd", "createdAt": 1, "updatedAt": 1},
        "agent:main:good": {"sessionId": "abc", "createdAt": 1, "updatedAt": 2},
    }))
    store = SessionStore(tmp_path)
    assert await store.get(KEY) is None
    assert (await store.get("agent:main:good")).session_id == "abc"


@pytest_twisted.ensureDeferred
async def test_reset_starts_a_new_session_and_keeps_the_old_transcript(tmp_path):
    store = SessionStore(tmp_path)
    old = await store.record_turn(KEY, [user("q")], usage={"input_tokens": 4})
    assert await store.reset(KEY) is True
    new = await store.get(KEY)
    assert new.session_id != old.session_id and new.total_tokens == 0
    assert await store.load_history(KEY) == []
    assert (sessions_dir(tmp_path) / (old.session_id + ".jsonl")).exists()
    assert await store.reset("agent:main:never") is False


@pytest_twisted.ensureDeferred
async def test_delete_removes_entry_and_sets_transcript_aside(tmp_path):
    store = SessionStore(tmp_path)
    entry = await store.record_turn(KEY, [user("q")])
    assert await store.delete(KEY) is True
    assert await store.get(KEY) is None
    names = os.listdir(sessions_dir(tmp_path))
    assert entry.session_id + ".jsonl" not in names
    assert any(name.startswith(entry.session_id + ".jsonl.deleted-") for name in names)
    assert await store.delete(KEY) is False


@pytest_twisted.ensureDeferred
async def test_list_sessions_is_newest_first_and_filters_by_agent(tmp_path):
    store = SessionStore(tmp_path)
    await store.record_turn("agent:main:a", [user("1")])
    await store.record_turn("agent:ops:b", [user("2")])
    await store.record_turn("agent:main:c", [user("3")])
    await store.record_turn("agent:main:a", [user("4")])  # a is now the newest

    everything = await store.list_sessions()
    updated = [entry.updated_at for entry in everything]
    assert updated == sorted(updated, reverse=True)
    assert {entry.key for entry in everything} == {"agent:main:a", "agent:ops:b",
                                                   "agent:main:c"}
    assert [entry.key for entry in await store.list_sessions("ops")] == ["agent:ops:b"]
    assert await store.list_sessions("nobody") == []

    await store.flush()  # updates of existing sessions are written in batches
    after_restart = await SessionStore(tmp_path).list_sessions()
    assert after_restart == everything


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_turns_on_one_session_land_in_call_order(tmp_path):
    store = SessionStore(tmp_path)
    pending = [store.record_turn(KEY, [user("q%d" % n, run_id=str(n)),
                                       assistant("a%d" % n, run_id=str(n))],
                                 usage={"input_tokens": 1, "output_tokens": 1})
               for n in range(50)]
    await defer.gatherResults(pending, consumeErrors=True)

    messages = [record for record in await store.load_history(KEY)
                if record["type"] == "message"]
    assert [record["content"] for record in messages] == [
        text for n in range(50) for text in ("q%d" % n, "a%d" % n)]
    assert (await store.get(KEY)).total_tokens == 100
    await store.flush()   # its batched index save, not left to a timer


@pytest_twisted.ensureDeferred
async def test_cancelling_a_record_turn_does_not_stop_or_reorder_the_write(tmp_path):
    store = SessionStore(tmp_path)
    first = store.record_turn(KEY, [user("first")])
    second = store.record_turn(KEY, [user("second")])
    first.cancel()
    with pytest.raises(defer.CancelledError):
        await first
    await second
    contents = [record["content"] for record in await store.load_history(KEY)
                if record["type"] == "message"]
    assert contents == ["first", "second"]
    await store.flush()   # its batched index save, not left to a timer


@pytest_twisted.ensureDeferred
async def test_sessions_and_transcripts_survive_a_restart(tmp_path):
    first_store = SessionStore(tmp_path)
    entry = await first_store.record_turn(KEY, [user("q"), assistant("a")], model="p/m",
                                          usage={"input_tokens": 2, "output_tokens": 3})

    restarted = SessionStore(tmp_path)
    assert await restarted.get(KEY) == entry
    assert history_messages(await restarted.load_history(KEY)) == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    later = await restarted.record_turn(KEY, [user("q2")])
    assert later.session_id == entry.session_id and later.total_tokens == 5
    await first_store.flush()   # its batched index save, not left to a timer
    await restarted.flush()   # its batched index save, not left to a timer


@pytest_twisted.ensureDeferred
async def test_disk_io_runs_off_the_reactor_thread(tmp_path, monkeypatch):
    assert threadable.isInIOThread()  # so the check below means something
    threads_seen = []

    def watched(function):
        def run(*args, **kwargs):
            threads_seen.append((function.__name__, threadable.isInIOThread()))
            return function(*args, **kwargs)
        return run

    for name in ("append_turn", "read_transcript_tail", "append_changes", "read_index"):
        monkeypatch.setattr(store_module, name, watched(getattr(store_module, name)))

    store = SessionStore(tmp_path)
    await store.record_turn(KEY, [user("q")])
    await SessionStore(tmp_path).load_history(KEY)
    assert {name for name, _ in threads_seen} == {
        "append_turn", "read_transcript_tail", "append_changes", "read_index"}
    assert not any(in_reactor_thread for _, in_reactor_thread in threads_seen)


@pytest_twisted.ensureDeferred
async def test_a_reply_with_a_lone_surrogate_is_recorded_and_reads_back_the_same(tmp_path):
    text = "broken \ud83d emoji"      # what json.loads makes of an upstream's "\ud83d"
    await SessionStore(tmp_path).record_turn(KEY, [user("q"), {
        "type": "message", "role": "assistant", "content": text}])
    history = await SessionStore(tmp_path).load_history(KEY)
    assert [r.get("content") for r in history if r["type"] == "message"] == ["q", text]


@pytest_twisted.ensureDeferred
async def test_token_totals_of_existing_sessions_are_written_in_one_batch(tmp_path):
    store = SessionStore(tmp_path)
    await store.record_turn(KEY, [user("q")], usage={"input_tokens": 1, "output_tokens": 1})
    for _ in range(5):
        await store.record_turn(KEY, [user("q")], usage={"input_tokens": 1,
                                                         "output_tokens": 1})
    assert index_on_disk(tmp_path)[KEY]["totalTokens"] == 2   # the batch is still pending
    await store.flush()
    assert index_on_disk(tmp_path)[KEY]["totalTokens"] == 12
