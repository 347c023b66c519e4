"""The file store's group commits in the transcript writer child process (issue #16): the
child speaks length-prefixed JSON frames and writes through the same commit code; the store
acknowledges a turn only after the child fsynced it, and a dead child is replaced."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from moltbot_gw.sessions.commit_frames import (
    FrameReader,
    decode_outcome,
    encode_frame,
    encode_outcome,
)
from moltbot_gw.sessions.commit_process import PACKAGE_ROOT, TranscriptWriter, WriterExited
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.transcript import read_transcript, session_header, transcript_path

from .chat_helpers import config
from .support.daemon import TOKEN, GatewayDaemon
from .support.raw_http import request
from .support.waiting import until

COUNTING_CHILD = "tests.support.counting_commit_child"
# Where ``tests`` is importable from, for the child that runs the counting wrapper.
TESTS_ROOT = str(Path(__file__).resolve().parent.parent)


def search_path() -> str:
    return os.pathsep.join(p for p in (PACKAGE_ROOT, TESTS_ROOT, os.environ.get("PYTHONPATH"))
                           if p)


def child_env(fsync_log: Path) -> dict:
    return dict(os.environ, COMMIT_CHILD_FSYNC_LOG=str(fsync_log), PYTHONPATH=search_path())


def run_child(frames: list, fsync_log: Path) -> tuple[list, int, str]:
    """Feed frames to a real child, close its stdin; its answers, exit status and stderr."""
    child = subprocess.run([sys.executable, "-P", "-m", COUNTING_CHILD],
                           input=b"".join(encode_frame(f) for f in frames),
                           capture_output=True, env=child_env(fsync_log), timeout=60)
    return FrameReader().feed(child.stdout), child.returncode, child.stderr.decode()


def job(state_dir: Path, session_id: str, text: str, max_bytes: int = 1 << 20) -> dict:
    sessions_dir = state_dir / "agents" / "main" / "sessions"
    return {"state_dir": str(state_dir), "sessions_dir": str(sessions_dir),
            "session_id": session_id,
            "records": [{"type": "message", "role": "user", "content": text}],
            "header": session_header(session_id, f"agent:main:{session_id}", 1000),
            "max_bytes": max_bytes, "now_ms": 2000}


def contents(state_dir: Path, session_id: str) -> list:
    path = transcript_path(state_dir / "agents" / "main" / "sessions", session_id)
    return [r.get("content", r["type"]) for r in read_transcript(path).records]


def test_the_child_writes_a_frames_appends_in_order_with_headers_and_fsyncs_each_file(
        tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "fsyncs"
    frames = [[job(state, "a", "a1"), job(state, "b", "b1"), job(state, "a", "a2 \ud800 é")],
              [job(state, "b", "b2")]]
    answers, status, stderr = run_child(frames, log)
    assert status == 0 and stderr == ""
    assert len(answers) == 2 and [len(a) for a in answers] == [3, 1]
    outcomes = [decode_outcome(o) for answer in answers for o in answer]
    assert all(isinstance(o, tuple) and o[0] > 0 and o[1] is None for o in outcomes)
    assert contents(state, "a") == ["session", "a1", "a2 \ud800 é"]
    assert contents(state, "b") == ["session", "b1", "b2"]
    synced = [Path(line).name for line in log.read_text().splitlines()]
    assert sorted(synced[:2]) == ["a.jsonl", "b.jsonl"]   # once per file per commit
    assert synced[2:] == ["b.jsonl"]


def test_a_failing_append_fails_only_its_files_turns_and_reports_the_error_kind(tmp_path):
    state = tmp_path / "state"
    sessions = state / "agents" / "main" / "sessions"
    sessions.mkdir(parents=True)
    (sessions / "bad.jsonl").mkdir()              # a transcript that cannot be appended to
    bad_records = dict(job(state, "odd", "x"), records=["not a mapping"])
    frame = [job(state, "bad", "1"), job(state, "good", "g1"), job(state, "bad", "2"),
             bad_records, job(state, "good", "g2")]
    answers, status, stderr = run_child([frame], tmp_path / "fsyncs")
    assert status == 0 and "Traceback" not in stderr
    raw = answers[0]
    assert raw[0]["error"]["type"] == "IsADirectoryError"
    outcomes = [decode_outcome(o) for o in raw]
    assert isinstance(outcomes[0], IsADirectoryError) and outcomes[0].errno == 21
    assert isinstance(outcomes[2], IsADirectoryError)   # a later turn of a lost file too
    assert isinstance(outcomes[3], RuntimeError) and "TypeError" in str(outcomes[3])
    assert "Traceback" not in str(outcomes[3])
    assert isinstance(outcomes[1], tuple) and isinstance(outcomes[4], tuple)
    assert contents(state, "good") == ["session", "g1", "g2"]


def test_the_child_finishes_the_frame_it_has_and_exits_when_its_input_ends(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    whole = encode_frame([job(state, "a", "kept")])
    cut = encode_frame([job(state, "a", "never")])[:10]   # the gateway died mid-frame
    child = subprocess.run([sys.executable, "-P", "-m", COUNTING_CHILD], input=whole + cut,
                           capture_output=True, env=child_env(tmp_path / "log"), timeout=60)
    assert child.returncode == 0
    assert len(FrameReader().feed(child.stdout)) == 1
    assert contents(state, "a") == ["session", "kept"]


def turn(text: str) -> list:
    return [{"type": "message", "role": "user", "content": text}]


async def history(store: SessionStore, key: str) -> list:
    return [r["content"] for r in await store.load_history(key) if r.get("type") == "message"]


@pytest_twisted.ensureDeferred
async def test_a_store_in_child_mode_acknowledges_turns_only_after_the_child_synced_them(
        tmp_path, monkeypatch):
    log = tmp_path / "fsyncs"
    log.touch()
    monkeypatch.setenv("COMMIT_CHILD_FSYNC_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", search_path())
    writer = TranscriptWriter(reactor, module=COUNTING_CHILD)
    store = SessionStore(tmp_path / "state", reactor, writer_process=writer)
    keys = [f"agent:main:user-{n}" for n in range(8)]
    unsynced_at_ack = []

    def acknowledged(entry, n):
        path = transcript_path(tmp_path / "state" / "agents" / "main" / "sessions",
                               entry.session_id)
        if str(path) not in log.read_text().splitlines():
            unsynced_at_ack.append(n)

    turns = []
    for n in range(40):
        d = store.record_turn(keys[n % 8], turn(f"q{n}"))
        turns.append(d.addCallback(acknowledged, n))
    await defer.gatherResults(turns, consumeErrors=True)
    assert unsynced_at_ack == []
    assert writer.pid is not None
    assert f"-m {COUNTING_CHILD}" in " ".join(
        Path(f"/proc/{writer.pid}/cmdline").read_bytes().decode().split("\0"))
    expected = {key: [f"q{m}" for m in range(n, 40, 8)] for n, key in enumerate(keys)}
    assert {key: await history(store, key) for key in keys} == expected
    await store.flush()
    assert writer.pid is None                      # stopped with the store's flush
    reopened = SessionStore(tmp_path / "state", reactor)
    assert {key: await history(reopened, key) for key in keys} == expected


async def recorded_turns(store, key, *texts):
    for text in texts:
        await store.record_turn(key, turn(text))


async def store_after_one_turn(tmp_path):
    """A store whose commits go to a writer process, after turn "one" of agent:main:a: the
    store, its writer and the running child's pid."""
    store = SessionStore(tmp_path, reactor, writer_process=True)
    await recorded_turns(store, "agent:main:a", "one")
    return store, store._writer, store._writer.pid


