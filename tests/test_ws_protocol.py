"""The WebSocket control protocol end to end (docs/ws-protocol.rst): a real gateway on
127.0.0.1, driven by ``websocket-client`` (independent of the server's autobahn) in worker
threads while the test reactor serves; and the ``moltbot-gw`` CLI in subprocesses."""
from __future__ import annotations

import json
import os
import socket
import struct
import sys

import pytest_twisted
import websocket
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from moltbot_gw.config import parse_config, with_overrides
from moltbot_gw.service import GatewayService

from .conftest import CHAT_ENABLED, TOKEN
from .fakes import unused_port

in_thread = threads.deferToThread


class Client:
    """A blocking websocket-client connection; call its methods through ``in_thread``."""

    def __init__(self, url: str, timeout: float = 5.0, **options):
        self.ws = websocket.create_connection(url, timeout=timeout, **options)
        self.events: list[dict] = []
        self._ids = 0

    def send(self, frame) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def frame(self) -> dict:
        """The next text frame as a dict, or ``{"close": code, "reason": ...}``."""
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                return {"close": code, "reason": data[2:].decode("utf-8", "replace")}
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return json.loads(data)

    def response(self, request_id) -> dict:
        """The next response to ``request_id``; events that come first are kept."""
        while True:
            frame = self.frame()
            if frame.get("type") == "event":
                self.events.append(frame)
            elif "close" in frame or frame.get("id") == request_id:
                return frame

    def request(self, method: str, params=None) -> tuple[str, dict]:
        self._ids += 1
        request_id = f"q{self._ids}"
        self.send({"type": "req", "id": request_id, "method": method,
                   "params": params or {}})
        return request_id, self.response(request_id)

    def call(self, method: str, params=None) -> dict:
        return self.request(method, params)[1]

    def connect(self, token=TOKEN, **params) -> dict:
        hello = {"minProtocol": 1, "maxProtocol": 1,
                 "client": {"id": "test", "version": "1", "platform": "pytest"},
                 "auth": {"token": token}, **params}
        return self.call("connect", hello)

    def close(self) -> None:
        self.ws.close()


def open_client(url: str, token=TOKEN) -> Client:
    client = Client(url)
    reply = client.connect(token)
    assert reply["ok"], reply
    return client


def agent_events(client: Client, run_id: str) -> list[dict]:
    return [e["payload"] for e in client.events
            if e["event"] == "agent" and e["payload"]["runId"] == run_id]


