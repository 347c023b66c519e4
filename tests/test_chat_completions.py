"""End-to-end tests of ``POST /v1/chat/completions`` over raw HTTP (treq and a bare TCP
client): exact status codes, headers and SSE bytes, against real gateways on 127.0.0.1 and a
fake OpenAI-compatible upstream that records what the agents sent it.

One test per sentence of ``shared/reference/openai-http-api.md`` plus the behaviour the
design promises (validation, sessions, provider failures, keepalives, disconnects, stop).
"""
from __future__ import annotations

import json
import math
import time

import pytest
import pytest_twisted
import websocket
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from moltbot_gw.agents.run import RunRequest

from .chat_helpers import (BETA_PROMPT, DONE, HI, MAIN_PROMPT, PATH, config, http,  # noqa: F401
                           no_leftovers)
from .conftest import TOKEN
from .fakes import unused_port


# --- helpers -------------------------------------------------------------------------------


async def post(http, gw, body=None, headers=None, *, auth=True, data=None):
    """POST a chat request; returns (response, body bytes)."""
    all_headers = {"Content-Type": "application/json"}
    if auth:
        all_headers.update(gw.auth_headers)
    all_headers.update(headers or {})
    if data is None:
        data = json.dumps(body).encode()
    response = await http.post(gw.url + PATH, data, headers=all_headers)
    return response, await response.content()


def header(response, name):
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def sse_payloads(body: bytes, comments=False) -> list:
    """The ``data:`` payloads of an SSE body (``[DONE]`` stays a string). Every non-empty
    line must be a ``data: `` line (or, with ``comments``, an SSE comment)."""
    text = body.decode("utf-8")
    payloads = []
    for line in text.split("\n"):
        if not line:
            continue
        if comments and line.startswith(":"):
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def upstream_messages(up, index=-1):
    return up.requests[index].body["messages"]


def assert_no_traceback(body: bytes):
    assert b"Traceback" not in body
    assert b'File "' not in body
    assert TOKEN.encode() not in body


def assert_error(response, body, status, param="unset", type_=None, code=None):
    assert response.code == status, body
    assert header(response, "content-type") == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param != "unset":
        assert error["param"] == param
    if type_ is not None:
        assert error["type"] == type_
    if code is not None:
        assert error["code"] == code
    assert_no_traceback(body)
    return error


class RawClient(Protocol):
    """A bare HTTP/1.1 client over TCP that can hang up whenever the test says so."""

    def __init__(self):
        self.data = b""
        self._waiters = []
        self.closed = Deferred()

    def dataReceived(self, data):
        self.data += data
        for marker, d in list(self._waiters):
            if marker in self.data:
                self._waiters.remove((marker, d))
                d.callback(self.data)

    def connectionLost(self, reason):
        self.closed.callback(None)

    def wait_for(self, marker: bytes) -> Deferred:
        d = Deferred()
        self._waiters.append((marker, d))
        self.dataReceived(b"")
        return d


