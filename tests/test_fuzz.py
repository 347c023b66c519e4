"""Bad input: property tests (Hypothesis) that throw junk at the gateway and its pure parsers.

* The pure parsers (chat completions, Responses, embeddings, the WS frames) get many fast
  examples: they return a value or raise their own client error, never anything else.
* A real daemon (``twistd moltbot-gw`` in a subprocess, builtin/echo agents, chat completions
  and Responses enabled, embeddings from a small fake upstream in this process) started once
  per module gets arbitrary bodies, headers, content types, methods, paths and query strings
  over plain sockets (one connection per request, so no client library smooths anything
  over), and arbitrary WebSocket frames — before ``connect`` and over a live authenticated
  connection. Every HTTP answer is one of the expected statuses, never a 5xx; an error is an
  OpenAI-shaped JSON error without traceback text; every WS request gets an error response
  (never ``INTERNAL``) or an answer, or the connection closes with the documented code; and
  the daemon stays up.

The daemon harness, the raw HTTP and WebSocket clients and the fake embeddings upstream live
in tests/support/. Example counts come from the Hypothesis profile (tests/conftest.py):
bounded by default, 10,000 per test with ``pytest --hypothesis-profile=long``. Script mode,
for long runs against one daemon (prints counts by status per target, 5xx and liveness):

    python tests/test_fuzz.py --long 10000 [--targets chat,responses,embeddings,ws]
"""
from __future__ import annotations

import itertools
import json
import re
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.client import RemoteDisconnected
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted
import websocket
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from moltbot_gw.openai.chat_request import ChatRequest, parse_chat_request
from moltbot_gw.openai.embeddings import (MAX_INPUTS, EmbeddingsRequest,
                                          parse_embeddings_request)
from moltbot_gw.openai.errors import APIError
from moltbot_gw.openai.responses_request import ResponsesRequest, parse_responses_request
from moltbot_gw.ws.frames import (ConnectParams, ProtocolError, Request, encode_error,
                                  encode_event, encode_response, parse_connect, parse_request)

if not __package__:     # script mode (python tests/test_fuzz.py): the support modules
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.daemon import TOKEN, GatewayDaemon  # noqa: E402
from tests.support.fake_embeddings import FakeEmbeddings  # noqa: E402
from tests.support.raw_http import (  # noqa: E402
    HOST, Response, as_bytes, auth_header, fresh_client_address, read_response, request)
from tests.support.ws_client import (  # noqa: E402
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, TRACEBACK_MARKERS, WSClosed,
    WSConnection, ws_frame_bytes)

PATH = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (PATH, RESPONSES, EMBEDDINGS)
MAX_BODY_BYTES = 20 * 1024 * 1024          # the default limit, set explicitly below
WS_MAX_PAYLOAD = 4 * 1024 * 1024           # docs/ws-protocol.rst, Limits
WS_PRE_AUTH_CAP = 16 * 1024                # docs/ws-protocol.rst, Handshake: before connect
ALLOWED = {200, 400, 401, 404, 405, 413, 429}
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def examples(ci_count: int) -> int:
    """How many examples a test gets: ``ci_count`` under the CI profile, or the loaded
    profile's ``max_examples`` when that asks for more than the CI profile does (the
    ``long`` profile: 10,000). An explicit ``max_examples`` wins over any profile, hence this.
    """
    wanted = settings.default.max_examples
    try:
        ci = settings.get_profile("ci").max_examples
    except InvalidArgument:          # script mode, without tests/conftest.py
        ci = wanted
    return max(ci_count, wanted) if wanted > ci else ci_count


# --- a daemon in a subprocess ---------------------------------------------------------------

def fuzz_config(embeddings_url: Optional[str] = None, **chat) -> dict:
    """Chat completions and Responses on, builtin/echo, and 127.0.0.1 trusted as a proxy so
    that each request can name its own client address in X-Forwarded-For (the failed-auth
    limiter then limits that address, not every fuzzed request after the tenth wrong token).
    With ``embeddings_url`` a provider ``fakeemb`` (OpenAI-compatible, at that URL) serves
    ``fakeemb/<model>`` embeddings, and agent ``beta``'s embeddingModel is ``fakeemb/tiny``.
    """
    config = {"gateway": {"trustedProxies": ["127.0.0.1"], "shutdownGraceSeconds": 5,
                          "http": {"endpoints": {
                              "chatCompletions": {"enabled": True,
                                                  "maxBodyBytes": MAX_BODY_BYTES, **chat},
                              "responses": {"enabled": True}}}},
              "agents": {"list": [{"id": "main", "default": True, "model": "builtin/echo"},
                                  {"id": "beta", "model": "builtin/echo"}]}}
    if embeddings_url is not None:
        config["models"] = {"providers": {"fakeemb": {"api": "openai-completions",
                                                      "baseUrl": embeddings_url,
                                                      "idleTimeoutSeconds": 10}}}
        config["agents"]["list"][1]["embeddingModel"] = "fakeemb/tiny"
    return config




# --- what every answer must look like -------------------------------------------------------

# Twisted's HTTP parser refuses a request that is not valid HTTP (a header block over 16 KiB,
# NUL in a header value) with a bare "400 Bad Request" (no body) before any gateway code runs.
TWISTED_MAX_HEADER_BYTES = 16384


def header_bytes(headers) -> int:
    return sum(len(as_bytes(n)) + len(as_bytes(v)) + 4 for n, v in headers)


def invalid_http(headers) -> bool:
    return (header_bytes(headers) + 200 > TWISTED_MAX_HEADER_BYTES
            or any(b"\x00" in as_bytes(v) for _n, v in headers))


def check_answer(response: Response, *, stream: Optional[bool] = None,
                 headers=(), endpoint: str = PATH) -> None:
    """Status allowed, never 5xx; an error is an OpenAI-shaped JSON error; no tracebacks; a
    200 from ``endpoint`` has that endpoint's shape (when ``stream`` says what was asked)."""
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
        SUCCESS_CHECKS[endpoint](response, stream)


def _check_chat_success(response: Response, stream: bool) -> None:
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream"), response
        assert response.body.endswith(b"data: [DONE]\n\n"), response
        for event in response.body.split(b"\n\n"):
            if event and event != b"data: [DONE]" and not event.startswith(b":"):
                assert event.startswith(b"data: "), response
                # an in-band error is how a stream that already said 200 reports a failure;
                # echo never fails, so one here is a bug (the 5xx of a stream)
                assert "error" not in json.loads(event[len(b"data: "):]), response
    else:
        completion = response.json()
        assert completion["object"] == "chat.completion", response
        assert completion["choices"][0]["message"]["role"] == "assistant", response


# Ids of responses the daemon gave, for bodies that continue one (previous_response_id).
RESPONSE_IDS: list[str] = []
PREVIOUS = "<an id the daemon gave>"


def _check_responses_success(response: Response, stream: bool) -> None:
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream"), response
        events = []
        for block in response.body.split(b"\n\n"):
            if not block or block.startswith(b":"):       # the end, keepalive comments
                continue
            kind, _, data = block.partition(b"\n")
            assert kind.startswith(b"event: ") and data.startswith(b"data: "), response
            event = json.loads(data[len(b"data: "):])
            assert event["type"] == kind[len(b"event: "):].decode(), response
            events.append(event)
        assert [e["sequence_number"] for e in events] == list(range(len(events))), response
        assert events and events[0]["type"] == "response.created", response
        # response.failed would be the 5xx of a stream: echo never fails
        assert events[-1]["type"] in ("response.completed", "response.incomplete"), response
        body = events[-1]["response"]
    else:
        body = response.json()
    assert body["object"] == "response" and body["id"].startswith("resp_"), response
    assert body["status"] in ("completed", "incomplete"), response
    assert isinstance(body["output"], list) and body["output"], response
    RESPONSE_IDS.append(body["id"])
    del RESPONSE_IDS[:-50]


def _check_embeddings_success(response: Response, stream: bool) -> None:
    body = response.json()
    assert body["object"] == "list" and isinstance(body["data"], list) and body["data"], response
    assert all("embedding" in item for item in body["data"]), response
    assert isinstance(body["usage"]["prompt_tokens"], int), response


SUCCESS_CHECKS = {PATH: _check_chat_success, RESPONSES: _check_responses_success,
                  EMBEDDINGS: _check_embeddings_success}


# --- strategies -----------------------------------------------------------------------------

def weighted(*choices):
    """``one_of`` with weights, from ``(weight, strategy)`` pairs: ``one_of`` flattens nested
    ``one_of``s, so each of their branches would otherwise weigh as much as a whole choice."""
    total = sum(weight for weight, _ in choices)

    def pick(n: int):
        for weight, strategy in choices:
            if n < weight:
                return strategy
            n -= weight

    return st.integers(0, total - 1).flatmap(pick)


# Strings that broke, or could break, an encoder: lone UTF-16 surrogates (JSON escapes can
# carry them, UTF-8 cannot), a surrogate pair split by encoding, NUL, separators that
# str.splitlines honours, bidi controls, a BOM, astral characters, JSON's own metacharacters.
odd_text = st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud800", "\ud83d\ude00", "\x00",
                            "\u2028\u2029", "\u202e", "\ufeff", "\U0001f600", "\\", '"',
                            "</script>", "\r\n", "%s%n", "${x}"])
short_text = st.text(max_size=60) | odd_text | st.lists(
    odd_text | st.text(max_size=5), max_size=4).map("".join)
# Up to ~1 MB: well under the body limit, big for everything that copies or echoes it. Few
# words, though: echo streams one word per reactor turn, and a run of 250,000 words would
# hold its session (and every run queued behind it) for a long time.
huge_text = (st.builds(lambda piece, n: piece * n, st.sampled_from(["x", "é", "\U0001f600"]),
                       st.integers(10_000, 250_000))
             | st.integers(100, 3000).map(lambda n: "word " * n))
