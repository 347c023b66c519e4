"""The leak check every test runs under (autouse from tests/conftest.py): no socket, pending
timer or logged error may outlive the test that made it."""
from __future__ import annotations

import gc

import pytest
import pytest_twisted
from twisted.internet import reactor, tcp
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher


def network_objects() -> set:
    """The reactor's listening ports and TCP connections."""
    selectables = list(reactor.getReaders()) + list(reactor.getWriters())
    return {s for s in selectables if isinstance(s, (tcp.Port, tcp.Client, tcp.Server))}


def active_timers() -> set:
    return {c for c in reactor.getDelayedCalls() if c.active()}


@pytest.fixture(scope="module", autouse=True)
def collect_earlier_garbage():
    """Errors logged when an earlier module's garbage is collected are not this module's.
    What is alive then (imports, strategies, earlier modules' caches) is frozen out of the
    collector, so each test's ``gc.collect()`` scans only what the module made since."""
    gc.collect()
    gc.freeze()


@pytest_twisted.async_yield_fixture(autouse=True)
async def no_leftovers(collect_earlier_garbage):
    """Every test leaves no socket, pending timer (a keepalive that never stopped) or logged
    error (an unhandled error in a Deferred) behind. What earlier tests left, and what a
    longer-lived fixture holds, is not this test's doing."""
    sockets_before, timers_before = network_objects(), active_timers()
    errors = []

    def observe(event):
        if event.get("isError") or event.get("log_failure") is not None:
            errors.append(formatEvent(event) or repr(event.get("log_failure")))

    def leftovers():
        return network_objects() - sockets_before, active_timers() - timers_before

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
    assert errors == [], errors
    assert leftovers() == (set(), set()), leftovers()