async def raw_request(gw, body) -> RawClient:
    data = json.dumps(body).encode()
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port),
                                   RawClient())
    client.transport.write(
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return client


def within(d: Deferred, seconds: float = 3.0) -> Deferred:
    """``d``, failing with TimeoutError instead of hanging the test when it never fires."""
    return d.addTimeout(seconds, reactor)


async def until(predicate, timeout=3.0):
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not reached in time"
        await deferLater(reactor, 0.01, lambda: None)


def transcript_records(state_dir, agent_id):
    files = sorted((state_dir / "agents" / agent_id / "sessions").glob("*.jsonl"))
    records = [json.loads(line) for path in files
               for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("type") == "message"]


def sessions_index(state_dir, agent_id):
    """The session index as the gateway reads it (sessions.json plus its journal)."""
    from moltbot_gw.sessions.index import load_index_document
    return load_index_document(state_dir / "agents" / agent_id / "sessions", agent_id)


# --- the reference page: overview and enabling -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_endpoint_is_disabled_by_default_404_even_with_a_valid_token(start_gateway, http):
    gw = await start_gateway(config(enabled=None))
    response, body = await post(http, gw, {"model": "moltbot", "messages": HI})
    assert_error(response, body, 404, type_="not_found_error")


@pytest_twisted.ensureDeferred
async def test_enabled_false_is_404_for_any_method_as_if_absent(start_gateway, http):
    gw = await start_gateway(config(enabled=False))
    response, body = await post(http, gw, {"model": "moltbot", "messages": HI})
    assert_error(response, body, 404, type_="not_found_error")
    unauthenticated, body = await post(http, gw, {"model": "moltbot", "messages": HI},
                                       auth=False)
    assert_error(unauthenticated, body, 404)
    response = await http.get(gw.url + PATH, headers=gw.auth_headers)
    assert_error(response, await response.content(), 404)
    absent = await http.get(gw.url + "/v1/not-an-endpoint", headers=gw.auth_headers)
    assert await absent.json() == json.loads(body.replace(PATH.encode(),
                                                          b"/v1/not-an-endpoint"))


@pytest_twisted.ensureDeferred
async def test_enabled_true_serves_post_chat_completions(start_gateway, http):
    gw = await start_gateway(config(enabled=True))
    response, body = await post(http, gw, {"model": "moltbot", "messages": HI})
    assert response.code == 200
    assert json.loads(body)["object"] == "chat.completion"


@pytest_twisted.ensureDeferred
async def test_get_on_the_route_is_405_with_allow_post(start_gateway, http):
    gw = await start_gateway(config())
    response = await http.get(gw.url + PATH, headers=gw.auth_headers)
    assert_error(response, await response.content(), 405, code="method_not_allowed")
    assert header(response, "allow") == "POST"


def _ws_health(url: str) -> dict:
    ws = websocket.create_connection(url, timeout=5)
    try:
        ws.send(json.dumps({"type": "req", "id": "r1", "method": "health", "params": {}}))
        return json.loads(ws.recv())
    finally:
        ws.close()


@pytest_twisted.ensureDeferred
async def test_endpoint_shares_the_gateway_port_with_the_websocket(start_gateway, http):
    gw = await start_gateway(config())
    reply = await threads.deferToThread(_ws_health, gw.ws_url)
    assert reply["type"] == "res" and reply["id"] == "r1"
    response, body = await post(http, gw, {"model": "moltbot", "messages": HI})
    assert response.code == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "hi"


@pytest_twisted.ensureDeferred
async def test_request_runs_as_a_normal_agent_run_sharing_its_sessions(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="Noted from the agent run.").queue(text="Second reply.")
    # A turn through the runtime directly (what `moltbot-gw agent` does) ...
    run = gw.service.runner.run(RunRequest(input=({"role": "user", "content": "remember 7"},),
                                           agent_id="beta", session_key="agent:beta:shared"))
    await run.wait()
    # ... is the history of an HTTP request routed to the same session.
    response, body = await post(http, gw, {"model": "moltbot:beta",
                                           "messages": [{"role": "user", "content": "and?"}]},
                                headers={"x-moltbot-session-key": "agent:beta:shared"})
    assert response.code == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "Second reply."
    assert upstream_messages(upstream) == [
        {"role": "system", "content": BETA_PROMPT},
        {"role": "user", "content": "remember 7"},
        {"role": "assistant", "content": "Noted from the agent run."},
        {"role": "user", "content": "and?"}]
    records = transcript_records(state_dir, "beta")
    assert [(r["role"], r["content"]) for r in records] == [
        ("user", "remember 7"), ("assistant", "Noted from the agent run."),
        ("user", "and?"), ("assistant", "Second reply.")]
    assert records[-1]["status"] == "ok"
    assert "agent:beta:shared" in sessions_index(state_dir, "beta")


# --- authentication ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_bearer_token_is_401_with_www_authenticate(start_gateway, http,
                                                                         upstream):
    gw = await start_gateway(config(upstream))
    chat = {"model": "moltbot:beta", "messages": HI}
    for headers in ({}, {"Authorization": "Bearer wrong-token"},
                    {"Authorization": TOKEN}):   # the token without the Bearer scheme
        response, body = await post(http, gw, chat, headers, auth=False)
        assert_error(response, body, 401, type_="authentication_error")
        assert header(response, "www-authenticate").startswith("Bearer")
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_token_mode_accepts_gateway_auth_token_from_the_config(start_gateway, http):
    raw = config(gateway={"auth": {"mode": "token", "token": "config-token-abcdef"}})
    gw = await start_gateway(raw, env={})
    ok, _ = await post(http, gw, {"model": "moltbot", "messages": HI},
                       {"Authorization": "Bearer config-token-abcdef"}, auth=False)
    assert ok.code == 200
    wrong, body = await post(http, gw, {"model": "moltbot", "messages": HI})  # TOKEN: not set
    assert_error(wrong, body, 401)


