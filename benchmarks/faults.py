"""The upstream fault matrix: what a client of the gateway gets when the model provider
misbehaves, and how long it takes — then proof that nothing leaked (active runs, upstream
connections, open file descriptors).

    python benchmarks/faults.py            # prints the table; exit 1 if a row is wrong

Everything runs in one process on 127.0.0.1: a gateway (GatewayService on port 0) and the
scriptable fake OpenAI upstream of the test suite. Not part of the test suite (the same
faults are asserted there one by one); this prints them side by side.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import treq  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

from moltbot_gw.config import parse_config, with_overrides  # noqa: E402
from moltbot_gw.service import GatewayService  # noqa: E402
from tests.fakes.upstream import FakeOpenAI  # noqa: E402

TOKEN = "fault-matrix-token"
IDLE_TIMEOUT = 1.0

# (fault, script for the fake upstream, stream?, what the client must get)
FAULTS = [
    ("stall before headers", dict(stall_before_headers=30), False, "504"),
    ("stall before headers (stream)", dict(stall_before_headers=30), True, "504"),
    ("stall mid-stream", dict(text="a b c d", stall_after=1), True, "200 + error frame"),
    ("5xx", dict(status=503, error="overloaded"), False, "502"),
    ("429 with Retry-After", dict(status=429, error="slow down",
                                  headers={"Retry-After": "7"}), False, "429 Retry-After: 7"),
    ("400", dict(status=400, error="bad request"), False, "400"),
    ("reset mid-stream", dict(text="a b c d", drop_after=1), True, "200 + error frame"),
    ("garbage SSE", dict(text="a b", malformed=True), True, "200 + error frame"),
    ("truncated SSE (no end)", dict(text="a b", finish_reason=None, done=False), True,
     "200 + error frame"),
    ("closed before answering", dict(close_before_headers=True), False, "502"),
    ("HTML error page", dict(status=502, error_body=b"<html>bad gateway</html>"), False, "502"),
    # a reply that never ends: cut off at agents.defaults.maxReplyChars (2,000,000) when
    # streamed, at the 32 MB cap on a JSON answer when not
    ("endless reply (stream)", dict(text="y", endless=True), True, "200 + error frame"),
    ("endless reply (JSON)", dict(text="y", endless=True), False, "502"),
]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def outcome(code: int, headers, body: bytes) -> str:
    if code == 200 and b"text/event-stream" in (headers.getRawHeaders(b"content-type") or [b""])[0]:
        frames = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
        errors = [f for f in frames if f.startswith(b'{"error"')]
        if errors and frames[-1] == b"[DONE]":
            return "200 + error frame"
        return "200 stream" if frames[-1:] == [b"[DONE]"] else "200 broken stream"
    if code == 429:
        retry = (headers.getRawHeaders(b"retry-after") or [b"-"])[0].decode("latin-1")
        return f"429 Retry-After: {retry}"
    return str(code)


async def main(reactor) -> None:
    up = await FakeOpenAI.start(reactor)
    state = Path(tempfile.mkdtemp(prefix="faults-"))
    raw = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
           "models": {"providers": {"up": {"api": "openai-completions", "baseUrl": up.base_url,
                                           "idleTimeoutSeconds": IDLE_TIMEOUT}}},
           "agents": {"list": [{"id": "main", "model": "up/fault-model"}]}}
    config = with_overrides(parse_config(raw, env={"CLAWDBOT_GATEWAY_TOKEN": TOKEN},
                                         state_dir=state), port=0)
    gateway = GatewayService(config, reactor)
    gateway.startService()
    port = (await gateway.when_listening()).getHost().port
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    warm_up = json.dumps({"model": "moltbot", "messages": [{"role": "user", "content": "hi"}]})
    await (await http.post(url, warm_up.encode(), headers=headers)).content()
    await gateway.providers.close()  # start from an empty upstream pool
    await task.deferLater(reactor, 0.2, lambda: None)
    fds_before = open_fds()
    rows, wrong = [], 0
    for name, script, stream, expected in FAULTS:
        up.script(**script)
        body = json.dumps({"model": "moltbot", "stream": stream,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        started = time.monotonic()
        response = await http.post(url, body, headers=headers)
        content = await response.content()
        elapsed = time.monotonic() - started
        got = outcome(response.code, response.headers, content)
        traceback = b"Traceback" in content
        ok = got == expected and not traceback
        wrong += not ok
        rows.append((name, expected, got, elapsed, ok))
    await task.deferLater(reactor, 0.2, lambda: None)  # let closed connections settle
    active_runs = len(gateway.runner.active)
    await gateway.providers.close()  # idle keep-alive connections are not leaks
    await task.deferLater(reactor, 0.2, lambda: None)
    upstream_open = up.open_connections
    fds_after = open_fds()
    await pool.closeCachedConnections()
    await gateway.stopService()
    await up.stop()

    width = max(len(r[0]) for r in rows)
    print(f"{'fault'.ljust(width)} | {'expected':18} | {'client got':18} | time    | ok")
    print("-" * (width + 56))
    for name, expected, got, elapsed, ok in rows:
        print(f"{name.ljust(width)} | {expected:18} | {got:18} | {elapsed:5.2f} s | "
              f"{'yes' if ok else 'NO'}")
    print(f"\nidle timeout {IDLE_TIMEOUT:.1f} s; after the matrix: active runs {active_runs}, "
          f"upstream connections open {upstream_open}, open fds {fds_before} -> {fds_after}")
    leaked = active_runs != 0 or upstream_open != 0 or fds_after > fds_before
    print("RESULT:", "PASS" if not wrong and not leaked else "FAIL")
    if wrong or leaked:
        raise SystemExit(1)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