@pytest_twisted.ensureDeferred
async def test_a_child_killed_between_commits_is_replaced_by_the_next_commit(tmp_path):
    store, writer, first = await store_after_one_turn(tmp_path)
    os.kill(first, signal.SIGKILL)
    await until(lambda: writer.pid is None)
    await recorded_turns(store, "agent:main:a", "two")
    assert writer.pid not in (None, first)
    assert await history(store, "agent:main:a") == ["one", "two"]
    await store.flush()


@pytest_twisted.ensureDeferred
async def test_a_child_killed_during_a_commit_fails_its_turns_and_later_turns_work(tmp_path):
    store, writer, stuck = await store_after_one_turn(tmp_path)
    os.kill(stuck, signal.SIGSTOP)            # the next commit reaches it, unanswered
    lost = store.record_turn("agent:main:a", turn("lost"))
    await until(lambda: pipe_has_data(stuck))
    os.kill(stuck, signal.SIGKILL)
    with pytest.raises(WriterExited, match="the transcript writer process exited"):
        await lost
    await recorded_turns(store, "agent:main:a", "two")
    await recorded_turns(store, "agent:main:b", "first")
    assert await history(store, "agent:main:a") == ["one", "two"]
    assert await history(store, "agent:main:b") == ["first"]
    await store.flush()