@pytest_twisted.ensureDeferred
async def test_token_mode_accepts_clawdbot_gateway_token_from_the_environment(start_gateway,
                                                                             http):
    gw = await start_gateway(config(), env={"CLAWDBOT_GATEWAY_TOKEN": "env-token-abcdef"})
    ok, _ = await post(http, gw, {"model": "moltbot", "messages": HI},
                       {"Authorization": "Bearer env-token-abcdef"}, auth=False)
    assert ok.code == 200
    wrong, body = await post(http, gw, {"model": "moltbot", "messages": HI})
    assert_error(wrong, body, 401)


@pytest_twisted.ensureDeferred
async def test_password_mode_accepts_gateway_auth_password_as_bearer(start_gateway, http):
    raw = config(gateway={"auth": {"mode": "password", "password": "config-pass-abcdef"}})
    gw = await start_gateway(raw, env={})
    ok, _ = await post(http, gw, {"model": "moltbot", "messages": HI},
                       {"Authorization": "Bearer config-pass-abcdef"}, auth=False)
    assert ok.code == 200
    wrong, body = await post(http, gw, {"model": "moltbot", "messages": HI},
                             {"Authorization": "Bearer not-the-password"}, auth=False)
    assert_error(wrong, body, 401)


@pytest_twisted.ensureDeferred
async def test_password_mode_accepts_clawdbot_gateway_password_from_the_environment(
        start_gateway, http):
    gw = await start_gateway(config(), env={"CLAWDBOT_GATEWAY_PASSWORD": "env-pass-abcdef"})
    ok, _ = await post(http, gw, {"model": "moltbot", "messages": HI},
                       {"Authorization": "Bearer env-pass-abcdef"}, auth=False)
    assert ok.code == 200
    wrong, body = await post(http, gw, {"model": "moltbot", "messages": HI})
    assert_error(wrong, body, 401)


# --- choosing an agent ---------------------------------------------------------------------


@pytest.mark.parametrize("model", ["moltbot:beta", "agent:beta", "clawdbot:beta",
                                   "Moltbot:Beta"])
@pytest_twisted.ensureDeferred
async def test_agent_id_in_the_model_field_picks_the_agent(start_gateway, http, upstream,
                                                           model):
    gw = await start_gateway(config(upstream))
    upstream.script(text="beta here")
    response, body = await post(http, gw, {"model": model, "messages": HI})
    assert response.code == 200
    completion = json.loads(body)
    assert completion["model"] == model
    assert completion["choices"][0]["message"]["content"] == "beta here"
    assert upstream.requests[-1].body["model"] == "some-model"
    assert upstream_messages(upstream)[0] == {"role": "system", "content": BETA_PROMPT}


@pytest_twisted.ensureDeferred
async def test_moltbot_main_in_the_model_field_picks_main(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream, main_model="up/main-model"))
    response, _ = await post(http, gw, {"model": "moltbot:main", "messages": HI},
                             {"x-moltbot-agent-id": "beta"})   # the model field wins
    assert response.code == 200
    assert upstream.requests[-1].body["model"] == "main-model"
    assert upstream_messages(upstream)[0] == {"role": "system", "content": MAIN_PROMPT}


@pytest.mark.parametrize("name", ["x-moltbot-agent-id", "x-clawdbot-agent-id"])
@pytest_twisted.ensureDeferred
async def test_agent_id_header_picks_the_agent(start_gateway, http, upstream, name):
    gw = await start_gateway(config(upstream, main_model="up/main-model"))
    response, body = await post(http, gw, {"model": "moltbot", "messages": HI},
                                {name: " beta "})
    assert response.code == 200
    assert json.loads(body)["model"] == "up/some-model"   # the model that answered
    assert upstream_messages(upstream)[0] == {"role": "system", "content": BETA_PROMPT}


@pytest_twisted.ensureDeferred
async def test_no_agent_hint_runs_the_default_agent(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream, main_model="up/main-model"))
    for model in ("moltbot", "gpt-4o-mini"):   # a model name that names no agent
        response, body = await post(http, gw, {"model": model, "messages": HI})
        assert response.code == 200
        assert json.loads(body)["model"] == "up/main-model"   # the model that answered
        assert upstream.requests[-1].body["model"] == "main-model"
        assert upstream_messages(upstream)[0] == {"role": "system", "content": MAIN_PROMPT}


