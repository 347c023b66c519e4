"""Bad input: property tests (Hypothesis) that throw junk at the gateway and its pure parsers.

* The pure parsers (``parse_chat_request``, the WS frame parsers) get many fast examples: they
  return a value or raise their own client error, never anything else.
* A real daemon (``twistd moltbot-gw`` in a subprocess, builtin/echo agent, chat completions
  enabled) started once per module gets arbitrary bodies, headers, paths and query strings
  over plain sockets (one connection per request, so no client library smooths anything
  over): every answer is one of the expected statuses, never a 5xx; an error answer is an
  OpenAI-shaped JSON error without traceback text; and the daemon stays up.

Script mode, for long runs against one daemon (prints counts by status, 5xx and liveness):

    python tests/test_fuzz.py --long 10000
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moltbot_gw.openai.chat_request import ChatRequest, parse_chat_request
from moltbot_gw.openai.errors import APIError
from moltbot_gw.ws.frames import ConnectParams, ProtocolError, Request, parse_connect, parse_request

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
HOST = "127.0.0.1"
TOKEN = "fuzz-token-0123456789abcdef"
PATH = "/v1/chat/completions"
ALLOWED = {200, 400, 401, 404, 405, 413, 429}
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "/', b"builtins.")


# --- a daemon in a subprocess ---------------------------------------------------------------

def fuzz_config(**chat) -> dict:
    """Chat completions on, builtin/echo, and 127.0.0.1 trusted as a proxy so that each
    request can name its own client address in X-Forwarded-For (the failed-auth limiter then
    limits that address, not every fuzzed request after the tenth wrong token)."""
    return {"gateway": {"trustedProxies": ["127.0.0.1"], "shutdownGraceSeconds": 5,
                        "http": {"endpoints": {"chatCompletions": {"enabled": True, **chat}}}},
            "agents": {"list": [{"id": "main", "default": True, "model": "builtin/echo"},
                                {"id": "beta", "model": "builtin/echo"}]}}


class GatewayDaemon:
    """``twistd -n moltbot-gw`` with its own config and state dir; its log goes to a file (a
    pipe nobody reads would fill up and stall the daemon)."""

    def __init__(self, workdir: Path, config: dict, token: str = TOKEN,
                 env: Optional[dict] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.config_path = self.workdir / "moltbot.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = self.workdir / "daemon.log"
        self.token = token
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}
        self.env.update({"MOLTBOT_STATE_DIR": str(self.state_dir),
                         "CLAWDBOT_GATEWAY_TOKEN": token, **(env or {})})
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.starts = 0

    def start(self, port: int = 0, timeout: float = 30.0) -> int:
        """Start (again, on the same state dir); returns the port once it listens."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--config", str(self.config_path),
                          "--port", str(port)],
                env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError("daemon did not start:\n" + self.log_text()[-4000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            return self.alive() and request(self.port, "GET", "/health").status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> Optional[int]:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""


# --- a client that sends exactly the bytes it is given --------------------------------------

class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} {self.body[:300]!r}>"


def request(port: int, method: str, target, headers=(), body: Optional[bytes] = None,
            timeout: float = 15.0) -> Response:
    """One request on its own connection (``Connection: close``); ``target`` and header
    names/values may be bytes (sent as they are) or str (UTF-8)."""
    b = _b

    lines = [b(method) + b" " + b(target) + b" HTTP/1.1", b"Host: " + b(f"{HOST}:{port}"),
             b"Connection: close"]
    lines += [b(name) + b": " + b(value) for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    data = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method=method if method == "HEAD" else None)
        response.begin()
        payload = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                        payload)
    finally:
        sock.close()


_client_counter = itertools.count(1)


def fresh_client_address() -> str:
    n = next(_client_counter)
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def auth_header(token: str = TOKEN) -> tuple:
    return ("Authorization", f"Bearer {token}")


# --- what every answer must look like -------------------------------------------------------

# Twisted's HTTP parser refuses a request that is not valid HTTP (a header block over 16 KiB,
# NUL in a header value) with a bare "400 Bad Request" (no body) before any gateway code runs.
TWISTED_MAX_HEADER_BYTES = 16384


