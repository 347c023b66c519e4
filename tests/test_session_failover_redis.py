"""``kill -9`` of one gateway process while it holds sessions' Redis locks (issue 16,
acceptance 4): two real daemons share one Redis; the sessions streaming on the killed one take
their next turn on the other once their leases have run out, and every turn a client saw
acknowledged (``[DONE]``) is in Redis, read directly (not through a gateway)."""
from __future__ import annotations

import copy
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from moltbot_gw.sessions.keys import openai_session_key

from .support.daemon import GatewayDaemon
from .support.redis_sync import stored_records, turn_stored
from .test_crash_safety import Stream, Upstream, daemon_config, wait_until

LEASE = 2.0
USERS = [f"failover-{i:02d}" for i in range(20)]


@pytest.fixture
def slow_upstream():
    up = Upstream(slow_interval=0.15)        # a streamed answer takes about 1.5 s
    yield up
    up.stop()


def redis_daemon_config(up: Upstream, url: str, prefix: str) -> dict:
    config = daemon_config(up)
    config["session"] = {"store": {"backend": "redis", "redis": {
        "url": url, "keyPrefix": prefix, "lockLeaseSeconds": LEASE}}}
    return config


def redis_get(url: str, key: str):
    """``GET key`` over a plain socket (this test runs outside the reactor)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port or 6379), timeout=5) as s:
        s.sendall(f"*2\r\n$3\r\nGET\r\n${len(key.encode())}\r\n{key}\r\n".encode())
        reply = b""
        while not (reply.startswith(b"$-1\r\n") or reply.count(b"\r\n") >= 2):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    if not reply.startswith(b"$") or reply.startswith(b"$-1"):
        return None
    return reply.split(b"\r\n")[1].decode()


def test_sessions_of_a_killed_gateway_go_on_on_another_after_the_lease(
        tmp_path, slow_upstream, redis_url, redis_prefix):
    config = redis_daemon_config(slow_upstream, redis_url, redis_prefix)
    a, b = GatewayDaemon(tmp_path / "a", config), GatewayDaemon(tmp_path / "b", config)
    port_a, port_b = a.start(), b.start()
    try:
        first = [Stream(port_a, i, user).start() for i, user in enumerate(USERS)]
        assert wait_until(lambda: all(s.started.is_set() for s in first), timeout=20)
        locks = [redis_prefix + "lock:" + openai_session_key("main", user) for user in USERS]
        held = [redis_get(redis_url, key) for key in locks]
        assert all(value is not None for value in held), held     # A holds every session
        a.kill()
        killed_at = time.monotonic()
        after = [Stream(port_b, i, user).start() for i, user in enumerate(USERS)]
        assert wait_until(lambda: all(s.finished.is_set() for s in after), timeout=30)
        took = time.monotonic() - killed_at
        assert all(s.done for s in after), [s.raw[-200:] for s in after if not s.done]
        # each waited for A's lease to run out (at most LEASE), then streamed (~1.5 s)
        assert took < LEASE + 10, took
        now = [redis_get(redis_url, key) for key in locks]
        assert all(value is None or value not in held for value in now)
    finally:
        if a.alive():
            a.kill()
        b.terminate()


# --- acceptance 4 in full: 50 streams, some acknowledged, some cut, all found / continued ----

SESSIONS = 50


class TimedStream(Stream):
    """A ``Stream`` that notes (monotonic) when its connection ended."""

    ended_at: float = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ended = threading.Event()

    def _run(self) -> None:
        super()._run()
        self.ended_at = time.monotonic()
        self.ended.set()


def with_main_model(config: dict, model: str) -> dict:
    """The same config with agent ``main`` on another model (the same session keys)."""
    changed = copy.deepcopy(config)
    for agent in changed["agents"]["list"]:
        if agent["id"] == "main":
            agent["model"] = model
    return changed


def test_kill_9_under_50_streams_keeps_every_acknowledged_turn_and_b_goes_on(
        tmp_path, slow_upstream, private_redis):
    prefix = "acc4:"
    users = [f"acc4-{i:02d}" for i in range(SESSIONS)]
    keys = [openai_session_key("main", user) for user in users]
    config = redis_daemon_config(slow_upstream, private_redis.url, prefix)
    # B answers from the fast model: its turn takes the lock wait and little else
    a = GatewayDaemon(tmp_path / "a", config)
    b = GatewayDaemon(tmp_path / "b", with_main_model(config, "fast/m"))
    port_a, port_b = a.start(), b.start()
    try:
        # turn 1 of every session, acknowledged on A
        first = [Stream(port_a, i, user).start() for i, user in enumerate(users)]
        assert wait_until(lambda: all(s.finished.is_set() for s in first), timeout=30)
        assert all(s.done for s in first), [(s.status, s.error) for s in first if not s.done]

        # turn 2: 50 concurrent streams on A, started 40 ms apart (each ~1.5 s long), so at
        # the kill some have seen [DONE] and some are mid-stream
        second = [TimedStream(port_a, 100 + i, user) for i, user in enumerate(users)]
        for i, stream in enumerate(second):
            stream.start(delay=i * 0.04)

        def mid_way():
            done = sum(s.done for s in second)
            streaming = sum(s.started.is_set() and not s.finished.is_set() for s in second)
            return done >= 8 and streaming >= 10

        assert wait_until(mid_way, timeout=30), [(s.status, s.error) for s in second]
        a.kill()
        killed_at = time.monotonic()
        assert wait_until(lambda: all(s.finished.is_set() for s in second), timeout=35)
        acknowledged = [s for s in second if s.done]
        cut = [s for s in second if s.started.is_set() and not s.done]
        assert acknowledged and cut
        # the client of a stream cut mid-way sees its connection drop: no [DONE]
        assert all(s.status == 200 and b"data: [DONE]" not in s.raw for s in cut)

        # every acknowledged turn (all turn 1s, the completed turn 2s) is in Redis
        stored = {key: stored_records(private_redis.url, prefix, "main", key) for key in keys}
        missing = [s.user for s in first + acknowledged
                   if not turn_stored(stored[openai_session_key("main", s.user)], s.prompt)]
        assert missing == []

        # turn 3 of every session on B: each once A's lease has run out, well within bound
        third = [TimedStream(port_b, 200 + i, user) for i, user in enumerate(users)]
        for stream in third:
            stream.start()
        assert wait_until(lambda: all(s.ended.is_set() for s in third), timeout=30)
        assert all(s.done for s in third), [(s.raw[-300:], s.error) for s in third if not s.done]
        took = max(s.ended_at for s in third) - killed_at
        assert took < LEASE + 8, took

        # B's turn continued each session: the same stored transcript now holds, in order,
        # every acknowledged turn of that session and then B's turn (B read it as history)
        acknowledged_users = {s.user for s in acknowledged}
        for i, user in enumerate(users):
            records = stored_records(private_redis.url, prefix, "main", keys[i])
            wanted = [first[i].prompt]
            if user in acknowledged_users:
                wanted.append(second[i].prompt)
            assert all(turn_stored(records, prompt) for prompt in wanted + [third[i].prompt])
            said = [r.get("content") for r in records
                    if r.get("type") == "message" and r.get("role") == "user"]
            assert said.index(third[i].prompt) > max(said.index(p) for p in wanted), said
        print(f"\nkill -9 of A: {len(acknowledged)} turn 2s acknowledged, {len(cut)} cut "
              f"mid-stream; all {SESSIONS} sessions went on on B within {took:.2f} s of the kill")
        assert "Unhandled Error" not in b.log_text(), b.log_text()[-3000:]
    finally:
        if a.alive():
            a.kill()
        b.terminate()