@pytest_twisted.ensureDeferred
async def test_default_agent_without_agent_config_is_main(start_gateway, http):
    gw = await start_gateway({"gateway": {"http": {"endpoints": {"chatCompletions": {
        "enabled": True}}}}})
    response, body = await post(http, gw, {"model": "moltbot", "messages": HI},
                                {"x-moltbot-session-key": "agent:main:check"})
    assert response.code == 200   # the key must name the agent that runs: main
    assert json.loads(body)["choices"][0]["message"]["content"] == "hi"


@pytest.mark.parametrize("where", ["model", "header"])
@pytest_twisted.ensureDeferred
async def test_unknown_agent_is_404_model_not_found(start_gateway, http, upstream, where):
    gw = await start_gateway(config(upstream))
    if where == "model":
        response, body = await post(http, gw, {"model": "moltbot:nope", "messages": HI})
    else:
        response, body = await post(http, gw, {"model": "moltbot", "messages": HI},
                                    {"x-moltbot-agent-id": "nope"})
    error = assert_error(response, body, 404, param="model", type_="not_found_error",
                         code="model_not_found")
    assert "nope" in error["message"]
    assert upstream.requests == []


# --- sessions ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_requests_without_user_are_stateless(start_gateway, http, upstream, state_dir):
    gw = await start_gateway(config(upstream))
    upstream.script(text="R")
    for text in ("first", "second"):
        response, _ = await post(http, gw, {"model": "moltbot:beta",
                                            "messages": [{"role": "user", "content": text}]})
        assert response.code == 200
    assert upstream_messages(upstream) == [{"role": "system", "content": BETA_PROMPT},
                                           {"role": "user", "content": "second"}]
    assert sessions_index(state_dir, "beta") == {}


@pytest_twisted.ensureDeferred
async def test_same_user_shares_one_session_across_calls(start_gateway, http, upstream,
                                                         state_dir):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="R1").queue(text="R2").queue(text="R3")
    for text in ("first", "second"):
        response, _ = await post(http, gw, {"model": "moltbot:beta", "user": "alice",
                                            "messages": [{"role": "user", "content": text}]})
        assert response.code == 200
    assert upstream_messages(upstream) == [{"role": "system", "content": BETA_PROMPT},
                                           {"role": "user", "content": "first"},
                                           {"role": "assistant", "content": "R1"},
                                           {"role": "user", "content": "second"}]
    assert "agent:beta:openai-user:alice" in sessions_index(state_dir, "beta")
    # another user has a session of its own
    await post(http, gw, {"model": "moltbot:beta", "user": "bob",
                          "messages": [{"role": "user", "content": "third"}]})
    assert upstream_messages(upstream) == [{"role": "system", "content": BETA_PROMPT},
                                           {"role": "user", "content": "third"}]


@pytest_twisted.ensureDeferred
async def test_concurrent_calls_of_one_user_run_one_after_the_other(start_gateway, http,
                                                                    upstream):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="slow first", delay=0.1).queue(text="R2")
    first = Deferred.fromCoroutine(post(http, gw, {
        "model": "moltbot:beta", "user": "zed",
        "messages": [{"role": "user", "content": "first"}]}))
    await within(upstream.wait_for_request(1))
    second = Deferred.fromCoroutine(post(http, gw, {
        "model": "moltbot:beta", "user": "zed",
        "messages": [{"role": "user", "content": "second"}]}))
    (r1, _), (r2, _) = await first, await second
    assert (r1.code, r2.code) == (200, 200)
    assert upstream.requests[1].received_at >= await within(upstream.requests[0].completed)
    assert upstream_messages(upstream, 1)[1:] == [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "slow first"},
        {"role": "user", "content": "second"}]


