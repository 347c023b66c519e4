"""Garbage-collector settings of a serving daemon. Python's cyclic collector walks every
tracked object of the oldest generation on each full collection; a gateway holds hundreds of
thousands of long-lived ones (modules, config models, metrics, the tool catalogue), and
under load those walks cost about a quarter of the CPU time of a streamed request (issue 16).
"""
from __future__ import annotations

import gc

from twisted.logger import Logger

log = Logger()

# Collections of the youngest generation start after this many new container objects
# (Python's default is 700): a request makes a few thousand short-lived ones, nearly all
# freed by reference counting, so collecting every 700 mostly re-walks live request state.
YOUNG_THRESHOLD = 7000


def tune_gc_for_serving() -> int:
    """Move every object alive now (what start-up built) out of the collector's sight and
    collect the young generation less often; returns how many objects were set aside.
    Called once the daemon runs, never by a library user or a test process (frozen objects
    are never collected, so garbage left by earlier work would stay)."""
    gc.collect()            # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    frozen = gc.get_freeze_count()
    log.info("Set {frozen} start-up objects aside from garbage collection", frozen=frozen)
    return frozen
