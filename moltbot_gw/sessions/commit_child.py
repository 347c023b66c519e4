"""The transcript writer process (``python -m moltbot_gw.sessions.commit_child``): runs the
file store's group commits for the gateway that started it, so no thread of the gateway takes
the GIL for them. Reads one frame per commit on stdin (the appends, each ``append_turn``'s
arguments), runs ``commit_appends`` on them and answers one frame after the fsyncs.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Optional

from moltbot_gw.sessions.commit_frames import HEADER, encode_frame, encode_outcome
from moltbot_gw.sessions.group_commit import Append, commit_appends
from moltbot_gw.sessions.transcript import transcript_path
from moltbot_gw.sessions.turn_append import append_turn

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "MOLTBOT_GW_WRITER_PARENT"   # the gateway's pid, to notice it is gone


def append_for(job: dict[str, Any]) -> Append:
    """An ``Append`` that writes what the gateway described, through ``append_turn``."""
    sessions_dir = Path(job["sessions_dir"])
    path = transcript_path(sessions_dir, job["session_id"])
    write = partial(append_turn, Path(job["state_dir"]), sessions_dir, job["session_id"],
                    job["records"], job["header"], int(job["max_bytes"]), int(job["now_ms"]))
    return Append(path, write, job)


def commit_frame(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One commit: every append written in order, then fsynced; the outcome of each."""
    return [encode_outcome(outcome) for outcome in commit_appends([append_for(j) for j in jobs])]


def _read_exactly(stream: BinaryIO, size: int) -> Optional[bytes]:
    """``size`` bytes, or None at end of input (the gateway closed the pipe or died)."""
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer commits until end of input; the frame being read when it ends is finished
    first (so a gateway's last commit is written even if it is gone)."""
    while True:
        header = _read_exactly(requests, HEADER.size)
        if header is None:
            return
        body = _read_exactly(requests, HEADER.unpack(header)[0])
        if body is None:
            return
        answers.write(encode_frame(commit_frame(json.loads(body.decode("utf-8")))))
        answers.flush()


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the gateway dies (as its own threads would), so a restarted
    gateway never shares a transcript with a stale writer. Best effort elsewhere."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):   # it died before prctl took effect
        sys.exit(0)


def main() -> int:
    """Protocol on fds 0 and 1; anything printed goes to stderr (the gateway's log)."""
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _die_with_parent()
    try:
        serve(requests, answers)
    except BrokenPipeError:
        return 0
    except Exception as error:   # noqa: BLE001 - one line to the log, never a traceback
        sys.stderr.write(f"transcript writer stopped: {type(error).__name__}: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
