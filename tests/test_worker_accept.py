"""A worker accepts one connection each time the shared listening socket wakes it, so that a
burst of keep-alive connections (a load balancer's pool, a benchmark's) is spread over the
workers instead of all landing on the first one to wake."""
from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from moltbot_gw.workers.worker import accept_one_at_a_time


class Accepted(Factory):
    def __init__(self):
        self.transports = []

    def buildProtocol(self, addr):
        factory = self

        class Held(Protocol):
            def connectionMade(self):
                factory.transports.append(self.transport)

        return Held()


async def accepted_per_wakeup(one_at_a_time: bool) -> list[int]:
    factory = Accepted()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port.stopReading()          # this test wakes it by hand
    if one_at_a_time:
        accept_one_at_a_time(port)
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
               for _ in range(5)]   # queued, complete, in the kernel's backlog
    counts = []
    try:
        for _ in range(3):
            before = len(factory.transports)
            port.doRead()
            counts.append(len(factory.transports) - before)
    finally:
        for transport in factory.transports:
            transport.abortConnection()
        for client in clients:
            client.close()
        await port.stopListening()
    return counts


@pytest_twisted.ensureDeferred
async def test_each_wakeup_accepts_one_queued_connection():
    assert await accepted_per_wakeup(one_at_a_time=True) == [1, 1, 1]


@pytest_twisted.ensureDeferred
async def test_twisteds_default_takes_the_whole_burst_at_once():
    """What the worker changes: without it, one wakeup takes every queued connection."""
    assert await accepted_per_wakeup(one_at_a_time=False) == [5, 0, 0]