def _b(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


def header_bytes(headers) -> int:
    return sum(len(_b(n)) + len(_b(v)) + 4 for n, v in headers)


def invalid_http(headers) -> bool:
    return (header_bytes(headers) + 200 > TWISTED_MAX_HEADER_BYTES
            or any(b"\x00" in _b(v) for _n, v in headers))


def check_answer(response: Response, *, stream: Optional[bool] = None,
                 headers=()) -> None:
    """Status allowed, never 5xx; an error is an OpenAI-shaped JSON error; no tracebacks."""
    assert response.status < 500, response
    assert not any(marker in response.body for marker in TRACEBACK_MARKERS), response
    if (response.status == 400 and not response.body and not response.headers
            and invalid_http(headers)):
        return
    if response.status >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), response
        error = response.json().get("error")
        assert isinstance(error, dict), response
        assert isinstance(error.get("message"), str) and error["message"], response
        assert isinstance(error.get("type"), str) and error["type"], response
        assert "param" in error and "code" in error, response
        if response.status == 426:   # "/" without a WebSocket upgrade: designed, and JSON
            assert error["code"] == "upgrade_required", response
            return
    assert response.status in ALLOWED, response
    if response.status == 200 and stream is not None:
        if stream:
            assert response.headers["content-type"].startswith("text/event-stream"), response
            assert response.body.endswith(b"data: [DONE]\n\n"), response
            for event in response.body.split(b"\n\n"):
                if event and event != b"data: [DONE]":
                    assert event.startswith(b"data: "), response
                    json.loads(event[len(b"data: "):])
        else:
            completion = response.json()
            assert completion["object"] == "chat.completion", response
            assert completion["choices"][0]["message"]["role"] == "assistant", response


# --- strategies -----------------------------------------------------------------------------

ROLES = ["system", "developer", "user", "assistant", "tool", "function"]
json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12)
short_text = st.text(max_size=60)
role = st.sampled_from(ROLES) | json_values
data_uri = st.builds(lambda mime, data: f"data:{mime};base64,{data}",
                     st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp",
                                      "text/html", "", "image/png;charset=x"]),
                     st.text(alphabet="ABCDEFabcdef0123456789+/=%!", max_size=40))
image_url = data_uri | st.sampled_from(["http://127.0.0.1/x.png", "https://127.0.0.1/y",
                                        "ftp://x", "", "data:"]) | json_values
content_part = (
    st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text"]),
                           "text": short_text | json_values})
    | st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_image"]),
                             "image_url": image_url | st.fixed_dictionaries({"url": image_url})})
    | st.fixed_dictionaries({"type": json_values}, optional={"text": json_values})
    | short_text | json_values)
content = short_text | st.none() | st.lists(content_part, max_size=4) | json_values
tool_call = (st.fixed_dictionaries(
    {"id": st.text(max_size=10) | json_values, "type": st.just("function"),
     "function": st.fixed_dictionaries({"name": short_text | json_values},
                                       optional={"arguments": short_text | json_values})
     | json_values}) | json_values)
message = st.fixed_dictionaries(
    {"role": role},
    optional={"content": content, "name": short_text | json_values,
              "tool_calls": st.lists(tool_call, max_size=3) | json_values,
              "tool_call_id": short_text | json_values,
              "junk": json_values})
user_message = st.fixed_dictionaries({"role": st.just("user"), "content": short_text})
messages = (st.lists(message, max_size=5)
            | st.lists(message, max_size=3).map(lambda ms: ms + [{"role": "user",
                                                                  "content": "hi there"}])
            | json_values)
tool = (st.fixed_dictionaries(
    {"type": st.sampled_from(["function"]) | json_values,
     "function": st.fixed_dictionaries(
         {"name": st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True) | short_text},
         optional={"description": short_text | json_values,
                   "parameters": st.just({"type": "object"}) | json_values,
                   "strict": json_values})}) | json_values)
