"""``moltbot-gw providers check`` (issue 18 item 4), run as the operator runs it: a subprocess
with a config file, against real fake providers on loopback and no gateway running."""
from __future__ import annotations

import json
import math
import os
import sys

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from .fakes import FakeAnthropic, FakeOpenAI, unused_port

KEY = "key-check-0123456789"


async def providers_check(tmp_path, providers: dict, agents: list, *extra: str,
                          timeout: float = 3):
    """Run the command; (exit code, stdout, stderr)."""
    path = tmp_path / "moltbot.json"
    path.write_text(json.dumps({"models": {"providers": providers},
                                "agents": {"list": agents}}))
    env = {**os.environ, "MOLTBOT_STATE_DIR": str(tmp_path / "state")}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "moltbot_gw.cli", "providers", "check", "--config", str(path),
                         "--timeout", str(timeout), *extra], env=env, reactor=reactor)
    return code, out.decode(), err.decode()


def openai(base_url: str, **more) -> dict:
    return {"api": "openai-completions", "baseUrl": base_url, **more}


@pytest_twisted.async_yield_fixture
async def fake():
    up = await FakeOpenAI.start(reactor)
    yield up
    await up.stop()


@pytest_twisted.ensureDeferred
async def test_right_url_lists_the_models_and_exits_0(tmp_path, fake):
    code, out, err = await providers_check(
        tmp_path, {"local": openai(fake.base_url, apiKey=KEY)},
        [{"id": "main", "model": {"primary": "local/fake-model",
                                  "fallbacks": ["local/llama3"]}}])
    assert code == 0, err
    assert out.strip() == ('local: reachable, 1 model (agent main: "fake-model" listed; '
                           'agent main: "llama3" NOT listed)')
    [request] = fake.requests
    assert (request.method, request.path) == ("GET", "/v1/models")
    assert request.header("authorization") == f"Bearer {KEY}"


@pytest_twisted.ensureDeferred
async def test_base_url_without_v1_is_wrong_path_and_exits_1(tmp_path, fake):
    base = f"http://127.0.0.1:{fake.port}"
    code, out, _ = await providers_check(tmp_path, {"local": openai(base)},
                                         [{"id": "main", "model": "local/fake-model"}])
    assert code == 1
    assert out.startswith(f"local: wrong path (404 for GET {base}/models): check "
                          "models.providers.local.baseUrl (does it end in /v1?)")


@pytest_twisted.ensureDeferred
async def test_refused_key_closed_port_and_json(tmp_path, fake):
    fake.script(status=401, error=f"Incorrect API key provided: {KEY}")
    closed = f"http://127.0.0.1:{unused_port()}/v1"
    code, out, _ = await providers_check(
        tmp_path, {"keyed": openai(fake.base_url, apiKey=KEY), "gone": openai(closed)},
        [{"id": "main", "model": "keyed/fake-model"},
         {"id": "other", "model": "gone/llama3"}], "--json")
    assert code == 1
    document = json.loads(out)
    assert document["ok"] is False
    by_name = {p["provider"]: p for p in document["providers"]}
    assert by_name["keyed"]["status"] == "auth_refused"
    assert by_name["keyed"]["message"].startswith("auth refused (401 for GET ")
    assert by_name["gone"]["status"] == "connection_refused"
    assert by_name["gone"]["usedBy"] == [{"agent": "other", "model": "llama3", "listed": None}]
    assert KEY not in out


@pytest_twisted.ensureDeferred
async def test_a_failing_provider_no_agent_uses_does_not_fail_the_check(tmp_path, fake):
    closed = f"http://127.0.0.1:{unused_port()}/v1"
    code, out, _ = await providers_check(
        tmp_path, {"local": openai(fake.base_url), "spare": openai(closed)},
        [{"id": "main", "model": "local/fake-model"}])
    assert code == 0
    assert "spare: connection refused" in out
    assert 'local: reachable, 1 model (agent main: "fake-model" listed)' in out


@pytest_twisted.ensureDeferred
async def test_anthropic_lists_v1_models_with_its_own_headers(tmp_path):
    up = await FakeAnthropic.start(reactor)
    try:
        code, out, err = await providers_check(
            tmp_path, {"claude": {"api": "anthropic-messages", "baseUrl": up.base_url,
                                  "apiKey": KEY}},
            [{"id": "main", "model": "claude/claude-fake"}])
    finally:
        await up.stop()
    assert code == 0, err
    assert out.strip() == 'claude: reachable, 1 model (agent main: "claude-fake" listed)'
    [request] = up.requests
    assert request.path == "/v1/models" and request.header("x-api-key") == KEY
    assert request.header("anthropic-version")


@pytest_twisted.ensureDeferred
async def test_a_provider_that_never_answers_times_out(tmp_path, fake):
    fake.script(stall_before_headers=math.inf)
    code, out, _ = await providers_check(tmp_path, {"slow": openai(fake.base_url)},
                                         [{"id": "main", "model": "slow/fake-model"}],
                                         timeout=0.5)
    assert code == 1
    assert out.startswith(f"slow: timed out after 0.5 s (GET {fake.base_url}/models)")
