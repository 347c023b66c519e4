"""Observability: ``GET /metrics`` (Prometheus text, behind gateway auth unless public, absent
unless enabled), the one-line-per-request access log with its ``x-request-id``, and the daemon's
logs (``--log-format json``; no configured secret ever written)."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
import pytest_twisted
import websocket
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from .chat_helpers import HI, PATH, config, http  # noqa: F401  (http is a fixture)
from .conftest import TOKEN
from .test_daemon import TWISTD, Daemon

API_KEY = "sk-test-Zx81QwErTy12345abcdef"
METRICS_ON = {"metrics": {"enabled": True}}


def _families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _total(family, **labels) -> float:
    """Sum of the family's main samples (not _bucket/_created) whose labels match."""
    wanted = {family.name, family.name + "_total", family.name + "_count"}
    return sum(sample.value for sample in family.samples
               if sample.name in wanted
               and all(sample.labels.get(k) == v for k, v in labels.items()))


def _ws_connect(url: str, secret: str, key: str = "token"):
    """A WebSocket that sent ``connect``; returns (socket, reply)."""
    ws = websocket.create_connection(url, timeout=5)
    ws.send(json.dumps({"type": "req", "id": "c1", "method": "connect", "params": {
        "minProtocol": 1, "maxProtocol": 1, "client": {"id": "observability-test"},
        "auth": {key: secret}}}))
    return ws, json.loads(ws.recv())


def _ws_refused(url: str, secret: str, key: str = "token") -> dict:
    ws, reply = _ws_connect(url, secret, key)
    ws.close()
    return reply


