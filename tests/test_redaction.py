"""Configured secrets never reach a client or a log (issue 13, item 8): an upstream that
echoes our request headers (apiKey and custom ``headers`` values) in its error body."""
from __future__ import annotations

import dataclasses
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN
from .fakes import FakeOpenAI

API_KEY = "key-AbC123xyz789"            # not shaped like "sk-...": only the config knows it
HEADER_SECRET = "s3cr3t-value-123"


class HeaderEchoingUpstream(FakeOpenAI):
    """Answers every request with the scripted error status and a message quoting all the
    request headers it received, as some misbehaving proxies and upstreams do."""

    async def _respond(self, request, record):
        quoted = "; ".join(f"{k}: {v}" for k, v in sorted(record.headers.items()))
        record.script = dataclasses.replace(record.script, error=f"bad request, got {quoted}")
        await super()._respond(request, record)


@pytest_twisted.async_yield_fixture
async def echoing():
    up = await HeaderEchoingUpstream.start(reactor)
    yield up
    await up.stop()


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_header_values_and_api_keys_echoed_by_an_upstream_error_are_redacted(
        start_gateway, echoing, http, status, stream):
    raw = config(echoing, provider={"apiKey": API_KEY, "headers": {"x-secret": HEADER_SECRET}})
    gw = await start_gateway(raw)
    echoing.script(status=status)
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        response = await http.post(
            gw.url + PATH, json={"model": "moltbot:beta", "stream": stream,
                                 "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {TOKEN}"})
        body = (await response.content()).decode()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    request_headers = echoing.requests[-1].headers
    assert request_headers["x-secret"] == HEADER_SECRET      # the upstream did get them
    assert API_KEY in request_headers["authorization"]
    assert response.code in (400, 502)
    error = json.loads(body)["error"]
    assert "bad request, got" in error["message"] and "***" in error["message"]
    for secret in (API_KEY, HEADER_SECRET, TOKEN):
        assert secret not in body
        for event in logged:
            assert secret not in (formatEvent(event) or ""), event
            assert secret not in repr(event), event
