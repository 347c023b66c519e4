"""Model providers against fake upstreams (no monkeypatching): request mapping, stream parsing
and error classification in memory (``MemoryUpstream``: the fake behind treq's
``RequestTraversalAgent``); pooling, timeouts and cancellation against fakes on loopback."""
from __future__ import annotations

import gc
import math

import pytest
import pytest_twisted
from twisted.internet import reactor, tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher

from moltbot_gw.config import ModelsConfig, ProviderConfig
from moltbot_gw.providers.anthropic_messages import AnthropicMessagesProvider, convert_messages
from moltbot_gw.providers.base import ModelRequest, ModelResult, Usage
from moltbot_gw.providers.builtin import BuiltinProvider
from moltbot_gw.providers.errors import (ProviderAuthError, ProviderBadRequest, ProviderError,
                                         ProviderNotFound, ProviderRateLimited, ProviderTimeout,
                                         ProviderUnavailable)
from moltbot_gw.providers.upstream_client import UpstreamClient
from moltbot_gw.providers.upstream_errors import parse_retry_after, redact
from moltbot_gw.providers.openai_completions import OpenAICompletionsProvider
from moltbot_gw.providers.registry import ProviderRegistry
from tests.fakes import FakeAnthropic, FakeOpenAI, unused_port
from tests.fakes.memory_upstream import MemoryUpstream, settled

KEY = "sk-test-secret-key-0123456789"
HELLO = ModelRequest(model="fake-model", messages=({"role": "user", "content": "Hi there"},))


# --- fixtures ------------------------------------------------------------------------


def _network_leftovers(before=frozenset()):
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return [s for s in selectables - before if isinstance(s, (tcp.Port, tcp.Client, tcp.Server))]


def _timers(before=frozenset()):
    return [c for c in reactor.getDelayedCalls() if c.active() and c not in before]


@pytest.fixture(scope="module", autouse=True)
def collect_earlier_garbage():
    gc.collect()   # errors logged for earlier modules' garbage are not ours
    # What is alive now (modules, fixtures of the session) is not what a test leaks: frozen,
    # the per-test collection below skips it and takes milliseconds instead of a tenth.
    gc.freeze()
    yield
    gc.unfreeze()


@pytest_twisted.async_yield_fixture(autouse=True)
async def no_leftovers(collect_earlier_garbage):
    """Every test must leave no listening port, connection, pending timer or logged error
    (such as an unhandled error in a Deferred) behind. What other modules left is ignored."""
    errors = []
    sockets_before = set(reactor.getReaders()) | set(reactor.getWriters())
    timers_before = set(reactor.getDelayedCalls())

    def observe(event):
        if event.get("isError") or event.get("log_failure") is not None:
            errors.append(formatEvent(event) or repr(event.get("log_failure")))

    globalLogPublisher.addObserver(observe)
    try:
        yield
        for _ in range(50):
            if not _network_leftovers(sockets_before) and not _timers(timers_before):
                break
            await deferLater(reactor, 0.01, lambda: None)
        gc.collect()   # unhandled errors in Deferreds are logged on collection
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == []
    assert _network_leftovers(sockets_before) == []
    assert _timers(timers_before) == []


@pytest_twisted.async_yield_fixture
async def client():
    upstream_client = UpstreamClient(reactor)
    yield upstream_client
    await upstream_client.close()


@pytest_twisted.async_yield_fixture
async def openai_up():
    up = await FakeOpenAI.start(reactor)
    yield up
    await up.stop()


@pytest_twisted.async_yield_fixture
async def anthropic_up():
    up = await FakeAnthropic.start(reactor)
    yield up
    await up.stop()


@pytest.fixture
def openai_mem() -> MemoryUpstream:
    """A fake OpenAI upstream in memory; ``.client`` reaches it without a socket."""
    return MemoryUpstream(FakeOpenAI)


@pytest.fixture
def anthropic_mem() -> MemoryUpstream:
    """A fake Anthropic upstream in memory; ``.client`` reaches it without a socket."""
    return MemoryUpstream(FakeAnthropic)


def openai(client, base_url, **config) -> OpenAICompletionsProvider:
    return OpenAICompletionsProvider(
        "openai", ProviderConfig(api="openai-completions", baseUrl=base_url, **config), client)


