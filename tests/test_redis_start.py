"""The daemon and Redis at start: an unreachable Redis is a refusal to start naming the URL
with its password masked; a reachable one is served."""
from __future__ import annotations

import pytest

from .support.daemon import GatewayDaemon
from .support.raw_http import request


def _config(url: str) -> dict:
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "session": {"store": {"backend": "redis",
                                  "redis": {"url": url, "connectTimeoutSeconds": 1}}}}


def test_daemon_refuses_to_start_when_redis_does_not_answer(tmp_path, private_redis):
    port = private_redis.port
    private_redis.stop()
    daemon = GatewayDaemon(tmp_path, _config(f"redis://:hunter2@127.0.0.1:{port}/0"))
    with pytest.raises(AssertionError, match="did not start"):
        daemon.start(timeout=20)
    assert daemon.proc.returncode == 1
    log = daemon.log_text()
    assert f"Redis at redis://:***@127.0.0.1:{port}/0 is unreachable" in log
    assert "hunter2" not in log


def test_daemon_refuses_a_redis_that_rejects_its_password(tmp_path, private_redis):
    daemon = GatewayDaemon(tmp_path, _config(
        f"redis://:wrong-pass@127.0.0.1:{private_redis.port}/0"))
    with pytest.raises(AssertionError, match="did not start"):
        daemon.start(timeout=20)
    assert "refused the credentials" in daemon.log_text()
    assert "wrong-pass" not in daemon.log_text()


def test_daemon_starts_and_serves_with_a_live_redis(tmp_path, redis_url):
    daemon = GatewayDaemon(tmp_path, _config(redis_url))
    daemon.start()
    try:
        assert request(daemon.port, "GET", "/health").status == 200
    finally:
        assert daemon.terminate() == 0
