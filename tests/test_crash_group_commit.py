"""kill -9 while many turns of existing sessions are being group-committed (issue #16): every
turn whose client got ``data: [DONE]`` is in its transcript after the kill, and the restarted
daemon reads the same state. The daemon and the upstream run in their own processes (see
``test_crash_safety.py``, whose helpers this reuses)."""
from __future__ import annotations

import threading

from .support.daemon import GatewayDaemon
from .test_crash_safety import (  # noqa: F401 - upstream is a fixture
    Stream,
    daemon_config,
    inspect_state,
    turn_in_transcript,
    upstream,
    wait_until,
)

CLIENTS = 16


def test_kill_9_during_concurrent_turns_of_existing_sessions_loses_no_acknowledged_turn(
        tmp_path, upstream):
    daemon = GatewayDaemon(tmp_path / "gw", daemon_config(upstream))
    port = daemon.start()
    acknowledged: list[Stream] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        """One user's turns, one after the other, until one is not acknowledged."""
        for turn in range(10_000):
            stream = Stream(port, number * 10_000 + turn, f"group-user-{number:02d}",
                            model="moltbot:fast").start()
            stream.finished.wait(timeout=30)
            if not stream.done:
                return
            with lock:
                acknowledged.append(stream)

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    try:
        for thread in clients:
            thread.start()
        assert wait_until(lambda: len(acknowledged) >= 20 * CLIENTS, timeout=90)
        daemon.kill()
        for thread in clients:
            thread.join(timeout=35)
        assert not any(thread.is_alive() for thread in clients)
    finally:
        daemon.kill()

    report = inspect_state(daemon.state_dir)
    missing = [s.prompt for s in acknowledged if not turn_in_transcript(report, "fast", s)]
    print(f"\nkill -9 under group commit: {len(acknowledged)} turns acknowledged,"
          f" {len(missing)} missing; skipped lines {report['skipped']}")
    assert report["bad_files"] == []
    assert missing == []

    port = daemon.start()      # the restarted daemon continues every session
    try:
        again = [Stream(port, 900_000 + n, f"group-user-{n:02d}", model="moltbot:fast").start()
                 for n in range(CLIENTS)]
        for stream in again:
            assert stream.finished.wait(timeout=20)
            assert stream.done, (stream.raw[-500:], stream.error)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    report = inspect_state(daemon.state_dir)
    assert all(turn_in_transcript(report, "fast", s) for s in again + acknowledged)
