"""The front door (issue 13, items 2, 3, 10, 11, 14): what a client that has not authenticated
can make the gateway do. Pre-auth WebSocket frames are capped and counted, HTTP bodies are not
read before auth, Origin is checked on upgrades, loopback clients are not locked out, and the
answers carry the right reason phrases and no framework banner. Real gateways on 127.0.0.1,
driven by raw sockets and websocket-client in worker threads."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys

import pytest
import pytest_twisted
import websocket
from twisted.internet import reactor, task

from moltbot_gw import auth as gateway_auth
from moltbot_gw import request_log
from moltbot_gw.auth import FailureLimiter, GatewayAuth
from moltbot_gw.config import parse_config
from moltbot_gw.sessions.keys import resolve_session_key
from moltbot_gw.ws.client import GatewayClient

from .conftest import CHAT_ENABLED, TOKEN
from .test_ws_protocol import Client, in_thread

PRE_AUTH_CAP = 16 * 1024


def config(max_failures: int = 2, **gateway) -> dict:
    """Chat completions on, a small failure limit, and 127.0.0.1 trusted as a proxy: a
    request's X-Forwarded-For then names the (non-loopback) client the limiter charges."""
    return {"gateway": {**CHAT_ENABLED["gateway"], "trustedProxies": ["127.0.0.1"], **gateway,
                        "auth": {"rateLimit": {"maxFailures": max_failures}}}}


CLIENT = {"X-Forwarded-For": "203.0.113.5"}


# --- raw clients ---------------------------------------------------------------------------