ROLES = ["system", "developer", "user", "assistant", "tool", "function"]
json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
                | odd_text)
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12)
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
tool_name = st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)
tool = (st.fixed_dictionaries(
    {"type": st.sampled_from(["function"]) | json_values,
     "function": st.fixed_dictionaries(
         {"name": tool_name | short_text},
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

# a body the parser must accept: well-formed earlier messages, a user message last
well_formed_chat_body = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"]),
         "content": st.text(min_size=1, max_size=20)}), max_size=3).map(
        lambda ms: ms + [{"role": "user", "content": "hello fuzz"}])},
    optional={"stream": st.booleans(), "user": st.text(max_size=20),
              "model": st.sampled_from(["moltbot", "moltbot:main", "moltbot:beta"])})


def _encode_json(value, ensure_ascii: bool = False) -> bytes:
    """JSON as the test means it: lone surrogates go out as ``\\udXXX`` escapes
    (``ensure_ascii``) or as the invalid UTF-8 of "surrogatepass"."""
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def json_bytes(values):
    """``values`` encoded either way, whole or cut short (truncated JSON)."""
    encoded = st.builds(_encode_json, values, st.booleans())
    return encoded | st.builds(lambda raw, cut: raw[:-cut], encoded, st.integers(1, 8))


def _nested(depth: int, opener: str) -> str:
    return ("[" * depth + "]" * depth) if opener == "[" else ('{"a":' * depth + "1" + "}" * depth)


# Nesting around and beyond the interpreter's recursion limit, alone or as one field of a
# body that is otherwise valid (parsers that recurse, encoders that echo the field back).
nesting = st.builds(_nested, st.integers(1, 3000), st.sampled_from(["[", "{"]))


def _with_nested_field(body: dict, field: str, nested: str) -> bytes:
    head = json.dumps({k: v for k, v in body.items() if k != field})[:-1]
    return (head + (", " if len(head) > 1 else "") + json.dumps(field) + ": " + nested
            + "}").encode()


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

# -- Responses API request bodies (POST /v1/responses) --

input_text_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "text"]),
     "text": short_text | huge_text | json_values})
input_image_part = st.fixed_dictionaries(
    {"type": st.just("input_image")},
    optional={"image_url": image_url, "detail": st.sampled_from(["auto", "low", "high"])
              | json_values, "file_id": json_values})
responses_part = (input_text_part | input_image_part
                  | st.fixed_dictionaries({"type": st.sampled_from(
                      ["refusal", "input_file", "input_audio", ""]) | json_values},
                      optional={"text": json_values, "refusal": json_values})
                  | short_text | json_values)
responses_content = short_text | st.lists(responses_part, max_size=4) | json_values
item_role = st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | json_values
responses_message = st.fixed_dictionaries(
    {"role": item_role},
    optional={"type": st.just("message") | json_values, "content": responses_content,
              "id": json_values, "status": json_values})
function_call_item = st.fixed_dictionaries(
    {"type": st.just("function_call")},
    optional={"call_id": short_text | json_values, "name": tool_name | json_values,
              "arguments": short_text | json_values, "id": json_values})
function_call_output_item = st.fixed_dictionaries(
    {"type": st.just("function_call_output")},
    optional={"call_id": short_text | json_values,
              "output": short_text | st.lists(input_text_part | json_values, max_size=3)
              | json_values})
other_item = st.fixed_dictionaries(
    {"type": st.sampled_from(["reasoning", "web_search_call", "item_reference", "message",
                              ""]) | json_values},
    optional={"id": json_values, "summary": json_values, "content": json_values})
responses_item = (responses_message | function_call_item | function_call_output_item
                  | other_item | json_values)
responses_input = (short_text | huge_text | st.lists(responses_item, max_size=5)
                   | st.lists(responses_item, max_size=3).map(
                       lambda items: items + [{"role": "user", "content": "hi there"}])
                   | json_values)
responses_tool = (st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search_preview", "file_search"]) | json_values},
    optional={"name": tool_name | short_text | json_values,
              "description": short_text | json_values,
              "parameters": st.just({"type": "object"}) | json_values,
              "strict": json_values}) | json_values)
responses_tool_choice = (st.sampled_from(["none", "auto", "required"])
                         | st.fixed_dictionaries({"type": st.just("function"),
                                                  "name": tool_name | short_text})
                         | json_values)
metadata = (st.dictionaries(st.text(max_size=70) | odd_text, st.text(max_size=600) | odd_text,
                            max_size=18) | json_values)
text_config = (st.fixed_dictionaries({}, optional={"format": st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema"]) | json_values},
    optional={"name": short_text | json_values, "schema": st.just({"type": "object"})
              | json_values, "strict": json_values, "description": json_values})
    | json_values}) | json_values)
responses_body = st.fixed_dictionaries(
    {"input": responses_input},
    optional={"model": model, "instructions": short_text | huge_text | json_values,
              "stream": st.booleans() | json_values,
              "previous_response_id": st.just(PREVIOUS) | st.sampled_from(
                  ["resp_0", "resp_", ""]) | short_text | json_values,
              "tools": st.lists(responses_tool, max_size=3) | json_values,
              "tool_choice": responses_tool_choice,
              "max_output_tokens": st.integers(-5, 100) | json_values,
              "user": short_text | json_values, "metadata": metadata,
              "temperature": st.floats(-1, 3) | json_values,
              "top_p": st.floats(-1, 2) | json_values, "text": text_config,
              "truncation": st.sampled_from(["auto", "disabled"]) | json_values,
              "store": json_values, "background": json_values, "conversation": json_values,
              "parallel_tool_calls": json_values, "reasoning": json_values,
              "include": json_values, "extra": json_values})
# Bodies that should mostly get a 200: a user turn last, sane options; echo calls the tool
# when the text is "call <name> <json object>" and the tool is offered.
WEATHER_TOOL = {"type": "function", "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
valid_responses_body = st.fixed_dictionaries(
    {"input": st.sampled_from(["hello fuzz", 'call get_weather {"city": "Oslo"}'])
     | st.lists(responses_message, max_size=2).map(
         lambda items: items + [{"role": "user", "content": [{"type": "input_text",
                                                              "text": "hello fuzz"}]}])},
    optional={"stream": st.booleans(), "user": st.text(max_size=20),
              "model": st.sampled_from(["moltbot", "moltbot:main", "moltbot:beta"]),
              "instructions": st.text(max_size=40),
              "previous_response_id": st.just(PREVIOUS),
              "tools": st.just([WEATHER_TOOL]),
              "max_output_tokens": st.integers(1, 50),
              "metadata": st.dictionaries(st.text(max_size=10), st.text(max_size=10),
                                          max_size=3)})
responses_bytes = st.one_of(
    json_bytes(responses_body), json_bytes(valid_responses_body), json_bytes(json_values),
    st.binary(max_size=300),
    st.builds(_with_nested_field, valid_responses_body,
              st.sampled_from(["input", "tools", "metadata", "text", "instructions", "x"]),
              nesting),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"input": []}', b'{"input": ""}',
                     b"\xff\xfe{}", b'{"input": "\\ud800"}', b'{"input": "x", "model": "\\udc00"}',
                     b'{"input": "x", "temperature": NaN}', b'{"input": "x", "top_p": 1e999}',
                     b'{"input": "x", "input": 1}']))

# -- embeddings request bodies (POST /v1/embeddings) --

EMBEDDING_MODELS = ["fakeemb/tiny", "moltbot:beta"]
token = st.integers(-2**40, 2**40)
embeddings_model = (st.sampled_from(EMBEDDING_MODELS + [
    "moltbot:main", "builtin/echo", "nope/x", "moltbot:nope", "fakeemb", "fakeemb/", "/x",
    "agent:beta", "CLAWDBOT:beta", " fakeemb/tiny ", ""]) | short_text | json_values)
embeddings_input = (short_text | huge_text | st.lists(short_text, max_size=5)
                    | st.lists(token, max_size=8) | st.lists(st.lists(token, max_size=5),
                                                             max_size=4)
                    | st.integers(MAX_INPUTS - 2, MAX_INPUTS + 2).map(lambda n: ["a"] * n)
                    | json_values)
embeddings_body = st.fixed_dictionaries(
    {"input": embeddings_input},
    optional={"model": embeddings_model,
              "encoding_format": st.sampled_from(["float", "base64", "", "FLOAT", "int8"])
              | json_values,
              "dimensions": st.integers(-2, 4096) | json_values,
              "user": short_text | json_values, "extra": json_values})
valid_embeddings_body = st.fixed_dictionaries(
    {"model": st.sampled_from(EMBEDDING_MODELS),
     "input": st.text(min_size=1, max_size=30) | st.lists(st.text(min_size=1, max_size=10),
                                                          min_size=1, max_size=4)
     | st.lists(st.integers(0, 100_000), min_size=1, max_size=6)
     | st.lists(st.lists(st.integers(0, 100_000), min_size=1, max_size=4), min_size=1,
                max_size=3)},
    optional={"encoding_format": st.sampled_from(["float", "base64"]),
              "dimensions": st.integers(1, 1100), "user": st.text(max_size=10)})
embeddings_bytes = st.one_of(
    json_bytes(embeddings_body), json_bytes(valid_embeddings_body), json_bytes(json_values),
    st.binary(max_size=300),
    st.builds(_with_nested_field, valid_embeddings_body,
              st.sampled_from(["input", "model", "dimensions", "x"]), nesting),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"input": "x"}', b"\xff\xfe{}",
                     b'{"model": "fakeemb/tiny", "input": "\\ud800"}',
                     b'{"model": "fakeemb/\\udc00", "input": "x"}',
                     b'{"model": "fakeemb/tiny", "input": "x", "dimensions": 1e999}',
                     b'{"model": "fakeemb/tiny", "input": [true, false]}']))
