"""Unit tests of the auth pieces: limiter (on a task.Clock), bearer parsing, proxies, token file."""
from __future__ import annotations

import ipaddress
import stat

import pytest
from twisted.internet.task import Clock

from moltbot_gw.auth import (BadForwardedFor, FailureLimiter, GatewayAuth, bearer_credential,
                             client_address, load_or_create_token)


def make_auth(clock, **kw):
    return GatewayAuth("token", "right", FailureLimiter(clock, 10, 60.0, **kw))


def test_ten_failures_block_the_address_until_the_window_ends():
    clock = Clock()
    auth = make_auth(clock)
    outcomes = [auth.authenticate("1.2.3.4", "wrong") for _ in range(11)]
    assert [o.ok for o in outcomes] == [False] * 11
    assert not any(o.rate_limited for o in outcomes[:10])
    assert outcomes[10].rate_limited and 59 <= outcomes[10].retry_after <= 60
    # blocked even with the right secret: guessing gains nothing while limited
    assert auth.authenticate("1.2.3.4", "right").rate_limited
    assert auth.authenticate("5.6.7.8", "right").ok  # other clients unaffected
    clock.advance(60)
    assert auth.authenticate("1.2.3.4", "right").ok


def test_missing_credential_is_refused_but_not_counted():
    auth = make_auth(Clock())
    for _ in range(20):
        assert not auth.authenticate("1.2.3.4", None).ok
    assert auth.authenticate("1.2.3.4", "right").ok


def test_limiter_memory_is_bounded_and_entries_expire():
    clock = Clock()
    limiter = FailureLimiter(clock, 10, 60.0, max_entries=1000)
    for i in range(5000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 1000
    clock.advance(61)
    limiter.record_failure("10.9.9.9")
    assert len(limiter) == 1


def test_bearer_credential_parsing():
    assert bearer_credential("Bearer abc") == "abc"
    assert bearer_credential("bearer   abc  ") == "abc"
    assert bearer_credential("Basic abc") is None
    assert bearer_credential("Bearer ") is None
    assert bearer_credential(None) is None


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address("10.0.0.1", "203.0.113.5", trusted) == "203.0.113.5"
    assert client_address("10.0.0.1", "198.51.100.1, 203.0.113.5, 10.0.0.2",
                          trusted) == "203.0.113.5"
    assert client_address("192.0.2.9", "203.0.113.5", trusted) == "192.0.2.9"
    # a hop that is not an IP is the proxy's client's doing, not the proxy's (item 3)
    with pytest.raises(BadForwardedFor):
        client_address("10.0.0.1", "garbage", trusted)


def test_generated_token_is_stored_0600_and_reused(tmp_path):
    token, created = load_or_create_token(tmp_path / "st")
    assert created and len(token) >= 32
    path = tmp_path / "st" / "gateway.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path / "st") == (token, False)
