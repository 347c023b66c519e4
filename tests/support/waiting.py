"""Waiting on the test reactor for a state the gateway reaches asynchronously, and hanging up
a pending client request, for end-to-end tests of queues (client slots, provider slots)."""
from __future__ import annotations

from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError
from twisted.web._newclient import ResponseNeverReceived


async def until(condition, seconds=10.0):
    """Wait (on the reactor) until ``condition()`` holds; fail after ``seconds``."""
    deadline = reactor.seconds() + seconds
    while not condition():
        assert reactor.seconds() < deadline, "condition not reached in time"
        await task.deferLater(reactor, 0.01, lambda: None)


def hang_up(d):
    """Cancel a pending treq request: the client goes away."""
    d.addErrback(lambda f: f.trap(CancelledError, ResponseNeverReceived))
    d.cancel()