def anthropic(client, base_url, **config) -> AnthropicMessagesProvider:
    return AnthropicMessagesProvider(
        "anthropic", ProviderConfig(api="anthropic-messages", baseUrl=base_url, **config), client)


def openai_in(mem: MemoryUpstream, **config) -> OpenAICompletionsProvider:
    """An OpenAI provider talking to an in-memory fake."""
    return openai(mem.client, mem.base_url, **config)


def anthropic_in(mem: MemoryUpstream, **config) -> AnthropicMessagesProvider:
    """An Anthropic provider talking to an in-memory fake."""
    return anthropic(mem.client, mem.base_url, **config)


async def run(provider, request=HELLO):
    deltas: list[str] = []
    result = await provider.stream(request, deltas.append)
    return result, deltas


async def failure_of(provider, request=HELLO) -> tuple[ProviderError, list[str]]:
    deltas: list[str] = []
    with pytest.raises(ProviderError) as info:
        await provider.stream(request, deltas.append)
    return info.value, deltas


def run_now(provider, request=HELLO):
    """``run`` for an in-memory upstream: the call has finished when ``stream`` returns."""
    deltas: list[str] = []
    result = settled(provider.stream(request, deltas.append))
    return result, deltas


def failure_now(provider, request=HELLO) -> tuple[ProviderError, list[str]]:
    """``failure_of`` for an in-memory upstream."""
    deltas: list[str] = []
    with pytest.raises(ProviderError) as info:
        settled(provider.stream(request, deltas.append))
    return info.value, deltas


def ignore(_text: str) -> None:
    pass


def within(d: Deferred, seconds: float = 2.0) -> Deferred:
    return d.addTimeout(seconds, reactor)


async def cancel_after_first_delta(provider, request=HELLO):
    """Start a stream, cancel it once the first delta arrived; returns the cancel time."""
    first: Deferred = Deferred()
    d = provider.stream(request, lambda text: first.called or first.callback(text))
    await within(first)
    cancelled_at = reactor.seconds()
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    return cancelled_at


# --- OpenAI chat completions ------------------------------------------------------------


def test_openai_streams_deltas_and_reports_usage_and_model(openai_mem):
    openai_mem.script(text="hello brave new world", chunks=3, usage=(11, 4), model="gpt-fake")
    result, deltas = run_now(openai(openai_mem.client, openai_mem.base_url))
    assert len(deltas) == 3 and "".join(deltas) == "hello brave new world"
    assert result == ModelResult(text="hello brave new world", finish_reason="stop",
                                 usage=Usage(11, 4), model="gpt-fake")


def test_openai_sends_system_first_options_key_and_custom_headers(openai_mem):
    provider = openai(openai_mem.client, openai_mem.base_url, apiKey=KEY,
                      headers={"X-Org": "acme"})
    request = ModelRequest(
        model="gpt-4o-mini", system="Be brief.",
        messages=({"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                  {"role": "user", "content": [{"type": "text", "text": "three"}]}),
        options={"temperature": 0.2, "max_tokens": 50, "stop": ["END"], "seed": 7})
    run_now(provider, request)
    seen = openai_mem.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.header("authorization") == f"Bearer {KEY}"
    assert seen.header("x-org") == "acme"
    assert seen.header("content-type") == "application/json"
    assert seen.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "one"},
                     {"role": "assistant", "content": "two"},
                     {"role": "user", "content": [{"type": "text", "text": "three"}]}],
        "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.2, "max_tokens": 50, "stop": ["END"], "seed": 7}


def test_openai_without_key_sends_no_authorization_and_no_system_message(openai_mem):
    run_now(openai(openai_mem.client, openai_mem.base_url + "/"))
    seen = openai_mem.requests[-1]
    assert seen.path == "/v1/chat/completions"      # trailing slash of baseUrl normalised
    assert seen.header("authorization") is None
    assert seen.body["messages"] == [{"role": "user", "content": "Hi there"}]


def test_openai_json_answer_to_a_stream_request_is_one_delta(openai_mem):
    openai_mem.script(text="whole answer at once", force_json=True, usage=(3, 4))
    result, deltas = run_now(openai(openai_mem.client, openai_mem.base_url))
    assert deltas == ["whole answer at once"]
    assert (result.text, result.usage, result.finish_reason) == (
        "whole answer at once", Usage(3, 4), "stop")


