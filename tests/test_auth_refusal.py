"""Auth refusals are worded once (moltbot_gw/auth_refusal.py): the verdicts in memory, each
transport's mapping of every reason, and a real gateway telling an HTTP client and a
WebSocket client the same thing."""
from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet import threads

from moltbot_gw import auth_refusal
from moltbot_gw.auth import AuthOutcome, BadForwardedFor
from moltbot_gw.auth_refusal import (REASONS, credential_refusal, forwarded_for_refusal,
                                     origin_refusal)
from moltbot_gw.http_auth import REFUSALS as HTTP_REFUSALS
from moltbot_gw.http_auth import refusal_error
from moltbot_gw.ws.frames import CloseCode, ErrorCode
from moltbot_gw.ws.protocol import REFUSALS as WS_REFUSALS

from .conftest import CHAT_ENABLED
from .test_ws_protocol import Client


def test_a_verdict_names_its_reason_and_a_lockout_its_wait():
    assert credential_refusal(AuthOutcome(True), "secret", "X") is None
    missing = credential_refusal(AuthOutcome(False), None, "Authorization: Bearer <token>")
    assert missing.reason == auth_refusal.MISSING_CREDENTIAL
    assert missing.message == ("missing gateway token or password: send "
                               "Authorization: Bearer <token>")
    wrong = credential_refusal(AuthOutcome(False), "guess", "X")
    assert (wrong.reason, wrong.message) == (auth_refusal.WRONG_CREDENTIAL,
                                             "invalid gateway token or password")
    locked = credential_refusal(AuthOutcome(False, retry_after=41.2), "guess", "X")
    assert locked.reason == auth_refusal.LOCKED_OUT
    assert locked.message == "too many failed authentication attempts; retry in 42 s"
    assert (locked.retry_after_seconds, locked.retry_after_ms) == (42, 41200)


def test_every_reason_has_an_http_answer_and_every_credential_reason_a_ws_one():
    assert set(HTTP_REFUSALS) == set(REASONS)
    # Forwarded-for and Origin refusals happen at the upgrade, before the protocol runs.
    assert set(WS_REFUSALS) == {auth_refusal.MISSING_CREDENTIAL,
                                auth_refusal.WRONG_CREDENTIAL, auth_refusal.LOCKED_OUT}
    assert WS_REFUSALS[auth_refusal.LOCKED_OUT] == (ErrorCode.RATE_LIMITED,
                                                    CloseCode.RATE_LIMITED)
    assert WS_REFUSALS[auth_refusal.WRONG_CREDENTIAL] == (ErrorCode.UNAUTHORIZED,
                                                          CloseCode.AUTH_FAILED)


def test_http_shapes_each_refusal_with_its_status_code_and_headers():
    locked = refusal_error(credential_refusal(AuthOutcome(False, retry_after=0.2), "x", "X"))
    assert (locked.status, locked.type, locked.code) == (429, "rate_limit_error",
                                                         "rate_limit_exceeded")
    assert locked.headers == {"Retry-After": "1"}
    wrong = refusal_error(credential_refusal(AuthOutcome(False), "x", "X"))
    assert (wrong.status, wrong.type, wrong.code) == (401, "authentication_error",
                                                      "invalid_api_key")
    assert wrong.headers == {"WWW-Authenticate": 'Bearer realm="moltbot-gw"'}
    hop = refusal_error(forwarded_for_refusal(BadForwardedFor("X-Forwarded-For names a hop")))
    assert (hop.status, hop.code, hop.param, hop.message) == (
        400, "invalid_forwarded_for", "X-Forwarded-For", "X-Forwarded-For names a hop")
    origin = refusal_error(origin_refusal())
    assert (origin.status, origin.type, origin.code, origin.param) == (
        403, "permission_error", "origin_not_allowed", "Origin")
    assert "gateway.http.cors.allowedOrigins" in origin.message


@pytest_twisted.ensureDeferred
async def test_http_and_websocket_clients_are_told_the_same_refusal(start_gateway):
    gw = await start_gateway(CHAT_ENABLED)

    async def over_http(headers) -> str:
        response = await treq.post(gw.url + "/v1/chat/completions", headers=headers,
                                   json={"model": "moltbot", "messages": [
                                       {"role": "user", "content": "hi"}]})
        assert response.code == 401
        return json.loads(await response.content())["error"]["message"]

    def over_ws(auth) -> str:
        client = Client(gw.ws_url)
        reply = client.call("connect", {"minProtocol": 1, "maxProtocol": 1,
                                        "client": {"id": "t"}, **auth})
        assert client.frame()["close"] == 4001
        return reply["error"]["message"]

    wrong_http = await over_http({"Authorization": "Bearer wrong"})
    wrong_ws = await threads.deferToThread(over_ws, {"auth": {"token": "wrong"}})
    assert wrong_http == wrong_ws == "invalid gateway token or password"
    missing_http = await over_http({})
    missing_ws = await threads.deferToThread(over_ws, {})
    prefix = "missing gateway token or password: send "
    assert missing_http == prefix + "Authorization: Bearer <token>"
    assert missing_ws == prefix + 'auth {"token": ...} in connect'
