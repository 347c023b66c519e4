"""The work the gateway does per streamed chat request (issue #16's one-read target): each
piece of it is done once, and what the client and the access log get stays the same."""
from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor

from .conftest import TOKEN
from .support.one_read import WORDS, http_chunks, raw_post, start_one_read_upstream

CHAT = {"model": "moltbot:main", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def _config(port: int) -> dict:
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "models": {"providers": {"one": {"api": "openai-completions",
                                             "baseUrl": f"http://127.0.0.1:{port}/v1"}}},
            "agents": {"list": [{"id": "main", "default": True, "model": "one/model"}]}}


async def _post(start_gateway, body: bytes, headers: list[str], count_auth=None):
    """POST ``body`` to a gateway in front of the one-read upstream; ``count_auth(gw)`` runs
    before the request (it may wrap what it wants to count)."""
    listening, _upstream = await start_one_read_upstream(reactor)
    try:
        gw = await start_gateway(_config(listening.getHost().port))
        if count_auth is not None:
            count_auth(gw)
        return await raw_post(reactor, gw.port, "/v1/chat/completions", body, headers)
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_request_with_a_body_is_authenticated_once(start_gateway):
    """The site checks the secret at the headers (before reading a body); the route must
    not check it again, and the run slots must not work the client's address out again."""
    calls: list[tuple] = []

    def count(gw):
        auth = gw.service.auth
        real = auth.authenticate

        def authenticate(address, presented, **kwargs):
            calls.append((address, presented))
            return real(address, presented, **kwargs)

        auth.authenticate = authenticate

    raw = await _post(start_gateway, json.dumps(CHAT).encode(),
                      [f"Authorization: Bearer {TOKEN}"], count)
    head, chunks = http_chunks(raw)
    assert head.startswith(b"HTTP/1.1 200 ")
    deltas = [json.loads(f.removeprefix(b"data: "))["choices"][0]["delta"].get("content")
              for f in b"".join(chunks).split(b"\n\n")[1:-3]]
    assert deltas == WORDS
    assert calls == [("127.0.0.1", TOKEN)]


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_still_refused_at_the_headers(start_gateway):
    calls: list[tuple] = []

    def count(gw):
        auth = gw.service.auth
        real = auth.authenticate
        auth.authenticate = lambda a, p, **kw: calls.append((a, p)) or real(a, p, **kw)

    raw = await _post(start_gateway, json.dumps(CHAT).encode(),
                      ["Authorization: Bearer wrong"], count)
    assert raw.startswith(b"HTTP/1.1 401 ")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_api_key"
    assert calls == [("127.0.0.1", "wrong")]