def test_openai_complete_asks_for_no_stream(openai_mem):
    openai_mem.script(text="done deal", finish_reason="length")
    result = settled(openai(openai_mem.client, openai_mem.base_url).complete(HELLO))
    assert openai_mem.requests[-1].body["stream"] is False
    assert "stream_options" not in openai_mem.requests[-1].body
    assert (result.text, result.finish_reason) == ("done deal", "length")


def test_openai_stream_with_crlf_and_comments_parses(openai_mem):
    openai_mem.script(text="a b c", crlf=True, comments=True)
    result, deltas = run_now(openai(openai_mem.client, openai_mem.base_url))
    assert deltas == ["a ", "b ", "c"] and result.text == "a b c"


def test_openai_finish_reason_without_done_is_accepted(openai_mem):
    openai_mem.script(text="cut", done=False, finish_reason="length")
    result, _ = run_now(openai(openai_mem.client, openai_mem.base_url))
    assert (result.text, result.finish_reason) == ("cut", "length")


@pytest_twisted.ensureDeferred
async def test_openai_requests_reuse_one_pooled_connection(client, openai_up):
    provider = openai(client, openai_up.base_url)
    await run(provider)
    await run(provider)
    assert openai_up.requests[0].client_port == openai_up.requests[1].client_port


def test_openai_401_is_auth_error_and_never_echoes_the_key(openai_mem):
    openai_mem.script(status=401, error=f"Incorrect API key provided: {KEY}.")
    error, _ = failure_now(openai(openai_mem.client, openai_mem.base_url, apiKey=KEY))
    assert isinstance(error, ProviderAuthError) and not error.retryable
    assert error.status == 401
    # none of the upstream's words (they may quote part of the key): what to check instead
    assert "Incorrect API key provided" not in error.message
    assert "models.providers.openai.apiKey" in error.message
    assert KEY not in error.message and KEY not in str(error)


def test_openai_429_is_rate_limited_with_retry_after(openai_mem):
    openai_mem.script(status=429, error="Rate limit reached", headers={"Retry-After": "7"})
    error, _ = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert isinstance(error, ProviderRateLimited) and error.retryable
    assert (error.status, error.retry_after) == (429, 7.0)
    assert "Rate limit reached" in error.message


def test_openai_400_is_bad_request_with_the_upstream_message(openai_mem):
    openai_mem.script(status=400, error="Unrecognized request argument: frobnicate")
    error, _ = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert isinstance(error, ProviderBadRequest) and not error.retryable
    assert error.message == ('provider "openai" returned HTTP 400: '
                             "Unrecognized request argument: frobnicate")


def test_openai_long_upstream_message_is_truncated(openai_mem):
    openai_mem.script(status=400, error="x" * 5000)
    error, _ = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert 400 < len(error.message) < 600


def test_openai_503_is_unavailable_and_html_pages_are_not_quoted(openai_mem):
    openai_mem.script(status=503, error_body=b"<html><body>Bad gateway</body></html>")
    error, _ = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert isinstance(error, ProviderUnavailable) and error.retryable
    assert error.status == 503 and error.message == 'provider "openai" returned HTTP 503'


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_unavailable(client):
    error, _ = await failure_of(openai(client, f"http://127.0.0.1:{unused_port()}/v1"))
    assert isinstance(error, ProviderUnavailable) and error.status is None
    assert "connection refused" in error.message


@pytest_twisted.ensureDeferred
async def test_connection_closed_before_any_answer_is_retried_once(client, openai_up):
    openai_up.script(text="second time lucky").queue(close_before_headers=True)
    result, _ = await run(openai(client, openai_up.base_url))
    assert result.text == "second time lucky" and len(openai_up.requests) == 2


@pytest_twisted.ensureDeferred
async def test_connection_closed_before_any_answer_twice_is_unavailable(client, openai_up):
    openai_up.script(close_before_headers=True)
    error, _ = await failure_of(openai(client, openai_up.base_url))
    assert isinstance(error, ProviderUnavailable) and "before a response" in error.message
    assert len(openai_up.requests) == 2


def test_openai_drop_mid_stream_is_unavailable_after_partial_deltas(openai_mem):
    openai_mem.script(text="one two three four", drop_after=2)
    error, deltas = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert isinstance(error, ProviderUnavailable)
    assert deltas == ["one ", "two "]
    assert "mid-response" in error.message


