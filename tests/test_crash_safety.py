"""Crash safety of the real daemon (``twistd moltbot-gw`` in a subprocess, its model upstream
the benchmarks' fake in another subprocess, everything on 127.0.0.1):

* ``kill -9`` with 100 streamed chat turns (each its own new ``user`` session) partly done,
  partly in flight: after a restart on the same state dir every ``sessions.json`` parses,
  every transcript loads with at most a torn last line skipped, and every turn whose client
  received ``data: [DONE]`` is in its transcript (user message + assistant reply, status ok).
* SIGTERM with streams in flight: new requests on a kept-alive connection get 503 with
  Retry-After, new connections are refused once the port is closed, the streams finish
  (``[DONE]``) within the grace period, and the daemon exits 0.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from moltbot_gw.sessions.index import load_index_document
from moltbot_gw.sessions.transcript import read_transcript

from .support.daemon import TOKEN, GatewayDaemon
from .support.raw_http import Response, request

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"


# --- the fake upstream (benchmarks/upstream.py) in its own process --------------------------

class Upstream:
    def __init__(self, slow_interval: float):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "upstream.py"), "--port", "0",
             "--slow-interval", str(slow_interval)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True)
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def upstream():
    up = Upstream(slow_interval=0.05)
    yield up
    up.stop()


def daemon_config(up: Upstream, grace: float = 10.0) -> dict:
    """Agent ``main`` (default) streams 10 chunks ``slow_interval`` apart; ``fast`` at once."""
    base = f"http://{HOST}:{up.port}"
    return {"gateway": {"shutdownGraceSeconds": grace,
                        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
                        # the "100 clients" here all connect from 127.0.0.1: one client to
                        # the per-client fairness limit, which is not what this file tests
                        "limits": {"perClientConcurrency": 256}},
            "models": {"providers": {
                "slow": {"api": "openai-completions", "baseUrl": base + "/slow/v1"},
                "fast": {"api": "openai-completions", "baseUrl": base + "/v1"}}},
            "agents": {"defaults": {"maxConcurrent": 256},
                       "list": [{"id": "main", "default": True, "model": "slow/m"},
                                {"id": "fast", "model": "fast/m"}]}}


# --- streaming clients, one thread each -----------------------------------------------------

class Stream:
    """One streamed chat turn on its own connection, read to the end."""

    def __init__(self, port: int, index: int, user: Optional[str], model: str = "moltbot:main",
                 sock: Optional[socket.socket] = None):
        self.port = port
        self.index = index
        self.user = user
        self.prompt = f"prompt number {index} for {user}"
        self.model = model
        self.sock = sock
        self.raw = b""
        self.error: Optional[str] = None
        self.started = threading.Event()      # first SSE event received
        self.finished = threading.Event()     # the connection ended (any way)
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def status(self) -> Optional[int]:
        parts = self.raw.split(b"\r\n", 1)[0].split(b" ")
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    @property
    def done(self) -> bool:
        """The client was told the turn completed."""
        return self.status == 200 and b"data: [DONE]" in self.raw

    def start(self, delay: float = 0.0) -> "Stream":
        self.delay = delay
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            time.sleep(self.delay)
            body = {"model": self.model, "stream": True,
                    "messages": [{"role": "user", "content": self.prompt}]}
            if self.user is not None:
                body["user"] = self.user
            data = json.dumps(body).encode()
            head = (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
            sock = self.sock or socket.create_connection((HOST, self.port), timeout=30)
            sock.settimeout(30)
            with sock:
                sock.sendall(head + data)
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    self.raw += chunk
                    if b"data: " in self.raw:
                        self.started.set()
        except OSError as error:
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.finished.set()


def wait_until(condition, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


# --- what is on disk ------------------------------------------------------------------------

def inspect_state(state_dir: Path) -> dict:
    """Parse every sessions.json and load every transcript the way the gateway does."""
    report = {"sessions_files": 0, "entries": {}, "transcripts": {}, "skipped": 0, "torn": 0,
              "bad_files": []}
    for sessions_dir in sorted(state_dir.glob("agents/*/sessions")):
        report["sessions_files"] += 1
        if (sessions_dir / "sessions.json").exists():
            json.loads((sessions_dir / "sessions.json").read_text("utf-8"))   # must parse
        document = load_index_document(sessions_dir, sessions_dir.parent.name)  # must load
        for key, entry in document.items():
            report["entries"][key] = (sessions_dir, entry["sessionId"])
    for transcript in sorted(state_dir.glob("agents/*/sessions/*.jsonl")):
        contents = read_transcript(transcript)                   # must load
        report["transcripts"][transcript] = contents
        report["skipped"] += contents.skipped_lines
        report["torn"] += contents.torn_last_line
        if contents.skipped_lines > 1 or (contents.skipped_lines and not contents.torn_last_line):
            report["bad_files"].append(str(transcript))
    return report


def turn_in_transcript(report: dict, agent: str, stream: Stream) -> bool:
    found = report["entries"].get(f"agent:{agent}:openai-user:{stream.user}")
    if found is None:
        return False
    sessions_dir, session_id = found
    contents = report["transcripts"].get(sessions_dir / f"{session_id}.jsonl")
    if contents is None:
        return False
    records = [r for r in contents.records if r.get("type") == "message"]
    for i, record in enumerate(records[:-1]):
        reply = records[i + 1]
        if (record.get("role") == "user" and record.get("content") == stream.prompt
                and reply.get("role") == "assistant" and reply.get("status") == "ok"
                and reply.get("runId") == record.get("runId") and reply.get("content")):
            return True
    return False


# --- the tests ------------------------------------------------------------------------------

def test_kill_9_mid_stream_loses_no_acknowledged_turn(tmp_path, upstream):
    daemon = GatewayDaemon(tmp_path / "gw", daemon_config(upstream))
    port = daemon.start()
    try:
        # 100 clients, each a new session; started 15 ms apart, each stream ~0.5 s long,
        # so at the kill some are done, some streaming, some not yet connected.
        streams = [Stream(port, i, f"crash-user-{i:03d}") for i in range(100)]
        for i, stream in enumerate(streams):
            stream.start(delay=i * 0.015)

        def mid_way():
            done = sum(s.done for s in streams)
            streaming = sum(s.started.is_set() and not s.finished.is_set() for s in streams)
            return done >= 25 and streaming >= 10

        assert wait_until(mid_way, timeout=30), [(s.status, s.error) for s in streams]
        daemon.kill()
        killed_at = time.monotonic()
        for stream in streams:
            stream.finished.wait(timeout=35)
        acknowledged = [s for s in streams if s.done]
        interrupted = [s for s in streams if s.started.is_set() and not s.done]
        assert all(s.finished.is_set() for s in streams)
    finally:
        daemon.kill()

    report = inspect_state(daemon.state_dir)
    missing = [s.user for s in acknowledged if not turn_in_transcript(report, "main", s)]
    print(f"\nkill -9: {len(acknowledged)} turns acknowledged ([DONE]), "
          f"{len(acknowledged) - len(missing)} found in transcripts; {len(interrupted)} streams "
          f"cut mid-way; {len(report['transcripts'])} transcripts, "
          f"{report['sessions_files']} sessions.json, {len(report['entries'])} entries; "
          f"skipped lines {report['skipped']} (torn last lines {report['torn']})")
    assert report["bad_files"] == []
    assert missing == []
    assert time.monotonic() - killed_at < 40

    # The restarted daemon reads the same state: the old sessions continue.
    port = daemon.start()
    try:
        again = [Stream(port, 1000 + i, s.user).start()
                 for i, s in enumerate(acknowledged[:5] + interrupted[:5])]
        for stream in again:
            assert stream.finished.wait(timeout=20)
            assert stream.done, (stream.raw[-500:], stream.error)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    report = inspect_state(daemon.state_dir)
    assert report["bad_files"] == []
    # each continued session holds its old turn (if acknowledged) and the new one
    assert all(turn_in_transcript(report, "main", s) for s in again + acknowledged)
    log = daemon.log_text()
    assert "Unhandled Error" not in log, log[-3000:]


def _keepalive_connection(port: int) -> socket.socket:
    """A connection that has answered one request and stays open for the next."""
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    raw = b""
    while b"\r\n\r\n" not in raw or not raw.endswith(b"}"):
        chunk = sock.recv(4096)
        assert chunk, raw
        raw += chunk
    assert raw.startswith(b"HTTP/1.1 200"), raw
    return sock


def _read_response(sock: socket.socket) -> Response:
    import http.client

    response = http.client.HTTPResponse(sock)
    response.begin()
    return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())


def test_sigterm_drains_streams_refuses_new_requests_and_exits_zero(tmp_path):
    up = Upstream(slow_interval=0.2)            # streams of ~2 s
    try:
        grace = 10.0
        daemon = GatewayDaemon(tmp_path / "gw", daemon_config(up, grace=grace))
        port = daemon.start()
        try:
            idle = _keepalive_connection(port)
            streams = [Stream(port, i, f"term-user-{i}" if i % 2 else None).start()
                       for i in range(10)]
            assert wait_until(lambda: all(s.started.is_set() for s in streams), timeout=15)
            daemon.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.3)
            # a new request on a kept-alive connection: 503 + Retry-After
            idle.sendall((f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                          f"Authorization: Bearer {TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}"
                          ).encode())
            refused = _read_response(idle)
            idle.close()
            assert refused.status == 503, refused
            assert refused.headers.get("retry-after"), refused
            assert refused.json()["error"]["code"] == "shutting_down"
            # a new connection: refused (the port is closed)
            with pytest.raises(OSError):
                late = socket.create_connection((HOST, port), timeout=5)
                try:
                    late.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    if not late.recv(100):
                        raise ConnectionResetError("closed without an answer")
                finally:
                    late.close()
            code = daemon.proc.wait(timeout=grace + 10)
            stopped_after = time.monotonic() - signalled
            for stream in streams:
                assert stream.finished.wait(timeout=5)
            assert [s.done for s in streams] == [True] * len(streams), \
                [(s.status, s.error, s.raw[-200:]) for s in streams]
            assert code == 0, daemon.log_text()[-3000:]
            assert stopped_after < grace
            print(f"\nSIGTERM: {len(streams)} in-flight streams finished with [DONE]; "
                  f"kept-alive request got {refused.status} Retry-After "
                  f"{refused.headers['retry-after']}; exit {code} after {stopped_after:.2f} s")
        finally:
            daemon.kill()
        report = inspect_state(daemon.state_dir)
        assert report["skipped"] == 0
        assert all(turn_in_transcript(report, "main", s) for s in streams if s.user)
    finally:
        up.stop()