class AccessLog:
    """Collects the access-log events the gateway emits in this process."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, event):
        if event.get("log_namespace") == "moltbot_gw.access":
            self.events.append(event)


@pytest.fixture
def access_log():
    observer = AccessLog()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


async def _chat(http, gw, model="moltbot", stream=False, token=TOKEN, **extra):
    body = {"model": model, "messages": HI, "stream": stream, **extra}
    return await http.post(gw.url + PATH, json=body,
                           headers={"Authorization": f"Bearer {token}"})


@pytest_twisted.ensureDeferred
async def test_metrics_count_requests_runs_streams_ws_upstream_tokens_and_auth(
        start_gateway, upstream, http):
    raw = config(upstream, provider={"apiKey": API_KEY}, gateway=METRICS_ON)
    raw["agents"]["list"][1]["timeoutSeconds"] = 1.5
    gw = await start_gateway(raw)

    # echo agent, plain and streamed
    assert (await _chat(http, gw)).code == 200
    streamed = await _chat(http, gw, stream=True)
    assert streamed.code == 200
    await streamed.content()
    # the upstream agent: one answer, one upstream error
    upstream.queue()
    assert (await _chat(http, gw, model="moltbot:beta")).code == 200
    upstream.queue(status=500, error="the upstream is on fire")
    assert (await _chat(http, gw, model="moltbot:beta")).code >= 500
    # a failed HTTP auth and a failed WS auth
    assert (await _chat(http, gw, token="wrong-token")).code == 401
    refused = await threads.deferToThread(_ws_refused, gw.ws_url, "wrong-token")
    assert refused["ok"] is False
    # in flight while scraping: a stalled stream (it times out at 1.5 s) and a WebSocket
    upstream.queue(stall_after=1)
    stalled = await _chat(http, gw, model="moltbot:beta", stream=True)
    assert stalled.code == 200
    ws, hello = await threads.deferToThread(_ws_connect, gw.ws_url, TOKEN)
    try:
        assert hello["ok"] is True
        scrape = await http.get(gw.url + "/metrics", headers=gw.auth_headers)
        assert scrape.code == 200
        assert scrape.headers.getRawHeaders("content-type")[0].startswith("text/plain")
        live = _families((await scrape.content()).decode("utf-8"))
    finally:
        await threads.deferToThread(ws.close)
    await stalled.content()  # ends when the run times out
    scrape = await http.get(gw.url + "/metrics", headers=gw.auth_headers)
    after = _families((await scrape.content()).decode("utf-8"))

    assert live["moltbot_runs_active"].samples[0].value >= 1
    assert live["moltbot_sse_streams_active"].samples[0].value >= 1
    assert live["moltbot_ws_connections"].samples[0].value >= 1
    assert after["moltbot_sse_streams_active"].samples[0].value == 0

    requests = after["moltbot_http_requests"]
    assert _total(requests, route="/v1/chat/completions", status="200") >= 4
    assert _total(requests, route="/v1/chat/completions", status="401") == 1
    assert _total(requests, route="/metrics", status="200") >= 1
    assert _total(requests, route="/", status="101") >= 1
    assert _total(after["moltbot_http_request_duration_seconds"],
                  route="/v1/chat/completions") >= 4
    runs = after["moltbot_runs"]
    assert _total(runs, agent="main", outcome="ok") == 2
    assert _total(runs, agent="beta", outcome="ok") == 1
    assert _total(runs, agent="beta", outcome="error") == 1
    assert _total(runs, agent="beta", outcome="timeout") == 1
    assert _total(after["moltbot_upstream_request_duration_seconds"], provider="up") >= 3
    assert _total(after["moltbot_upstream_errors"], provider="up",
                  kind="upstream_unavailable") == 1
    assert _total(after["moltbot_tokens_in"], agent="main") > 0
    assert _total(after["moltbot_tokens_out"], agent="main") > 0
    assert _total(after["moltbot_tokens_out"], agent="beta") > 0
    assert _total(after["moltbot_auth_failures"], transport="http") == 1
    assert _total(after["moltbot_auth_failures"], transport="ws") == 1
    # every route label comes from the fixed table, whatever the paths were: an unknown path
    # is counted once, as "other" with its status, never under its own path
    other_404s = _total(requests, route="other", status="404")
    unknown = await http.get(gw.url + "/no/such/" + "x" * 50)
    assert unknown.code == 404
    assert (await unknown.json())["error"]["type"] == "not_found_error"
    scrape = await http.get(gw.url + "/metrics", headers=gw.auth_headers)
    counted = _families((await scrape.content()).decode())["moltbot_http_requests"]
    assert _total(counted, route="other", status="404") == other_404s + 1
    routes = {s.labels["route"] for s in counted.samples}
    assert routes <= {"/", "/health", "/metrics", "/v1/chat/completions", "/v1/models",
                      "/v1/models/{id}", "/v1/responses", "/v1/embeddings", "other"}
    assert "other" in routes


@pytest_twisted.ensureDeferred
async def test_metrics_need_the_gateway_token_unless_public(start_gateway, http):
    gw = await start_gateway({"gateway": METRICS_ON})
    response = await http.get(gw.url + "/metrics")
    assert response.code == 401
    assert (await response.json())["error"]["code"] == "invalid_api_key"
    response = await http.get(gw.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert response.code == 401
    await response.content()
    response = await http.get(gw.url + "/metrics", headers=gw.auth_headers)
    assert response.code == 200
    assert "moltbot_http_requests" in _families((await response.content()).decode())
    response = await http.post(gw.url + "/metrics", b"", headers=gw.auth_headers)
    assert response.code == 405
    await response.content()

    public = await start_gateway({"gateway": {"metrics": {"enabled": True, "public": True}}})
    response = await http.get(public.url + "/metrics")
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_metrics_are_absent_unless_enabled(start_gateway, http):
    gw = await start_gateway()
    for headers in ({}, gw.auth_headers):
        response = await http.get(gw.url + "/metrics", headers=headers)
        assert response.code == 404
        assert (await response.json())["error"]["type"] == "not_found_error"


@pytest_twisted.ensureDeferred
async def test_request_id_is_echoed_or_generated_and_logged(start_gateway, http, access_log):
    gw = await start_gateway(config())
    response = await http.get(gw.url + "/health", headers={"x-request-id": "client-id_1.a"})
    assert response.headers.getRawHeaders("x-request-id") == ["client-id_1.a"]
    await response.content()
    generated = []
    for bad in ("has space", "x" * 65, "semi;colon"):
        response = await http.get(gw.url + "/health", headers={"x-request-id": bad})
        await response.content()
        [value] = response.headers.getRawHeaders("x-request-id")
        assert value != bad and len(value) == 16 and int(value, 16) >= 0
        generated.append(value)
    assert len(set(generated)) == 3
    response = await _chat(http, gw)
    [chat_id] = response.headers.getRawHeaders("x-request-id")
    await response.content()
    await deferLater(reactor, 0, lambda: None)

    by_id = {event["request_id"]: event for event in access_log.events}
    assert by_id["client-id_1.a"]["path"] == "/health"
    assert by_id["client-id_1.a"]["status"] == 200
    assert set(generated) <= set(by_id)
    chat = by_id[chat_id]
    assert (chat["method"], chat["route"], chat["status"]) == ("POST", PATH, 200)
    assert chat["agent"] == "main"
    assert chat["tokens_in"] > 0 and chat["tokens_out"] > 0
    assert chat["duration_ms"] >= 0
    # exactly one line per request
    assert len(access_log.events) == 5


@pytest_twisted.ensureDeferred
async def test_a_request_the_client_abandons_is_logged_once_as_499(start_gateway, upstream,
                                                                     access_log, http):
    gw = await start_gateway(config(upstream))
    upstream.script(stall_after=1)
    d = http.post(gw.url + PATH, json={"model": "moltbot:beta", "messages": HI,
                                         "stream": True},
                    headers={"Authorization": f"Bearer {TOKEN}", "x-request-id": "leaver"},
                    unbuffered=True)
    response = await d
    assert response.code == 200
    response.original._transport.stopProducing()  # hang up mid-stream
    for _ in range(100):
        if access_log.events:
            break
        await deferLater(reactor, 0.02, lambda: None)
    [event] = access_log.events
    assert (event["request_id"], event["status"], event["agent"]) == ("leaver", 499, "beta")


# --- the daemon ------------------------------------------------------------------------


def _call(url, token=None, body=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                     method="POST" if body else "GET")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _drive(port: int, secret: str, key: str) -> None:
    """Traffic with right and wrong secrets, plain and upstream-failing runs."""
    base = f"http://127.0.0.1:{port}"
    chat = base + PATH
    for wrong in ("wrong-" + secret[:4], "Bearer-ish", ""):
        assert _call(chat, wrong or None, {"model": "moltbot", "messages": HI})[0] == 401
    assert _call(base + "/metrics", "nope")[0] == 401
    assert _call(base + "/metrics", secret)[0] == 200
    assert _call(chat, secret, {"model": "moltbot", "messages": HI})[0] == 200
    assert _call(chat, secret, {"model": "moltbot", "messages": HI, "stream": True})[0] == 200
    # the fake upstream answers 401 quoting our key, then 500
    assert _call(chat, secret, {"model": "moltbot:beta", "messages": HI})[0] >= 400
    assert _call(chat, secret, {"model": "moltbot:beta", "messages": HI,
                                "stream": True})[0] in (200, 502, 503)
    assert _call(base + "/v1/models", secret)[0] == 200
    assert _ws_refused(f"ws://127.0.0.1:{port}/", "wrong-" + secret, key)["ok"] is False
    ws, hello = _ws_connect(f"ws://127.0.0.1:{port}/", secret, key)
    assert hello["ok"] is True
    ws.close()


def _start_daemon(tmp_path, raw: dict, extra_args=()) -> Daemon:
    path = tmp_path / "moltbot.json"
    path.write_text(json.dumps(raw))
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}
    environment["MOLTBOT_STATE_DIR"] = str(tmp_path / "state")
    return Daemon(["--config", str(path), "--port", "0", *extra_args], environment,
                  str(tmp_path))


@pytest.mark.parametrize("mode,log_format", [("token", "text"), ("password", "json")])
@pytest_twisted.ensureDeferred
async def test_daemon_never_logs_secrets(tmp_path, upstream, mode, log_format):
    secret = ("tok-" if mode == "token" else "pw-") + "Q7vNf3kLp0sX2mRt"
    raw = config(upstream, provider={"apiKey": API_KEY}, gateway=METRICS_ON)
    raw["gateway"]["auth"] = {"mode": mode, mode: secret}
    upstream.queue(status=401, error=f"Incorrect API key provided: {API_KEY}.",
                   error_type="invalid_request_error")
    upstream.queue(status=500, error=f"internal error for key {API_KEY}")
    daemon = _start_daemon(tmp_path, raw, ["--log-format", log_format])
    try:
        _, port = await threads.deferToThread(daemon.wait_listening)
        await threads.deferToThread(_drive, port, secret, "token" if mode == "token"
                                    else "password")
    finally:
        code = await threads.deferToThread(daemon.stop)
    output = "".join(daemon.lines)
    assert code == 0, output
    assert len(upstream.requests) == 2
    for needle in (secret, API_KEY, API_KEY[3:]):
        assert needle not in output
    assert "Failed gateway auth" in output
    lines = [line for line in output.splitlines() if line.strip()]
    if log_format == "json":
        events = [json.loads(line) for line in lines]   # every line is one JSON object
        access = [e for e in events if e.get("log_namespace") == "moltbot_gw.access"]
        assert {e["status"] for e in access} >= {200, 401, 101}
        assert all(len(e["request_id"]) == 16 for e in access)
        assert any(e.get("agent") == "beta" for e in access)
    else:
        assert any(" POST /v1/chat/completions 200 " in line and "agent=main" in line
                   for line in lines)
        assert not any('"POST /v1/chat/completions HTTP/1.1"' in line for line in lines)


def test_unknown_log_format_is_a_usage_error(tmp_path):
    result = subprocess.run(TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--log-format", "xml"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode != 0
    assert '--log-format must be "text" or "json"' in result.stdout + result.stderr
