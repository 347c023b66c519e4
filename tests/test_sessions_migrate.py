"""``moltbot-gw sessions migrate``: file -> Redis -> file keeps every entry and record, a
second run copies nothing, and it refuses while a gateway holds the state dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest_twisted
from twisted.internet import reactor, threads

from moltbot_gw.sessions.redis_store import RedisSessionStore
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.state_dir import StateDirLock

KEYS = ("agent:main:main", "agent:main:other", "agent:beta:openai-user:alice")


def user(text):
    return {"type": "message", "role": "user", "content": text, "ts": 1}


def reply(text):
    return {"type": "message", "role": "assistant", "content": text, "ts": 2,
            "status": "ok", "usage": {"prompt_tokens": 1}}


def migrate(tmp_path, state_dir, redis_url, redis_prefix, source, target):
    config = tmp_path / "moltbot.json"
    config.write_text(json.dumps({"session": {"store": {"redis": {
        "url": redis_url, "keyPrefix": redis_prefix}}}}))
    env = {**os.environ, "MOLTBOT_STATE_DIR": str(state_dir)}
    command = [sys.executable, "-m", "moltbot_gw.cli", "sessions", "migrate",
               "--from", source, "--to", target, "--config", str(config)]
    return threads.deferToThread(subprocess.run, command, env=env, capture_output=True,
                                 text=True, timeout=60)


async def snapshot(store):
    """Every session's entry and records, by key."""
    return {entry.key: (entry, await store.load_history(entry.key))
            for entry in await store.list_sessions()}


@pytest_twisted.ensureDeferred
async def test_file_to_redis_to_file_keeps_everything_and_twice_copies_nothing(
        tmp_path, redis_url, redis_prefix, redis_link):
    source_dir = tmp_path / "source"
    files = SessionStore(source_dir, reactor)
    for n, key in enumerate(KEYS):
        for i in range(n + 2):
            await files.record_turn(key, [user(f"{key} q{i}"), reply(f"a{i}")], model="m",
                                    usage={"prompt_tokens": 2, "completion_tokens": 3})
    await files.record_turn(KEYS[0], [{"type": "branch", "drop": 2, "keep": 1, "ts": 3},
                                      user("edited")])
    await files.get_or_create("agent:main:empty")     # a session without a transcript
    await files.flush()
    original = await snapshot(files)

    done = await migrate(tmp_path, source_dir, redis_url, redis_prefix, "file", "redis")
    assert done.returncode == 0, done.stderr
    assert "copied 4 session(s)" in done.stdout
    in_redis = await snapshot(RedisSessionStore(redis_link))
    assert in_redis == original
    again = await migrate(tmp_path, source_dir, redis_url, redis_prefix, "file", "redis")
    assert again.returncode == 0, again.stderr
    assert "copied 0 session(s) (0 record(s)), 4 already there" in again.stdout
    assert await snapshot(RedisSessionStore(redis_link)) == original

    back_dir = tmp_path / "back"
    back = await migrate(tmp_path, back_dir, redis_url, redis_prefix, "redis", "file")
    assert back.returncode == 0, back.stderr
    assert await snapshot(SessionStore(back_dir, reactor)) == original
    twice = await migrate(tmp_path, back_dir, redis_url, redis_prefix, "redis", "file")
    assert "copied 0 session(s) (0 record(s)), 4 already there" in twice.stdout
    assert await snapshot(SessionStore(back_dir, reactor)) == original


@pytest_twisted.ensureDeferred
async def test_a_migration_cut_short_is_completed_by_the_next_run(
        tmp_path, redis_url, redis_prefix, redis_link):
    source_dir = tmp_path / "source"
    files = SessionStore(source_dir, reactor)
    for i in range(5):
        await files.record_turn(KEYS[0], [user(f"q{i}"), reply(f"a{i}")])
    await files.flush()
    original = await snapshot(files)
    store = RedisSessionStore(redis_link)
    entry = original[KEYS[0]][0]
    stream = store.transcript_key(entry.session_id)
    for record in original[KEYS[0]][1][:4]:      # as if the copy stopped midway
        await redis_link.execute("XADD", stream, "*", "r", json.dumps(record))
    done = await migrate(tmp_path, source_dir, redis_url, redis_prefix, "file", "redis")
    assert done.returncode == 0, done.stderr
    assert "copied 1 session(s) (7 record(s))" in done.stdout
    assert await snapshot(store) == original


@pytest_twisted.ensureDeferred
async def test_migrate_refuses_while_a_gateway_holds_the_state_dir(
        tmp_path, redis_url, redis_prefix):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    lock = StateDirLock.acquire(state_dir)
    try:
        refused = await migrate(tmp_path, state_dir, redis_url, redis_prefix, "redis", "file")
    finally:
        lock.release()
    assert refused.returncode == 1
    assert "another gateway" in refused.stderr
