"""What makes a gateway process a worker of ``--workers N``: it learns its index and the
file descriptors its parent handed it from the environment, takes the connections the parent
hands it (``dealer.py``) instead of listening itself, tells the parent when it serves, stops
(gracefully) when the parent dies, and marks its log lines with its index.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet import protocol, stdio
from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

# The environment a parent gives each worker (and the fds it maps in the child).
WORKER_ENV = "MOLTBOT_WORKER"
CHANNEL_FD = 3     # a UNIX socket on which the parent hands over connections (dealer.py)
LIFELINE_FD = 4    # read end of a pipe the parent holds open: EOF means the parent is gone
READY_FD = 5       # write end of a pipe to the parent: b"ready\n" once serving
READY_LINE = b"ready\n"

log = Logger(namespace="moltbot_gw.workers")


@dataclass(frozen=True)
class WorkerIdentity:
    """This process is worker ``index`` (1..N) of a ``--workers`` parent."""

    index: int

    @classmethod
    def from_environment(cls, environ=os.environ) -> Optional["WorkerIdentity"]:
        value = environ.get(WORKER_ENV)
        if not value:
            return None
        return cls(int(value))


class _Lifeline(protocol.Protocol):
    """Both pipes to the parent. EOF on the lifeline means the parent died (or closed it):
    stop the way SIGTERM does, draining first."""

    def __init__(self, on_parent_gone: Callable[[], None]):
        self.on_parent_gone = on_parent_gone

    def dataReceived(self, data: bytes) -> None:
        pass   # the parent never writes; the pipe is there for its EOF

    def connectionLost(self, reason=None) -> None:
        self.on_parent_gone()


def connect_to_parent(reactor, service) -> None:
    """Watch the lifeline, and report ``ready`` once ``service`` listens (run it once the
    reactor runs, after the signal handlers are in place)."""
    stopping: list[bool] = []
    reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)

    def parent_gone() -> None:
        if stopping:   # the reactor closes the pipes as it stops: nothing to do
            return
        log.warn("The worker parent is gone; draining and stopping")
        os.kill(os.getpid(), signal.SIGTERM)   # the SIGTERM handler drains, once

    lifeline = _Lifeline(parent_gone)
    # (mypy sees the Windows StandardIO, which has no stdin/stdout fds; the POSIX one does)
    pipes = stdio.StandardIO(lifeline, stdin=LIFELINE_FD,  # type: ignore[call-arg]
                             stdout=READY_FD, reactor=reactor)

    def ready(port):
        pipes.write(READY_LINE)
        return port

    service.when_listening().addCallback(ready)


def worker_log_observer(inner: ILogObserver, index: int) -> ILogObserver:
    """Wrap the observer twistd would use so every event names the worker: a
    ``moltbot_worker`` field (JSON logs) and ``worker N`` in the text lines' system part."""

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        marked = dict(event, moltbot_worker=index)
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = "{}#{}".format(event.get("log_namespace", "-"),
                                    level.name if level is not None else "-")
        marked["log_system"] = f"worker {index} {system}"
        inner(marked)

    return observe