@pytest_twisted.ensureDeferred
async def test_session_key_header_routes_requests_to_one_session(start_gateway, http,
                                                                 upstream):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="R1").queue(text="R2").queue(text="R3")
    await post(http, gw, {"model": "moltbot:beta", "user": "alice",
                          "messages": [{"role": "user", "content": "first"}]})
    # the header overrides `user`: this is not alice's session, but "my-chat"
    await post(http, gw, {"model": "moltbot:beta", "user": "alice",
                          "messages": [{"role": "user", "content": "second"}]},
               {"x-moltbot-session-key": "my-chat"})
    assert upstream_messages(upstream)[1:] == [{"role": "user", "content": "second"}]
    # the full form of the same key is the same session
    await post(http, gw, {"model": "moltbot:beta",
                          "messages": [{"role": "user", "content": "third"}]},
               {"x-moltbot-session-key": "agent:beta:my-chat"})
    assert upstream_messages(upstream)[1:] == [{"role": "user", "content": "second"},
                                               {"role": "assistant", "content": "R2"},
                                               {"role": "user", "content": "third"}]


@pytest_twisted.ensureDeferred
async def test_session_key_naming_another_agent_is_400(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI},
                                {"x-moltbot-session-key": "agent:main:stolen"})
    assert_error(response, body, 400, type_="invalid_request_error")
    assert upstream.requests == []


# --- streaming and the two examples -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reference_non_streaming_curl_example(start_gateway, http):
    gw = await start_gateway(config())
    before = int(time.time())
    response = await http.post(
        gw.url + PATH,
        b'{\n    "model": "moltbot",\n    "messages": [{"role":"user","content":"hi"}]\n  }',
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                 "x-moltbot-agent-id": "main"})
    assert response.code == 200
    assert header(response, "content-type").startswith("application/json")
    completion = await response.json()
    assert completion["id"].startswith("chatcmpl-") and len(completion["id"]) > 12
    assert completion["object"] == "chat.completion"
    assert before <= completion["created"] <= int(time.time())
    assert completion["model"] == "builtin/echo"   # agent by header: the model that answered
    [choice] = completion["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "hi"
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["completion_tokens"] == 1 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest_twisted.ensureDeferred
async def test_reference_streaming_curl_example(start_gateway, http):
    gw = await start_gateway(config())
    response = await http.post(
        gw.url + PATH,
        b'{\n    "model": "moltbot",\n    "stream": true,\n'
        b'    "messages": [{"role":"user","content":"hi"}]\n  }',
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                 "x-moltbot-agent-id": "main"})
    assert response.code == 200
    assert header(response, "content-type").startswith("text/event-stream")
    assert header(response, "cache-control") == "no-cache"
    assert header(response, "x-accel-buffering") == "no"
    body = await response.content()
    assert body.endswith(DONE)
    payloads = sse_payloads(body)
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    chunks = payloads[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"builtin/echo"}
    assert len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "hi"
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


@pytest_twisted.ensureDeferred
async def test_completion_reports_the_upstreams_finish_reason_and_usage(start_gateway, http,
                                                                        upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="cut sho", finish_reason="length", usage=(17, 2))
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    completion = json.loads(body)
    assert completion["choices"][0]["message"]["content"] == "cut sho"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 17, "completion_tokens": 2,
                                   "total_tokens": 19}


@pytest_twisted.ensureDeferred
async def test_stream_sends_each_upstream_delta_as_its_own_chunk(start_gateway, http,
                                                                 upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="one two naïve ✓", finish_reason="length")
    response, body = await post(http, gw, {"model": "moltbot:beta", "stream": True,
                                           "messages": HI})
    assert response.code == 200
    assert header(response, "content-type") == "text/event-stream; charset=utf-8"
    chunks = sse_payloads(body)[:-1]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert contents == ["one ", "two ", "naïve ", "✓"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1]   # only with stream_options.include_usage


@pytest_twisted.ensureDeferred
async def test_stream_options_include_usage_adds_a_usage_chunk_with_no_choices(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="one two", usage=(11, 2))
    response, body = await post(http, gw, {"model": "moltbot:beta", "stream": True,
                                           "stream_options": {"include_usage": True},
                                           "messages": HI})
    chunks = sse_payloads(body)[:-1]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 2,
                                   "total_tokens": 13}
    assert chunks[-1]["id"] == chunks[0]["id"]


@pytest_twisted.ensureDeferred
async def test_keepalive_comments_flow_while_the_upstream_is_slow(start_gateway, http,
                                                                  upstream):
    gw = await start_gateway(config(upstream, chat={"keepaliveSeconds": 0.2}))
    upstream.script(text="slow", delay=0.7)
    response, body = await post(http, gw, {"model": "moltbot:beta", "stream": True,
                                           "messages": HI})
    assert response.code == 200
    first_content = body.index(b'"content":"slow"')
    assert b": keepalive\n\n" in body[:first_content]
    payloads = sse_payloads(body, comments=True)
    assert payloads[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in payloads[:-1]) == "slow"


