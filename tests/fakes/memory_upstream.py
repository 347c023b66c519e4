"""A fake upstream driven in memory: the fake's resource behind treq's
``RequestTraversalAgent`` (real HTTP parsing on both sides, no socket, no reactor turn), and an
``UpstreamClient`` that uses that agent and a ``task.Clock`` for its idle timers.

    up = MemoryUpstream(FakeOpenAI)
    up.script(text="hi")
    result = settled(provider(up.client, up.base_url).stream(request, deltas.append))

Connection behaviour (timeouts, pooling, cancellation closing sockets) needs the real fakes.
"""
from __future__ import annotations

from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from zope.interface import implementer

from moltbot_gw.providers.upstream_client import UpstreamClient

from .upstream import FakeUpstream, RecordedRequest


@implementer(IAgent)
class _FlushingAgent:
    """Moves every byte between client and fake as soon as a request is made: the fake's
    scripted replies are written synchronously, so one flush completes the exchange."""

    def __init__(self, agent: RequestTraversalAgent):
        self._agent = agent

    def request(self, method, uri, headers=None, bodyProducer=None) -> Deferred:
        d = self._agent.request(method, uri, headers, bodyProducer)
        self._agent.flush()
        return d


class MemoryUpstream:
    """One fake upstream (``FakeOpenAI`` or ``FakeAnthropic``) and a client wired to it."""

    host = "http://upstream.test"

    def __init__(self, fake_class: type[FakeUpstream]):
        self.clock = Clock()
        self.fake = fake_class(self.clock)
        self.agent = RequestTraversalAgent(self.fake.resource())
        self.client = UpstreamClient(MemoryReactorClock(), clock=self.clock,
                                     agent=_FlushingAgent(self.agent))

    @property
    def base_url(self) -> str:
        return self.host + self.fake.url_suffix

    def script(self, **changes) -> "MemoryUpstream":
        """``FakeUpstream.script``: how every request is answered from now on."""
        self.fake.script(**changes)
        return self

    def queue(self, **changes) -> "MemoryUpstream":
        """``FakeUpstream.queue``: how the next request is answered."""
        self.fake.queue(**changes)
        return self

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.fake.requests


def settled(d: Deferred) -> Any:
    """The result of a Deferred that must have fired already; its failure is raised."""
    outcome: list = []
    d.addBoth(outcome.append)
    assert outcome, "the call did not finish in memory"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
