"""Garbage-collector settings of a serving daemon. Python's cyclic collector walks every
tracked object of the oldest generation on each full collection; a gateway holds hundreds of
thousands of long-lived ones (modules, config models, metrics, the tool catalogue), and
under load those walks cost about a quarter of the CPU time of a streamed request (issue 16).
"""
from __future__ import annotations

import gc

from twisted.logger import Logger

log = Logger()

# After a config reload, how long the replaced config's objects stay collectable (requests
# in flight still use them) before what is alive is frozen again.
REFREEZE_AFTER_RELOAD_SECONDS = 60.0

# Collections of the youngest generation start after this many new container objects
# (Python's default is 700): a request makes a few thousand short-lived ones, nearly all
# freed by reference counting, so collecting every 700 mostly re-walks live request state.
YOUNG_THRESHOLD = 7000


def tune_gc_for_serving() -> int:
    """Move every object alive now (what start-up built) out of the collector's sight and
    collect the young generation less often; returns how many objects were set aside.
    Called once the daemon runs (and a while after each reload), never by a library user
    or a test process (frozen objects are never collected: earlier garbage would stay)."""
    gc.unfreeze()           # after a reload: what the old config left can go now
    gc.collect()            # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    frozen = gc.get_freeze_count()
    log.info("Set {frozen} start-up objects aside from garbage collection", frozen=frozen)
    return frozen


_refreeze = None    # the pending re-freeze after a reload


def unfreeze_after_reload(reactor) -> None:
    """A reload replaced config objects that were frozen with the rest, and frozen objects
    are never collected: hand everything back to the collector (the old config's reference
    cycles can then be freed) and freeze again once requests that still use the old config
    have had ``REFREEZE_AFTER_RELOAD_SECONDS`` to end."""
    global _refreeze
    gc.unfreeze()
    if _refreeze is not None and _refreeze.active():
        _refreeze.cancel()
    _refreeze = reactor.callLater(REFREEZE_AFTER_RELOAD_SECONDS, tune_gc_for_serving)
    log.info("Config reloaded: start-up objects back under garbage collection for {seconds} s",
             seconds=REFREEZE_AFTER_RELOAD_SECONDS)