# --- message mapping -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_system_and_developer_messages_join_the_agent_prompt_as_one_system_message(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    response, _ = await post(http, gw, {"model": "moltbot:beta", "messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "hi"}]})
    assert response.code == 200
    messages = upstream_messages(upstream)
    assert [m for m in messages if m["role"] == "system"] == [
        {"role": "system", "content": BETA_PROMPT + "\n\nAnswer in French.\n\nBe brief."}]
    assert messages[0]["role"] == "system"
    assert messages[1:] == [{"role": "user", "content": "hi"}]


@pytest_twisted.ensureDeferred
async def test_text_and_input_text_parts_reach_the_model_other_parts_are_ignored(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(echo=True)
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": [{
        "role": "user", "content": [
            {"type": "text", "text": "Hello "},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "input_text", "text": "world"}]}]})
    assert response.code == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello world"
    user = upstream_messages(upstream)[-1]
    assert user["role"] == "user"
    parts = user["content"] if isinstance(user["content"], list) else [
        {"type": "text", "text": user["content"]}]
    assert parts == [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]
    assert b"example.com" not in upstream.requests[-1].raw
    assert b"input_audio" not in upstream.requests[-1].raw


@pytest.mark.parametrize("user", [None, "carol"])
@pytest_twisted.ensureDeferred
async def test_request_history_reaches_the_model_when_the_session_is_new(
        start_gateway, http, upstream, user):
    gw = await start_gateway(config(upstream))
    request = {"model": "moltbot:beta", "messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "My name is Ann."},
        {"role": "assistant", "content": "Hello Ann."},
        {"role": "user", "content": "What is my name?"}]}
    if user:
        request["user"] = user
    response, _ = await post(http, gw, request)
    assert response.code == 200
    assert upstream_messages(upstream) == [
        {"role": "system", "content": BETA_PROMPT + "\n\nBe kind."},
        {"role": "user", "content": "My name is Ann."},
        {"role": "assistant", "content": "Hello Ann."},
        {"role": "user", "content": "What is my name?"}]


@pytest_twisted.ensureDeferred
async def test_with_stored_history_only_messages_after_the_last_assistant_are_new(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(config(upstream))
    upstream.queue(text="R1").queue(text="R2")
    await post(http, gw, {"model": "moltbot:beta", "user": "dave",
                          "messages": [{"role": "user", "content": "one"}]})
    # the client resends the whole conversation, as OpenAI clients do
    response, _ = await post(http, gw, {"model": "moltbot:beta", "user": "dave", "messages": [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "two"}, {"role": "user", "content": "three"}]})
    assert response.code == 200
    assert upstream_messages(upstream) == [
        {"role": "system", "content": BETA_PROMPT},
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "two"}, {"role": "user", "content": "three"}]
    assert [(r["role"], r["content"]) for r in transcript_records(state_dir, "beta")] == [
        ("user", "one"), ("assistant", "R1"), ("user", "two"), ("user", "three"),
        ("assistant", "R2")]


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "only a system prompt"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
])
@pytest_twisted.ensureDeferred
async def test_no_new_user_message_is_400(start_gateway, http, upstream, messages):
    gw = await start_gateway(config(upstream))
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": messages})
    assert_error(response, body, 400, param="messages", type_="invalid_request_error")
    assert upstream.requests == []


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("body, param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"model": 7}, "model"),
    ({"stream": "yes"}, "stream"),
    ({"user": 12}, "user"),
    ({"user": "u" * 600}, "user"),
    ({"user": "line\nbreak"}, "user"),
    ({"n": 2}, "n"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": "x"}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"seed": 1.5}, "seed"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"stream_options": True}, "stream_options"),
], ids=lambda v: v if isinstance(v, str) else None)
@pytest_twisted.ensureDeferred
async def test_invalid_field_is_400_naming_the_param(start_gateway, http, upstream, body,
                                                     param):
    gw = await start_gateway(config(upstream))
    request = {"model": "moltbot:beta", "messages": HI, **body}
    response, raw = await post(http, gw, request)
    assert_error(response, raw, 400, param=param, type_="invalid_request_error")
    assert upstream.requests == []