model = (st.sampled_from(["moltbot", "moltbot:main", "moltbot:beta", "agent:main",
                          "clawdbot:MAIN", "moltbot:nope", "moltbot:../etc", "", " ", "gpt-4o"])
         | short_text | json_values)
chat_body = st.fixed_dictionaries(
    {"messages": messages},
    optional={"model": model, "stream": st.booleans() | json_values,
              "stream_options": st.fixed_dictionaries(
                  {}, optional={"include_usage": json_values}) | json_values,
              "user": short_text | json_values,
              "temperature": st.floats(-1, 3) | json_values,
              "top_p": st.floats(-1, 2) | json_values,
              "n": st.integers(-1, 3) | json_values,
              "max_tokens": st.integers(-5, 100) | json_values,
              "max_completion_tokens": st.integers(-5, 100) | json_values,
              "stop": short_text | st.lists(short_text, max_size=6) | json_values,
              "seed": st.integers() | json_values,
              "presence_penalty": st.floats(-3, 3) | json_values,
              "frequency_penalty": st.floats(-3, 3) | json_values,
              "response_format": st.fixed_dictionaries(
                  {"type": st.sampled_from(["text", "json_object", "json_schema"]) | json_values},
                  optional={"json_schema": json_values}) | json_values,
              "tools": st.lists(tool, max_size=3) | json_values,
              "tool_choice": st.sampled_from(["none", "auto", "required"])
              | st.fixed_dictionaries({"type": st.just("function"),
                                       "function": st.fixed_dictionaries({"name": short_text})})
              | json_values,
              "parallel_tool_calls": json_values,
              "extra": json_values})
# a body that parses is the interesting case; plain junk is covered separately
valid_chat_body = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=2).map(lambda ms: ms + [{"role": "user",
                                                                     "content": "hello fuzz"}])},
    optional={"stream": st.booleans(), "user": short_text,
              "model": st.sampled_from(["moltbot", "moltbot:main", "moltbot:beta"])})


def _encode_json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


chat_bytes = st.one_of(
    chat_body.map(_encode_json),
    valid_chat_body.map(_encode_json),
    json_values.map(_encode_json),
    st.binary(max_size=300),
    chat_body.map(lambda b: _encode_json(b)[:-3]),                 # truncated JSON
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"messages": []}', b"\xff\xfe{}",
                     b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                     b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                     b'{"messages": [{"role": "user", "content": "x"}], "n": 1e999}',
                     b"[" * 200 + b"]" * 200, b'{"a":' * 200 + b"1" + b"}" * 200]))
# Nesting deeper than the interpreter's recursion limit: tested on its own (it once gave a 500).
DEEP_JSON = {"array": b"[" * 3000 + b"]" * 3000,
             "object": b'{"a":' * 3000 + b"1" + b"}" * 3000,
             "inside-a-valid-body": b'{"messages": [{"role": "user", "content": "hi"}], "x": '
                                    + b"[" * 3000 + b"]" * 3000 + b"}"}


header_text = st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=80)
huge_header_text = st.integers(1, 12).map(lambda k: "x" * (k * 1000))
header_value = header_text | huge_header_text | st.binary(max_size=40).map(
    lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
authorization = st.one_of(
    st.just(f"Bearer {TOKEN}"), st.just(f"bearer   {TOKEN}  "), st.just(f"BEARER {TOKEN}"),
    st.just("Bearer"), st.just("Bearer "), st.just(f"Basic {TOKEN}"), st.just(TOKEN),
    st.just(f"Bearer {TOKEN}x"), st.just(f"Bearer {TOKEN[:-1]}"),
    st.builds(lambda t: f"Bearer {t}", header_text), header_value)
header_names = st.sampled_from([
    "x-moltbot-agent-id", "x-clawdbot-agent-id", "x-moltbot-session-key",
    "x-clawdbot-session-key", "x-moltbot-model", "x-clawdbot-model", "X-Moltbot-Agent-Id",
    "x-moltbot-whatever", "content-type", "accept", "origin", "x-forwarded-for",
    "x-openwebui-chat-id", "user-agent", "cookie", "expect", "accept-encoding"])
extra_headers = st.lists(st.tuples(header_names, header_value), max_size=4)

path_piece = st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#%"),
                     max_size=12).map(lambda s: "".join(
                         c if c.isalnum() or c in "-._~:@!$&'()*+,;=" else "%%%02X" % ord(c)
                         for c in s))