async def eventually(predicate, timeout: float = 3.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not met in time"
        await deferLater(reactor, 0.01, lambda: None)


def upstream_config(up, **extra) -> dict:
    return {"models": {"providers": {"up": {"api": "openai-completions",
                                             "baseUrl": up.base_url}}},
            "agents": {"list": [{"id": "main", "model": "up/gpt-test"}]}, **extra}


# --- handshake ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_connect_with_a_wrong_or_missing_token_is_refused_with_4001(start_gateway):
    gw = await start_gateway()

    def attempt(auth):
        client = Client(gw.ws_url)
        reply = client.call("connect", {"minProtocol": 1, "maxProtocol": 1,
                                        "client": {"id": "t"}, **auth})
        return reply, client.frame()

    for auth in ({"auth": {"token": "wrong"}}, {"auth": {"password": "wrong"}}, {}):
        reply, close = await in_thread(attempt, auth)
        assert reply["ok"] is False and reply["error"]["code"] == "UNAUTHORIZED"
        assert TOKEN not in json.dumps(reply)
        assert close["close"] == 4001
    client = await in_thread(Client, gw.ws_url)
    hello = await in_thread(client.connect)
    await in_thread(client.close)
    assert hello["ok"] is True
    payload = hello["payload"]
    assert payload["type"] == "hello-ok" and payload["protocol"] == 1
    assert payload["server"]["name"] == "moltbot-gw"
    assert {"agent", "agent.wait", "chat.send", "chat.history", "chat.abort", "sessions.list",
            "sessions.reset", "sessions.delete", "models.list", "health", "status"} == set(
        payload["features"]["methods"])
    assert set(payload["features"]["events"]) == {"agent", "tick", "shutdown"}
    assert payload["policy"] == {"maxPayload": 4 * 1024 * 1024, "tickIntervalMs": 15000}


@pytest_twisted.ensureDeferred
async def test_anything_but_connect_first_is_refused_with_4002(start_gateway):
    gw = await start_gateway()

    def attempt(first):
        client = Client(gw.ws_url)
        client.send(first)
        return client.frame(), client.frame()

    for first in ('{"type": "req", "id": "a", "method": "health"}', "not json"):
        error, close = await in_thread(attempt, first)
        assert error["ok"] is False and error["error"]["code"] == "HANDSHAKE_REQUIRED"
        assert close["close"] == 4002


@pytest_twisted.ensureDeferred
async def test_protocol_version_mismatch_is_refused_with_4002(start_gateway):
    gw = await start_gateway()

    def attempt():
        client = Client(gw.ws_url)
        return client.connect(minProtocol=2, maxProtocol=3), client.frame()

    error, close = await in_thread(attempt)
    assert error["error"]["code"] == "PROTOCOL_MISMATCH"
    assert "1" in error["error"]["message"]
    assert close["close"] == 4002


@pytest_twisted.ensureDeferred
async def test_no_connect_within_the_handshake_timeout_closes_with_4008(start_gateway):
    gw = await start_gateway()
    gw.service.ws_factory.handshake_timeout = 0.3

    def idle():
        client = Client(gw.ws_url)
        return client.frame(), client.frame()

    error, close = await in_thread(idle)
    assert error["id"] is None and error["error"]["code"] == "HANDSHAKE_TIMEOUT"
    assert close["close"] == 4008
    await eventually(lambda: not gw.service.ws_factory.connections)


@pytest_twisted.ensureDeferred
async def test_repeated_wrong_tokens_are_rate_limited_with_4029(start_gateway):
    gw = await start_gateway({"gateway": {"auth": {"rateLimit": {"maxFailures": 2}}}})

    def attempt(token):
        client = Client(gw.ws_url)
        return client.connect(token), client.frame()

    for _ in range(2):
        error, close = await in_thread(attempt, "wrong")
        assert close["close"] == 4001
    # Limited now: even the right token is refused without being looked at.
    error, close = await in_thread(attempt, TOKEN)
    assert error["error"]["code"] == "RATE_LIMITED"
    assert error["error"]["retryAfterMs"] > 0
    assert close["close"] == 4029


# --- after the handshake -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_agent_streams_accepted_events_and_result_then_lists_session_and_history(
        start_gateway):
    gw = await start_gateway()

    def scenario():
        client = open_client(gw.ws_url)
        request_id, accepted = client.request("agent", {
            "message": "hello over websocket", "sessionKey": "ws-test",
            "idempotencyKey": "k-1"})
        final = client.response(request_id)
        sessions = client.call("sessions.list")
        history = client.call("chat.history", {"sessionKey": "agent:main:ws-test"})
        return client, accepted, final, sessions, history

    client, accepted, final, sessions, history = await in_thread(scenario)
    assert accepted["ok"] is True
    run_id = accepted["payload"]["runId"]
    assert accepted["payload"] == {"runId": run_id, "agentId": "main",
                                   "sessionKey": "agent:main:ws-test", "status": "accepted"}
    events = agent_events(client, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["stream"] == "lifecycle" and events[0]["data"]["phase"] == "start"
    assert events[-1]["stream"] == "lifecycle" and events[-1]["data"]["phase"] == "end"
    deltas = [e["data"]["delta"] for e in events if e["stream"] == "assistant"]
    assert deltas == ["hello ", "over ", "websocket"]
    frame_seqs = [e["seq"] for e in client.events]
    assert frame_seqs == sorted(frame_seqs) and len(set(frame_seqs)) == len(frame_seqs)
    assert final["ok"] is True and final["payload"]["status"] == "ok"
    assert final["payload"]["text"] == "hello over websocket"
    assert final["payload"]["model"] == "builtin/echo"
    assert final["payload"]["usage"]["outputTokens"] == 3
    keys = [s["key"] for s in sessions["payload"]["sessions"]]
    assert "agent:main:ws-test" in keys
    messages = history["payload"]["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "hello over websocket"), ("assistant", "hello over websocket")]
    assert messages[1]["status"] == "ok" and messages[1]["runId"] == run_id
    await in_thread(client.close)


@pytest_twisted.ensureDeferred
async def test_a_thousand_malformed_frames_get_a_thousand_errors_and_the_connection_lives(
        start_gateway):
    gw = await start_gateway()
    bad_frames = ["{not json", "[1, 2]", '{"type": "req"}', '{"type": "req", "id": "x"}',
                  '{"type": "nope", "id": "y", "method": "health"}',
                  '{"type": "req", "id": "z", "method": "health", "params": [1]}',
                  '{"type": "req", "id": "u", "method": "no.such.method"}']

    def scenario():
        client = open_client(gw.ws_url)
        for i in range(1000):
            client.send(bad_frames[i % len(bad_frames)])
        errors = [client.frame() for _ in range(1000)]
        return errors, client.call("health"), client

    errors, health, client = await in_thread(scenario)
    assert all(e["type"] == "res" and e["ok"] is False for e in errors)
    codes = {e["error"]["code"] for e in errors}
    assert codes == {"INVALID_REQUEST", "UNKNOWN_METHOD"}
    assert {e["id"] for e in errors} == {None, "x", "y", "z", "u"}
    assert health["ok"] is True and health["payload"]["ok"] is True
    await in_thread(client.close)


@pytest_twisted.ensureDeferred
async def test_errors_before_a_run_starts_are_the_only_response(start_gateway):
    gw = await start_gateway()

    def scenario():
        client = open_client(gw.ws_url)
        return client, [client.request(method, params) for method, params in (
            ("agent", {"message": "x", "agentId": "nobody"}),
            ("agent", {}),
            ("agent", {"message": "x", "sessionKey": "agent:other:main", "agentId": "main"}),
            ("agent.wait", {"runId": "run_unknown"}),
            ("connect", {}),
            ("health", {}))]

    client, replies = await in_thread(scenario)
    codes = [reply["error"]["code"] if not reply["ok"] else "ok" for _, reply in replies]
    assert codes == ["NOT_FOUND", "INVALID_REQUEST", "INVALID_REQUEST", "NOT_FOUND",
                     "INVALID_REQUEST", "ok"]
    # The health reply came right after the errors: no second response was pending.
    assert client.events == []
    await in_thread(client.close)


@pytest_twisted.ensureDeferred
async def test_tick_events_arrive_every_interval_with_increasing_seq(start_gateway):
    gw = await start_gateway()
    gw.service.ws_factory.tick_interval = 0.1

    def scenario():
        client = Client(gw.ws_url)
        hello = client.connect()
        ticks = [client.frame() for _ in range(3)]
        client.close()
        return hello, ticks

    hello, ticks = await in_thread(scenario)
    assert hello["payload"]["policy"]["tickIntervalMs"] == 100
    assert [t["event"] for t in ticks] == ["tick"] * 3
    assert [t["seq"] for t in ticks] == [1, 2, 3]
    assert all(isinstance(t["payload"]["ts"], int) for t in ticks)


@pytest_twisted.ensureDeferred
async def test_a_message_over_max_payload_closes_with_1009(start_gateway):
    gw = await start_gateway()

    def scenario():
        client = open_client(gw.ws_url)
        limit = 4 * 1024 * 1024
        client.send('"' + "x" * (limit - 2) + '"')   # exactly the limit: read and answered
        at_limit = client.frame()
        client.send("x" * (limit + 1))
        return at_limit, client.frame()

    at_limit, close = await in_thread(scenario)
    assert at_limit["ok"] is False and at_limit["error"]["code"] == "INVALID_REQUEST"
    assert close["close"] == 1009


@pytest_twisted.ensureDeferred
async def test_a_repeated_idempotency_key_returns_the_same_run(start_gateway):
    gw = await start_gateway()
    params = {"message": "only once", "sessionKey": "idem", "idempotencyKey": "same-key"}

    def scenario():
        first = open_client(gw.ws_url)
        request_id, accepted = first.request("agent", params)
        final = first.response(request_id)
        first.close()
        second = open_client(gw.ws_url)    # a client that reconnected and retried
        request_id, again = second.request("agent", params)
        again_final = second.response(request_id)
        other_id, other = second.request("agent", {**params, "idempotencyKey": "other"})
        second.response(other_id)
        history = second.call("chat.history", {"sessionKey": "idem"})
        second.close()
        return accepted, final, again, again_final, other, history

    accepted, final, again, again_final, other, history = await in_thread(scenario)
    run_id = accepted["payload"]["runId"]
    assert again["payload"]["runId"] == run_id and again["payload"]["deduplicated"] is True
    assert again_final["payload"] == final["payload"]
    assert other["payload"]["runId"] != run_id
    assert [m["role"] for m in history["payload"]["messages"]] == ["user", "assistant"] * 2


@pytest_twisted.ensureDeferred
async def test_events_go_to_the_asking_connection_and_chat_subscribers_only(start_gateway):
    gw = await start_gateway()

    def scenario():
        asker, bystander, subscriber = (open_client(gw.ws_url) for _ in range(3))
        sent = subscriber.call("chat.send", {"sessionKey": "room", "message": "first"})
        subscriber.call("agent.wait", {"runId": sent["payload"]["runId"]})
        request_id, accepted = asker.request("agent", {"sessionKey": "room",
                                                      "message": "second one"})
        asker.response(request_id)
        # Each sees the health reply as its next frame, so anything before it was queued.
        bystander.call("health")
        subscriber.call("health")
        for client in (asker, bystander, subscriber):
            client.close()
        return asker, bystander, subscriber, sent, accepted

    asker, bystander, subscriber, sent, accepted = await in_thread(scenario)
    assert sent["payload"]["status"] == "started"
    assert sent["payload"]["sessionKey"] == "agent:main:room"
    own_run, asked_run = sent["payload"]["runId"], accepted["payload"]["runId"]
    assert bystander.events == []
    assert {e["payload"]["runId"] for e in asker.events} == {asked_run}
    assert {e["payload"]["runId"] for e in subscriber.events} == {own_run, asked_run}
    asked = agent_events(subscriber, asked_run)
    assert asked == agent_events(asker, asked_run)       # the same events, each once
    assert "".join(e["data"]["delta"] for e in asked if e["stream"] == "assistant") == \
        "second one"
    assert all(e["payload"]["sessionKey"] == "agent:main:room" for e in subscriber.events)


@pytest_twisted.ensureDeferred
async def test_chat_abort_cancels_a_slow_run_and_its_upstream_request(start_gateway, upstream):
    upstream.script(text="one two three four five six", delay=0.3)
    gw = await start_gateway(upstream_config(upstream))
    client = await in_thread(open_client, gw.ws_url)
    sent = await in_thread(client.call, "chat.send", {"sessionKey": "slow",
                                                      "message": "take your time"})
    run_id = sent["payload"]["runId"]
    await upstream.wait_for_request()
    await deferLater(reactor, 0.4, lambda: None)   # let a word or so arrive
    status = await in_thread(client.call, "status")
    assert status["payload"]["activeRuns"] == 1
    aborted = await in_thread(client.call, "chat.abort", {"sessionKey": "slow"})
    assert aborted["payload"] == {"sessionKey": "agent:main:slow", "aborted": True,
                                  "runIds": [run_id]}
    waited = await in_thread(client.call, "agent.wait", {"runId": run_id})
    assert waited["ok"] is False and waited["error"]["code"] == "ABORTED"
    assert waited["error"]["details"]["status"] == "aborted"
    await upstream.requests[0].connection_lost       # the upstream request was abandoned
    phases = [e["payload"]["data"].get("phase") for e in client.events
              if e["payload"]["stream"] == "lifecycle"]
    assert phases == ["start", "error"]
    history = await in_thread(client.call, "chat.history", {"sessionKey": "slow"})
    assert history["payload"]["messages"][-1]["status"] == "aborted"
    again = await in_thread(client.call, "chat.abort", {"sessionKey": "slow"})
    assert again["payload"]["aborted"] is False
    await in_thread(client.close)


@pytest_twisted.ensureDeferred
async def test_a_run_outlives_the_connection_that_started_it(start_gateway, upstream):
    upstream.script(text="still here", delay=0.2)
    gw = await start_gateway(upstream_config(upstream))

    def start_and_leave():
        client = open_client(gw.ws_url)
        _, accepted = client.request("agent", {"message": "go", "sessionKey": "left"})
        client.close()
        return accepted["payload"]["runId"]

    run_id = await in_thread(start_and_leave)
    other = await in_thread(open_client, gw.ws_url)
    result = await in_thread(other.call, "agent.wait", {"runId": run_id})
    assert result["ok"] is True and result["payload"]["text"] == "still here"
    assert other.events == []
    await in_thread(other.close)


@pytest_twisted.ensureDeferred
async def test_ws_and_http_runs_on_one_session_are_serialized_into_one_transcript(
        start_gateway, upstream, http):
    upstream.script(echo=True, delay=0.15)
    gw = await start_gateway(upstream_config(upstream, gateway=CHAT_ENABLED["gateway"]))
    client = await in_thread(open_client, gw.ws_url)
    ws_reply = in_thread(client.call, "agent", {"message": "from the websocket side",
                                                "sessionKey": "agent:main:shared"})
    await upstream.wait_for_request(1)
    http_reply = http.post(gw.url + "/v1/chat/completions", json={
        "model": "moltbot:main", "messages": [{"role": "user", "content": "from http"}]},
        headers={**gw.auth_headers, "x-moltbot-session-key": "agent:main:shared"})
    accepted = await ws_reply
    assert accepted["payload"]["status"] == "accepted"
    response = await http_reply
    assert response.code == 200
    assert (await response.json())["choices"][0]["message"]["content"] == "from http"
    first, second = upstream.requests
    first_done = await first.completed
    assert second.received_at >= first_done          # one at a time on the session
    assert [m["content"] for m in second.body["messages"] if m["role"] != "system"] == [
        "from the websocket side", "from the websocket side", "from http"]
    history = await in_thread(client.call, "chat.history", {"sessionKey": "shared"})
    assert [(m["role"], m["content"]) for m in history["payload"]["messages"]] == [
        ("user", "from the websocket side"), ("assistant", "from the websocket side"),
        ("user", "from http"), ("assistant", "from http")]
    await in_thread(client.close)


@pytest_twisted.ensureDeferred
async def test_sessions_reset_and_delete(start_gateway):
    gw = await start_gateway()

    def scenario():
        client = open_client(gw.ws_url)
        client.call("agent.wait", {"runId": client.call("chat.send", {
            "sessionKey": "tidy", "message": "remember me"})["payload"]["runId"]})
        before = client.call("chat.history", {"sessionKey": "tidy"})
        reset = client.call("sessions.reset", {"key": "agent:main:tidy"})
        after_reset = client.call("chat.history", {"sessionKey": "tidy"})
        listed = client.call("sessions.list", {"agentId": "main"})
        deleted = client.call("sessions.delete", {"key": "tidy"})
        deleted_again = client.call("sessions.delete", {"key": "tidy"})
        reset_missing = client.call("sessions.reset", {"key": "tidy"})
        listed_after = client.call("sessions.list")
        bad = client.call("sessions.delete", {})
        client.close()
        return (before, reset, after_reset, listed, deleted, deleted_again, reset_missing,
                listed_after, bad)

    (before, reset, after_reset, listed, deleted, deleted_again, reset_missing, listed_after,
     bad) = await in_thread(scenario)
    old_id = before["payload"]["sessionId"]
    assert len(before["payload"]["messages"]) == 2
    assert reset["payload"]["reset"] is True and reset["payload"]["sessionId"] != old_id
    assert after_reset["payload"]["messages"] == []
    entry = {s["key"]: s for s in listed["payload"]["sessions"]}["agent:main:tidy"]
    assert entry["sessionId"] == reset["payload"]["sessionId"] and entry["agentId"] == "main"
    assert deleted["payload"] == {"key": "agent:main:tidy", "deleted": True}
    assert deleted_again["payload"]["deleted"] is False
    assert reset_missing["payload"] == {"key": "agent:main:tidy", "reset": False,
                                        "sessionId": None}
    assert "agent:main:tidy" not in [s["key"] for s in listed_after["payload"]["sessions"]]
    assert bad["error"]["code"] == "INVALID_REQUEST"


@pytest_twisted.ensureDeferred
async def test_models_list_status_and_health(start_gateway):
    gw = await start_gateway({"agents": {"list": [
        {"id": "main", "default": True},
        {"id": "beta", "model": {"primary": "builtin/echo", "fallbacks": ["builtin/echo"]}}]}})

    def scenario():
        client = open_client(gw.ws_url)
        replies = [client.call(m) for m in ("models.list", "status", "health")]
        client.close()
        return replies

    models, status, health = await in_thread(scenario)
    assert models["payload"]["models"] == [
        {"id": "moltbot:main", "agentId": "main", "name": None, "default": True,
         "model": "builtin/echo", "fallbacks": []},
        {"id": "moltbot:beta", "agentId": "beta", "name": None, "default": False,
         "model": "builtin/echo", "fallbacks": ["builtin/echo"]}]
    body = status["payload"]
    assert body["agents"] == {"defaultId": "main", "ids": ["main", "beta"]}
    assert body["activeRuns"] == 0 and body["connections"] == 1 and body["protocol"] == 1
    assert body["uptimeMs"] >= 0 and body["version"]
    assert health["payload"]["ok"] is True


@pytest_twisted.ensureDeferred
async def test_stopping_the_gateway_sends_shutdown_and_closes_with_1001(state_dir):
    config = with_overrides(parse_config({}, env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN},
                                         state_dir=state_dir), port=0)
    service = GatewayService(config, reactor)
    service.startService()
    port = (await service.when_listening()).getHost().port
    client = await in_thread(open_client, f"ws://127.0.0.1:{port}/")
    closing = in_thread(lambda: (client.frame(), client.frame()))
    await service.stopService()
    shutdown, close = await closing
    assert shutdown["event"] == "shutdown"
    assert close["close"] == 1001
    assert not service.ws_factory.connections


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_dropped_when_its_backlog_passes_the_bound(
        start_gateway, upstream):
    upstream.script(text="start", endless=True)   # events keep coming until maxReplyChars
    gw = await start_gateway(upstream_config(upstream))
    factory = gw.service.ws_factory
    factory.max_backlog = 256 * 1024

    def start_a_run_and_stop_reading():
        # a small receive buffer, so the kernel soon stops taking data for it
        client = Client(gw.ws_url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        assert client.connect()["ok"]
        client.send({"type": "req", "id": "a1", "method": "agent",
                     "params": {"message": "go"}})
        return client

    client = await in_thread(start_a_run_and_stop_reading)
    try:
        await eventually(lambda: not factory.connections, timeout=10)
        # The run belongs to no connection: it goes on until the reply limit ends it.
        await eventually(lambda: not gw.service.runner.active, timeout=10)
    finally:
        await in_thread(client.ws.sock.close)


# --- the CLI over WebSocket --------------------------------------------------------------

def cli_env(state_dir, token=TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}
    env["MOLTBOT_STATE_DIR"] = str(state_dir)
    if token is not None:
        env["CLAWDBOT_GATEWAY_TOKEN"] = token
    return env


async def run_cli(env, *args):
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "moltbot_gw.cli", *args], env=env)
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_cli_agent_talks_to_the_running_gateway_and_local_gives_the_same(
        start_gateway, tmp_path):
    gw = await start_gateway()
    env = cli_env(tmp_path / "cli-state")
    out, err, code = await run_cli(env, "agent", "--url", gw.ws_url, "--message", "hi")
    assert (out, code) == ("hi\n", 0), err
    # It went through the gateway: the turn is in the gateway's store, in the main session.
    entry = await gw.service.store.get("agent:main:main")
    assert entry is not None
    local = await run_cli(env, "agent", "--local", "--message", "hi")
    assert local[0] == "hi\n" and local[2] == 0
    out, err, code = await run_cli(env, "agent", "--url", gw.ws_url, "--message", "hi",
                                   "--agent", "nobody")
    assert code == 2 and 'unknown agent "nobody"' in err


