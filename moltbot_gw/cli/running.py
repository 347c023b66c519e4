"""How a command gets its configuration and runs its work under the reactor: a config
error ends the command with exit status 1 and the errors on stderr, never a traceback.
"""
from __future__ import annotations

import sys
from typing import Optional

from ..config import Config, ConfigError, load_config


def load(path: Optional[str]) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        raise SystemExit(1) from e


def react(main, *args) -> int:
    """Run ``main(reactor, *args)`` (a coroutine function returning an exit code)."""
    from twisted.internet import defer, task

    codes: list[int] = []

    def run(reactor):
        return defer.ensureDeferred(main(reactor, *args)).addCallback(codes.append)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code)
    return codes[0] if codes else 1


def react_value(main, *args):
    """Run ``main(reactor, *args)`` under the reactor; its value, or its exception raised."""
    outcome: list = []

    async def run(reactor):
        try:
            outcome.append((True, await main(reactor, *args)))
        except Exception as e:
            outcome.append((False, e))
        return 0

    react(run)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