known_paths = st.sampled_from(["/", "/health", "/v1", "/v1/", "/v1/chat/completions",
                               "/v1/chat/completions/", "/v1/models", "/v1/models/moltbot:main",
                               "/v1/models/x", "/v1/embeddings", "/v1/responses", "/metrics",
                               "//v1/chat/completions", "/v1//chat/completions",
                               "/v1/chat/../chat/completions", "/V1/CHAT/COMPLETIONS",
                               "/v1/chat/completions%2F", "/favicon.ico", "/%2e%2e/etc"])
paths = known_paths | st.lists(path_piece, min_size=1, max_size=4).map(
    lambda parts: "/" + "/".join(parts))
query = st.lists(st.tuples(path_piece, path_piece), max_size=3).map(
    lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else "")
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"])


# --- the pure parsers (fast, many examples) -------------------------------------------------

def _parse_or_400(body: bytes):
    try:
        parsed = parse_chat_request(body)
    except APIError as error:
        assert error.status == 400, error
        assert isinstance(error.message, str) and error.message
        json.loads(error.body())
        return None
    assert isinstance(parsed, ChatRequest)
    assert parsed.input and all(m["role"] in ("user", "tool") for m in parsed.input)
    return parsed


@settings(max_examples=500, deadline=None)
@given(chat_body)
def test_parser_on_chat_shaped_bodies_returns_or_raises_400(body):
    _parse_or_400(_encode_json(body))


@settings(max_examples=500, deadline=None)
@given(chat_bytes)
def test_parser_on_arbitrary_bytes_returns_or_raises_400(body):
    _parse_or_400(body)


@settings(max_examples=200, deadline=None)
@given(valid_chat_body)
def test_parser_accepts_bodies_that_end_with_a_user_message(body):
    try:
        parsed = _parse_or_400(_encode_json(body))
    except AssertionError:
        raise
    if parsed is not None:
        assert parsed.input[-1]["content"] == "hello fuzz"


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_parser_on_deeply_nested_json(name):
    _parse_or_400(DEEP_JSON[name])


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_ws_parse_request_on_deeply_nested_json(name):
    with pytest.raises(ProtocolError):
        parse_request(DEEP_JSON[name])


ws_frames = st.one_of(
    st.binary(max_size=200),
    json_values.map(_encode_json),
    st.fixed_dictionaries({"type": st.just("req") | json_values,
                           "id": st.text(max_size=200) | json_values,
                           "method": st.sampled_from(["connect", "health", "status", "agent",
                                                      "chat.send", ""]) | json_values},
                          optional={"params": json_values}).map(_encode_json))
connect_params = st.dictionaries(st.text(max_size=10), json_values, max_size=3) | \
    st.fixed_dictionaries(
        {"minProtocol": st.integers(-2, 3) | json_values,
         "maxProtocol": st.integers(-2, 3) | json_values},
        optional={"client": st.fixed_dictionaries(
            {"id": st.text(max_size=200) | json_values},
            optional={"version": st.text(max_size=200) | json_values,
                      "platform": st.text(max_size=200) | json_values}) | json_values,
            "auth": st.fixed_dictionaries({}, optional={"token": json_values,
                                                        "password": json_values})
            | json_values})


@settings(max_examples=800, deadline=None)
@given(ws_frames)
def test_ws_parse_request_returns_or_raises_protocol_error(payload):
    try:
        parsed = parse_request(payload)
    except ProtocolError as error:
        assert error.code == "INVALID_REQUEST" and error.message
        json.dumps(error.to_json())
        return
    assert isinstance(parsed, Request) and isinstance(parsed.params, dict)


