"""Time in the gateway comes from its reactor (issue 14): a ``task.Clock`` in place of the
reactor drives the timestamps the WebSocket methods report, with no real time involved."""
from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from moltbot_gw.ws.methods import GatewayMethods

EPOCH = 1_700_000_000.25     # a wall-clock time no machine running this test has now


@pytest_twisted.ensureDeferred
async def test_health_ts_and_the_start_time_come_from_the_reactors_clock():
    clock = Clock()
    clock.advance(EPOCH)
    methods = GatewayMethods(None, None, None, clock)   # health and the start time need no runtime
    assert methods.started_at_ms == 1_700_000_000_250
    clock.advance(2.5)
    health = await methods.health(None, None)
    assert health["ts"] == 1_700_000_002_750
    assert health["uptimeMs"] == 2500
