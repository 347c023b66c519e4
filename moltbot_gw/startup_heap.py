"""The daemon's objects from startup, taken out of the cyclic garbage collector's scans.

What importing and configuring the gateway makes (~135,000 objects: modules, classes,
config, the site) lives as long as the process, yet every full collection scanned it all
(~0.1 s a time), and a session load, whose transcript tails accumulate in memory, runs full
collections more often: a third of ``sessions_c16``'s CPU per turn (issue 16). Frozen once
the reactor runs, they are never scanned again; only the daemon does it (tests run many
gateways in one process).
"""
from __future__ import annotations

import gc

from twisted.logger import Logger

log = Logger()


def freeze_startup_heap() -> int:
    """Collect the garbage startup left, then move every object still alive to the permanent
    generation (``gc.freeze``); returns how many are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze {frozen} startup objects out of the garbage collector's scans",
             frozen=frozen)
    return frozen