@settings(max_examples=800, deadline=None)
@given(connect_params)
def test_ws_parse_connect_returns_or_raises_protocol_error(params):
    try:
        parsed = parse_connect(params)
    except ProtocolError as error:
        assert error.code in ("INVALID_REQUEST", "PROTOCOL_MISMATCH") and error.message
        return
    assert isinstance(parsed, ConnectParams) and parsed.protocol == 1


# --- the real daemon ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    daemon = GatewayDaemon(tmp_path_factory.mktemp("fuzz"), fuzz_config())
    daemon.start()
    yield daemon
    code = daemon.terminate()
    assert code == 0, daemon.log_text()[-3000:]


HTTP_SETTINGS = settings(max_examples=150, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])


def _chat(gateway, body: bytes, headers=(), method="POST", target=PATH) -> Response:
    return request(gateway.port, method, target,
                   [("X-Forwarded-For", fresh_client_address()),
                    ("Content-Type", "application/json"), *headers], body)


def _stream_flag(body: bytes) -> Optional[bool]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value.get("stream") is True if isinstance(value, dict) else None


@HTTP_SETTINGS
@given(chat_bytes)
def test_http_chat_bodies(gateway, body):
    response = _chat(gateway, body, [auth_header()])
    check_answer(response, stream=_stream_flag(body))
    assert response.status in (200, 400), response


@HTTP_SETTINGS
@given(valid_chat_body, extra_headers)
def test_http_valid_bodies_with_junk_headers(gateway, body, headers):
    raw = _encode_json(body)
    response = _chat(gateway, raw, [auth_header(), *headers])
    check_answer(response, stream=_stream_flag(raw), headers=headers)


@HTTP_SETTINGS
@given(authorization, chat_bytes)
def test_http_authorization_variants(gateway, value, body):
    response = _chat(gateway, body, [("Authorization", value)])
    check_answer(response, stream=_stream_flag(body), headers=[("Authorization", value)])
    if response.status == 200:
        assert value.strip().lower().startswith("bearer") and TOKEN in value


@HTTP_SETTINGS
@given(methods, paths, query, st.booleans(), st.none() | chat_bytes)
def test_http_paths_methods_and_queries(gateway, method, path, qs, authed, body):
    headers = [("X-Forwarded-For", fresh_client_address())]
    if authed:
        headers.append(auth_header())
    response = request(gateway.port, method, path + qs, headers, body)
    if method == "HEAD":
        assert response.status < 500, response
        return
    check_answer(response)


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_http_deeply_nested_json(gateway, name):
    response = _chat(gateway, DEEP_JSON[name], [auth_header()])
    check_answer(response)
    assert response.status == 400


def test_http_oversized_body_is_413(gateway):
    """Refused on its Content-Length, before the body is read."""
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {21 * 1024 * 1024}\r\n\r\n")
    sock = socket.create_connection((HOST, gateway.port), timeout=10)
    try:
        sock.sendall(head.encode() + b'{"messages": [')
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                          response.read())
    finally:
        sock.close()
    assert answer.status == 413, answer
    check_answer(answer)
    assert gateway.healthy()


def test_http_oversized_header_is_refused_and_gateway_lives(gateway):
    try:
        response = request(gateway.port, "POST", PATH,
                           [auth_header(), ("x-moltbot-session-key", "k" * 200_000)], b"{}")
        assert response.status in (400, 413, 431), response
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        pass   # Twisted may drop the connection on an over-long header line
    assert gateway.healthy()


def test_non_utf8_path_gets_an_openai_shaped_error(gateway):
    """Percent-escapes that are not UTF-8 under /v1 must not fall through to Klein's own
    text/html 400 (with a traceback in the daemon's log)."""
    response = request(gateway.port, "GET", "/v1/models/%ff%fe",
                       [auth_header(), ("X-Forwarded-For", fresh_client_address())])
    assert response.headers.get("content-type") == "application/json", response
    assert response.status == 400
    check_answer(response)


def test_gateway_is_alive_and_logged_no_unhandled_errors(gateway):
    assert gateway.healthy()
    log = gateway.log_text()
    assert "Unhandled Error" not in log and "nhandled error" not in log, log[-3000:]
    assert "failed unexpectedly" not in log, log[-3000:]


