"""Issue 18 item 4, end to end: a provider's 404 or 401/403 for what the gateway's config
called is the gateway's failure (502 ``provider_not_found`` / ``provider_auth_failed``,
naming the provider and the path, saying what to check, never a key); a 404 for a model the
client chose (``x-moltbot-model``) stays the client's (404 ``model_not_found``)."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from .chat_helpers import HI, config, http, no_leftovers  # noqa: F401
from .test_chat_completions import assert_error, post

API_KEY = "key-AbC123xyz789-local"


def without_v1(up) -> str:
    return f"http://127.0.0.1:{up.port}"


class Logged:
    """Log events seen while the block runs."""

    def __enter__(self):
        self.events: list = []
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self.events.append)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]


@pytest_twisted.ensureDeferred
async def test_base_url_without_v1_is_502_provider_not_found_naming_provider_and_path(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream, provider={"baseUrl": without_v1(upstream)}))
    with Logged() as logged:
        response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    error = assert_error(response, body, 502, type_="api_error", code="provider_not_found")
    assert 'provider "up"' in error["message"]
    assert "POST /chat/completions" in error["message"]
    assert "models.providers.up.baseUrl" in error["message"]
    assert upstream.requests[-1].path == "/chat/completions"
    [warning] = [w for w in logged.warnings() if "answered 404" in w]
    assert "models.providers.up.baseUrl (does it end in /v1?)" in warning
    assert without_v1(upstream) in warning


@pytest_twisted.ensureDeferred
async def test_streamed_request_to_a_wrong_path_gets_the_same_code(start_gateway, http, upstream):
    gw = await start_gateway(config(upstream, provider={"baseUrl": without_v1(upstream)}))
    response, body = await post(http, gw, {"model": "moltbot:beta", "stream": True,
                                           "messages": HI})
    # nothing was streamed yet, so the answer is a plain error, not an SSE stream
    error = assert_error(response, body, 502, code="provider_not_found")
    assert 'provider "up"' in error["message"]


@pytest.mark.parametrize("status", [401, 403])
@pytest_twisted.ensureDeferred
async def test_refused_key_is_502_provider_auth_failed_and_never_shows_the_key(
        start_gateway, http, upstream, status):
    gw = await start_gateway(config(upstream, provider={"apiKey": API_KEY}))
    upstream.script(status=status, error=f"Incorrect API key provided: {API_KEY[:12]}")
    with Logged() as logged:
        response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    error = assert_error(response, body, 502, type_="api_error", code="provider_auth_failed")
    assert f'provider "up" answered {status}' in error["message"]
    assert "POST /v1/chat/completions" in error["message"]
    assert "models.providers.up.apiKey" in error["message"]
    assert API_KEY[:12].encode() not in body
    warnings = logged.warnings()
    assert any("models.providers.up.apiKey" in w for w in warnings)
    for event in logged.events:
        assert API_KEY[:12] not in (formatEvent(event) or "") and API_KEY not in repr(event)


@pytest_twisted.ensureDeferred
async def test_client_chosen_model_the_provider_does_not_serve_is_404_model_not_found(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(status=404, error="The model `llama9` does not exist.",
                    error_type="invalid_request_error")
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI},
                                headers={"x-moltbot-model": "up/llama9"})
    error = assert_error(response, body, 404, type_="not_found_error", code="model_not_found",
                         param="x-moltbot-model")
    assert error["message"].startswith('model "up/llama9" was not found')


@pytest_twisted.ensureDeferred
async def test_client_chosen_model_on_a_wrong_path_is_still_the_gateways_fault(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream, provider={"baseUrl": without_v1(upstream)}))
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI},
                                headers={"x-moltbot-model": "up/llama9"})
    assert_error(response, body, 502, code="provider_not_found")


@pytest_twisted.ensureDeferred
async def test_agents_own_model_missing_is_502_saying_which_model_to_check(
        start_gateway, http, upstream):
    gw = await start_gateway(config(upstream))
    upstream.script(status=404, error='model "some-model" not found, try pulling it first')
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": HI})
    error = assert_error(response, body, 502, code="provider_not_found")
    assert 'that the server serves model "some-model"' in error["message"]
    assert json.loads(body)["error"]["param"] is None


@pytest_twisted.ensureDeferred
async def test_embeddings_for_a_model_the_provider_lacks_and_for_a_wrong_path(
        start_gateway, http, upstream):
    raw = config(upstream)
    raw["models"]["providers"]["bad"] = {"api": "openai-completions",
                                         "baseUrl": without_v1(upstream)}
    gw = await start_gateway(raw)
    upstream.script(status=404, error="The model `embed-9` does not exist.")

    async def embed(model):
        response = await http.post(gw.url + "/v1/embeddings",
                                   json.dumps({"model": model, "input": "a"}).encode(),
                                   headers=gw.auth_headers)
        return response, await response.content()

    response, body = await embed("up/embed-9")          # the client named it: its mistake
    error = assert_error(response, body, 404, type_="not_found_error", code="model_not_found",
                         param="model")
    assert error["message"].startswith('model "up/embed-9" was not found')
    upstream.script()
    response, body = await embed("bad/embed-small")     # the config's baseUrl: the gateway's
    error = assert_error(response, body, 502, code="provider_not_found")
    assert "POST /embeddings" in error["message"] and "models.providers.bad.baseUrl" in error[
        "message"]