BODIES = {PATH: chat_bytes, RESPONSES: responses_bytes, EMBEDDINGS: embeddings_bytes}
VALID_BODIES = {PATH: valid_chat_body, RESPONSES: valid_responses_body,
                EMBEDDINGS: valid_embeddings_body}

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
content_types = st.sampled_from([
    None, "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    "application/json; charset=latin-1", "text/plain", "text/html", "application/xml",
    "application/octet-stream", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz", "multipart/form-data", "*/*", "", ";",
    "application/json; boundary=\"", "application/vnd.api+json"]) | header_text

path_piece = st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#%"),
                     max_size=12).map(lambda s: "".join(
                         c if c.isalnum() or c in "-._~:@!$&'()*+,;=" else "%%%02X" % ord(c)
                         for c in s))
known_paths = st.sampled_from(["/", "/health", "/v1", "/v1/", "/v1/chat/completions",
                               "/v1/chat/completions/", "/v1/models", "/v1/models/moltbot:main",
                               "/v1/models/x", "/v1/embeddings", "/v1/responses", "/metrics",
                               "//v1/chat/completions", "/v1//chat/completions",
                               "/v1/chat/../chat/completions", "/V1/CHAT/COMPLETIONS",
                               "/v1/chat/completions%2F", "/favicon.ico", "/%2e%2e/etc",
                               "/v1/responses/", "/v1/responses/resp_1", "/v1/embeddings/x",
                               "/v1/responses%00", "/v1/embeddings?x=%ff"])
paths = known_paths | st.lists(path_piece, min_size=1, max_size=4).map(
    lambda parts: "/" + "/".join(parts))
query = st.lists(st.tuples(path_piece, path_piece), max_size=3).map(
    lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else "")
methods = (st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE",
                            "CONNECT", "PROPFIND", "BREW", "get", "Post", "M-SEARCH"])
           | st.from_regex(r"[A-Za-z!#$%&'*+.^_`|~-]{1,16}", fullmatch=True))


# --- the pure parsers (fast, many examples) -------------------------------------------------

def _client_error(parse, body: bytes):
    """``parse(body)``, or None when it raised a well-formed 400."""
    try:
        return parse(body)
    except APIError as error:
        # an item_reference naming no stored item is OpenAI's 404 (docs/http-api.rst)
        assert error.status == 400 or (error.status, error.code) == (404, "item_not_found"), error
        assert isinstance(error.message, str) and error.message
        error.body().decode("utf-8")     # the error itself must be encodable
        json.loads(error.body())
        return None


def _parse_or_400(body: bytes):
    parsed = _client_error(parse_chat_request, body)
    if parsed is not None:
        assert isinstance(parsed, ChatRequest)
        assert parsed.input and all(m["role"] in ("user", "tool") for m in parsed.input)
    return parsed


def _no_lone_surrogates(value) -> bool:
    """What gets past a parser must be encodable as UTF-8 (transcripts, providers, SSE)."""
    return not LONE_SURROGATE.search(json.dumps(value, ensure_ascii=False, default=repr))


@settings(max_examples=examples(250), deadline=None)
@given(chat_body)
@example({"messages": [{"role": "user", "content": [1]}]})
@example({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"})
@example({"messages": [{"role": "user", "content": ["hi"]}]})
@example({"messages": [{"role": "assistant", "tool_calls": [1]}, {"role": "user", "content": "x"}]})
@example({"messages": [{"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]})
def test_parser_on_chat_shaped_bodies_returns_or_raises_400(body):
    parsed = _parse_or_400(_encode_json(body, ensure_ascii=True))
    if parsed is not None:
        assert _no_lone_surrogates([parsed.input, parsed.history, parsed.system_prompt,
                                    parsed.model, parsed.user, parsed.tools])


@settings(max_examples=examples(250), deadline=None)
@given(chat_bytes)
def test_parser_on_arbitrary_bytes_returns_or_raises_400(body):
    _parse_or_400(body)


@settings(max_examples=examples(100), deadline=None)
@given(well_formed_chat_body)
def test_parser_accepts_bodies_that_end_with_a_user_message(body):
    parsed = _parse_or_400(_encode_json(body))
    assert parsed is not None and parsed.input[-1]["content"] == "hello fuzz"


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_parser_on_deeply_nested_json(name):
    _parse_or_400(DEEP_JSON[name])


def _parse_responses_or_400(body: bytes) -> Optional[ResponsesRequest]:
    parsed = _client_error(parse_responses_request, body)
    if parsed is not None:
        assert isinstance(parsed, ResponsesRequest)
        assert parsed.input and all(m["role"] in ("user", "tool") for m in parsed.input)
        assert isinstance(parsed.model, str) and parsed.model.strip()
        json.dumps(parsed.echo)
    return parsed


@settings(max_examples=examples(250), deadline=None)
@given(responses_body)
@example({"input": [1]})
@example({"input": [{"role": "user", "content": ""}]})
@example({"input": "x", "tools": {}})
@example({"input": "x", "tool_choice": {"type": "function", "name": "nope"}})
@example({"input": "x", "truncation": "sometimes"})
@example({"input": "x", "tool_choice": "sometimes"})
@example({"input": [{"type": "reasoning", "summary": []}, {"role": "user", "content": "x"}]})
@example({"input": [{"type": "bogus"}]})
@example({"input": [{"type": 1}]})
@example({"input": "x", "tools": [1]})
@example({"input": "x", "text": {"format": {"type": "text"}}})
@example({"input": "x", "instructions": 1})
def test_responses_parser_on_responses_shaped_bodies_returns_or_raises_400(body):
    parsed = _parse_responses_or_400(_encode_json(body, ensure_ascii=True))
    if parsed is not None:
        assert _no_lone_surrogates([parsed.input, parsed.history, parsed.system_prompt,
                                    parsed.echo, parsed.model, parsed.tools])


@settings(max_examples=examples(250), deadline=None)
@given(responses_bytes)
def test_responses_parser_on_arbitrary_bytes_returns_or_raises_400(body):
    _parse_responses_or_400(body)


well_formed_responses_body = st.fixed_dictionaries(
    {"input": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"]),
         "content": st.text(min_size=1, max_size=20)}), max_size=3).map(
        lambda items: items + [{"role": "user", "content": [{"type": "input_text",
                                                             "text": "hello fuzz"}]}])},
    optional={"stream": st.booleans(), "user": st.text(max_size=20),
              "model": st.sampled_from(["moltbot", "moltbot:main", "moltbot:beta"]),
              "instructions": st.text(max_size=40), "tools": st.just([WEATHER_TOOL]),
              "tool_choice": st.sampled_from(["auto", "none", "required"]),
              "max_output_tokens": st.integers(1, 50),
              "metadata": st.dictionaries(st.text(max_size=10), st.text(max_size=10),
                                          max_size=3)}).map(
    lambda body: {**body, "tools": [WEATHER_TOOL]} if body.get("tool_choice") == "required"
    else body)


@settings(max_examples=examples(100), deadline=None)
@given(well_formed_responses_body)
def test_responses_parser_accepts_bodies_that_end_with_a_user_turn(body):
    parsed = _parse_responses_or_400(_encode_json(body, ensure_ascii=True))
    assert parsed is not None and parsed.input[-1]["content"] == "hello fuzz"


def _parse_embeddings_or_400(body: bytes) -> Optional[EmbeddingsRequest]:
    parsed = _client_error(parse_embeddings_request, body)
    if parsed is not None:
        assert isinstance(parsed, EmbeddingsRequest)
        assert isinstance(parsed.model, str) and parsed.model
        assert _no_lone_surrogates([parsed.model, parsed.input])
    return parsed


@settings(max_examples=examples(250), deadline=None)
@given(embeddings_body)
def test_embeddings_parser_on_embeddings_shaped_bodies_returns_or_raises_400(body):
    _parse_embeddings_or_400(_encode_json(body, ensure_ascii=True))


@settings(max_examples=examples(150), deadline=None)
@given(embeddings_bytes)
def test_embeddings_parser_on_arbitrary_bytes_returns_or_raises_400(body):
    _parse_embeddings_or_400(body)


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
@pytest.mark.parametrize("parse", [parse_responses_request, parse_embeddings_request],
                         ids=["responses", "embeddings"])
def test_other_parsers_on_deeply_nested_json(parse, name):
    assert _client_error(parse, DEEP_JSON[name]) is None


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_ws_parse_request_on_deeply_nested_json(name):
    with pytest.raises(ProtocolError):
        parse_request(DEEP_JSON[name])


# -- WebSocket frames --

ws_id = (st.text(min_size=1, max_size=20) | odd_text | st.text(min_size=120, max_size=140)
         | st.just("") | json_values)
WS_METHODS = ["health", "status", "agent", "agent.wait", "chat.send", "chat.history",
              "chat.abort", "sessions.list", "sessions.reset", "sessions.delete", "models.list"]
ws_method = (st.sampled_from(WS_METHODS + ["connect", "", "HEALTH", "health ", "agent.",
                                           "__proto__", "constructor", "nope"])
             | short_text | json_values)
session_key = (st.sampled_from(["main", "agent:main:main", "agent:beta:x", "agent:nope:x",
                                "agent:main:", "agent::x", "../x", "agent:main:../../etc",
                                "a" * 300, "agent:MAIN:Fuzz"]) | short_text | json_values)
ws_params = (st.fixed_dictionaries({}, optional={
    "message": short_text | huge_text | json_values,
    "agentId": st.sampled_from(["main", "beta", "MAIN", "nope", "", "../x"]) | short_text
    | json_values,
    "sessionKey": session_key, "key": session_key,
    "idempotencyKey": short_text | st.text(min_size=250, max_size=260) | json_values,
    "extraSystemPrompt": short_text | json_values,
    "runId": st.sampled_from(["run_x", ""]) | short_text | json_values,
    "limit": st.integers(-2, 1002) | json_values, "junk": json_values}) | json_values)
ws_request = st.fixed_dictionaries(
    {"type": st.just("req") | json_values, "id": ws_id, "method": ws_method},
    optional={"params": ws_params})
# A well-formed call of a real method, its params mostly plausible: every method finds the
# fields it requires (the others ignore them), agent.wait and chat.abort often a real run.
RUN_ID = "<a run id the daemon gave>"
plausible_session_key = st.sampled_from(["main", "fuzz", "agent:main:fuzz", "agent:beta:other",
                                         "agent:main:main", "x" * 120])
ws_call_params = st.fixed_dictionaries(
    {"message": weighted((3, st.sampled_from(["hello fuzz", "hi there friend"])
                          | st.text(min_size=1, max_size=30)),
                         (1, short_text | huge_text | json_values)),
     "sessionKey": weighted((3, plausible_session_key), (1, session_key)),
     "key": weighted((3, plausible_session_key), (1, session_key)),
     "runId": weighted((3, st.just(RUN_ID)), (1, st.text(max_size=20) | json_values))},
    optional={"agentId": weighted((3, st.sampled_from(["main", "beta"])),
                                  (1, st.sampled_from(["MAIN", "nope", "", "../x"])
                                   | short_text | json_values)),
              "idempotencyKey": st.sampled_from(["k1", "k2", "k3"]) | st.text(max_size=260)
              | json_values,
              "extraSystemPrompt": st.text(max_size=30) | json_values,
              "limit": st.integers(-2, 1002) | json_values, "junk": json_values})
ws_call = st.fixed_dictionaries(
    {"type": st.just("req"),
     "id": weighted((4, st.text(min_size=1, max_size=40)), (1, odd_text)),
     "method": st.sampled_from(WS_METHODS)},
    optional={"params": weighted((6, ws_call_params), (1, ws_params))})
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


@settings(max_examples=examples(400), deadline=None)
@given(ws_frames | json_bytes(ws_request))
def test_ws_parse_request_returns_or_raises_protocol_error(payload):
    try:
        parsed = parse_request(payload)
    except ProtocolError as error:
        assert error.code == "INVALID_REQUEST" and error.message
        json.dumps(error.to_json())
        assert error.request_id is None or not LONE_SURROGATE.search(error.request_id)
        return
    assert isinstance(parsed, Request) and isinstance(parsed.params, dict)
    assert _no_lone_surrogates([parsed.id, parsed.method, parsed.params])


@settings(max_examples=examples(400), deadline=None)
@given(connect_params)
@example({"minProtocol": 1, "maxProtocol": 1, "client": {"id": "x"}, "auth": 1})
def test_ws_parse_connect_returns_or_raises_protocol_error(params):
    try:
        parsed = parse_connect(params)
    except ProtocolError as error:
        assert error.code in ("INVALID_REQUEST", "PROTOCOL_MISMATCH") and error.message
        return
    assert isinstance(parsed, ConnectParams) and parsed.protocol == 1


# --- the real daemon ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_embeddings():
    fake = FakeEmbeddings()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_embeddings):
    daemon = GatewayDaemon(tmp_path_factory.mktemp("fuzz"),
                           fuzz_config(embeddings_url=fake_embeddings.base_url))
    daemon.start()
    yield daemon
    code = daemon.terminate()
    assert code == 0, daemon.log_text()[-3000:]


def http_settings(ci_count: int = 150):
    return settings(max_examples=examples(ci_count), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


HTTP_SETTINGS = http_settings(100)


def _continue_previous(body: bytes) -> bytes:
    """Put the id of a response the daemon gave where a body asks for one."""
    marker = json.dumps(PREVIOUS).encode()
    if marker in body and RESPONSE_IDS:
        body = body.replace(marker, json.dumps(RESPONSE_IDS[-1]).encode())
    return body


def _post(gateway, body: bytes, headers=(), method="POST", target=PATH,
          content_type: Optional[str] = "application/json") -> Response:
    typed = [("Content-Type", content_type)] if content_type is not None else []
    return request(gateway.port, method, target,
                   [("X-Forwarded-For", fresh_client_address()), *typed, *headers],
                   _continue_previous(body) if body is not None else None)



def _stream_flag(body: Optional[bytes]) -> Optional[bool]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError, TypeError):
        return None
    return value.get("stream") is True if isinstance(value, dict) else None


@HTTP_SETTINGS
@given(chat_bytes)
@example(b'{"messages": [{"role": "user", "content": "hi"}], "model": "moltbot:nope"}')
def test_http_chat_bodies(gateway, body):
    response = _post(gateway, body, [auth_header()])
    check_answer(response, stream=_stream_flag(body))
    assert response.status in (200, 400, 404), response
    if response.status == 404:    # "moltbot:<agent>" naming no agent (docs/http-api.rst)
        assert json.loads(response.body)["error"]["code"] == "model_not_found", response


# Over HTTP ``user`` names the session, so in a well-formed request it is a valid session key:
# no control, bidi or separator characters (docs/http-api.rst).
session_user = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=20)


def with_session_user(bodies):
    """``bodies`` with their ``user``, if any, replaced by a valid session key."""
    def replace(pair):
        body, user = pair
        body = {k: v for k, v in body.items() if k != "user"}
        return body if user is None else {**body, "user": user}
    return st.tuples(bodies, st.none() | session_user).map(replace)


# The headers the gateway reads (docs/http-api.rst): a junk value in one of them may refuse a
# request; a junk value in any other header never does.
READ_HEADERS = {"x-moltbot-agent-id", "x-clawdbot-agent-id", "x-moltbot-session-key",
                "x-clawdbot-session-key", "x-moltbot-model", "x-clawdbot-model", "content-type",
                "accept", "origin", "x-forwarded-for", "user-agent"}


def check_well_formed_body_answer(gateway, response: Response, raw: bytes, headers,
                                  endpoint: str) -> None:
    """A well-formed body is answered 200, unless the headers are not valid HTTP or a header
    the gateway reads refused it; then the same body without the junk headers is a 200."""
    if response.status == 200 or (response.status == 400 and not response.body
                                  and invalid_http(headers)):
        return
    read = {as_bytes(name).decode().lower() for name, _ in headers} & READ_HEADERS
    assert read, f"a junk header the gateway does not read refused a valid body: {response}"
    again = _post(gateway, raw, [auth_header()], target=endpoint)
    assert again.status == 200, (again, "the body itself was refused")


@HTTP_SETTINGS
@given(with_session_user(well_formed_chat_body), extra_headers)
def test_http_valid_bodies_with_junk_headers(gateway, body, headers):
    raw = _encode_json(body)
    response = _post(gateway, raw, [auth_header(), *headers])
    check_answer(response, stream=_stream_flag(raw), headers=headers)
    check_well_formed_body_answer(gateway, response, raw, headers, PATH)


@HTTP_SETTINGS
@given(authorization, chat_bytes)
def test_http_authorization_variants(gateway, value, body):
    response = _post(gateway, body, [("Authorization", value)])
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


@http_settings(100)
@given(responses_bytes)
def test_http_responses_bodies(gateway, body):
    response = _post(gateway, body, [auth_header()], target=RESPONSES)
    check_answer(response, stream=_stream_flag(body), endpoint=RESPONSES)
    assert response.status in (200, 400, 404), response
    if response.status == 404:
        assert response.json()["error"]["code"] in ("model_not_found",
                                                     "previous_response_not_found",
                                                     "item_not_found"), response


@http_settings(60)
@given(with_session_user(well_formed_responses_body), extra_headers)
def test_http_valid_responses_bodies_with_junk_headers(gateway, body, headers):
    raw = _encode_json(body)
    response = _post(gateway, raw, [auth_header(), *headers], target=RESPONSES)
    check_answer(response, stream=_stream_flag(raw), headers=headers, endpoint=RESPONSES)
    check_well_formed_body_answer(gateway, response, raw, headers, RESPONSES)


@http_settings(100)
@given(embeddings_bytes)
def test_http_embeddings_bodies(gateway, fake_embeddings, body):
    response = _post(gateway, body, [auth_header()], target=EMBEDDINGS)
    check_answer(response, stream=False, endpoint=EMBEDDINGS)
    assert response.status in (200, 400, 404), response
    assert not fake_embeddings.unexpected, fake_embeddings.unexpected


@http_settings(40)
@given(valid_embeddings_body, extra_headers)
def test_http_valid_embeddings_bodies_with_junk_headers(gateway, body, headers):
    response = _post(gateway, _encode_json(body), [auth_header(), *headers], target=EMBEDDINGS)
    check_answer(response, stream=False, headers=headers, endpoint=EMBEDDINGS)
    if response.status == 200:
        assert len(response.json()["data"]) == (
            len(body["input"]) if isinstance(body["input"], list)
            and not isinstance(body["input"][0], int) else 1)


def test_http_valid_embeddings_request_is_answered_by_the_provider(gateway, fake_embeddings):
    """The fuzzed 200s above are real: one plain request must get vectors back."""
    response = _post(gateway, b'{"model": "moltbot:beta", "input": ["a", "b"]}',
                     [auth_header()], target=EMBEDDINGS)
    check_answer(response, stream=False, endpoint=EMBEDDINGS)
    assert response.status == 200 and len(response.json()["data"]) == 2, response
    assert fake_embeddings.requests > 0


endpoint_bodies = st.sampled_from(ENDPOINTS).flatmap(
    lambda endpoint: st.tuples(st.just(endpoint), BODIES[endpoint]
                               | VALID_BODIES[endpoint].map(_encode_json)))


@http_settings(90)
@given(endpoint_bodies, content_types)
def test_http_wrong_or_missing_content_types(gateway, endpoint_body, content_type):
    endpoint, body = endpoint_body
    response = _post(gateway, body, [auth_header()], target=endpoint,
                     content_type=content_type)
    check_answer(response, stream=_stream_flag(body), endpoint=endpoint,
                 headers=[("Content-Type", content_type or "")])


@pytest.mark.parametrize("endpoint", [RESPONSES, EMBEDDINGS])
@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_http_deeply_nested_json_on_other_endpoints(gateway, endpoint, name):
    response = _post(gateway, DEEP_JSON[name], [auth_header()], target=endpoint)
    check_answer(response, endpoint=endpoint)
    assert response.status == 400


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_http_deeply_nested_json(gateway, name):
    response = _post(gateway, DEEP_JSON[name], [auth_header()])
    check_answer(response)
    assert response.status == 400


def _oversized(port: int, endpoint: str, declared: int, sent: bytes, headers=()) -> Response:
    """Announce ``declared`` body bytes, send only ``sent``, and read the answer."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    sock = socket.create_connection((HOST, port), timeout=10)
    try:
        sock.sendall(f"POST {endpoint} HTTP/1.1\r\nHost: {HOST}\r\n{head}"
                     f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
                     .encode() + sent)
        return read_response(sock)
    finally:
        sock.close()


def _assert_too_large(answer: Response) -> None:
    assert answer.status == 413, answer
    check_answer(answer)
    assert answer.json()["error"]["code"] == "request_too_large", answer


def test_http_oversized_body_is_413(gateway):
    """Refused on its Content-Length, before the body is read."""
    answer = _oversized(gateway.port, PATH, 21 * 1024 * 1024, b'{"messages": [',
                        [auth_header()])
    _assert_too_large(answer)
    assert gateway.healthy()


@http_settings(30)
@given(st.sampled_from(ENDPOINTS), st.integers(MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES),
       st.integers(0, 65536), st.booleans())
def test_http_body_over_the_limit_is_413_before_it_is_read(gateway, endpoint, declared, sent,
                                                            authed):
    """Only a little of the announced body is ever sent: the 413 cannot have waited for it."""
    headers = [("X-Forwarded-For", fresh_client_address())]
    if authed:
        headers.append(auth_header())
    _assert_too_large(_oversized(gateway.port, endpoint, declared,
                                 b'{"input": "' + b"x" * sent, headers))


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_http_chunked_body_over_the_limit_is_413(gateway, endpoint):
    """Without a Content-Length the limit applies as the body arrives: the answer comes
    once it is exceeded, while the client is still sending."""
    sock = socket.create_connection((HOST, gateway.port), timeout=15)
    chunk = b"x" * (256 * 1024)
    stop = threading.Event()

    def upload():
        try:
            while not stop.is_set():    # far more than the limit, unless refused first
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass

    sender = threading.Thread(target=upload, daemon=True)
    try:
        sock.sendall(f"POST {endpoint} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer "
                     f"{TOKEN}\r\nContent-Type: application/json\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n".encode())
        sender.start()
        answer = read_response(sock)
    finally:
        stop.set()
        sock.close()
        sender.join(10)
    _assert_too_large(answer)
    assert gateway.healthy()


def test_http_oversized_header_is_refused_and_gateway_lives(gateway):
    try:
        response = request(gateway.port, "POST", PATH,
                           [auth_header(), ("x-moltbot-session-key", "k" * 200_000)], b"{}")
        assert response.status in (400, 413, 431), response
    except (ConnectionResetError, BrokenPipeError, RemoteDisconnected):
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


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("escaped", [True, False], ids=["escaped", "raw-bytes"])
def test_lone_surrogates_in_a_body_are_400(gateway, endpoint, stream, escaped):
    """Regression: a lone UTF-16 surrogate (a ``\\ud800`` escape, or its invalid UTF-8
    encoding) parsed into a string that no UTF-8 encoder takes. It reached the streams (a 500,
    or a 200 ending in an in-band "internal error"), the transcripts and the upstream request.
    Now the body is refused as not valid Unicode."""
    body = {PATH: {"messages": [{"role": "user", "content": "hi \ud800"}]},
            RESPONSES: {"input": "hi", "instructions": "a\udfffb"},
            EMBEDDINGS: {"model": "moltbot:beta", "input": ["ok", "\udc00"]}}[endpoint]
    if endpoint != EMBEDDINGS:
        body["stream"] = stream
    response = _post(gateway, _encode_json(body, ensure_ascii=escaped), [auth_header()],
                     target=endpoint)
    check_answer(response)
    assert response.status == 400, response
    assert "surrogate" in response.json()["error"]["message"], response


# -- WebSocket, against the daemon --

HANDSHAKE_CLOSE_CODES = {4001, 4002, 4029}
CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_UTF8, CLOSE_TOO_BIG = 1002, 1007, 1009



def ws_answer_id(payload: bytes) -> Optional[str]:
    """The id the gateway answers a text frame with: its id when it is a valid one."""
    try:
        frame = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    request_id = frame.get("id") if isinstance(frame, dict) else None
    if (isinstance(request_id, str) and 1 <= len(request_id) <= 128
            and not LONE_SURROGATE.search(request_id)):
        return request_id
    return None


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True



@dataclass
class WSOutcome:
    frames: list                  # what came before the probe's answer
    closed_with: Optional[int]    # the close code, when the gateway closed the connection
    reconnected_health: bool = False


class WSSession:
    """An authenticated connection reused across examples; replaced when the gateway closes
    it (as documented for invalid UTF-8, oversized and malformed frames)."""

    def __init__(self, port: int):
        self.port = port
        self.conn: Optional[WSConnection] = None
        self.ids = itertools.count(1)
        self.reconnects = 0
        self.run_ids: list[str] = []

    def connection(self) -> WSConnection:
        if self.conn is None or self.conn.closed is not None:
            if self.conn is not None:
                self.reconnects += 1
            self.conn = WSConnection(self.port)
            self.conn.connect()
        return self.conn

    def health(self) -> dict:
        conn = self.connection()
        probe = f"probe-{next(self.ids)}"
        conn.send_json({"type": "req", "id": probe, "method": "health"})
        answer, _ = conn.answer(probe)
        assert answer["ok"] and answer["payload"]["ok"] is True, answer
        return answer

    def unique(self, value):
        """A request-shaped value with a valid id gets a unique one (its answer is then told
        apart from late answers to earlier frames), keeping its odd characters; a run id
        placeholder becomes the newest run id the daemon gave."""
        if not isinstance(value, dict):
            return value
        if isinstance(value.get("id"), str) and 1 <= len(value["id"]) <= 128:
            value = {**value, "id": f"{value['id'][:100]}~{next(self.ids)}"}
        params = value.get("params")
        if isinstance(params, dict) and params.get("runId") == RUN_ID and self.run_ids:
            value = {**value, "params": {**params, "runId": self.run_ids[-1]}}
        return value

    def remember(self, frames) -> None:
        for frame in frames:
            payload = frame.get("payload") if frame["type"] == "res" and frame["ok"] else None
            if isinstance(payload, dict) and isinstance(payload.get("runId"), str):
                self.run_ids.append(payload["runId"])
                del self.run_ids[:-20]

    def exchange(self, data: bytes) -> WSOutcome:
        """Send raw frame bytes, then a ``health`` probe; wait for the probe's answer and for
        the answer due to the frame (when one is due), or for the gateway to close."""
        conn = self.connection()
        conn.send(data)
        probe = f"probe-{next(self.ids)}"
        conn.send_json({"type": "req", "id": probe, "method": "health"})
        try:
            answer, seen = conn.answer(probe)
        except WSClosed as closed:
            self.health()         # a new connection is served
            return WSOutcome([], closed.code, reconnected_health=True)
        assert answer["ok"], answer
        self.remember(seen)
        return WSOutcome(seen, None)


def ws_text(value, ensure_ascii: bool) -> bytes:
    return _encode_json(value, ensure_ascii=ensure_ascii)


# What to send over a live connection: request-shaped JSON (whose id may be made unique),
# other JSON, truncated JSON, arbitrary bytes as text (often not UTF-8) or binary, deep nesting.
@dataclass(frozen=True)
class WSInput:
    kind: str                  # "request", "text", "binary"
    value: Any                 # a JSON value ("request"), or bytes
    ensure_ascii: bool = True
    cut: int = 0               # bytes cut off the end of an encoded request

    def payload(self, session: Optional[WSSession] = None) -> tuple[int, bytes]:
        if self.kind == "request":
            value = session.unique(self.value) if session is not None else self.value
            raw = ws_text(value, self.ensure_ascii)
            return OP_TEXT, raw[:len(raw) - self.cut]
        return (OP_BINARY if self.kind == "binary" else OP_TEXT), self.value


ws_inputs = weighted(
    (4, st.builds(WSInput, st.just("request"), ws_call, st.booleans())),
    (2, st.builds(WSInput, st.just("request"), ws_request, st.booleans(),
                  st.sampled_from([0] * 6 + [1, 2, 5]))),
    (1, st.builds(WSInput, st.just("request"), json_values, st.booleans())),
    (2, st.builds(WSInput, st.just("text"), st.binary(max_size=300) | nesting.map(str.encode)
                  | st.sampled_from([b"", b"null", b"{}", b"[]", b'{"type": "req"}',
                                     b'{"type":"req","id":"\\ud800","method":"health"}',
                                     b'{"type":"req","id":"x","method":"\\udc00"}',
                                     b'{"type":"req","id":"x","method":"agent","params":'
                                     b'{"message":"\\ud800"}}',
                                     b'{"type":"req","id":"x","method":"health","params":[]}',
                                     b"\xed\xa0\x80", b"\xff", b"\xc3\x28"]))),
    (1, st.builds(WSInput, st.just("binary"), st.binary(max_size=300)
                  | json_bytes(ws_request))))


def check_ws_outcome(session: WSSession, opcode: int, data: bytes, outcome: WSOutcome) -> None:
    """The frame was answered as docs/ws-protocol.rst says, on a connection that stayed up
    — or, for a text frame that is not UTF-8, the connection closed with 1007."""
    if opcode == OP_TEXT and not is_utf8(data):
        assert outcome.closed_with == CLOSE_INVALID_UTF8, (outcome, data[:200])
        return
    assert outcome.closed_with is None, (f"the gateway closed the connection with "
                                         f"{outcome.closed_with} after {data[:300]!r}")
    expected = ws_answer_id(data) if opcode == OP_TEXT else None
    answers = [f for f in outcome.frames if f["type"] == "res" and f.get("id") == expected]
    if expected is None:
        # refused while the frame was parsed, so before the probe was even read
        assert answers and not answers[0]["ok"], (outcome, data[:300])
        assert answers[0]["error"]["code"] == "INVALID_REQUEST", (answers[0], data[:300])
    elif not answers:
        # methods that wait (for the session store, for a run) may answer after the probe
        answer, seen = session.connection().answer(expected)
        session.remember(seen + [answer])


@pytest.fixture(scope="module")
def ws_session(gateway):
    session = WSSession(gateway.port)
    yield session
    if session.conn is not None:
        session.conn.close()


WS_SETTINGS = http_settings(150)


@WS_SETTINGS
@given(ws_inputs)
def test_ws_frames_on_an_authenticated_connection(gateway, ws_session, sent):
    opcode, data = sent.payload(ws_session)
    outcome = ws_session.exchange(ws_frame_bytes(opcode, data))
    check_ws_outcome(ws_session, opcode, data, outcome)


def test_ws_live_connection_survives_every_documented_error(gateway, ws_session):
    """One request of each kind that must be refused without closing the connection."""
    conn = ws_session.connection()
    cases = [({"type": "req", "id": "e1", "method": "nope"}, "UNKNOWN_METHOD"),
             ({"type": "req", "id": "e2", "method": "connect", "params": {}}, "INVALID_REQUEST"),
             ({"type": "req", "id": "e3", "method": "agent", "params": {}}, "INVALID_REQUEST"),
             ({"type": "req", "id": "e4", "method": "agent.wait", "params": {"runId": "x"}},
              "NOT_FOUND"),
             ({"type": "req", "id": "e5", "method": "agent",
               "params": {"message": "hi", "agentId": "nope"}}, "NOT_FOUND"),
             ({"type": "req", "id": "e6", "method": "chat.history",
               "params": {"limit": 0}}, "INVALID_REQUEST"),
             ({"type": "req", "id": "e7", "method": "health", "params": [1]}, "INVALID_REQUEST"),
             ({"type": "req", "id": "e8", "method": "agent",
               "params": {"message": "hi \ud800"}}, "INVALID_REQUEST")]
    for frame, code in cases:
        conn.send_json(frame)
        answer, _ = conn.answer(frame["id"])
        assert not answer["ok"] and answer["error"]["code"] == code, (frame, answer)
    ws_session.health()
    assert ws_session.conn is conn and conn.closed is None


@pytest.mark.parametrize("name", sorted(DEEP_JSON))
def test_ws_deeply_nested_json_on_a_live_connection(gateway, ws_session, name):
    outcome = ws_session.exchange(ws_frame_bytes(OP_TEXT, DEEP_JSON[name]))
    check_ws_outcome(ws_session, OP_TEXT, DEEP_JSON[name], outcome)


def test_ws_lone_surrogate_id_is_answered_with_a_null_id(gateway, ws_session):
    """Regression: an id (or any string) with a lone surrogate could not be encoded into the
    answer, so the request went unanswered and the daemon logged a traceback."""
    conn = ws_session.connection()
    conn.send(ws_frame_bytes(OP_TEXT, b'{"type": "req", "id": "a\\ud800", "method": "nope"}'))
    answer, _ = conn.answer(None)
    assert answer["error"]["code"] == "INVALID_REQUEST", answer
    assert "surrogate" in answer["error"]["message"], answer
    ws_session.health()


def test_ws_message_over_max_payload_closes_with_1009(gateway, ws_session):
    outcome = ws_session.exchange(ws_frame_bytes(OP_TEXT, b'"' + b"x" * WS_MAX_PAYLOAD + b'"'))
    assert outcome.closed_with == CLOSE_TOO_BIG and outcome.reconnected_health, outcome


# Framing that RFC 6455 forbids: reserved opcodes, RSV bits without an extension, an
# unmasked client frame, continuation without a start, an unfinished control frame, a
# control frame over 125 bytes, a close code that may not be sent — and a few legal frames.
ws_raw_frames = st.one_of(
    st.tuples(st.integers(0, 15), st.binary(max_size=200), st.booleans(), st.integers(0, 7),
              st.booleans()),
    st.tuples(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=130), st.booleans(),
              st.just(0), st.just(True)),
    st.tuples(st.just(OP_CLOSE), st.integers(0, 5000).map(lambda c: struct.pack("!H", c))
              | st.binary(max_size=4), st.just(True), st.just(0), st.just(True)))


@http_settings(100)
@given(ws_raw_frames)
def test_ws_broken_framing_closes_with_an_rfc_code(gateway, ws_session, raw):
    opcode, payload, fin, rsv, masked = raw
    outcome = ws_session.exchange(ws_frame_bytes(opcode, payload, fin, rsv, masked))
    if outcome.closed_with is None:
        return          # a legal frame (ping, pong, a text or binary one that got answered)
    assert outcome.reconnected_health
    # a close frame from us is answered with a close; anything else is a framing error
    allowed = {CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_UTF8, CLOSE_TOO_BIG}
    if opcode == OP_CLOSE:
        allowed |= {1000, 1005} | ({struct.unpack("!H", payload[:2])[0]}
                                   if len(payload) >= 2 else set())
    assert outcome.closed_with in allowed, (outcome, raw)


connect_request = st.fixed_dictionaries(
    {"type": st.just("req"), "id": ws_id, "method": weighted((3, st.just("connect")),
                                                             (1, ws_method)),
     "params": connect_params | st.fixed_dictionaries(
         {"minProtocol": st.just(1), "maxProtocol": st.just(1) | st.integers(1, 3),
          "client": st.fixed_dictionaries({"id": st.text(min_size=1, max_size=20)})},
         optional={"auth": st.fixed_dictionaries({}, optional={
             "token": st.sampled_from([TOKEN, TOKEN + "x", "", TOKEN.upper()]) | json_values,
             "password": json_values}) | json_values})})
first_frames = weighted((1, ws_inputs),
                        (1, st.builds(WSInput, st.just("request"), connect_request,
                                      st.booleans())))


@http_settings(100)
@given(first_frames)
def test_ws_junk_before_connect_is_refused_and_closed(gateway, ws_session, sent):
    """Each example on a new connection: the first frame is a valid connect (hello-ok) or is
    refused with an error response and the documented close code."""
    opcode, data = sent.payload()
    conn = WSConnection(gateway.port)
    try:
        conn.send(ws_frame_bytes(opcode, data))
        frames = []
        try:
            while True:
                frame = conn.receive(10)
                assert frame is not None, ("no answer and no close within 10 s", frames,
                                           data[:300], conn.local_port, time.time())
                frames.append(frame)
                if frame["type"] == "res" and frame["ok"]:
                    assert frame["payload"]["type"] == "hello-ok", frame
                    return
        except WSClosed as closed:
            code, cause = closed.code, closed.__cause__
    finally:
        conn.close()
    if len(data) > WS_PRE_AUTH_CAP:    # refused from the frame header, unread (issue 13, #2)
        assert code == CLOSE_TOO_BIG and not frames, (code, frames, cause)
        return
    if opcode == OP_TEXT and not is_utf8(data):
        assert code == CLOSE_INVALID_UTF8, (code, frames, cause)
        return
    assert code in HANDSHAKE_CLOSE_CODES, (code, frames, data[:300], cause, conn.local_port,
                                           time.time())
    assert len(frames) == 1 and frames[0]["type"] == "res" and not frames[0]["ok"], frames
    assert frames[0]["id"] == (ws_answer_id(data) if opcode == OP_TEXT else None), frames
    ws_session.health()


# -- bad text from a model provider (in-process gateway, fake upstream) --

ODD_REPLY = "bad \ud800 reply"     # what a "\ud800" escape in an upstream's JSON decodes to


def test_ws_frames_encode_lone_surrogates_as_json_escapes():
    """Regression: text from a model may hold a lone surrogate; the frame encoder failed on it
    (an agent event or result that could not be sent)."""
    for raw in (encode_event("agent", {"delta": ODD_REPLY}, 1),
                encode_response("r1", {"text": ODD_REPLY}),
                encode_error(None, ProtocolError("INVALID_REQUEST", ODD_REPLY))):
        assert b"\\ud800" in raw, raw        # the JSON escape, as the model sent it
        assert ODD_REPLY in json.dumps(json.loads(raw.decode("utf-8")), ensure_ascii=False)
    assert "é".encode() in encode_event("x", {"t": "é"}, 1)   # other text stays UTF-8


def _sse_payloads(body: bytes) -> list:
    events = []
    for block in body.decode("utf-8").split("\n\n"):   # strict UTF-8: nothing unencodable
        for line in block.split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    return events


@pytest_twisted.ensureDeferred
async def test_lone_surrogate_from_the_model_streams_as_an_escape(start_gateway, upstream, http):
    """Regression: a model's delta holding a lone surrogate broke the SSE encoders. Chat
    streams ended in an in-band "internal error" (the run "failed unexpectedly"); Responses
    streams got a JSON error body written into the event stream."""
    upstream.script(text=ODD_REPLY, chunks=1)
    gw = await start_gateway({
        "gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True},
                                           "responses": {"enabled": True}}}},
        "models": {"providers": {"up": {"api": "openai-completions",
                                        "baseUrl": upstream.base_url}}},
        "agents": {"list": [{"id": "main", "default": True, "model": "up/m"}]}})
    headers = {**gw.auth_headers, "Content-Type": "application/json"}
    response = await http.post(gw.url + PATH, json.dumps(
        {"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode(),
        headers=headers)
    body = await response.content()
    assert response.code == 200 and body.endswith(b"data: [DONE]\n\n"), body
    events = _sse_payloads(body)
    assert not any("error" in e for e in events), body
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e.get("choices")) == ODD_REPLY

    response = await http.post(gw.url + RESPONSES, json.dumps(
        {"input": "hi", "stream": True}).encode(), headers=headers)
    body = await response.content()
    assert response.code == 200, body
    events = _sse_payloads(body)
    assert events[-1]["type"] == "response.completed", body
    assert events[-1]["response"]["output"][-1]["content"][0]["text"] == ODD_REPLY


def test_gateway_is_alive_and_logged_no_unhandled_errors(gateway):
    assert gateway.healthy()
    log = gateway.log_text()
    assert "Unhandled Error" not in log and "nhandled error" not in log, log[-3000:]
    assert "failed unexpectedly" not in log, log[-3000:]
    assert "could not record run" not in log, log[-3000:]
    assert "Traceback (most recent call last)" not in log, log[-3000:]


# --- script mode: a long run against one daemon ---------------------------------------------

def _http_target(daemon, kinds, counts, failures, example) -> None:
    kind, body, headers, method, target = example
    kinds[kind] += 1
    hdrs = list(headers)
    if kind not in ("auth", "paths", "oversize"):
        hdrs.insert(0, auth_header())
    if kind in ("paths", "oversize") and counts.total() % 2:
        hdrs.append(auth_header())
    try:
        if kind == "oversize":
            response = _oversized(daemon.port, target, body[0], body[1],
                                  [("X-Forwarded-For", fresh_client_address()), *hdrs])
        elif kind == "content-type":
            content_type = hdrs[-1][1]
            response = _post(daemon, body, hdrs[:-1], method=method, target=target,
                             content_type=content_type)
            hdrs[-1] = ("Content-Type", content_type or "")
        else:
            response = _post(daemon, body, hdrs, method=method, target=target)
    except OSError as error:
        counts[f"socket error {type(error).__name__}"] += 1
        if not kind.endswith("headers") or not daemon.healthy():
            failures.append(f"{kind}: {error!r}")
        return
    counts[response.status] += 1
    if method == "HEAD":
        ok = response.status < 500
    else:
        try:
            posted = method == "POST" and target in ENDPOINTS and body is not None \
                and kind != "oversize"
            check_answer(response, stream=_stream_flag(body) if posted else None,
                         headers=hdrs, endpoint=target if posted else PATH)
            if kind == "oversize":
                assert response.status == 413, response
            ok = True
        except (AssertionError, ValueError, KeyError) as error:
            ok = False
            if len(failures) < 20:
                failures.append(f"{kind} {method} {target[:80]!r}: {response!r} {error!r}")
    if not ok:
        counts["check failed"] += 1


def _http_requests(endpoint: str):
    """The requests of one HTTP target: (kind, body, headers, method, path)."""
    post = st.just("POST")
    at = st.just(endpoint)
    common = [
        st.tuples(st.just("bodies"), BODIES[endpoint], st.just(()), post, at),
        st.tuples(st.just("headers"), VALID_BODIES[endpoint].map(_encode_json), extra_headers,
                  post, at),
        st.tuples(st.just("content-type"), BODIES[endpoint],
                  content_types.map(lambda ct: [("Content-Type", ct)]), post, at),
        st.tuples(st.just("regressions"), st.sampled_from(sorted(DEEP_JSON.values())),
                  st.just(()), post, at),
        st.tuples(st.just("oversize"), st.tuples(st.integers(MAX_BODY_BYTES + 1,
                                                             4 * MAX_BODY_BYTES),
                                                 st.binary(max_size=4096)),
                  st.just(()), post, at)]
    if endpoint == PATH:   # the chat target also covers auth, methods and paths
        common += [
            st.tuples(st.just("auth"), chat_bytes,
                      authorization.map(lambda v: [("Authorization", v)]), post, at),
            st.tuples(st.just("paths"), st.none() | chat_bytes, st.just(()), methods,
                      st.tuples(paths, query).map("".join)),
            st.tuples(st.just("regressions"), st.none(), st.just(()), st.just("GET"),
                      st.sampled_from(["/v1/models/%ff%fe", "/v1/%c3%28", "/v1/chat/%80"]))]
    return st.one_of(common)


def _ws_target(daemon, session, kinds, counts, failures, example) -> None:
    kind, sent = example
    kinds[kind] += 1
    try:
        if kind == "framing":
            opcode, payload, fin, rsv, masked = sent
            outcome = session.exchange(ws_frame_bytes(opcode, payload, fin, rsv, masked))
            counts["answered" if outcome.closed_with is None
                   else f"close {outcome.closed_with}"] += 1
            return
        if kind == "first-frame":
            opcode, data = sent.payload()
            conn = WSConnection(daemon.port)
            try:
                conn.send(ws_frame_bytes(opcode, data))
                while True:
                    frame = conn.receive(10)
                    assert frame is not None, "no answer and no close within 10 s"
                    counts[_ws_label(frame)] += 1
                    if frame["type"] == "res" and frame["ok"]:
                        break
            except WSClosed as closed:
                counts[f"close {closed.code}"] += 1
                assert closed.code is not None, "connection dropped without a close frame"
            finally:
                conn.close()
            return
        opcode, data = sent.payload(session)
        outcome = session.exchange(ws_frame_bytes(opcode, data))
        check_ws_outcome(session, opcode, data, outcome)
        if outcome.closed_with is not None:
            counts[f"close {outcome.closed_with}"] += 1
        for frame in outcome.frames:
            if frame["type"] == "res":
                counts[_ws_label(frame)] += 1
    except (AssertionError, ValueError, KeyError, OSError, WSClosed) as error:
        counts["check failed"] += 1
        if len(failures) < 20:
            failures.append(f"ws {kind} {sent!r:.300}: {error!r:.600}")


def _ws_label(frame: dict) -> str:
    if frame["type"] == "event":
        return "event"
    return "ok" if frame["ok"] else frame["error"]["code"]


def long_run(n: int, targets=("chat", "responses", "embeddings", "ws"), seed: int = 0) -> int:
    """``n`` fuzzed examples per target against one daemon; prints counts per target."""
    endpoint_of = {"chat": PATH, "responses": RESPONSES, "embeddings": EMBEDDINGS}
    results = []
    fake = FakeEmbeddings()
    with tempfile.TemporaryDirectory(prefix="moltbot-fuzz-") as tmp:
        daemon = GatewayDaemon(Path(tmp), fuzz_config(embeddings_url=fake.base_url))
        daemon.start()
        session = WSSession(daemon.port)
        try:
            for target in targets:
                counts: Counter = Counter()
                kinds: Counter = Counter()
                failures: list[str] = []
                started = time.monotonic()
                if target == "ws":
                    examples_of = st.one_of(
                        st.tuples(st.just("live"), ws_inputs),
                        st.tuples(st.just("framing"), ws_raw_frames),
                        st.tuples(st.just("first-frame"), first_frames))

                    def one(example):
                        _ws_target(daemon, session, kinds, counts, failures, example)
                else:
                    examples_of = _http_requests(endpoint_of[target])

                    def one(example):
                        _http_target(daemon, kinds, counts, failures, example)

                run = settings(max_examples=n, deadline=None, database=None,
                               suppress_health_check=list(HealthCheck))(given(examples_of)(one))
                run()
                elapsed = time.monotonic() - started
                alive = daemon.healthy()
                results.append((target, counts, kinds, failures, elapsed, alive))
                five = sum(v for k, v in counts.items() if isinstance(k, int) and k >= 500)
                total = sum(kinds.values())
                print(f"[{target}] {total} examples in {elapsed:.1f} s "
                      f"({total / elapsed:.0f}/s); by kind: {dict(kinds)}")
                print(f"[{target}] by status:", {k: counts[k] for k in sorted(counts, key=str)})
                print(f"[{target}] 5xx: {five}; checks failed: {counts['check failed']}; "
                      f"daemon healthy after: {alive}")
                for line in failures[:20]:
                    print("  FAIL", line[:700])
                sys.stdout.flush()
            if session.conn is not None:
                session.conn.close()
            print(f"WS reconnects (after documented closes): {session.reconnects}; fake "
                  f"embeddings upstream: {fake.requests} requests, unexpected: "
                  f"{len(fake.unexpected)}")
        finally:
            code = daemon.terminate()
            log = daemon.log_text()
            fake.stop()
    tracebacks = log.count("Traceback (most recent call last)")
    levels = Counter(re.findall(r"#(debug|info|warn|error|critical)\]", log))
    print(f"exit code after SIGTERM: {code}; tracebacks in the daemon log: {tracebacks}; "
          f"'Unhandled Error': {log.count('Unhandled Error')}; log lines by level: "
          f"{dict(levels)}")
    for line in re.findall(r"^.*#(?:error|critical)\].*$", log, re.M)[:10]:
        print("  LOG", line[:300])
    bad = any(sum(v for k, v in c.items() if isinstance(k, int) and k >= 500) or not alive
              or c["check failed"] for _t, c, _k, _f, _e, alive in results)
    return 0 if not bad and code == 0 and not tracebacks and not fake.unexpected else 1


# --- WebSocket input before connect (issue 13, item 2) --------------------------------------
#
# Before a successful connect nobody has proven anything, so a frame over 16 KiB is refused
# from its header (1009, nothing parsed), and every malformed handshake counts as a failed
# attempt: after maxFailures of them the address is refused even with the right token. A
# daemon of its own: a low limit, and loopback not exempt, so the lockout is observable.

PRE_AUTH_MAX_FAILURES = 2


@pytest.fixture(scope="module")
def pre_auth_gateway(tmp_path_factory):
    config = fuzz_config()
    config["gateway"]["auth"] = {"rateLimit": {"maxFailures": PRE_AUTH_MAX_FAILURES,
                                               "windowSeconds": 3600,
                                               "exemptLoopback": False}}
    daemon = GatewayDaemon(tmp_path_factory.mktemp("fuzz-pre-auth"), config)
    daemon.start()
    yield daemon
    code = daemon.terminate()
    assert code == 0, daemon.log_text()[-3000:]


class AddressedWSConnection(WSConnection):
    """A connection that names its client address (X-Forwarded-For through the trusted
    127.0.0.1), or none (then the client is 127.0.0.1 itself)."""

    def __init__(self, port: int, address: Optional[str], timeout: float = 10.0):
        header = [f"X-Forwarded-For: {address}"] if address else []
        self.ws = websocket.create_connection(f"ws://{HOST}:{port}/", timeout=timeout,
                                              header=header)
        self.closed = None
        self.local_port = self.ws.sock.getsockname()[1]


def _pre_auth_exchange(port: int, address: Optional[str], frames: list[bytes]):
    """Send ``frames`` first thing on a new connection; (frames received, close code)."""
    conn = AddressedWSConnection(port, address)
    received = []
    try:
        for frame in frames:
            conn.send(frame)
        while True:
            frame = conn.receive(10)
            assert frame is not None, ("no answer and no close within 10 s", received)
            received.append(frame)
    except WSClosed as closed:
        return received, closed.code
    finally:
        conn.close()


def _connect_frame(token: str = TOKEN) -> bytes:
    return ws_frame_bytes(OP_TEXT, _encode_json({
        "type": "req", "id": "c1", "method": "connect",
        "params": {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "fuzz"},
                   "auth": {"token": token}}}))


def _fragments(payload: bytes, size: int) -> list[bytes]:
    """``payload`` as one text message of ``size``-byte fragments."""
    parts = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    return [ws_frame_bytes(OP_TEXT if i == 0 else OP_CONT, part, fin=i == len(parts) - 1)
            for i, part in enumerate(parts)]


# (label, frames): what a client sends before (instead of) a valid connect.
_oversized_payloads = st.one_of(
    st.integers(WS_PRE_AUTH_CAP + 1, 256 * 1024).map(lambda n: b"[" * n),
    st.integers(WS_PRE_AUTH_CAP + 1, 256 * 1024).map(lambda n: b'{"a":' * (n // 5 + 1)),
    st.tuples(st.integers(WS_PRE_AUTH_CAP + 1, 256 * 1024), st.binary(min_size=1, max_size=64))
    .map(lambda t: (t[1] * (t[0] // len(t[1]) + 1))[:t[0]]),
    st.integers(WS_PRE_AUTH_CAP, 256 * 1024).map(lambda n: _encode_json({
        "type": "req", "id": "c1", "method": "connect", "params": {
            "minProtocol": 1, "maxProtocol": 1, "client": {"id": "x" * n}}})))
_malformed_connect = st.one_of(
    st.fixed_dictionaries({"type": st.just("req"), "id": st.just("c1"),
                           "method": st.text(max_size=20).filter(lambda m: m != "connect"),
                           "params": st.just({})}),
    st.fixed_dictionaries({"type": st.just("req"), "id": st.just("c1"),
                           "method": st.just("connect"),
                           "params": st.fixed_dictionaries({
                               "minProtocol": json_values.filter(
                                   lambda v: isinstance(v, bool) or not isinstance(v, int)),
                               "maxProtocol": st.just(1),
                               "client": st.just({"id": "fuzz"})})}),
    st.fixed_dictionaries({"type": st.just("req"), "id": st.just("c1"),
                           "method": st.just("connect"),
                           "params": st.fixed_dictionaries({
                               "minProtocol": st.just(1), "maxProtocol": st.just(1),
                               "client": json_values.filter(
                                   lambda v: not isinstance(v, dict) or "id" not in v)})}))
pre_auth_shapes = weighted(
    (3, _oversized_payloads.map(lambda p: ("oversized", [ws_frame_bytes(OP_TEXT, p)]))),
    (1, st.tuples(_oversized_payloads, st.integers(1024, WS_PRE_AUTH_CAP)).map(
        lambda t: ("oversized in fragments", _fragments(t[0], t[1])))),
    (2, st.integers(1, WS_PRE_AUTH_CAP // 2).map(
        lambda n: ("junk", [ws_frame_bytes(OP_TEXT, b"[" * n + b"]" * n)]))),
    (2, st.binary(max_size=2000).map(lambda b: ("junk", [ws_frame_bytes(OP_TEXT, b)]))),
    (1, st.binary(max_size=2000).map(lambda b: ("junk", [ws_frame_bytes(OP_BINARY, b)]))),
    (2, _malformed_connect.map(lambda v: ("junk", [ws_frame_bytes(OP_TEXT,
                                                                   _encode_json(v))]))))


def _check_refused(label: str, received: list, code) -> None:
    """Refused as docs/ws-protocol.rst says: 1009 unread when over the cap; else an error
    response and 4002 (or 1007 for text that is not UTF-8)."""
    if label == "oversized":
        assert code == CLOSE_TOO_BIG and not received, (code, received)
        return
    if label == "oversized in fragments":
        # a fragment that is not UTF-8 may be refused (1007) before the total passes the cap
        assert code in (CLOSE_TOO_BIG, CLOSE_INVALID_UTF8) and not received, (code, received)
        return
    if code == CLOSE_INVALID_UTF8:
        return
    assert code == 4002, (code, received)
    assert len(received) == 1 and not received[0]["ok"], received
    assert received[0]["error"]["code"] in ("HANDSHAKE_REQUIRED", "INVALID_REQUEST"), received


@http_settings(25)
@given(pre_auth_shapes)
def test_ws_pre_auth_input_is_refused_counted_and_locks_the_address(pre_auth_gateway, shape):
    label, frames = shape
    address = fresh_client_address()
    for _ in range(PRE_AUTH_MAX_FAILURES):
        received, code = _pre_auth_exchange(pre_auth_gateway.port, address, frames)
        _check_refused(label, received, code)
    # the malformed handshakes were failed attempts: now even the right token is refused
    received, code = _pre_auth_exchange(pre_auth_gateway.port, address, [_connect_frame()])
    assert code == 4029 and received[0]["error"]["code"] == "RATE_LIMITED", (code, received)
    # another address still gets in, and /health answers
    received, _ = _pre_auth_exchange(pre_auth_gateway.port, fresh_client_address(),
                                     [_connect_frame(), ws_frame_bytes(OP_CLOSE,
                                                                       struct.pack("!H", 1000))])
    assert received and received[0]["ok"], received
    assert request(pre_auth_gateway.port, "GET", "/health").status == 200


def test_ws_megabytes_of_nested_arrays_before_connect_are_not_parsed(pre_auth_gateway):
    """The issue's attack: three 4 MB frames of nested empty arrays, each refused from its
    header (1009) instead of being parsed; /health answers meanwhile."""
    attack = ws_frame_bytes(OP_TEXT, b"[" * (2 * 1024 * 1024) + b"]" * (2 * 1024 * 1024))
    address = fresh_client_address()
    for _ in range(3):
        received, code = _pre_auth_exchange(pre_auth_gateway.port, address, [attack])
        assert code in (CLOSE_TOO_BIG, 4029) and not received, (code, received)
        assert request(pre_auth_gateway.port, "GET", "/health").status == 200


def test_ws_many_malformed_handshakes_from_loopback_lock_it_when_not_exempt(pre_auth_gateway):
    """exemptLoopback is false on this daemon: a direct loopback client that keeps sending
    junk is locked out like any other (by default it would be exempt)."""
    codes = []
    for i in range(PRE_AUTH_MAX_FAILURES + 3):
        received, code = _pre_auth_exchange(pre_auth_gateway.port, None,
                                            [ws_frame_bytes(OP_TEXT, b"junk %d" % i)])
        codes.append(code)
    assert codes[:PRE_AUTH_MAX_FAILURES] == [4002] * PRE_AUTH_MAX_FAILURES, codes
    received, code = _pre_auth_exchange(pre_auth_gateway.port, None, [_connect_frame()])
    assert code == 4029 and received[0]["error"]["code"] == "RATE_LIMITED", (code, received)
    assert request(pre_auth_gateway.port, "GET", "/health").status == 200


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="fuzz one moltbot-gw daemon for a while")
    parser.add_argument("--long", type=int, default=10_000, help="examples per target")
    parser.add_argument("--targets", default="chat,responses,embeddings,ws",
                        help="comma-separated: chat, responses, embeddings, ws")
    args = parser.parse_args()
    sys.exit(long_run(args.long, tuple(t for t in args.targets.split(",") if t)))


# --- request size limits (issue 13, item 6) -------------------------------------------------
# The daemon runs on the default limits (docs/configuration.rst): 2,000 messages or input
# items, 200 content parts per message, 1,000,000 characters of text per request. Requests
# near and past each limit get a 200 below it and, past it, exactly the 400 naming it.

LIMITS = {"messages": 2000, "parts": 200, "chars": 1_000_000}
LIMIT_ERRORS = {  # (endpoint, kind) -> (param, code) of the 400 past the limit
    (PATH, "messages"): ("messages", "too_many_messages"),
    (PATH, "parts"): ("messages[0].content", "too_many_content_parts"),
    (PATH, "chars"): ("messages", "too_many_characters"),
    (RESPONSES, "messages"): ("input", "too_many_input_items"),
    (RESPONSES, "parts"): ("input[0].content", "too_many_content_parts"),
    (RESPONSES, "chars"): ("input", "too_many_characters"),
}


def limit_body(endpoint: str, kind: str, offset: int) -> tuple[bytes, bool]:
    """A body ``offset`` away from the ``kind`` limit; and whether it is past it. Every
    string value counts as text, so a ``{"role": "user", "content": s}`` item is
    ``len(s) + 4`` characters."""
    items_field = "messages" if endpoint == PATH else "input"
    part_type = "text" if endpoint == PATH else "input_text"
    size = LIMITS[kind] + offset
    if kind == "messages":
        items = [{"role": "user", "content": "hi"}] * size
    elif kind == "parts":
        items = [{"role": "user", "content": [{"type": part_type, "text": "a"}] * size}]
    else:
        items = [{"role": "user", "content": "a" * (size - len("user"))}]
    return json.dumps({items_field: items}).encode(), size > LIMITS[kind]


@http_settings(30)
@given(st.sampled_from((PATH, RESPONSES)), st.sampled_from(sorted(LIMITS)),
       st.integers(min_value=-2, max_value=2))
@example(PATH, "messages", 1)
@example(RESPONSES, "chars", 1)
@example(PATH, "parts", 0)
def test_http_requests_near_and_past_each_size_limit(gateway, endpoint, kind, offset):
    body, past = limit_body(endpoint, kind, offset)
    response = _post(gateway, body, [auth_header()], target=endpoint)
    check_answer(response, stream=False, endpoint=endpoint)
    if not past:
        assert response.status == 200, response
        return
    assert response.status == 400, response
    error = response.json()["error"]
    assert (error["param"], error["code"]) == LIMIT_ERRORS[endpoint, kind], response
    assert error["type"] == "invalid_request_error", response