@pytest_twisted.ensureDeferred
async def test_cli_uses_the_generated_token_file(start_gateway, state_dir):
    gw = await start_gateway(env={})                 # no token configured: one is generated
    assert (state_dir / "gateway.token").exists()
    env = cli_env(state_dir, token=None)
    out, err, code = await run_cli(env, "agent", "--url", gw.ws_url, "--message", "hi")
    assert (out, code) == ("hi\n", 0), err
    out, err, code = await run_cli({**env, "CLAWDBOT_GATEWAY_TOKEN": "wrong"}, "agent",
                                   "--url", gw.ws_url, "--message", "hi")
    assert code == 1 and "invalid gateway token" in err


@pytest_twisted.ensureDeferred
async def test_cli_agent_says_clearly_when_the_gateway_is_down(tmp_path):
    url = f"ws://127.0.0.1:{unused_port()}/"
    out, err, code = await run_cli(cli_env(tmp_path), "agent", "--url", url, "--message", "hi")
    assert code == 1 and out == ""
    assert f"cannot reach the gateway at {url}: connection refused" in err
    assert "--local" in err and "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_cli_health_connects_over_websocket(start_gateway, tmp_path):
    gw = await start_gateway()
    out, err, code = await run_cli(cli_env(tmp_path), "health", "--url", gw.ws_url)
    assert code == 0 and out.startswith(f"OK: gateway at {gw.ws_url} is up"), err
    out, err, code = await run_cli(cli_env(tmp_path, token="wrong"), "health", "--url",
                                   gw.url)
    assert code == 1 and "not healthy" in err and "invalid gateway token" in err
