"""How the gateway is put together (issue 14): one auth wrapper per transport with an explicit
interface, one WebSocket-upgrade check, listening through the endpoint's public API, and a
reload that hands new objects to the site instead of patching live ones."""
from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from moltbot_gw.auth import GatewayAuth
from moltbot_gw.config import parse_config, with_overrides
from moltbot_gw.metrics import CountingAuth
from moltbot_gw.service import GatewayService
from moltbot_gw.web import GatewayRoot, is_websocket_upgrade

from .conftest import TOKEN

ENV = {"CLAWDBOT_GATEWAY_TOKEN": TOKEN}


def test_counting_auth_offers_only_what_the_transports_use_and_counts_refusals(state_dir):
    config = parse_config({}, env=ENV, state_dir=state_dir)
    refused = []
    auth = CountingAuth(GatewayAuth.from_config(config, Clock()), lambda: refused.append(1))
    assert auth.authenticate("10.0.0.1", TOKEN).ok and refused == []
    assert not auth.authenticate("10.0.0.1", "wrong").ok and refused == [1]
    auth.charge("10.0.0.2")
    assert refused == [1, 1]
    assert auth.trusted_proxies == ()
    with pytest.raises(AttributeError):
        auth.reconfigure  # noqa: B018 - no silent pass-through to GatewayAuth


@pytest.mark.parametrize("value,upgrade", [(b"websocket", True), (b" WebSocket \t", True),
                                           (b"h2c", False), (None, False)])
def test_one_websocket_upgrade_check_for_the_site_and_the_root(value, upgrade):
    request = DummyRequest([b""])
    if value is not None:
        request.requestHeaders.setRawHeaders(b"upgrade", [value])
    assert is_websocket_upgrade(request) is upgrade


@pytest_twisted.ensureDeferred
async def test_a_reload_gives_the_site_a_new_root_and_keeps_the_response_index(start_gateway,
                                                                               state_dir):
    gw = await start_gateway()
    service = gw.service
    before_root, index = service.site.resource, service.response_index
    assert before_root.metrics_resource is None
    raw = {"gateway": {"metrics": {"enabled": True},
                       "http": {"endpoints": {"responses": {"enabled": True,
                                                            "maxStoredResponses": 7}}}}}
    service.reload(with_overrides(parse_config(raw, env=ENV, state_dir=state_dir), port=0))
    root = service.site.resource
    assert isinstance(root, GatewayRoot) and root is not before_root
    assert root.metrics_resource is not None
    assert root.metrics_resource.gateway_metrics is service.gateway_metrics
    assert service.response_index is index and index.capacity == 7
    assert service.openai.responses_endpoint.responses is index


@pytest_twisted.ensureDeferred
async def test_when_listening_fires_with_the_port_and_a_taken_port_fails_at_start(state_dir):
    config = parse_config({}, env=ENV, state_dir=state_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = with_overrides(config, port=taken.getsockname()[1])
        service = GatewayService(busy, reactor=reactor)
        with pytest.raises(CannotListenError):
            service.startService()
        with pytest.raises(CannotListenError):
            await service.when_listening()
        await service.stopService()
    service = GatewayService(with_overrides(config, port=0), reactor=reactor)
    waiting = service.when_listening()         # asked before it listens
    service.startService()
    try:
        port = await waiting
        assert port is service.port and port.getHost().port > 0
        assert (await service.when_listening()) is port
    finally:
        await service.stopService()