# --- script mode: a long run against one daemon ---------------------------------------------

def long_run(n: int, seed: int = 0) -> int:
    """Send ``n`` fuzzed requests (all kinds above, one connection each) to one daemon."""
    counts: Counter = Counter()
    failures: list[str] = []
    kinds: Counter = Counter()
    any_request = st.one_of(
        st.tuples(st.just("chat"), chat_bytes, st.just(()), st.just("POST"), st.just(PATH)),
        st.tuples(st.just("headers"), valid_chat_body.map(_encode_json), extra_headers,
                  st.just("POST"), st.just(PATH)),
        st.tuples(st.just("auth"), chat_bytes, authorization.map(lambda v: [("Authorization",
                                                                              v)]),
                  st.just("POST"), st.just(PATH)),
        st.tuples(st.just("paths"), st.none() | chat_bytes, st.just(()), methods,
                  st.tuples(paths, query).map("".join)),
        # inputs that once broke the gateway (deep nesting, non-UTF-8 escapes)
        st.tuples(st.just("regressions"), st.sampled_from(sorted(DEEP_JSON.values())),
                  st.just(()), st.just("POST"), st.just(PATH)),
        st.tuples(st.just("regressions"), st.none(), st.just(()), st.just("GET"),
                  st.sampled_from(["/v1/models/%ff%fe", "/v1/%c3%28", "/v1/chat/%80"])))
    with tempfile.TemporaryDirectory(prefix="moltbot-fuzz-") as tmp:
        daemon = GatewayDaemon(Path(tmp), fuzz_config())
        daemon.start()
        started = time.monotonic()
        try:
            @settings(max_examples=n, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))
            @given(any_request)
            def one(example):
                kind, body, headers, method, target = example
                kinds[kind] += 1
                hdrs = list(headers)
                if kind in ("chat", "headers", "regressions"):
                    hdrs.insert(0, auth_header())
                if kind == "paths" and counts.total() % 2:
                    hdrs.append(auth_header())
                try:
                    response = _chat(daemon, body, hdrs, method=method, target=target)
                except OSError as error:
                    counts[f"socket error {type(error).__name__}"] += 1
                    if kind != "headers" or not daemon.healthy():
                        failures.append(f"{kind}: {error!r}")
                    return
                counts[response.status] += 1
                if method == "HEAD":
                    ok = response.status < 500
                else:
                    try:
                        chat = method == "POST" and target == PATH and body
                        check_answer(response, stream=_stream_flag(body) if chat else None,
                                     headers=hdrs)
                        ok = True
                    except (AssertionError, ValueError, KeyError) as error:
                        ok = False
                        if len(failures) < 20:
                            failures.append(f"{kind} {method} {target[:80]!r}: {response!r} "
                                            f"{error!r}")
                if not ok:
                    counts["check failed"] += 1
            one()
            elapsed = time.monotonic() - started
            alive = daemon.healthy()
        finally:
            code = daemon.terminate()
            log = daemon.log_text()
    five = sum(v for k, v in counts.items() if isinstance(k, int) and k >= 500)
    total = sum(v for k, v in counts.items() if isinstance(k, int))
    print(f"requests answered: {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s); "
          f"by kind: {dict(kinds)}")
    print("by status:", {k: counts[k] for k in sorted(counts, key=str)})
    print(f"5xx: {five}; daemon alive and healthy at the end: {alive}; exit code after "
          f"SIGTERM: {code}")
    tracebacks = log.count("Traceback (most recent call last)")
    print(f"tracebacks in the daemon log: {tracebacks}; 'Unhandled Error': "
          f"{log.count('Unhandled Error')}")
    for line in failures[:20]:
        print("  FAIL", line[:600])
    return 0 if five == 0 and alive and code == 0 and not counts["check failed"] else 1


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="fuzz one moltbot-gw daemon for a while")
    parser.add_argument("--long", type=int, default=10_000, help="number of requests")
    args = parser.parse_args()
    sys.exit(long_run(args.long))