def test_openai_malformed_sse_is_unavailable(openai_mem):
    openai_mem.script(text="fine so far", malformed=True)
    error, _ = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert isinstance(error, ProviderUnavailable) and "malformed JSON" in error.message


def test_openai_stream_ending_without_done_or_finish_is_unavailable(openai_mem):
    openai_mem.script(text="partial", done=False, finish_reason=None)
    error, deltas = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert isinstance(error, ProviderUnavailable) and "closed the stream early" in error.message
    assert deltas == ["partial"]


@pytest.mark.parametrize("error_type, expected", [
    (None, ProviderUnavailable), ("rate_limit_error", ProviderRateLimited),
    ("invalid_request_error", ProviderBadRequest)])
def test_openai_in_band_error_is_typed(openai_mem, error_type, expected):
    openai_mem.script(text="a", stream_error="something broke", stream_error_type=error_type)
    error, _ = failure_now(openai(openai_mem.client, openai_mem.base_url))
    assert type(error) is expected and "something broke" in error.message


@pytest_twisted.ensureDeferred
async def test_openai_idle_mid_stream_is_timeout_and_closes_the_connection(client, openai_up):
    openai_up.script(text="one two three", stall_after=1)
    error, deltas = await failure_of(openai(client, openai_up.base_url, idleTimeoutSeconds=0.3))
    assert isinstance(error, ProviderTimeout) and error.retryable
    assert deltas == ["one "]
    await within(openai_up.requests[-1].connection_lost)


@pytest_twisted.ensureDeferred
async def test_openai_stall_before_headers_is_timeout(client, openai_up):
    openai_up.script(stall_before_headers=math.inf)
    started = reactor.seconds()
    error, _ = await failure_of(openai(client, openai_up.base_url, idleTimeoutSeconds=0.3))
    assert isinstance(error, ProviderTimeout) and "sent nothing for 0.3s" in error.message
    assert 0.25 < reactor.seconds() - started < 1.5
    await within(openai_up.requests[-1].connection_lost)


@pytest_twisted.ensureDeferred
async def test_idle_timer_runs_on_the_given_clock(openai_up):
    clock = Clock()
    upstream_client = UpstreamClient(reactor, clock=clock)
    openai_up.script(stall_before_headers=math.inf)
    d = openai(upstream_client, openai_up.base_url, idleTimeoutSeconds=30).stream(HELLO, ignore)
    seen = await within(openai_up.wait_for_request())
    clock.advance(29)
    assert not d.called
    clock.advance(1)
    with pytest.raises(ProviderTimeout):
        await d
    await within(seen.connection_lost)
    await upstream_client.close()


@pytest_twisted.ensureDeferred
async def test_openai_cancel_mid_stream_closes_upstream_connection_within_100ms(client, openai_up):
    openai_up.script(text="word " * 50, delay=0.02)
    cancelled_at = await cancel_after_first_delta(openai(client, openai_up.base_url))
    lost_at = await within(openai_up.requests[-1].connection_lost)
    assert lost_at - cancelled_at < 0.1


@pytest_twisted.ensureDeferred
async def test_openai_cancel_before_headers_closes_upstream_connection(client, openai_up):
    openai_up.script(stall_before_headers=math.inf)
    d = openai(client, openai_up.base_url).stream(HELLO, ignore)
    await within(openai_up.wait_for_request())
    cancelled_at = reactor.seconds()
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    lost_at = await within(openai_up.requests[-1].connection_lost)
    assert lost_at - cancelled_at < 0.1


@pytest_twisted.ensureDeferred
async def test_cancel_through_a_coroutine_wrapper_reaches_the_upstream(client, openai_up):
    openai_up.script(text="word " * 50, delay=0.02)
    first: Deferred = Deferred()

    async def runner():     # how an async caller awaits a provider
        return await openai(client, openai_up.base_url).stream(
            HELLO, lambda text: first.called or first.callback(text))

    d = Deferred.fromCoroutine(runner())
    await within(first)
    cancelled_at = reactor.seconds()
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    lost_at = await within(openai_up.requests[-1].connection_lost)
    assert lost_at - cancelled_at < 0.1


