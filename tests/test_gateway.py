"""End-to-end tests of the gateway port: liveness, errors, auth limiter, body limit, and
HTTP + WebSocket on one port — real sockets on 127.0.0.1, real clients."""
from __future__ import annotations

import json

import pytest_twisted
import treq
import websocket
from twisted.internet import reactor, threads
from twisted.web.client import Agent, HTTPConnectionPool

from .conftest import CHAT_ENABLED, TOKEN

# Loopback clients are exempt from the lockout by default; these tests are about the lockout.
LOCKOUT_ON_LOOPBACK = {"gateway": {**CHAT_ENABLED["gateway"],
                                   "auth": {"rateLimit": {"exemptLoopback": False}}}}


@pytest_twisted.ensureDeferred
async def test_health_needs_no_auth_and_reveals_nothing_else(start_gateway, http):
    gw = await start_gateway(CHAT_ENABLED)
    response = await http.get(gw.url + "/health")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert await response.json() == {"ok": True}
    assert response.headers.getRawHeaders("server") == ["moltbot-gw"]


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_404_in_openai_error_shape(start_gateway, http):
    gw = await start_gateway()
    for path in ("/nope", "/v1/nope", "/v1/chat"):
        response = await http.get(gw.url + path)
        assert response.code == 404
        body = await response.json()
        assert body["error"]["type"] == "not_found_error"
        assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_with_allow(start_gateway, http):
    gw = await start_gateway(CHAT_ENABLED)
    response = await http.post(gw.url + "/health", b"")
    assert response.code == 405
    assert "GET" in response.headers.getRawHeaders("allow")[0]
    assert (await response.json())["error"]["code"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_models_require_the_bearer_token(start_gateway, http):
    gw = await start_gateway(CHAT_ENABLED)
    response = await http.get(gw.url + "/v1/models")
    assert response.code == 401
    assert response.headers.getRawHeaders("www-authenticate")[0].startswith("Bearer")
    body = await response.json()
    assert body["error"]["type"] == "authentication_error"
    assert TOKEN not in json.dumps(body)
    response = await http.get(gw.url + "/v1/models", headers=gw.auth_headers)
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_password_mode_accepts_the_password_as_bearer(start_gateway, http):
    gw = await start_gateway(CHAT_ENABLED, env={"CLAWDBOT_GATEWAY_PASSWORD": "hunter2-pw"})
    ok = await http.get(gw.url + "/v1/models", headers={"Authorization": "Bearer hunter2-pw"})
    assert ok.code == 200
    bad = await http.get(gw.url + "/v1/models", headers=gw.auth_headers)
    assert bad.code == 401


@pytest_twisted.ensureDeferred
async def test_eleventh_wrong_token_is_429_while_other_clients_still_get_in(start_gateway, http):
    gw = await start_gateway(LOCKOUT_ON_LOOPBACK)
    wrong = {"Authorization": "Bearer not-the-token"}
    codes = []
    for _ in range(11):
        response = await http.get(gw.url + "/v1/models", headers=wrong)
        codes.append(response.code)
        await response.content()
    assert codes == [401] * 10 + [429]
    assert int(response.headers.getRawHeaders("retry-after")[0]) > 0
    assert (await response.json())["error"]["type"] == "rate_limit_error"
    # A different client address (127.0.0.2 is loopback too) with the right token.
    pool = HTTPConnectionPool(reactor, persistent=False)
    other = treq.client.HTTPClient(Agent(reactor, pool=pool, bindAddress=("127.0.0.2", 0)))
    response = await other.get(gw.url + "/v1/models", headers=gw.auth_headers)
    assert response.code == 200
    assert [m["id"] for m in (await response.json())["data"]] == ["moltbot:main"]


@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_is_413_without_reading_it(start_gateway, http):
    gw = await start_gateway({"gateway": {"http": {"endpoints": {"chatCompletions": {
        "enabled": True, "maxBodyBytes": 2 * 1024 * 1024}}}}})
    response = await http.post(gw.url + "/v1/chat/completions", b"x" * (3 * 1024 * 1024),
                               headers=gw.auth_headers)
    assert response.code == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


def _ws_roundtrip(url: str) -> list[dict]:
    ws = websocket.create_connection(url, timeout=5)
    try:
        ws.send(json.dumps({"type": "req", "id": "c1", "method": "connect", "params": {
            "minProtocol": 1, "maxProtocol": 1, "client": {"id": "smoke"},
            "auth": {"token": TOKEN}}}))
        ws.send(json.dumps({"type": "req", "id": "r1", "method": "health", "params": {}}))
        return [json.loads(ws.recv()), json.loads(ws.recv())]
    finally:
        ws.close()


@pytest_twisted.ensureDeferred
async def test_websocket_and_http_share_the_one_port(start_gateway, http):
    gw = await start_gateway(CHAT_ENABLED)
    hello, reply = await threads.deferToThread(_ws_roundtrip, gw.ws_url)
    assert hello["id"] == "c1" and hello["payload"]["type"] == "hello-ok"
    assert reply["type"] == "res" and reply["id"] == "r1" and reply["ok"] is True
    response = await http.get(gw.url + "/health")
    assert await response.json() == {"ok": True}


@pytest_twisted.ensureDeferred
async def test_plain_get_on_root_asks_for_a_websocket_upgrade(start_gateway, http):
    gw = await start_gateway()
    response = await http.get(gw.url + "/")
    assert response.code == 426
    assert (await response.json())["error"]["code"] == "upgrade_required"
