"""The work the gateway does per streamed chat request (issue #16's one-read target): each
piece of it is done once, and what the client and the access log get stays the same."""
from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent

from .conftest import TOKEN
from .support.one_read import WORDS, http_chunks, raw_post, start_one_read_upstream
from .test_observability import access_log  # noqa: F401

CHAT = {"model": "moltbot:main", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def _config(port: int) -> dict:
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "models": {"providers": {"one": {"api": "openai-completions",
                                             "baseUrl": f"http://127.0.0.1:{port}/v1"}}},
            "agents": {"list": [{"id": "main", "default": True, "model": "one/model"}]}}


async def _post(start_gateway, body: bytes, headers: list[str], count_auth=None):
    """POST ``body`` to a gateway in front of the one-read upstream; ``count_auth(gw)`` runs
    before the request (it may wrap what it wants to count)."""
    listening, _upstream = await start_one_read_upstream(reactor)
    try:
        gw = await start_gateway(_config(listening.getHost().port))
        if count_auth is not None:
            count_auth(gw)
        return await raw_post(reactor, gw.port, "/v1/chat/completions", body, headers)
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_request_with_a_body_is_authenticated_once(start_gateway):
    """The site checks the secret at the headers (before reading a body); the route must
    not check it again, and the run slots must not work the client's address out again."""
    calls: list[tuple] = []

    def count(gw):
        auth = gw.service.auth
        real = auth.authenticate

        def authenticate(address, presented, **kwargs):
            calls.append((address, presented))
            return real(address, presented, **kwargs)

        auth.authenticate = authenticate

    raw = await _post(start_gateway, json.dumps(CHAT).encode(),
                      [f"Authorization: Bearer {TOKEN}"], count)
    head, chunks = http_chunks(raw)
    assert head.startswith(b"HTTP/1.1 200 ")
    deltas = [json.loads(f.removeprefix(b"data: "))["choices"][0]["delta"].get("content")
              for f in b"".join(chunks).split(b"\n\n")[1:-3]]
    assert deltas == WORDS
    assert calls == [("127.0.0.1", TOKEN)]


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_still_refused_at_the_headers(start_gateway):
    calls: list[tuple] = []

    def count(gw):
        auth = gw.service.auth
        real = auth.authenticate
        auth.authenticate = lambda a, p, **kw: calls.append((a, p)) or real(a, p, **kw)

    raw = await _post(start_gateway, json.dumps(CHAT).encode(),
                      ["Authorization: Bearer wrong"], count)
    assert raw.startswith(b"HTTP/1.1 401 ")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_api_key"
    assert calls == [("127.0.0.1", "wrong")]


@pytest_twisted.ensureDeferred
async def test_the_access_line_is_written_once_not_filled_in_by_each_observer(
        start_gateway, access_log):
    """The access event's text is complete without its fields (no template for every log
    observer to fill in with ``string.Formatter``), and is the line it always was; braces a
    client put in the path come out as sent."""
    listening, _upstream = await start_one_read_upstream(reactor)
    try:
        gw = await start_gateway(_config(listening.getHost().port))
        auth = [f"Authorization: Bearer {TOKEN}", "x-request-id: line-1"]
        await raw_post(reactor, gw.port, "/v1/chat/completions", json.dumps(CHAT).encode(),
                       auth)
        await raw_post(reactor, gw.port, "/v1/{odd}", b"{}",
                       [f"Authorization: Bearer {TOKEN}", "x-request-id: line-2"])
    finally:
        await listening.stopListening()
    await deferLater(reactor, 0, lambda: None)
    by_id = {event["request_id"]: event for event in access_log.events}
    ok, odd = by_id["line-1"], by_id["line-2"]
    assert formatEvent(ok) == (f"line-1 POST /v1/chat/completions 200 {ok['duration_ms']}ms "
                               f"agent=main tokens=3/{len(WORDS)}")
    assert formatEvent(odd) == (f"line-2 POST /v1/{{odd}} 404 {odd['duration_ms']}ms "
                                f"error=not_found param=None")
    for event in (ok, odd):
        assert formatEvent({"log_format": event["log_format"]}) == formatEvent(event)
        assert (event["status"], event["route"], event["client"]) in {
            (200, "/v1/chat/completions", "127.0.0.1"), (404, "other", "127.0.0.1")}