@pytest_twisted.ensureDeferred
async def test_exception_from_on_delta_fails_the_call_and_closes_the_connection(
        client, openai_up):
    openai_up.script(text="word " * 50, delay=0.01)

    def explode(_text):
        raise RuntimeError("consumer broke")

    with pytest.raises(RuntimeError, match="consumer broke"):
        await openai(client, openai_up.base_url).stream(HELLO, explode)
    await within(openai_up.requests[-1].connection_lost)


def test_fake_queue_answers_consecutive_requests_differently(openai_mem):
    openai_mem.script(text="ok now").queue(status=503)
    provider = openai(openai_mem.client, openai_mem.base_url)
    error, _ = failure_now(provider)
    assert isinstance(error, ProviderUnavailable)
    result, _ = run_now(provider)
    assert result.text == "ok now"


# --- Anthropic messages ---------------------------------------------------------------


def test_anthropic_streams_deltas_and_reports_usage_and_model(anthropic_mem):
    anthropic_mem.script(text="bonjour tout le monde", chunks=2, usage=(12, 5), model="claude-x")
    result, deltas = run_now(anthropic(anthropic_mem.client, anthropic_mem.base_url))
    assert len(deltas) == 2 and "".join(deltas) == "bonjour tout le monde"
    assert result == ModelResult(text="bonjour tout le monde", finish_reason="stop",
                                 usage=Usage(12, 5), model="claude-x")


def test_anthropic_request_has_top_level_system_headers_and_mapped_options(
        anthropic_mem):
    provider = anthropic(anthropic_mem.client, anthropic_mem.base_url, apiKey=KEY,
                         headers={"anthropic-beta": "x"})
    request = ModelRequest(model="claude-3-5-haiku", system="Be brief.",
                           messages=({"role": "user", "content": "Hi"},),
                           options={"temperature": 0.5, "top_p": 0.9, "stop": "END", "seed": 1})
    run_now(provider, request)
    seen = anthropic_mem.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.header("x-api-key") == KEY
    assert seen.header("anthropic-version") == "2023-06-01"
    assert seen.header("anthropic-beta") == "x"
    assert seen.header("content-type") == "application/json"
    assert seen.header("authorization") is None
    assert seen.body == {"model": "claude-3-5-haiku", "max_tokens": 4096, "system": "Be brief.",
                         "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.5,
                         "top_p": 0.9, "stop_sequences": ["END"], "stream": True}


def test_anthropic_max_tokens_option_and_length_finish(anthropic_mem):
    anthropic_mem.script(text="cut short", finish_reason="length")
    request = ModelRequest(model="m", messages=HELLO.messages, options={"max_tokens": 5})
    result, _ = run_now(anthropic(anthropic_mem.client, anthropic_mem.base_url), request)
    body = anthropic_mem.requests[-1].body
    assert body["max_tokens"] == 5 and "system" not in body
    assert result.finish_reason == "length"


def test_anthropic_messages_are_merged_to_alternate_and_start_with_user(
        anthropic_mem):
    request = ModelRequest(model="m", messages=(
        {"role": "assistant", "content": "I greet first"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"},
                                     {"type": "input_text", "text": "c"}]},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "e"},
        {"role": "user", "content": "f"}))
    run_now(anthropic(anthropic_mem.client, anthropic_mem.base_url), request)
    assert anthropic_mem.requests[-1].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "text", "text": "b"},
                                     {"type": "text", "text": "c"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "d"},
                                          {"type": "text", "text": "e"}]},
        {"role": "user", "content": "f"}]


