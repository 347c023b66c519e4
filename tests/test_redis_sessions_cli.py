"""The commands that run outside the gateway use the configured session store: ``agent
--local`` continues a session kept in Redis, ``sessions prune`` applies retention there."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest_twisted
from twisted.internet import reactor, threads

from moltbot_gw.config import SessionConfig
from moltbot_gw.redis import RedisLink
from moltbot_gw.sessions.redis_store import RedisSessionStore


def run_cli(tmp_path, raw_config, *args):
    config = tmp_path / "moltbot.json"
    config.write_text(json.dumps(raw_config))
    env = {**os.environ, "MOLTBOT_STATE_DIR": str(tmp_path / "state")}
    command = [sys.executable, "-m", "moltbot_gw.cli", *args, "--config", str(config)]
    return threads.deferToThread(subprocess.run, command, env=env, capture_output=True,
                                 text=True, timeout=60)


@pytest_twisted.async_yield_fixture
async def store(redis_url, redis_prefix):
    link = RedisLink(redis_url, reactor, key_prefix=redis_prefix)
    await link.connect()
    yield RedisSessionStore(link, SessionConfig(maxSessionsPerAgent=1))
    keys = await link.execute("KEYS", redis_prefix + "*")
    if keys:
        await link.execute("DEL", *keys)
    await link.disconnect()


def redis_session(redis_url, redis_prefix, **session):
    return {"session": {**session, "store": {"backend": "redis", "redis": {
        "url": redis_url, "keyPrefix": redis_prefix}}},
        "agents": {"list": [{"id": "main", "default": True, "model": "builtin/echo"}]}}


@pytest_twisted.ensureDeferred
async def test_agent_local_records_its_turn_in_redis(tmp_path, redis_url, redis_prefix, store):
    done = await run_cli(tmp_path, redis_session(redis_url, redis_prefix),
                         "agent", "--local", "--message", "hello redis", "--session-key",
                         "cli-test", "--json")
    assert done.returncode == 0, done.stderr
    history = await store.load_history("agent:main:cli-test")
    assert [r.get("content") for r in history if r.get("role") == "user"] == ["hello redis"]
    assert not (tmp_path / "state" / "agents").exists()


@pytest_twisted.ensureDeferred
async def test_sessions_prune_applies_retention_in_redis(tmp_path, redis_url, redis_prefix,
                                                          store):
    unlimited = RedisSessionStore(store.link)
    for key in ("agent:main:a", "agent:main:b", "agent:main:c"):
        await unlimited.record_turn(key, [{"type": "message", "role": "user", "content": key}])
    raw = redis_session(redis_url, redis_prefix, maxSessionsPerAgent=1)
    dry = await run_cli(tmp_path, raw, "sessions", "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "agent main: would prune 2 session(s), kept 1" in dry.stdout
    assert len(await unlimited.list_sessions("main")) == 3
    done = await run_cli(tmp_path, raw, "sessions", "prune")
    assert done.returncode == 0, done.stderr
    assert "agent main: pruned 2 session(s), kept 1" in done.stdout
    assert [e.key for e in await unlimited.list_sessions("main")] == ["agent:main:c"]
