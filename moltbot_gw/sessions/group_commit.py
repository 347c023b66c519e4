"""Group commit of transcript appends: turns that arrive while a commit is running are written
together by the next one, and each turn is acknowledged only after the fsync that covers it.

A commit is one pass over every append that was waiting (in a worker thread, or in the
daemon's transcript writer process: ``commit_process.py``): each append is written
(unsynced) to its ``<sessionId>.jsonl`` in arrival order, then every file the pass touched is
fsynced, the fsyncs issued from a few threads at once (on ext4 concurrent fsyncs share one
journal commit), and the directory once if the pass created files. Only then do the turns'
Deferreds fire. There is no window timer: a lone turn starts a commit at once; the batch is
whatever arrived while the previous commit ran (natural group commit).

Why not a per-agent write-ahead log with one fsync per batch: acknowledged turns must be in
their transcript files themselves (readers, retention, compaction, delete and the kill -9
tests look there), so a log would still need per-file writes plus replay and checkpoint rules
for compaction/delete; measured on the benchmark machine an fsync costs ~0.2 ms, and the cost
that group commit removes is the per-turn thread round trip and serial fsync, not the fsync
count. Durability is unchanged: nothing is acknowledged before its bytes are fsynced.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from moltbot_gw.sessions.transcript import fsync_directory

FSYNC_THREADS = 4   # fsyncs of one commit issued at once
# Threads start on first use; shared by every agent's commits (each waits for its own).
_FSYNC_POOL = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="transcript-fsync")


@dataclass
class Append:
    """One turn's transcript append, waiting for a commit; ``write`` appends it unsynced
    (and compacts the file first if needed) and returns what the caller gets on success.
    ``job`` describes the same write as JSON (``append_turn``'s arguments by name), for a
    commit run by the transcript writer process (``commit_process.py``)."""

    path: Path
    write: Callable[[], Any]
    job: Optional[dict[str, Any]] = None
    done: Deferred = field(default_factory=Deferred)


# fdatasync: an append's bytes and the new size (what reading them needs) reach the disk, as
# with fsync, without also writing the inode's timestamps: less work per sync
_DATASYNC: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _fsync_path(path: Path, fsync: Callable[[int], None]) -> None:
    """Sync a file by path: any descriptor of the file flushes its data and size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def commit_appends(appends: Sequence[Append],
                   fsync: Optional[Callable[[int], None]] = None) -> list[Any]:
    """Write every append in order, then fsync each touched file once (a few at a time) and
    the directories of created files. Returns, per append, its ``write`` result or the
    exception that kept it from being durable. Blocking: run it in a worker thread."""
    sync = fsync if fsync is not None else _DATASYNC
    outcomes: list[Any] = [None] * len(appends)
    failed: dict[Path, BaseException] = {}
    created_in: set[Path] = set()
    for index, append in enumerate(appends):
        if append.path in failed:   # a later turn must not land after a lost earlier one
            outcomes[index] = failed[append.path]
            continue
        try:
            if not append.path.exists():
                created_in.add(append.path.parent)
            outcomes[index] = append.write()
        except Exception as error:   # noqa: BLE001 - reported to that turn's caller
            failed[append.path] = outcomes[index] = error
    touched = list(dict.fromkeys(a.path for a in appends if a.path not in failed))
    if len(touched) > 1:
        results = list(_FSYNC_POOL.map(_sync_one, touched, [sync] * len(touched)))
    else:
        results = [_sync_one(path, sync) for path in touched]
    for path, sync_error in zip(touched, results, strict=True):
        if sync_error is not None:
            failed[path] = sync_error
    for directory in created_in:
        fsync_directory(directory)
    return [failed.get(append.path, outcome)
            for append, outcome in zip(appends, outcomes, strict=True)]


def _sync_one(path: Path, fsync: Callable[[int], None]) -> Optional[BaseException]:
    try:
        _fsync_path(path, fsync)
    except OSError as error:
        return error
    return None


class GroupCommitter:
    """Queues appends and runs one commit at a time; the next takes all that queued up."""

    def __init__(self, in_thread: Callable[..., Deferred],
                 fsync: Optional[Callable[[int], None]] = None):
        self._in_thread = in_thread
        self._fsync = fsync
        self._queue: list[Append] = []
        self._running: list[Append] = []
        self._waiters: list[tuple[Optional[Path], Deferred]] = []

    def submit(self, path: Path, write: Callable[[], Any],
               job: Optional[dict[str, Any]] = None) -> Deferred:
        """Queue an append; fires with ``write()``'s result once the append is fsynced."""
        append = Append(path if isinstance(path, Path) else Path(path), write, job)
        self._queue.append(append)
        if not self._running:
            self._start()
        return append.done

    def settled(self, path: Optional[Path] = None) -> Deferred:
        """Fires once no append (to ``path``, or at all) is queued or being committed."""
        if not self._busy(path):
            return succeed(None)
        waiter: Deferred = Deferred()
        self._waiters.append((None if path is None else Path(path), waiter))
        return waiter

    def _busy(self, path: Optional[Path]) -> bool:
        pending = self._queue + self._running
        return any(path is None or append.path == path for append in pending)

    def _start(self) -> None:
        self._running, self._queue = self._queue, []
        commit = self._in_thread(commit_appends, self._running, self._fsync)
        commit.addBoth(self._finished)

    def _finished(self, outcome: Any) -> None:
        batch, self._running = self._running, []
        for index, append in enumerate(batch):
            result = outcome if isinstance(outcome, Failure) else outcome[index]
            if isinstance(result, BaseException):
                append.done.errback(Failure(result))
            elif isinstance(result, Failure):
                append.done.errback(result)
            else:
                append.done.callback(result)
        if self._queue and not self._running:   # a callback may have started one
            self._start()
        waiters, self._waiters = self._waiters, []
        for path, waiter in waiters:
            if self._busy(path):
                self._waiters.append((path, waiter))
            else:
                waiter.callback(None)
