"""Deferreds for disk work that must run to its end even when its caller stops waiting
(a cancelled request): cancelling stops the waiting only; a failure nobody waits for any more
is logged."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="moltbot_gw.sessions.store")


def uncancellable(work: Deferred) -> Deferred:
    """A Deferred for ``work`` whose cancellation stops only the waiting, never the work.

    Disk work that has started must finish under its agent's lock, or the next write could
    overtake it.
    """
    result: Deferred = Deferred()

    def deliver(outcome: Any) -> None:
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
        elif isinstance(outcome, Failure):
            log.failure("session store work failed after its caller stopped waiting",
                        failure=outcome)

    work.addBoth(deliver)
    return result
