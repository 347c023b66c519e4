"""Fixtures that start real gateways on 127.0.0.1 port 0 inside the test reactor."""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, settings
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from moltbot_gw.config import parse_config, with_overrides
from moltbot_gw.service import GatewayService

# every test runs under the leak check: no socket, timer or logged error left behind
from .support.leaks import collect_earlier_garbage, no_leftovers  # noqa: F401
from .support.redis_server import (  # noqa: F401
    _shared_redis_url, private_redis, redis_link, redis_prefix, redis_url)

TOKEN = "test-token-0123456789"

# Hypothesis profiles. "ci" (loaded unless HYPOTHESIS_PROFILE or --hypothesis-profile names
# another) keeps the property suites bounded; "long" asks for 10,000 examples per test. Tests
# that set their own count (tests/test_fuzz.py) scale it with the loaded profile, since an
# explicit max_examples would otherwise win over any profile. Registered here, not in a test
# module, because pytest's Hypothesis plugin loads --hypothesis-profile before collection.
CI_EXAMPLES = 100
LONG_EXAMPLES = 10_000
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=LONG_EXAMPLES, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass
class RunningGateway:
    service: GatewayService
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def auth_headers(self) -> dict:
        return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest_twisted.async_yield_fixture
async def start_gateway(state_dir):
    """``await start_gateway(raw_config_dict)`` → a RunningGateway; stopped after the test.

    The token is ``TOKEN`` unless the config says otherwise."""
    running = []

    async def start(raw=None, env=None, **service_kwargs):
        raw = dict(raw or {})
        environment = {"CLAWDBOT_GATEWAY_TOKEN": TOKEN} if env is None else env
        config = with_overrides(parse_config(raw, env=environment, state_dir=state_dir), port=0)
        # e.g. fetcher=, or reactor= a wrapper (tests/fakes/internet.py)
        service = GatewayService(config, **{"reactor": reactor, **service_kwargs})
        service.startService()
        running.append(service)
        port = await service.when_listening()
        return RunningGateway(service, port.getHost().port)

    yield start
    for service in running:
        await service.stopService()


@pytest_twisted.async_yield_fixture
async def http():
    """A treq client whose connections close with each response (none outlive the test)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield treq.client.HTTPClient(Agent(reactor, pool=pool))
    await pool.closeCachedConnections()


CHAT_ENABLED = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}}}


@pytest_twisted.async_yield_fixture
async def upstream():
    """A scriptable fake OpenAI-compatible upstream on loopback; stopped after the test."""
    from .fakes import FakeOpenAI

    up = await FakeOpenAI.start(reactor)
    yield up
    await up.stop()
