"""Group commit of transcript appends (issue #16): concurrent turns share a commit, and no
turn is acknowledged before the fsync that covers it. Real files in tmp_path; the worker
thread is driven by hand where the order of events matters."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred

from moltbot_gw.sessions import group_commit
from moltbot_gw.sessions.group_commit import GroupCommitter
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.transcript import append_records, read_transcript


class HandDrivenThread:
    """Stands in for the thread pool: runs a queued call only when the test says so."""

    def __init__(self):
        self.calls: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, function, *args):
        done: Deferred = Deferred()
        self.calls.append((done, function, args))
        return done

    def run_next(self):
        done, function, args = self.calls.pop(0)
        done.callback(function(*args))


class FsyncLog:
    """An fsync that records which file it synced and what was acknowledged at that time."""

    def __init__(self, acknowledged, fail_for=None):
        self.synced: list[str] = []
        self.acknowledged = acknowledged
        self.fail_for = fail_for
        self.acknowledged_at_sync: list[set] = []

    def __call__(self, fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name == self.fail_for:
            raise OSError(5, "Input/output error")
        self.synced.append(name)
        self.acknowledged_at_sync.append(set(self.acknowledged))
        os.fsync(fd)


def appender(path: Path, text: str):
    return lambda: append_records(path, [{"type": "message", "content": text}], sync=False)


def test_appends_queued_during_a_commit_share_the_next_and_fire_only_after_its_fsyncs(
        tmp_path):
    acknowledged: list[str] = []
    thread = HandDrivenThread()
    fsync = FsyncLog(acknowledged)
    committer = GroupCommitter(thread, fsync)
    files = [tmp_path / f"s{n}.jsonl" for n in range(4)]

    def submit(path, text):
        committer.submit(path, appender(path, text)).addCallback(
            lambda _: acknowledged.append(text))

    submit(files[0], "first")            # a lone turn starts a commit at once
    assert len(thread.calls) == 1
    for n in range(16):                  # these arrive while it runs
        submit(files[n % 4], f"t{n}")
    assert len(thread.calls) == 1 and acknowledged == []

    thread.run_next()                    # commit 1: only "first"
    assert acknowledged == ["first"] and fsync.synced == ["s0.jsonl"]
    assert len(thread.calls) == 1        # commit 2 took all 16 queued turns

    done, function, args = thread.calls.pop(0)
    outcome = function(*args)            # the worker pass: written and fsynced ...
    assert acknowledged == ["first"]     # ... but nothing acknowledged before it returns
    assert sorted(fsync.synced[1:]) == [path.name for path in files]   # 4 fsyncs, 16 turns
    assert fsync.acknowledged_at_sync == [set()] + [{"first"}] * 4
    done.callback(outcome)
    assert acknowledged == ["first"] + [f"t{n}" for n in range(16)]
    assert [r["content"] for r in read_transcript(files[1]).records] == [
        "t1", "t5", "t9", "t13"]
    assert thread.calls == []            # idle: nothing waits on a timer


def test_a_failed_fsync_fails_only_the_turns_it_would_have_covered(tmp_path):
    thread = HandDrivenThread()
    committer = GroupCommitter(thread, FsyncLog([], fail_for="bad.jsonl"))
    good = committer.submit(tmp_path / "good.jsonl", appender(tmp_path / "good.jsonl", "g"))
    bad = committer.submit(tmp_path / "bad.jsonl", appender(tmp_path / "bad.jsonl", "b"))
    settled = committer.settled()
    thread.run_next()
    thread.run_next()
    assert good.result > 0
    with pytest.raises(OSError):
        bad.result.raiseException()
    bad.addErrback(lambda _: None)
    assert settled.called


@pytest_twisted.ensureDeferred
async def test_concurrent_turns_of_a_store_take_fewer_fsyncs_than_turns(tmp_path,
                                                                         monkeypatch):
    synced: list[str] = []
    real_fsync = os.fdatasync      # what the group commit syncs appends with

    def counting_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    store = SessionStore(tmp_path)
    keys = [f"agent:main:user-{n}" for n in range(4)]
    for key in keys:                      # existing sessions: a turn touches its transcript
        await store.record_turn(key, [{"type": "message", "role": "user", "content": "hi"}])
    monkeypatch.setattr(group_commit, "_DATASYNC", counting_fsync)
    turns = [store.record_turn(keys[n % 4], [{"type": "message", "role": "user",
                                                "content": f"q{n}"}]) for n in range(16)]
    await defer.gatherResults(turns, consumeErrors=True)
    transcript_syncs = [path for path in synced if path.endswith(".jsonl")]
    assert 0 < len(transcript_syncs) < 16
    for n, key in enumerate(keys):
        history = [r["content"] for r in await store.load_history(key)
                   if r.get("type") == "message"]
        assert history == ["hi"] + [f"q{m}" for m in range(n, 16, 4)]
    monkeypatch.setattr(group_commit, "_DATASYNC", real_fsync)
    await store.flush()


def test_turns_submitted_by_acknowledged_turns_never_start_a_second_commit_at_once(tmp_path):
    thread = HandDrivenThread()
    committer = GroupCommitter(thread, FsyncLog([]))
    path = tmp_path / "s.jsonl"
    follow_ups = []

    def next_turn(_, text):       # a client that sends its next turn once acknowledged
        follow_ups.append(committer.submit(path, appender(path, text)))

    committer.submit(path, appender(path, "z"))
    committer.submit(path, appender(path, "a")).addCallback(next_turn, "c")
    committer.submit(path, appender(path, "b")).addCallback(next_turn, "d")
    thread.run_next()             # "z"; "a" and "b" queued behind it ...
    thread.run_next()             # ... commit together; acknowledging "a" starts "c"
    assert len(thread.calls) == 1  # while "d" waits for it, not in a commit of its own
    thread.run_next()
    thread.run_next()
    assert all(done.called for done in follow_ups)
    assert [r["content"] for r in read_transcript(path).records] == ["z", "a", "b", "c", "d"]
