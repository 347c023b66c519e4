"""Shared by the end-to-end tests of the OpenAI endpoint (raw HTTP and the ``openai`` SDK):
the gateway config with two agents on a fake upstream, and the fixtures that keep each test
clean (no socket, timer or logged error left behind; no pooled HTTP connection)."""
from __future__ import annotations

import gc

import pytest_twisted
import treq
from twisted.internet import reactor, tcp
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

PATH = "/v1/chat/completions"
MAIN_PROMPT = "You are Main, the default agent."
BETA_PROMPT = "You are Beta, the second agent."
HI = [{"role": "user", "content": "hi"}]
DONE = b"data: [DONE]\n\n"


def _network_objects() -> set:
    selectables = list(reactor.getReaders()) + list(reactor.getWriters())
    return {s for s in selectables if isinstance(s, (tcp.Port, tcp.Client, tcp.Server))}


def _active_timers() -> set:
    return {c for c in reactor.getDelayedCalls() if c.active()}


@pytest_twisted.async_yield_fixture(autouse=True)
async def no_leftovers():
    """Every test leaves no socket, pending timer (a keepalive that never stopped) or logged
    error behind. What earlier tests (of other modules) left is not this test's doing."""
    sockets_before, timers_before = _network_objects(), _active_timers()
    errors = []

    def observe(event):
        if event.get("isError") or event.get("log_failure") is not None:
            errors.append(formatEvent(event) or repr(event.get("log_failure")))

    def leftovers():
        return _network_objects() - sockets_before, _active_timers() - timers_before

    globalLogPublisher.addObserver(observe)
    try:
        yield
        for _ in range(100):
            if leftovers() == (set(), set()):
                break
            await deferLater(reactor, 0.01, lambda: None)
        gc.collect()   # unhandled errors in Deferreds are logged on collection
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == []
    assert leftovers() == (set(), set())


@pytest_twisted.async_yield_fixture
async def http():
    """A treq client whose connections close with each response (none outlive the test)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield treq.client.HTTPClient(Agent(reactor, pool=pool))
    await pool.closeCachedConnections()


def config(up=None, *, enabled=True, chat=None, provider=None, main_model="builtin/echo",
           gateway=None):
    """Agents ``main`` (default) and, with an upstream, ``beta`` on ``up/some-model``."""
    endpoint = {"chatCompletions": {"enabled": enabled, **(chat or {})}}
    if enabled is None:
        endpoint = {}
    raw = {"gateway": {"shutdownGraceSeconds": 3, "http": {"endpoints": endpoint},
                       **(gateway or {})},
           "agents": {"list": [{"id": "main", "default": True, "systemPrompt": MAIN_PROMPT,
                                "model": main_model}]}}
    if up is not None:
        raw["models"] = {"providers": {"up": {"api": "openai-completions",
                                              "baseUrl": up.base_url, **(provider or {})}}}
        raw["agents"]["list"].append({"id": "beta", "systemPrompt": BETA_PROMPT,
                                      "model": "up/some-model"})
    return raw