def pipe_has_data(pid: int) -> bool:
    """Whether bytes wait unread in the process's stdin pipe (FIONREAD on a dup of it)."""
    import fcntl
    import struct
    import termios
    try:
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        waiting = fcntl.ioctl(fd, termios.FIONREAD, struct.pack("i", 0))
        return struct.unpack("i", waiting)[0] > 0
    finally:
        os.close(fd)


def test_outcomes_cross_as_the_same_kind_of_error():
    error = decode_outcome(json.loads(json.dumps(encode_outcome(PermissionError(13, "no")))))
    assert isinstance(error, PermissionError) and error.errno == 13
    other = decode_outcome(encode_outcome(ValueError("bad value")))
    assert type(other) is RuntimeError and str(other) == "ValueError: bad value"
    assert decode_outcome(encode_outcome((12, None))) == (12, None)


@pytest_twisted.ensureDeferred
async def test_the_gateway_writes_turns_through_its_writer_process_and_stops_it(
        start_gateway, http, state_dir):
    gw = await start_gateway(config())
    writer = gw.service.store._writer
    assert writer is not None and writer.pid is None      # started by the first commit
    for text in ("hello", "again"):
        response = await http.post(
            gw.url + "/v1/chat/completions",
            json.dumps({"model": "moltbot:main", "user": "alice",
                        "messages": [{"role": "user", "content": text}]}).encode(),
            headers={"Content-Type": "application/json", **gw.auth_headers})
        assert response.code == 200
        await response.content()
    pid = writer.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"moltbot_gw.sessions.commit_child" in cmdline
    assert os.getppid() != pid and Path(f"/proc/{pid}/status").read_text().count(
        f"PPid:\t{os.getpid()}") == 1
    await gw.service.stopService()
    assert writer.pid is None and not Path(f"/proc/{pid}").exists()
    transcripts = list((state_dir / "agents" / "main" / "sessions").glob("*.jsonl"))
    assert len(transcripts) == 1
    texts = [r.get("content") for r in read_transcript(transcripts[0]).records
             if r.get("role") == "user"]
    assert texts == ["hello", "again"]


def writer_children(pid: int) -> list[int]:
    """The transcript writer processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"moltbot_gw.sessions.commit_child" in cmdline:
            found.append(int(entry.name))
    return found


def test_the_writer_process_dies_with_a_daemon_killed_by_sigkill(tmp_path):
    daemon = GatewayDaemon(tmp_path / "gw", config())
    port = daemon.start()
    try:
        body = json.dumps({"model": "moltbot:main", "user": "alice",
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        response = request(port, "POST", "/v1/chat/completions",
                           [("Authorization", f"Bearer {TOKEN}"),
                            ("Content-Type", "application/json")], body)
        assert response.status == 200
        children = writer_children(daemon.pid)
        assert len(children) == 1
        daemon.kill()
        deadline = time.monotonic() + 20
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{children[0]}").exists() or zombie(children[0])
    finally:
        daemon.kill()


def zombie(pid: int) -> bool:
    """An exited child not yet reaped (its parent, the test's daemon, is gone: init reaps)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
