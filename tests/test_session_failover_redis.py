"""``kill -9`` of one gateway process while it holds sessions' Redis locks (issue 16,
acceptance 4, the lock's part): two real daemons share one Redis; the sessions streaming on the
killed one take their next turn on the other once their leases have run out."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest

from moltbot_gw.sessions.keys import openai_session_key

from .support.daemon import GatewayDaemon
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