def test_anthropic_conversion_moves_system_messages_and_keeps_images():
    system, messages = convert_messages([
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            {"type": "image_url", "image_url": "https://example.test/cat.png"}]}])
    assert system == ["rules"]
    assert messages == [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.png"}}]}]


def test_anthropic_request_without_user_message_is_bad_request_without_network(anthropic_mem):
    request = ModelRequest(model="m", messages=({"role": "assistant", "content": "only me"},))
    error, _ = failure_now(anthropic(anthropic_mem.client, anthropic_mem.base_url), request)
    assert isinstance(error, ProviderBadRequest)
    assert anthropic_mem.requests == []


def test_anthropic_json_answer_to_a_stream_request_is_one_delta(anthropic_mem):
    anthropic_mem.script(text="all at once", force_json=True, usage=(2, 3))
    result, deltas = run_now(anthropic(anthropic_mem.client, anthropic_mem.base_url))
    assert deltas == ["all at once"]
    assert (result.usage, result.finish_reason) == (Usage(2, 3), "stop")


def test_anthropic_complete_asks_for_no_stream(anthropic_mem):
    anthropic_mem.script(text="fine")
    result = settled(anthropic(anthropic_mem.client, anthropic_mem.base_url).complete(HELLO))
    assert anthropic_mem.requests[-1].body["stream"] is False
    assert result.text == "fine"


@pytest.mark.parametrize("error_type, expected", [
    ("overloaded_error", ProviderUnavailable), ("rate_limit_error", ProviderRateLimited),
    ("invalid_request_error", ProviderBadRequest), ("authentication_error", ProviderAuthError)])
def test_anthropic_error_event_is_typed(anthropic_mem, error_type, expected):
    anthropic_mem.script(text="a b", stream_error="Overloaded", stream_error_type=error_type)
    error, deltas = failure_now(anthropic(anthropic_mem.client, anthropic_mem.base_url))
    assert type(error) is expected and "Overloaded" in error.message
    assert deltas == ["a ", "b"]


@pytest.mark.parametrize("status, expected", [
    (401, ProviderAuthError), (400, ProviderBadRequest), (529, ProviderUnavailable),
    (500, ProviderUnavailable)])
def test_anthropic_http_errors_are_typed(anthropic_mem, status, expected):
    anthropic_mem.script(status=status, error="nope")
    error, _ = failure_now(anthropic(anthropic_mem.client, anthropic_mem.base_url, apiKey=KEY))
    assert type(error) is expected and error.status == status
    if status == 401:
        assert error.message == (
            'provider "anthropic" answered 401 Unauthorized for POST /v1/messages: it refused '
            "the gateway's credentials: check models.providers.anthropic.apiKey (and its "
            "headers)")
    else:
        assert error.message == f'provider "anthropic" returned HTTP {status}: nope'


def test_anthropic_429_is_rate_limited_with_retry_after(anthropic_mem):
    anthropic_mem.script(status=429, error="slow down", headers={"retry-after": "2.5"})
    error, _ = failure_now(anthropic(anthropic_mem.client, anthropic_mem.base_url))
    assert isinstance(error, ProviderRateLimited) and error.retry_after == 2.5


def test_anthropic_stream_ending_without_message_stop_is_unavailable(anthropic_mem):
    anthropic_mem.script(text="half", done=False, finish_reason=None)
    error, _ = failure_now(anthropic(anthropic_mem.client, anthropic_mem.base_url))
    assert isinstance(error, ProviderUnavailable) and "closed the stream early" in error.message


def test_anthropic_malformed_event_is_unavailable(anthropic_mem):
    anthropic_mem.script(text="x", malformed=True)
    error, _ = failure_now(anthropic(anthropic_mem.client, anthropic_mem.base_url))
    assert isinstance(error, ProviderUnavailable)


@pytest_twisted.ensureDeferred
async def test_anthropic_cancel_mid_stream_closes_upstream_connection_within_100ms(
        client, anthropic_up):
    anthropic_up.script(text="word " * 50, delay=0.02)
    cancelled_at = await cancel_after_first_delta(anthropic(client, anthropic_up.base_url))
    lost_at = await within(anthropic_up.requests[-1].connection_lost)
    assert lost_at - cancelled_at < 0.1


# --- builtin -------------------------------------------------------------------------------


def builtin_request(text, **kw) -> ModelRequest:
    return ModelRequest(model=kw.pop("model", "echo"),
                        messages=({"role": "user", "content": "earlier words here"},
                                  {"role": "assistant", "content": "reply"},
                                  {"role": "user", "content": text}), **kw)


@pytest_twisted.ensureDeferred
async def test_builtin_echo_streams_the_newest_user_message_word_by_word():
    text = "  Hello,  brave\nnew world! "
    deltas: list[str] = []
    d = BuiltinProvider(reactor).stream(builtin_request(text, system="be kind"), deltas.append)
    assert deltas == []                       # nothing synchronously: it really streams
    result = await d
    assert deltas == ["  Hello,  ", "brave\n", "new ", "world! "]
    assert "".join(deltas) == text == result.text
    assert result.usage == Usage(prompt_tokens=2 + 3 + 1 + 4, completion_tokens=4)
    assert (result.finish_reason, result.model) == ("stop", "echo")


@pytest_twisted.ensureDeferred
async def test_builtin_echo_joins_text_parts_and_honours_max_tokens():
    parts = [{"type": "text", "text": "one two "}, {"type": "image_url", "image_url": "x"},
             {"type": "input_text", "text": "three four"}]
    result, deltas = await run(BuiltinProvider(reactor),
                               builtin_request(parts, options={"max_tokens": 3}))
    assert deltas == ["one ", "two ", "three "]
    assert (result.finish_reason, result.usage.completion_tokens) == ("length", 3)


@pytest_twisted.ensureDeferred
async def test_builtin_unknown_model_is_bad_request():
    error, _ = await failure_of(BuiltinProvider(reactor), builtin_request("x", model="gpt"))
    assert isinstance(error, ProviderBadRequest)
    assert error.message == 'unknown builtin model "gpt"'


@pytest_twisted.ensureDeferred
async def test_builtin_cancel_stops_the_stream():
    deltas: list[str] = []
    d = BuiltinProvider(reactor).stream(builtin_request("a b c d e f"), deltas.append)
    await deferLater(reactor, 0, lambda: None)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    count = len(deltas)
    await deferLater(reactor, 0.01, lambda: None)
    assert len(deltas) == count < 6


# --- registry and helpers -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_registry_builds_configured_providers_and_closes_the_shared_pool(openai_up,
                                                                              anthropic_up):
    models = ModelsConfig(providers={
        "local": ProviderConfig(api="openai-completions", baseUrl=openai_up.base_url),
        "claude": ProviderConfig(api="anthropic-messages", baseUrl=anthropic_up.base_url)})
    registry = ProviderRegistry(models, reactor)
    assert sorted(registry) == ["builtin", "claude", "local"]
    assert isinstance(registry.get("builtin"), BuiltinProvider)
    with pytest.raises(KeyError, match='unknown provider "nope"'):
        registry.get("nope")
    await run(registry.get("local"))
    await run(registry.get("claude"))
    assert openai_up.open_connections == anthropic_up.open_connections == 1   # kept alive
    await registry.close()
    await within(openai_up.requests[-1].completed)
    for _ in range(100):
        if openai_up.open_connections == anthropic_up.open_connections == 0:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert openai_up.open_connections == anthropic_up.open_connections == 0


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after(b"30", now=0.0) == 30.0
    assert parse_retry_after(b"Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after(b"soon", now=0.0) is None
    assert parse_retry_after(None, now=0.0) is None


def test_http_date_retry_after_counts_from_the_clients_clock(openai_mem):
    openai_mem.clock.advance(1445412480.0)
    openai_mem.script(status=429, error="later",
                      headers={"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"})
    error, _ = failure_now(openai_in(openai_mem))
    assert isinstance(error, ProviderRateLimited) and error.retry_after == 10.0


def test_redact_removes_our_key_and_key_shaped_strings():
    text = redact(f"bad key {KEY}; also sk-proj-abcdefgh1234 and Bearer abc.def", [KEY])
    assert KEY not in text and "sk-proj" not in text and "abc.def" not in text


def test_openai_404_for_a_wrong_path_is_not_found_naming_the_call(openai_mem):
    base = openai_mem.base_url.rsplit("/v1", 1)[0]         # the /v1 forgotten
    error, _ = failure_now(openai(openai_mem.client, base))
    assert isinstance(error, ProviderNotFound) and not error.retryable
    assert error.call == "POST /chat/completions" and error.missing_model is None
    assert error.message.startswith(
        'provider "openai" answered 404 Not Found for POST /chat/completions')
    assert error.message.endswith("check models.providers.openai.baseUrl (does it end in /v1?)")


def test_anthropic_404_for_a_base_url_with_v1_says_to_drop_it(anthropic_mem):
    error, _ = failure_now(anthropic(anthropic_mem.client, anthropic_mem.base_url + "/v1"))
    assert isinstance(error, ProviderNotFound) and error.call == "POST /v1/v1/messages"
    assert "models.providers.anthropic.baseUrl (without /v1" in error.message
