"""A streamed chat answer whose upstream sends every event in one read (issue #16): what the
gateway produces from that read goes to the client as ONE HTTP chunk, the bytes unchanged."""
from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor

from .conftest import TOKEN
from .support.one_read import WORDS, http_chunks, raw_post, start_one_read_upstream


def _config(port: int) -> dict:
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "models": {"providers": {"one": {"api": "openai-completions",
                                             "baseUrl": f"http://127.0.0.1:{port}/v1"}}},
            "agents": {"list": [{"id": "main", "default": True, "model": "one/model"}]}}


async def _stream(start_gateway, include_usage: bool):
    listening, upstream = await start_one_read_upstream(reactor)
    try:
        gw = await start_gateway(_config(listening.getHost().port))
        body = {"model": "moltbot:main", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        raw = await raw_post(reactor, gw.port, "/v1/chat/completions",
                             json.dumps(body).encode(), [f"Authorization: Bearer {TOKEN}"])
    finally:
        await listening.stopListening()
    assert upstream.requests == 1
    return http_chunks(raw)


@pytest_twisted.ensureDeferred
async def test_one_upstream_read_is_one_client_chunk(start_gateway):
    head, chunks = await _stream(start_gateway, include_usage=False)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head.lower()
    # role chunk, the words, the finish chunk and [DONE]: all in one request.write
    assert len(chunks) == 1, chunks
    frames = chunks[0].split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    payloads = [json.loads(f.removeprefix(b"data: ")) for f in frames[:-2]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [p["choices"][0]["delta"]["content"] for p in payloads[1:-1]] == WORDS
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in p for p in payloads)


@pytest_twisted.ensureDeferred
async def test_one_upstream_read_with_usage_is_one_client_chunk(start_gateway):
    _head, chunks = await _stream(start_gateway, include_usage=True)
    assert len(chunks) == 1, chunks
    frames = chunks[0].split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    usage = json.loads(frames[-3].removeprefix(b"data: "))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(WORDS)
    assert all(json.loads(f.removeprefix(b"data: "))["usage"] is None for f in frames[:-3])
