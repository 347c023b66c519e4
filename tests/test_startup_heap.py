"""The daemon takes its startup objects out of the garbage collector's scans once it runs
(``startup_heap.py``, issue 16): full collections then scan only what requests made since."""
from __future__ import annotations

import gc
import json
import os
import urllib.request
import weakref

from moltbot_gw.startup_heap import freeze_startup_heap

from .test_daemon import Daemon

FROZE = "startup objects out of the garbage collector's scans"


class Cycle:
    def __init__(self):
        self.me = self


def test_the_daemon_freezes_its_startup_objects_once_running(tmp_path):
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}
    environment["MOLTBOT_STATE_DIR"] = str(tmp_path / "state")
    environment["CLAWDBOT_GATEWAY_TOKEN"] = "heap-test-token"
    daemon = Daemon(["--port", "0"], environment, tmp_path)
    try:
        _, port = daemon.wait_listening()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert json.loads(r.read()) == {"ok": True}
    finally:
        assert daemon.stop() == 0
    froze = [line for line in "".join(daemon.lines).splitlines() if FROZE in line]
    assert len(froze) == 1
    frozen = int(froze[0].split("froze ")[1].split()[0])
    assert frozen > 10_000   # the modules, classes and config of a started gateway


def test_garbage_made_before_the_freeze_is_collected_not_frozen():
    gc.collect()
    already = gc.get_freeze_count()
    try:
        alive = Cycle()
        garbage = weakref.ref(Cycle())   # a cycle nothing refers to
        assert garbage() is not None
        frozen = freeze_startup_heap()
        assert garbage() is None          # collected, not kept for ever
        assert frozen > already
        # the live one is frozen: out of every later collection's scan
        assert alive.me is alive and not any(o is alive for o in gc.get_objects())
    finally:
        gc.unfreeze()
