"""What one stored turn costs the file store, counted rather than timed (issue 16: a stored
turn was CPU-bound in ``sessions_c16``): the records are encoded once, an existing
transcript's directories are not made again, a cached tail grows in place, and building a
turn's history looks at each record a bounded number of times. The short ways taken for
plain text give the same history as the general ones."""
from __future__ import annotations

import json
import os

import pytest_twisted

from moltbot_gw.agents.history_window import cap_history, history_budget
from moltbot_gw.config import HistoryConfig
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.tail_cache import TailCache
from moltbot_gw.sessions.transcript import history_messages, read_transcript, transcript_path

from .test_tail_history import CountingRecord

KEY = "agent:main:chat"


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": text}


def reply(text) -> dict:
    return {"type": "message", "role": "assistant", "content": text}


@pytest_twisted.ensureDeferred
async def test_a_turn_to_an_existing_transcript_is_json_encoded_once(tmp_path, monkeypatch):
    store = SessionStore(tmp_path)
    entry = await store.record_turn(KEY, [user("first")])
    encoded = []
    real_dumps = json.dumps

    def counting_dumps(value, *args, **kwargs):
        if isinstance(value, dict) and value.get("content") == "second":
            encoded.append(value)
        return real_dumps(value, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", counting_dumps)
    await store.record_turn(KEY, [user("second")])
    assert len(encoded) == 1
    path = transcript_path(tmp_path / "agents" / "main" / "sessions", entry.session_id)
    contents = read_transcript(path)
    assert [r.get("content") for r in contents.records] == [None, "first", "second"]


@pytest_twisted.ensureDeferred
async def test_appending_to_an_existing_transcript_makes_no_directories(tmp_path, monkeypatch):
    store = SessionStore(tmp_path)
    await store.record_turn(KEY, [user("first")])
    made = []
    real_mkdir = os.mkdir

    def watched_mkdir(path, *args, **kwargs):
        made.append(str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", watched_mkdir)
    await store.record_turn(KEY, [user("second")])
    assert made == []
    # a first turn still makes its directories
    await store.record_turn("agent:other:chat", [user("hello")])
    assert any(path.endswith(os.path.join("other", "sessions")) for path in made)
    assert [r["content"] for r in await store.load_history("agent:other:chat")
            if r["type"] == "message"] == ["hello"]
    await store.flush()


def test_a_cached_tail_grows_in_place_within_its_budget():
    cache = TailCache(100)
    records = [{"type": "session"}]
    cache.put("s", records, 10, True)
    cache.extend("s", [user("q")], 5)
    tail = cache.get("s")
    assert tail is not None and tail.records is records   # not copied each turn
    assert records[-1]["content"] == "q" and tail.size == 15 and tail.whole
    cache.extend("s", [user("too big")], 90)   # past the budget: no longer kept
    assert cache.get("s") is None


def test_building_a_turns_history_reads_each_record_a_few_times():
    records = [CountingRecord(type="session")]
    for turn in range(50):
        records += [CountingRecord(user(f"question {turn}")),
                    CountingRecord(reply(f"answer {turn}"))]
    cache = TailCache(1 << 20)
    cache.put("s", records, 1000, True)
    limits = HistoryConfig()
    CountingRecord.reads = 0
    served = cache.get("s").serve(history_budget(limits))
    history = cap_history(history_messages(served), limits)
    assert len(history) == 100 and history[-1] == {"role": "assistant", "content": "answer 49"}
    # the budget, the branch walk and the message each read a record's fields once or twice
    assert CountingRecord.reads / 100 <= 8


def test_plain_text_turns_give_the_history_their_text_parts_would():
    def as_parts(record: dict) -> dict:
        return {**record, "content": [{"type": "text", "text": record["content"]}]}

    plain = [{"type": "session"}, user("q1"), reply("a1"), reply(""), user("q2"),
             {"type": "message", "role": "assistant", "content": "",
              "tool_calls": [{"id": "c1", "type": "function",
                              "function": {"name": "f", "arguments": "{}"}}]},
             {"type": "message", "role": "tool", "tool_call_id": "c1", "content": "r"},
             reply("a2"), {"type": "branch", "drop": 1, "keep": 5}, reply("a2 again"),
             user("q3")]
    parts = [as_parts(r) if r.get("role") in ("user", "assistant") and r["content"] else r
             for r in plain]
    from_plain, from_parts = history_messages(plain), history_messages(parts)
    assert [m["role"] for m in from_plain] == ["user", "assistant", "user", "assistant",
                                               "tool", "assistant", "user"]
    assert [m.get("content") for m in from_plain[:2]] == ["q1", "a1"]
    # user parts stay parts; everything else becomes the same text
    assert [m.get("content") for m in from_parts[:2]] == [[{"type": "text", "text": "q1"}],
                                                          "a1"]
    assert from_plain[2:] == [
        m if m["role"] != "user" else {**m, "content": m["content"][0]["text"]}
        for m in from_parts[2:]]
    assert from_plain[3]["tool_calls"][0]["id"] == "c1" and from_plain[5]["content"] == "a2 again"
    assert history_messages(plain[:6]) == [from_plain[0], from_plain[1], from_plain[2]]