@pytest.mark.parametrize("data", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
@pytest_twisted.ensureDeferred
async def test_body_that_is_not_a_json_object_is_400(start_gateway, http, data):
    gw = await start_gateway(config())
    response, body = await post(http, gw, data=data)
    assert_error(response, body, 400, type_="invalid_request_error", code="invalid_json")


@pytest_twisted.ensureDeferred
async def test_unknown_extra_fields_are_ignored(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    response, body = await post(http, gw, {
        "model": "moltbot:beta", "messages": HI, "metadata": {"trace": "x"},
        "store": False, "some_future_field": [1, 2, 3], "logprobs": False})
    assert response.code == 200, body
    assert "some_future_field" not in upstream.requests[-1].body
    assert "metadata" not in upstream.requests[-1].body


@pytest_twisted.ensureDeferred
async def test_sampling_fields_reach_the_upstream(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    response, _ = await post(http, gw, {
        "model": "moltbot:beta", "messages": HI, "temperature": 0.25, "top_p": 0.5,
        "max_tokens": 64, "stop": ["\n\n", "END"], "seed": 42, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "response_format": {"type": "json_object"}})
    assert response.code == 200
    sent = upstream.requests[-1].body
    assert {k: sent.get(k) for k in ("temperature", "top_p", "max_tokens", "stop", "seed",
                                     "presence_penalty", "frequency_penalty",
                                     "response_format")} == {
        "temperature": 0.25, "top_p": 0.5, "max_tokens": 64, "stop": ["\n\n", "END"],
        "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "response_format": {"type": "json_object"}}
    await post(http, gw, {"model": "moltbot:beta", "messages": HI,
                          "max_completion_tokens": 9, "stop": "STOP"})
    sent = upstream.requests[-1].body
    assert sent["max_tokens"] == 9 and sent["stop"] == ["STOP"]
    assert "temperature" not in sent


# --- provider failures ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_upstream_503_is_502(start_gateway, http, upstream, stream):
    gw = await start_gateway(config(upstream))
    upstream.script(status=503, error="upstream overloaded")
    response, body = await post(http, gw, {"model": "moltbot:beta", "stream": stream,
                                           "messages": HI})
    # a stream that failed before its first byte still gets a real status
    assert_error(response, body, 502, type_="api_error")


@pytest.mark.parametrize("failure", ["500", "401", "html", "refused"])
@pytest_twisted.ensureDeferred
async def test_other_provider_failures_are_502(start_gateway, http, upstream, failure):
    provider = None
    if failure == "refused":
        provider = {"baseUrl": f"http://127.0.0.1:{unused_port()}/v1"}
    elif failure == "html":
        upstream.script(status=502, error_body=b"<html><body>Bad Gateway</body></html>")
    else:
        upstream.script(status=int(failure), error="nope")
    gw = await start_gateway(config(upstream, provider=provider))
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    assert_error(response, body, 502, type_="api_error")
    assert b"<html>" not in body


@pytest_twisted.ensureDeferred
async def test_upstream_429_is_429_with_retry_after(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(status=429, error="slow down", headers={"Retry-After": "7"})
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    assert_error(response, body, 429, type_="rate_limit_error")
    assert header(response, "retry-after") == "7"


@pytest_twisted.ensureDeferred
async def test_upstream_400_is_400(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(status=400, error="max_tokens is too large for this model")
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    error = assert_error(response, body, 400, type_="invalid_request_error")
    assert "max_tokens is too large" in error["message"]


@pytest_twisted.ensureDeferred
async def test_upstream_stall_is_504_after_the_run_timeout(start_gateway, http, upstream):
    # A non-streaming client gets a non-streamed upstream answer, silent until whole: no idle
    # timeout cuts it (issue 18), the agent's timeoutSeconds does; stalls mid-stream (the
    # idle timeout) are covered below and in tests/test_slow_answers.py.
    raw = config(upstream, provider={"idleTimeoutSeconds": 0.1})
    raw["agents"]["list"][1]["timeoutSeconds"] = 0.3
    gw = await start_gateway(raw)
    upstream.script(stall_before_headers=math.inf)
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    error = assert_error(response, body, 504, type_="timeout_error")
    # the run's timer ended it, not the provider's idle timer (which would say the provider
    # "did not answer in time")
    assert "took longer than its timeout" in error["message"], error
    await within(upstream.requests[-1].connection_lost)   # the stalled request was abandoned
    assert upstream.requests[-1].body["stream"] is False


@pytest_twisted.ensureDeferred
async def test_agent_timeout_is_504_and_recorded_as_aborted(start_gateway, http, upstream,
                                                            state_dir):
    raw = config(upstream)
    raw["agents"]["list"][1]["timeoutSeconds"] = 0.3
    gw = await start_gateway(raw)
    upstream.script(text="never finishes in time", delay=0.2)
    response, body = await post(http, gw, {"model": "moltbot:beta", "user": "tim",
                                           "messages": HI})
    assert_error(response, body, 504, type_="timeout_error")
    await within(upstream.requests[-1].connection_lost)
    records = transcript_records(state_dir, "beta")
    assert records[-1]["role"] == "assistant" and records[-1]["status"] == "aborted"


@pytest.mark.parametrize("failure, streamed", [
    ({"drop_after": 2}, ["one ", "two "]),
    ({"stall_after": 2}, ["one ", "two "]),
    ({"stream_error": "model crashed"}, ["one ", "two ", "three ", "four"]),
], ids=["dropped", "stalled", "error-event"])
@pytest_twisted.ensureDeferred
async def test_failure_mid_stream_is_an_error_event_then_done(start_gateway, http, upstream,
                                                              failure, streamed):
    gw = await start_gateway(config(upstream, provider={"idleTimeoutSeconds": 0.3}))
    upstream.script(text="one two three four", **failure)
    response, body = await post(http, gw, {"model": "moltbot:beta", "stream": True,
                                           "messages": HI})
    assert response.code == 200
    assert header(response, "content-type").startswith("text/event-stream")
    assert_no_traceback(body)
    payloads = sse_payloads(body)
    assert payloads[-1] == "[DONE]"
    error = payloads[-2]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] in ("api_error", "timeout_error")
    contents = [c["choices"][0]["delta"].get("content") for c in payloads[:-2]]
    assert contents[0] == "" and contents[1:] == streamed
    assert all(c["choices"][0]["finish_reason"] is None for c in payloads[:-2])


# --- disconnects and stopping --------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest_twisted.ensureDeferred
async def test_client_disconnect_cancels_the_upstream_and_records_an_aborted_turn(
        start_gateway, upstream, state_dir, stream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="one two three four five six", delay=0.25)
    client = await raw_request(gw, {"model": "moltbot:beta", "stream": stream,
                                    "user": "erin", "messages": HI})
    if stream:
        await within(client.wait_for(b'"content":"one '))
    else:
        await within(upstream.wait_for_request(1))
        await deferLater(reactor, 0.4, lambda: None)   # the upstream is still "thinking"
        assert client.data == b""
    hung_up = reactor.seconds()
    client.transport.loseConnection()
    await within(client.closed)
    lost_at = await within(upstream.requests[-1].connection_lost)
    assert lost_at - hung_up < 1.0
    await until(lambda: not gw.service.runner.active)
    records = transcript_records(state_dir, "beta")
    assert [r["role"] for r in records] == ["user", "assistant"]
    assert records[0]["content"] == "hi"
    assert records[1]["status"] == "aborted"
    if stream:
        assert records[1]["content"].startswith("one ")
        assert "six" not in records[1]["content"]
    else:  # a non-streaming client gets a non-streamed upstream call: nothing partial
        assert records[1]["content"] == ""
    assert "agent:beta:openai-user:erin" in sessions_index(state_dir, "beta")


@pytest_twisted.ensureDeferred
async def test_graceful_stop_finishes_the_stream_in_flight_and_refuses_new_connections(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(text="alpha beta gamma delta", delay=0.15)
    pending = post(http, gw, {"model": "moltbot:beta", "stream": True, "messages": HI})
    pending = Deferred.fromCoroutine(pending)
    await within(upstream.wait_for_request(1))
    stopping = gw.service.stopService()
    with pytest.raises(ConnectionRefusedError):
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port), Protocol())
    assert not stopping.called
    response, body = await pending
    assert response.code == 200
    assert body.endswith(DONE)
    payloads = sse_payloads(body)
    assert "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in payloads[:-1]) == "alpha beta gamma delta"
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    await stopping