def test_end_of_run_callbacks_run_once_before_the_waits_and_survive_a_bad_one():
    """``Run.on_finish``: the bookkeeping of every request (metrics, the client's run slot)
    without a Deferred each; in order, before ``wait()``'s Deferreds, a raising one logged
    and skipped, and a late one called at once."""
    from twisted.logger import globalLogPublisher

    from moltbot_gw.agents.run import Run

    run = Run("run_x", "main", "agent:main:main")
    seen: list = []
    waited = run.wait()
    waited.addCallback(lambda outcome: seen.append(("wait", outcome)))

    def bad(_outcome):
        raise KeyError("boom")

    logged: list = []
    run.on_finish(lambda outcome: seen.append(("first", outcome)))
    run.on_finish(bad)
    run.on_finish(lambda outcome: seen.append(("second", outcome)))
    globalLogPublisher.addObserver(logged.append)
    try:
        run.finish("result")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert seen == [("first", "result"), ("second", "result"), ("wait", "result")]
    failures = [e for e in logged if "end-of-run callback failed" in e.get("log_format", "")]
    assert len(failures) == 1 and failures[0]["error"] == "KeyError"
    run.on_finish(lambda outcome: seen.append(("late", outcome)))
    assert seen[-1] == ("late", "result")


def test_the_daemon_sets_its_start_up_objects_aside_from_the_garbage_collector(tmp_path):
    """Full collections walked every long-lived object of the daemon (a quarter of a streamed
    request's CPU time under load): once running, the daemon freezes what start-up built and
    collects young objects less often (``moltbot_gw.gc_tuning``), and still serves."""
    import re
    import time

    from .support.daemon import GatewayDaemon

    daemon = GatewayDaemon(tmp_path / "gw", {})
    daemon.start()
    try:
        deadline = time.monotonic() + 20
        match = None
        while match is None and time.monotonic() < deadline:
            match = re.search(r"Set (\d+) start-up objects aside from garbage collection",
                              daemon.log_text())
            if match is None:
                time.sleep(0.05)
        assert match is not None, daemon.log_text()[-2000:]
        assert int(match.group(1)) > 10_000     # the modules, config and catalogue at least
        assert daemon.healthy()
    finally:
        assert daemon.terminate() == 0


@pytest_twisted.ensureDeferred
async def test_a_drain_waits_for_a_request_in_flight_and_its_access_line(
        start_gateway, upstream, http, access_log):
    """One finish notification per request does both the access line and the in-flight
    count: the site is idle only after the request finished, and its line was logged
    first (a stop may end the process as soon as the site is idle)."""
    from .chat_helpers import PATH, config

    upstream.script(text="a b", delay=0.05)
    gw = await start_gateway(config(upstream))
    site = gw.service.site
    pending = http.post(gw.url + PATH, headers=gw.auth_headers, json={
        "model": "moltbot:beta", "messages": [{"role": "user", "content": "hi"}]})
    while site.inflight == 0:
        await deferLater(reactor, 0.01, lambda: None)
    lines_when_idle: list = []
    site.wait_idle().addCallback(
        lambda _: lines_when_idle.append([e["status"] for e in access_log.events]))
    assert lines_when_idle == []
    response = await pending
    await response.content()
    await deferLater(reactor, 0, lambda: None)
    assert response.code == 200
    assert lines_when_idle == [[200]] and site.inflight == 0


def test_keepalive_ticks_only_while_idle_and_leave_no_timer_behind():
    """The SSE keepalive is one re-armed timer per response: a comment on each idle tick,
    none on a tick that saw output, and nothing scheduled once the stream ended or the
    client left."""
    from twisted.internet.task import Clock
    from twisted.web.test.requesthelper import DummyRequest

    from moltbot_gw.openai.sse_stream import KEEPALIVE_FRAME, SSEStream

    clock = Clock()
    request = DummyRequest([b"v1"])
    stream = SSEStream(request, 15.0, clock)
    clock.advance(15)                        # idle: the stream opens with a keepalive
    clock.advance(0)
    assert request.written == [KEEPALIVE_FRAME]
    stream._output()
    stream._write(b"data: x\n\n")
    clock.advance(15)                        # output since the last tick: no keepalive
    clock.advance(0)
    assert request.written == [KEEPALIVE_FRAME, b"data: x\n\n"]
    clock.advance(15)
    clock.advance(0)
    assert request.written[-1] == KEEPALIVE_FRAME
    stream._end()
    assert clock.getDelayedCalls() == []

    gone = DummyRequest([b"v1"])
    SSEStream(gone, 15.0, clock)
    gone.processingFailed(Exception("client left"))   # fires notifyFinish with a failure
    assert clock.getDelayedCalls() == []


def test_a_reload_hands_the_frozen_objects_back_to_the_collector(tmp_path):
    """Frozen objects are never collected: after a SIGHUP reload the replaced config's
    objects must become collectable again (frozen anew later, once requests on the old
    config have ended)."""
    import re
    import signal
    import time

    from .support.daemon import GatewayDaemon

    daemon = GatewayDaemon(tmp_path / "gw", {})
    daemon.start()
    try:
        def wait_for(pattern):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                match = re.search(pattern, daemon.log_text())
                if match:
                    return match
                time.sleep(0.05)
            raise AssertionError(daemon.log_text()[-2000:])

        wait_for(r"Set \d+ start-up objects aside from garbage collection")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(r"start-up objects back under garbage collection for 60(\.0)? s")
        assert daemon.healthy()
    finally:
        assert daemon.terminate() == 0