def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` and read until the gateway closes (or ``timeout`` passes without a byte:
    then ``socket.timeout`` is raised, which fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
            if b"\r\n\r\n" in received and b"Connection: close" not in received:
                head, _, body = received.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    return received


def status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


def masked_frame(opcode: int, payload: bytes, declared: int = None) -> bytes:
    """A client frame whose header declares ``declared`` bytes (default: the payload's)."""
    n = len(payload) if declared is None else declared
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_client(url: str, origin: str = None, **options) -> Client:
    """websocket-client sends an Origin by default; a CLI (ours) sends none."""
    if origin is None:
        return Client(url, suppress_origin=True, **options)
    return Client(url, origin=origin, **options)


def connect_frame(token=TOKEN) -> dict:
    return {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "test"},
            "auth": {"token": token}}


# --- item 2: pre-auth WebSocket frames are capped before parsing, and counted ----------------

@pytest_twisted.ensureDeferred
async def test_pre_auth_frame_over_16_kib_closes_with_1009_before_its_payload_arrives(
        start_gateway):
    gw = await start_gateway()

    def attempt():
        client = ws_client(gw.ws_url, timeout=10)
        # The header announces 1 MB; only 20 KiB follow. Closing now proves the length was
        # checked from the header, not after buffering (today: waits for the rest).
        client.ws.sock.sendall(masked_frame(1, b"[" * (20 * 1024), declared=1024 * 1024))
        return client.frame()

    assert (await in_thread(attempt))["close"] == 1009


@pytest_twisted.ensureDeferred
async def test_oversized_and_malformed_handshakes_count_as_failed_attempts(start_gateway):
    gw = await start_gateway(config(max_failures=2))
    relayed = ["X-Forwarded-For: 203.0.113.5"]   # a remote client, behind the proxy

    def oversized():
        client = ws_client(gw.ws_url, header=relayed)
        client.send("[" * (PRE_AUTH_CAP + 1))
        return client.frame()

    def junk():
        client = ws_client(gw.ws_url, header=relayed)
        client.send("{not json")
        return client.frame(), client.frame()

    def right_token():
        client = ws_client(gw.ws_url, header=relayed)
        return client.connect(), client.frame()

    assert (await in_thread(oversized))["close"] == 1009
    error, close = await in_thread(junk)
    assert error["error"]["code"] == "HANDSHAKE_REQUIRED" and close["close"] == 4002
    assert b'moltbot_auth_failures_total{transport="ws"} 2.0' in \
        gw.service.gateway_metrics.exposition()
    # two failed attempts: the address is locked even for the right token
    error, close = await in_thread(right_token)
    assert error["error"]["code"] == "RATE_LIMITED" and close["close"] == 4029


@pytest_twisted.ensureDeferred
async def test_frame_limit_rises_after_connect_to_gateway_ws_max_frame_bytes(start_gateway):
    gw = await start_gateway({"gateway": {"ws": {"maxFrameBytes": 64 * 1024}}})

    def session():
        client = ws_client(gw.ws_url)
        hello = client.connect()
        # 40 KiB: over the pre-auth cap, under the configured limit: answered
        _, answer = client.request("health", {"pad": "x" * (40 * 1024)})
        client.send(json.dumps({"type": "req", "id": "big", "method": "health",
                                "params": {"pad": "x" * (80 * 1024)}}))
        return hello, answer, client.frame()

    hello, answer, closed = await in_thread(session)
    assert hello["payload"]["policy"]["maxPayload"] == 64 * 1024
    assert answer["type"] == "res"
    assert closed["close"] == 1009


# --- item 2: HTTP bodies are not read before auth ------------------------------------------

@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token"])
@pytest_twisted.ensureDeferred
async def test_post_without_the_secret_is_401_before_its_body_is_read(start_gateway,
                                                                        authorization):
    gw = await start_gateway(CHAT_ENABLED)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 20000000\r\n")
    if authorization:
        head += b"Authorization: " + authorization.encode() + b"\r\n"
    # No body is sent: an answer at all proves the gateway did not wait for 20 MB.
    response = await in_thread(raw_exchange, gw.port, head + b"\r\n")
    assert status_line(response) == b"HTTP/1.1 401 Unauthorized"
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "invalid_api_key"
    assert b"WWW-Authenticate: Bearer" in response


@pytest_twisted.ensureDeferred
async def test_post_with_the_secret_still_reads_its_body(start_gateway, http):
    gw = await start_gateway(CHAT_ENABLED)
    response = await http.post(gw.url + "/v1/chat/completions", headers=gw.auth_headers,
                               json={"model": "moltbot", "messages": [
                                   {"role": "user", "content": "hello door"}]})
    assert response.code == 200
    assert "hello door" in (await response.json())["choices"][0]["message"]["content"]


# --- item 3: Origin, the loopback exemption, resets, /64, X-Forwarded-For ---------------------

@pytest_twisted.ensureDeferred
async def test_websocket_upgrade_from_a_foreign_origin_is_403(start_gateway):
    gw = await start_gateway({"gateway": {"http": {"cors": {
        "allowedOrigins": ["https://ui.example"]}}}})

    def attempt(origin):
        try:
            client = ws_client(gw.ws_url, origin=origin)
        except websocket.WebSocketBadStatusException as e:
            return e.status_code
        hello = client.connect()
        client.close()
        return hello["ok"]

    assert await in_thread(attempt, "https://evil.example") == 403
    assert await in_thread(attempt, "null") == 403
    assert await in_thread(attempt, f"http://127.0.0.1:{gw.port + 1}") == 403
    assert await in_thread(attempt, "https://ui.example") is True
    assert await in_thread(attempt, f"http://127.0.0.1:{gw.port}") is True   # same host
    assert await in_thread(attempt, None) is True                          # not a browser


@pytest_twisted.ensureDeferred
async def test_loopback_client_is_not_locked_out_by_default(start_gateway, http):
    gw = await start_gateway({"gateway": {**CHAT_ENABLED["gateway"],
                                          "auth": {"rateLimit": {"maxFailures": 3}}}})
    for _ in range(5):
        response = await http.get(gw.url + "/v1/models",
                                  headers={"Authorization": "Bearer wrong"})
        assert response.code == 401
        await response.content()
    response = await http.get(gw.url + "/v1/models", headers=gw.auth_headers)
    assert response.code == 200
    await response.content()

    def cli_connect():  # the CLI's WebSocket: no Origin
        client = ws_client(gw.ws_url)
        return client.connect()

    assert (await in_thread(cli_connect))["ok"]


@pytest_twisted.ensureDeferred
async def test_the_cli_client_is_not_locked_out_by_a_page_guessing_tokens(start_gateway):
    """A web page in a local browser guesses tokens over WebSocket (Origin of its own host,
    allowed in); the gateway's own client (moltbot-gw health / agent) still connects."""
    gw = await start_gateway({"gateway": {"auth": {"rateLimit": {"maxFailures": 2}}}})

    def page_guess():
        client = ws_client(gw.ws_url, origin=f"http://127.0.0.1:{gw.port}")
        return client.connect("guess"), client.frame()

    for _ in range(2):
        await in_thread(page_guess)
    error, close = await in_thread(page_guess)    # the page itself is locked out
    assert error["error"]["code"] == "RATE_LIMITED" and close["close"] == 4029
    client = await GatewayClient.connect(reactor, gw.ws_url, {"token": TOKEN}, timeout=10)
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_browser_websocket_from_loopback_is_still_locked_out(start_gateway):
    gw = await start_gateway({"gateway": {"auth": {"rateLimit": {"maxFailures": 2}}}})
    origin = f"http://127.0.0.1:{gw.port}"   # a page served from this host: allowed in

    def attempt(token):
        client = ws_client(gw.ws_url, origin=origin)
        return client.connect(token), client.frame()

    for _ in range(2):
        _, close = await in_thread(attempt, "wrong")
        assert close["close"] == 4001
    error, close = await in_thread(attempt, TOKEN)
    assert error["error"]["code"] == "RATE_LIMITED" and close["close"] == 4029


@pytest_twisted.ensureDeferred
async def test_a_successful_auth_clears_the_failure_count(start_gateway, http):
    gw = await start_gateway(config(max_failures=3))
    codes = []
    for token in ("wrong", "wrong", TOKEN, "wrong", "wrong", TOKEN):
        response = await http.get(gw.url + "/v1/models",
                                  headers={"Authorization": f"Bearer {token}", **CLIENT})
        codes.append(response.code)
        await response.content()
    assert codes == [401, 401, 200, 401, 401, 200]


def test_ipv6_clients_are_counted_per_64():
    clock = task.Clock()
    auth = GatewayAuth("token", "right-secret-0123456789", FailureLimiter(clock, 3, 60.0))
    for host in ("1", "2", "3"):
        assert not auth.authenticate(f"2001:db8:1:2::{host}", "wrong").ok
    assert auth.authenticate("2001:db8:1:2:ffff::9", "right-secret-0123456789").rate_limited
    assert auth.authenticate("2001:db8:1:3::1", "right-secret-0123456789").ok  # next /64
    assert gateway_auth.limiter_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert gateway_auth.limiter_key("192.0.2.7") == "192.0.2.7"


@pytest_twisted.ensureDeferred
async def test_forwarded_for_hop_that_is_not_an_ip_is_400_not_a_charge_on_the_proxy(
        start_gateway, http):
    gw = await start_gateway(config(max_failures=2))
    for _ in range(3):
        response = await http.get(gw.url + "/v1/models", headers={
            "Authorization": "Bearer wrong", "X-Forwarded-For": "not-an-ip"})
        assert response.code == 400
        body = await response.json()
        assert body["error"]["code"] == "invalid_forwarded_for"
        assert body["error"]["param"] == "X-Forwarded-For"
    # the proxy was not charged: its other clients still get in
    response = await http.get(gw.url + "/v1/models", headers={
        **gw.auth_headers, "X-Forwarded-For": "198.51.100.7"})
    assert response.code == 200
    await response.content()

    def upgrade():
        try:
            websocket.create_connection(gw.ws_url, timeout=5,
                                        header=["X-Forwarded-For: not-an-ip"])
        except websocket.WebSocketBadStatusException as e:
            return e.status_code

    assert await in_thread(upgrade) == 400


# --- item 10: the body limit is honoured; exposed gateways need a real secret ---------------

@pytest_twisted.ensureDeferred
async def test_max_body_bytes_below_1_mib_is_honoured(start_gateway, http):
    raw = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True,
                                                                 "maxBodyBytes": 4096}}}}}
    gw = await start_gateway(raw)
    response = await http.post(gw.url + "/v1/chat/completions", headers=gw.auth_headers,
                               json={"model": "moltbot", "messages": [
                                   {"role": "user", "content": "x" * 8192}]})
    assert response.code == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


@pytest_twisted.ensureDeferred
async def test_paths_that_read_no_body_refuse_one_over_16_kib_unread(start_gateway):
    gw = await start_gateway(CHAT_ENABLED)
    for target in (b"/health", b"/", b"/nowhere", b"/metrics"):
        head = (b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 20000000\r\n\r\n")
        response = await in_thread(raw_exchange, gw.port, head)
        assert status_line(response) == b"HTTP/1.1 413 Payload Too Large", target
    small = b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    assert status_line(await in_thread(raw_exchange, gw.port, small)) == \
        b"HTTP/1.1 405 Method Not Allowed"


@pytest.mark.parametrize("secret", ["short-secret", " " * 20, "                 abc"])
def test_exposed_bind_needs_a_secret_of_16_characters(secret):
    gateway = parse_config({"gateway": {"bind": "lan", "auth": {"token": secret}}},
                           env={}).gateway
    assert "16 non-blank characters" in gateway.exposure_problem()
    fine = parse_config({"gateway": {"bind": "lan", "auth": {"token": "x" * 16}}}, env={})
    assert fine.gateway.exposure_problem() is None
    loopback = parse_config({"gateway": {"auth": {"token": secret}}}, env={})
    assert loopback.gateway.exposure_problem() is None


@pytest_twisted.ensureDeferred
async def test_reload_of_an_exposed_gateway_refuses_a_short_secret(start_gateway, state_dir, http):
    long_token = "a-long-enough-token-0123"
    gw = await start_gateway({"gateway": {"bind": "lan"}},
                             env={"CLAWDBOT_GATEWAY_TOKEN": long_token})
    short = parse_config({"gateway": {"bind": "lan"}}, env={"CLAWDBOT_GATEWAY_TOKEN": "short"},
                         state_dir=state_dir)
    with pytest.raises(ValueError, match="16 non-blank characters"):
        gw.service.reload(short)
    response = await http.get(gw.url + "/health")
    assert response.code == 200
    await response.content()


def test_daemon_refuses_lan_bind_with_a_short_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}
    env.update({"MOLTBOT_STATE_DIR": str(tmp_path / "state"),
                "CLAWDBOT_GATEWAY_TOKEN": "tooshort",
                "PYTHONPATH": os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])})
    result = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; "
                             "run()", "-n", "--pidfile=", "moltbot-gw", "--bind", "lan",
                             "--port", "0"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "fewer than 16 non-blank characters" in result.stderr


# --- item 11: no framework banner; no control or bidi characters in keys or logs ------------

@pytest_twisted.ensureDeferred
async def test_websocket_upgrade_answer_names_no_framework(start_gateway):
    gw = await start_gateway()
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")

    def handshake():
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            return head

    head = await in_thread(handshake)
    assert status_line(head) == b"HTTP/1.1 101 Switching Protocols"
    assert b"Autobahn" not in head
    assert b"Server: moltbot-gw\r\n" in head


@pytest.mark.parametrize("key", ["chat\u202eevil", "line\u2028break", "zero\u200bwidth"])
@pytest_twisted.ensureDeferred
async def test_session_key_with_bidi_or_separator_characters_is_400(start_gateway, key, http):
    gw = await start_gateway(CHAT_ENABLED)
    response = await http.post(gw.url + "/v1/chat/completions", headers={
        **gw.auth_headers, "x-moltbot-session-key": key.encode("utf-8")},
        json={"model": "moltbot", "messages": [{"role": "user", "content": "hi"}]})
    assert response.code == 400
    assert (await response.json())["error"]["param"] == "x-moltbot-session-key"
    with pytest.raises(ValueError):
        resolve_session_key("main", key)


def test_logged_text_escapes_controls_and_bidi_overrides():
    escape = request_log.escape_for_log
    assert escape("/v1/x\n[fake] \u202eabc\u2028\x85") == \
        "/v1/x\\n[fake] \\u202eabc\\u2028\\x85"
    assert escape("/v1/caf\u00e9") == "/v1/caf\u00e9"


# --- item 14: reason phrases ----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_426_and_429_carry_their_reason_phrases(start_gateway):
    gw = await start_gateway(config(max_failures=1))
    get_root = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    assert status_line(await in_thread(raw_exchange, gw.port, get_root)) == \
        b"HTTP/1.1 426 Upgrade Required"
    wrong = (b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
             b"X-Forwarded-For: 203.0.113.5\r\nAuthorization: Bearer wrong\r\n\r\n")
    assert status_line(await in_thread(raw_exchange, gw.port, wrong)) == \
        b"HTTP/1.1 401 Unauthorized"
    assert status_line(await in_thread(raw_exchange, gw.port, wrong)) == \
        b"HTTP/1.1 429 Too Many Requests"
