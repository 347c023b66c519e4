"""The gateway's side of the transcript writer process (``commit_child.py``): file store
group commits sent to one long-lived child instead of a worker thread, so the commit's
syscalls and fsyncs never take the gateway's GIL. Called like ``GroupCommitter``'s thread hook.
"""
from __future__ import annotations

import os
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

import moltbot_gw
from moltbot_gw.sessions.commit_child import PARENT_PID_ENV
from moltbot_gw.sessions.commit_frames import FrameReader, decode_outcome, encode_json, list_frame
from moltbot_gw.sessions.group_commit import Append, commit_appends

CHILD_MODULE = "moltbot_gw.sessions.commit_child"
STOP_SECONDS = 5.0   # after stdin closes, the child is killed if it has not exited by then
# The directory holding this moltbot_gw package: the child imports the same code.
PACKAGE_ROOT = str(Path(moltbot_gw.__file__).resolve().parent.parent)


def append_job(state_dir: Path, sessions_dir: Path, session_id: str, records: list,
               header: dict, max_bytes: int, now_ms: int) -> dict[str, Any]:
    """``append_turn``'s arguments as the writer process reads them (``commit_child``)."""
    return {"state_dir": str(state_dir.absolute()), "sessions_dir": str(sessions_dir.absolute()),
            "session_id": session_id, "records": records, "header": header,
            "max_bytes": max_bytes, "now_ms": now_ms}


class WriterExited(RuntimeError):
    """The writer process ended before answering a commit; its turns are not durable."""


class _WriterProtocol(ProcessProtocol):
    """One child: commits written to its stdin, answered in order on its stdout."""

    log = Logger()

    def __init__(self, on_end: Callable[["_WriterProtocol"], None]):
        self._frames = FrameReader()
        self._waiting: deque[Deferred] = deque()
        self._stderr = b""
        self._on_end = on_end
        self.ended: Deferred = Deferred()
        self.stopping = False
        self.exited = False

    def commit(self, encoded_jobs: list[bytes]) -> Deferred:
        """Send one commit; fires with the outcome of each job, in order."""
        if self.exited or self.transport is None:
            return fail(WriterExited("the transcript writer process exited"))
        answer: Deferred = Deferred()
        self._waiting.append(answer)
        self.transport.write(list_frame(encoded_jobs))
        return answer

    def outReceived(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except ValueError:
            self.log.error("transcript writer process sent an unreadable answer; stopping it")
            self.transport.signalProcess("KILL")   # type: ignore[union-attr]
            return
        for frame in frames:
            if self._waiting:
                self._waiting.popleft().callback([decode_outcome(o) for o in frame])

    def errReceived(self, data: bytes) -> None:
        lines = (self._stderr + data).split(b"\n")
        self._stderr = lines.pop()[-4096:]
        for line in lines:
            if line.strip():
                self.log.warn("transcript writer: {line}",
                              line=line.decode("utf-8", "replace")[:1000])

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        how = f"signal {signal}" if signal is not None else f"status {code}"
        if not self.stopping or self._waiting:
            self.log.warn("transcript writer process exited ({how}); {n} commit(s) lost,"
                          " the next commit starts a new one", how=how, n=len(self._waiting))
        # Forgotten before the errbacks run: a turn they start goes to a new child.
        self.exited = True
        self._on_end(self)
        waiting, self._waiting = self._waiting, deque()
        for answer in waiting:
            answer.errback(WriterExited(
                f"the transcript writer process exited ({how}) before the turn was durable"))
        self.ended.callback(None)


class TranscriptWriter:
    """Runs ``commit_appends`` in the writer process: ``writer(commit_appends, appends)``
    fires with each append's result or exception, as the thread hook would. The child starts
    on the first commit and again after it died; ``stop()`` ends it (on shutdown)."""

    def __init__(self, reactor: Any, executable: str = sys.executable,
                 module: str = CHILD_MODULE, stop_seconds: float = STOP_SECONDS):
        self._reactor = reactor
        self._executable = executable
        self._module = module   # tests run a wrapper of commit_child that logs its fsyncs
        self._stop_seconds = stop_seconds
        self._child: Optional[_WriterProtocol] = None

    @property
    def pid(self) -> Optional[int]:
        """The running child's pid, if there is one."""
        if self._child is None or self._child.transport is None:
            return None
        return self._child.transport.pid

    def __call__(self, function: Callable[..., Any], appends: Sequence[Append],
                 fsync: Optional[Callable[[int], None]] = None) -> Deferred:
        if function is not commit_appends or fsync is not None:
            return fail(TypeError("the transcript writer runs commit_appends only"))
        # A turn whose records are not JSON fails alone (as its write would in a thread).
        outcomes: list[Any] = [None] * len(appends)
        sent: list[int] = []
        encoded: list[bytes] = []
        for index, append in enumerate(appends):
            try:
                if append.job is None:
                    raise TypeError("an append without a job cannot go to the writer process")
                encoded.append(encode_json(append.job))
            except (TypeError, ValueError) as error:
                outcomes[index] = error
            else:
                sent.append(index)
        if not encoded:
            return succeed(outcomes)
        try:
            child = self._child or self._spawn()
        except OSError as error:
            return fail(error)

        def merged(answers: list[Any]) -> list[Any]:
            for index, outcome in zip(sent, answers, strict=True):
                outcomes[index] = outcome
            return outcomes

        return child.commit(encoded).addCallback(merged)

    def stop(self) -> Deferred:
        """Close the child's stdin (it finishes what it has, then exits); kill it if it has
        not exited after ``stop_seconds``. Fires once it is gone."""
        child = self._child
        if child is None or child.transport is None:
            return succeed(None)
        child.stopping = True
        self._child = None   # it has nothing in flight (see flush); a later commit: a new one
        child.transport.closeStdin()
        killer = self._reactor.callLater(self._stop_seconds, self._kill, child)

        def gone(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            return result

        return child.ended.addBoth(gone)

    def _kill(self, child: _WriterProtocol) -> None:
        try:
            child.transport.signalProcess("KILL")   # type: ignore[union-attr]
        except ProcessExitedAlready:
            pass

    def _spawn(self) -> _WriterProtocol:
        child = _WriterProtocol(self._ended)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env[PARENT_PID_ENV] = str(os.getpid())
        # -P: the current directory is not put first on sys.path; PYTHONPATH decides.
        self._reactor.spawnProcess(child, self._executable,
                                   [self._executable, "-P", "-m", self._module], env=env)
        self._child = child
        return child

    def _ended(self, child: _WriterProtocol) -> None:
        if self._child is child:
            self._child = None
