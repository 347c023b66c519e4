"""The failure table (moltbot_gw/agents/failures.py) in memory: every failure kind maps to a
documented HTTP status, OpenAI type and WebSocket code, and both transports shape the same
description (status and code from the table, one message)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from moltbot_gw.agents import failures
from moltbot_gw.agents.client_slots import ClientBusy, ClientSlots
from moltbot_gw.agents.failures import KINDS, describe_failure
from moltbot_gw.agents.tool_loop import ToolLoopLimitReached
from moltbot_gw.agents.registry import UnknownAgent
from moltbot_gw.agents.run import (InvalidRunRequest, ModelNotFound, Run, RunCancelled,
                                   RunTimedOut)
from moltbot_gw.openai.errors import ERROR_TYPES, api_error_for_run_failure
from moltbot_gw.providers import errors as provider
from moltbot_gw.providers.slots import ProviderBusy
from moltbot_gw.redis import RedisUnavailable
from moltbot_gw.sessions.lease import LeaseLost
from moltbot_gw.ws.frames import ErrorCode
from moltbot_gw.ws.methods import run_error

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _busy() -> ClientBusy:
    slots = ClientSlots(per_client=2, queue_size=3)
    failure = []
    for _ in range(6):
        slots.acquire("198.51.100.7").addErrback(failure.append)
    [refused] = failure
    return refused.value


def _called(error):
    """``error`` as ``upstream_errors`` makes it from a status: the call it made is known."""
    error.call = "POST /v1/chat/completions"
    return error


# (exception, kind, HTTP status, OpenAI code, WS code, message)
CASES = [
    (provider.ProviderRateLimited("slow down", status=429, retry_after=2.5),
     failures.PROVIDER_RATE_LIMITED, 429, "upstream_rate_limited", "RATE_LIMITED",
     "the model provider is rate limiting requests: slow down"),
    (provider.ProviderTimeout("no bytes for 30s"), failures.PROVIDER_TIMEOUT, 504,
     "upstream_timeout", "TIMEOUT", "the model provider did not answer in time: no bytes for 30s"),
    (provider.ProviderBadRequest("bad max_tokens", status=400), failures.PROVIDER_BAD_REQUEST,
     400, "upstream_bad_request", "INVALID_REQUEST",
     "the model provider rejected the request: bad max_tokens"),
    # an auth error from an upstream's own words (in-band) shows none of them
    (provider.ProviderAuthError("key sk-secret revoked", status=401), failures.PROVIDER_AUTH,
     502, "provider_auth_failed", "UNAVAILABLE",
     "the model provider refused the gateway's credentials"),
    (_called(provider.ProviderAuthError(
        'provider "local" answered 401 Unauthorized for POST /v1/chat/completions',
        status=401)), failures.PROVIDER_AUTH, 502, "provider_auth_failed", "UNAVAILABLE",
     'provider "local" answered 401 Unauthorized for POST /v1/chat/completions'),
    (_called(provider.ProviderNotFound(
        'provider "local" answered 404 Not Found for POST /chat/completions', status=404)),
     failures.PROVIDER_NOT_FOUND, 502, "provider_not_found", "UNAVAILABLE",
     'provider "local" answered 404 Not Found for POST /chat/completions'),
    (ModelNotFound('model "local/llama9" was not found: provider "local" answered 404'),
     failures.MODEL_NOT_FOUND, 404, "model_not_found", "NOT_FOUND",
     'model "local/llama9" was not found: provider "local" answered 404'),
    (provider.ProviderReplyTooLarge("the model's reply is longer than 10 characters"),
     failures.PROVIDER_REPLY_TOO_LARGE, 502, "upstream_reply_too_large", "UNAVAILABLE",
     "the model's reply is longer than 10 characters"),
    (provider.ProviderUnavailable("connection refused", status=None),
     failures.PROVIDER_UNAVAILABLE, 502, "upstream_error", "UNAVAILABLE",
     "the model provider failed: connection refused"),
    (RunTimedOut("the run took longer than its timeout"), failures.RUN_TIMED_OUT, 504,
     "upstream_timeout", "TIMEOUT", "the run took longer than its timeout"),
    (RunCancelled("the run was cancelled"), failures.RUN_CANCELLED, 500, "run_cancelled",
     "ABORTED", "the run was cancelled"),
    (InvalidRunRequest('model "x/y" is not allowed', param="model"),
     failures.INVALID_RUN_REQUEST, 400, "invalid_request", "INVALID_REQUEST",
     'model "x/y" is not allowed'),
    (UnknownAgent("nobody"), failures.UNKNOWN_AGENT, 404, "model_not_found", "NOT_FOUND",
     'unknown agent "nobody"'),
    (_busy(), failures.CLIENT_BUSY, 429, "too_many_concurrent_requests", "RATE_LIMITED",
     "too many concurrent runs from your address: at most 2 at once and 3 waiting "
     "(gateway.limits.perClientConcurrency / perClientQueue)"),
    (ProviderBusy("local", 1, 0), failures.PROVIDER_BUSY, 429, "provider_busy", "RATE_LIMITED",
     'provider "local" is busy: 1 request(s) at once and 0 waiting '
     "(models.providers.local.maxConcurrent / maxQueue)"),
    (LeaseLost("lock moltbot:lock:agent:main:x holds another token"),
     failures.SESSION_TAKEN_OVER, 503, "session_taken_over", "UNAVAILABLE",
     "the session was taken over by another run after this run's lease on it expired "
     "(session.store.redis.lockLeaseSeconds); the turn was not recorded, try again"),
    (ToolLoopLimitReached("the model still asked for tools after 20 rounds of tool calls "
                          "(agents.defaults.tools.maxIterations)"),
     failures.TOOL_LOOP_LIMIT, 502, "tool_loop_limit", "UNAVAILABLE",
     "the model still asked for tools after 20 rounds of tool calls "
     "(agents.defaults.tools.maxIterations)"),
    (RedisUnavailable("no answer to GET within 5 s"), failures.SERVICE_UNAVAILABLE, 503,
     "service_unavailable", "UNAVAILABLE",
     "the gateway's shared state (Redis) is unavailable; try again shortly"),
    # The runner wraps an unexpected exception in a bare ProviderError: a bug, not upstream.
    (provider.ProviderError("internal error while running the agent"), failures.INTERNAL, 500,
     "internal_error", "INTERNAL", "internal error while running the agent"),
    (KeyError("traceback material"), failures.INTERNAL, 500, "internal_error", "INTERNAL",
     "internal error while running the agent"),
]


def _documented_http_types() -> dict[int, str]:
    """status -> ``type`` from the error table of docs/http-api.rst."""
    text = (DOCS / "http-api.rst").read_text()
    return {int(status): kind
            for status, kind in re.findall(r"^(\d{3})\s+``(\w+)``", text, re.MULTILINE)}


def _documented_ws_codes() -> set[str]:
    """The codes of the "Error codes" table of docs/ws-protocol.rst."""
    text = (DOCS / "ws-protocol.rst").read_text()
    section = text.split("Error codes\n-----------", 1)[1].split("\n\n\n", 1)[0]
    return set(re.findall(r"^``([A-Z_]+)``", section, re.MULTILINE))


def test_the_table_names_every_kind_once():
    assert len({kind.name for kind in KINDS}) == len(KINDS)
    assert {case[1] for case in CASES} == set(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_kind_maps_to_a_documented_status_type_and_ws_code(kind):
    documented = _documented_http_types()
    assert documented.get(kind.http_status) == kind.openai_type
    assert ERROR_TYPES[kind.http_status] == kind.openai_type
    assert kind.ws_code in vars(ErrorCode).values()
    assert kind.ws_code in _documented_ws_codes()
    assert f"``{kind.openai_code}``" in (DOCS / "http-api.rst").read_text()


@pytest.mark.parametrize("error, kind, status, code, ws_code, message", CASES,
                         ids=[case[1].name + ":" + type(case[0]).__name__ for case in CASES])
def test_both_transports_shape_the_one_description(error, kind, status, code, ws_code,
                                                     message):
    failure = describe_failure(error)
    assert (failure.kind, failure.message) == (kind, message)
    http = api_error_for_run_failure(error)
    assert (http.status, http.type, http.code, http.message) == (
        status, kind.openai_type, code, message)
    run = Run("run_1", "main", "agent:main:main")
    run.add_text("partial")
    ws = run_error(error, run).to_json()
    assert (ws["code"], ws["message"]) == (ws_code, message)
    assert ws["details"] == {"runId": "run_1", "sessionKey": "agent:main:main",
                             "status": "aborted" if kind.aborted else "error",
                             "text": "partial"}
    assert "traceback" not in message and "sk-secret" not in message


def test_a_wait_is_told_rounded_up_in_seconds_over_http_and_in_ms_over_websocket():
    error = provider.ProviderRateLimited("slow down", retry_after=2.5)
    assert api_error_for_run_failure(error).headers == {"Retry-After": "3"}
    assert run_error(error, Run("r", "main", "k")).retry_after_ms == 2500
    busy = api_error_for_run_failure(_busy())
    assert busy.headers == {"Retry-After": "1"}
    no_hint = provider.ProviderRateLimited("slow down")
    assert api_error_for_run_failure(no_hint).headers == {}
    assert run_error(no_hint, Run("r", "main", "k")).retry_after_ms is None
    # Only a rate limit tells its wait: an upstream 503's Retry-After is not passed on.
    down = provider.ProviderUnavailable("503", status=503, retry_after=5.0)
    assert api_error_for_run_failure(down).headers == {}
    assert run_error(down, Run("r", "main", "k")).retry_after_ms is None


def test_an_invalid_run_request_names_the_request_header_over_http():
    error = InvalidRunRequest("bad key", param="sessionKey")
    assert describe_failure(error).param == "sessionKey"
    assert api_error_for_run_failure(error).param == "x-moltbot-session-key"
    assert api_error_for_run_failure(InvalidRunRequest("bad")).param is None


def test_the_table_knows_no_transport():
    """agents/ never imports twisted.web, Klein or autobahn (docs: the runtime knows no
    transport); checked in a fresh interpreter."""
    code = ("import sys, moltbot_gw.agents.failures as f; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('klein', 'autobahn') or m.startswith('twisted.web') or "
            "m.startswith('moltbot_gw.ws') or m.startswith('moltbot_gw.openai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"
