"""Soak test: a steady mixed load on one gateway daemon for a long time, watching for leaks.

Starts the fast fake upstream and ``twistd moltbot-gw`` as children (127.0.0.1 only), then
drives, for ``--minutes`` (default 20; ``--quick``: 1):

* HTTP workers, one connection per request: non-streamed and streamed chat turns, stateless
  and with a ``user`` (conversations of at most ``--turns`` turns, then a new user), and one
  request in ten streams from the slow agent and is dropped by the client after its first
  event (a deliberate mid-stream disconnect);
* WebSocket clients that connect (``connect`` frame, docs/ws-protocol.rst), call ``health``
  and ``status``, stay a moment and leave;
* a monitor (its own WebSocket) that every ``--interval`` s (default 10) samples the daemon's
  RSS and open fds (/proc), ``activeRuns`` (WS ``status``) and the reactor lag (the round
  trip of a WS ``health`` call).

At the end it prints the series, first / after warm-up (min(2 min, 20 %)) / last, the RSS
growth after warm-up, the failures (non-2xx, streams without ``[DONE]``, socket errors; the
deliberate disconnects are not failures) and PASS/FAIL against: RSS growth < 10 %, open fds
and active runs back to their values before the load once it stops (fds within a slack for
idle pooled upstream connections), no failed request.

    python benchmarks/soak.py --quick
    python benchmarks/soak.py --minutes 20 --json soak.json
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import HOST, TOKEN, fd_count, rss_kb, ws_encode, ws_open, ws_read_frame  # noqa: E402

PATH = "/v1/chat/completions"
FD_SLACK = 20          # idle pooled upstream connections may outlive the load


class Stats:
    def __init__(self):
        self.requests = 0
        self.ok = 0
        self.disconnects = 0
        self.ws_sessions = 0
        self.failures: dict[str, int] = {}
        self.examples: list[str] = []

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {detail[:300]}")

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def _status(raw: bytes) -> int:
    parts = raw.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def http_chat(port: int, body: dict, *, drop_after_first_event: bool = False,
                    timeout: float = 30.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode()
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    try:
        writer.write(head + data)
        if drop_after_first_event:
            raw = b""
            while b"data: " not in raw:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
                if not chunk:
                    break
                raw += chunk
            writer.transport.abort()
            return _status(raw), raw
        raw = await asyncio.wait_for(reader.read(-1), timeout)
        return _status(raw), raw
    finally:
        writer.close()


async def http_worker(port: int, stats: Stats, stop: asyncio.Event, worker: int,
                      turns: int, pause: float) -> None:
    users = itertools.count()
    user = f"soak-w{worker}-u{next(users)}"
    user_turns = 0
    for i in itertools.count():
        if stop.is_set():
            return
        kind = i % 10
        body = {"model": "moltbot:main", "messages": [{"role": "user",
                                                      "content": f"soak {worker} {i}"}]}
        if kind in (3, 4, 7, 8):
            body["stream"] = True
        if kind in (5, 6, 7, 8):
            body["user"] = user
            user_turns += 1
            if user_turns >= turns:
                user, user_turns = f"soak-w{worker}-u{next(users)}", 0
        drop = kind == 9
        if drop:
            body.update(model="moltbot:slow", stream=True)
        try:
            status, raw = await http_chat(port, body, drop_after_first_event=drop)
        except (OSError, asyncio.TimeoutError) as error:
            stats.requests += 1
            stats.fail("socket", f"{body} {type(error).__name__}: {error}")
            continue
        stats.requests += 1
        if drop:
            if status == 200:
                stats.disconnects += 1
            else:
                stats.fail(f"status {status}", raw[-300:].decode("latin-1"))
        elif status != 200:
            stats.fail(f"status {status}", raw[-300:].decode("latin-1"))
        elif body.get("stream") and b"data: [DONE]" not in raw:
            stats.fail("stream without [DONE]", raw[-300:].decode("latin-1"))
        else:
            stats.ok += 1
        if pause:
            await asyncio.sleep(pause)


class WSClient:
    """An authenticated WS connection that can call methods one at a time."""

    def __init__(self, conn):
        self.conn = conn
        self.ids = itertools.count(2)

    @classmethod
    async def open(cls, port: int) -> "WSClient":
        conn, info = await ws_open(port, TOKEN)
        if conn is None:
            raise ConnectionError(f"ws connect failed: {info}")
        return cls(conn)

    async def call(self, method: str, timeout: float = 10.0) -> dict:
        request_id = str(next(self.ids))
        self.conn.writer.write(ws_encode(json.dumps(
            {"type": "req", "id": request_id, "method": method, "params": {}}).encode()))

        async def answer():
            while True:
                opcode, payload = await ws_read_frame(self.conn.reader)
                if opcode == 0x9:
                    self.conn.writer.write(ws_encode(payload, 0xA))
                elif opcode == 0x8:
                    raise ConnectionError("closed by the gateway")
                elif opcode == 0x1:
                    frame = json.loads(payload)
                    if frame.get("type") == "res" and frame.get("id") == request_id:
                        if not frame.get("ok"):
                            raise RuntimeError(f"{method}: {frame.get('error')}")
                        return frame.get("payload") or {}

        return await asyncio.wait_for(answer(), timeout)

    async def close(self) -> None:
        try:
            self.conn.writer.write(ws_encode(b"\x03\xe8", 0x8))   # close, 1000
            await asyncio.wait_for(self.conn.writer.drain(), 5)
        except (OSError, asyncio.TimeoutError):
            pass
        self.conn.writer.close()


async def ws_worker(port: int, stats: Stats, stop: asyncio.Event, worker: int) -> None:
    for i in itertools.count():
        if stop.is_set():
            return
        try:
            client = await WSClient.open(port)
            try:
                await client.call("health")
                await client.call("status")
                await asyncio.sleep(0.5 + (i % 5) * 0.5)
            finally:
                await client.close()
            stats.ws_sessions += 1
        except (OSError, ConnectionError, RuntimeError, asyncio.TimeoutError,
                asyncio.IncompleteReadError) as error:
            stats.fail("ws", f"{type(error).__name__}: {error}")
        await asyncio.sleep(0.2)


async def sample(pid: int, monitor: WSClient, t0: float, stats: Stats, last: dict) -> dict:
    started = time.monotonic()
    await monitor.call("health")
    lag_ms = (time.monotonic() - started) * 1000
    status = await monitor.call("status")
    row = {"t_s": round(time.monotonic() - t0), "rss_kb": rss_kb(pid), "fds": fd_count(pid),
           "active_runs": status.get("activeRuns"), "ws_conns": status.get("connections"),
           "lag_ms": round(lag_ms, 1), "requests": stats.requests - last.get("requests", 0),
           "failures": stats.failed}
    last["requests"] = stats.requests
    return row


def print_row(row: dict, header: bool = False) -> None:
    if header:
        print(f"{'t (s)':>6} {'RSS MB':>8} {'fds':>5} {'runs':>5} {'ws':>4} {'lag ms':>7} "
              f"{'req/int':>8} {'fail':>5}", flush=True)
    rss = "?" if row["rss_kb"] is None else f"{row['rss_kb'] / 1024:.1f}"
    print(f"{row['t_s']:>6} {rss:>8} {row['fds']!s:>5} {row['active_runs']!s:>5} "
          f"{row['ws_conns']!s:>4} {row['lag_ms']:>7} {row['requests']:>8} "
          f"{row['failures']:>5}", flush=True)


async def soak(port: int, pid: int, seconds: float, interval: float, http_workers: int,
               ws_workers: int, turns: int, pause: float) -> dict:
    stats = Stats()
    stop = asyncio.Event()
    monitor = await WSClient.open(port)
    t0 = time.monotonic()
    last: dict = {}
    series = [await sample(pid, monitor, t0, stats, last)]
    print_row(series[0], header=True)
    tasks = [asyncio.ensure_future(http_worker(port, stats, stop, w, turns, pause))
             for w in range(http_workers)]
    tasks += [asyncio.ensure_future(ws_worker(port, stats, stop, w)) for w in range(ws_workers)]
    try:
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(min(interval, max(0.0, seconds - (time.monotonic() - t0))))
            series.append(await sample(pid, monitor, t0, stats, last))
            print_row(series[-1])
            if any(t.done() and t.exception() for t in tasks):
                break
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                stats.fail("worker crashed", repr(task.exception()))
    # The load has stopped: wait (bounded) for runs and connections to wind down.
    settle_deadline = time.monotonic() + 30
    while True:
        end = await sample(pid, monitor, t0, stats, last)
        if (end["active_runs"] == 0 and end["ws_conns"] == 1) \
                or time.monotonic() > settle_deadline:
            break
        await asyncio.sleep(1)
    await monitor.close()
    return {"series": series, "end": end, "stats": stats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="1 minute")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--http-workers", type=int, default=6)
    parser.add_argument("--ws-workers", type=int, default=2)
    parser.add_argument("--turns", type=int, default=20, help="turns per user conversation")
    parser.add_argument("--pause", type=float, default=0.01,
                        help="seconds each HTTP worker waits between requests")
    parser.add_argument("--json", help="write the series and verdict here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    minutes = 1.0 if args.quick else args.minutes
    seconds = minutes * 60
    warmup_s = min(120.0, 0.2 * seconds)
    benchlib.install_signal_handlers()
    benchlib.raise_nofile()
    try:
        with benchlib.workdir(args.keep) as work:
            upstream = benchlib.start_upstream(work, slow_interval=0.2)
            gateway = benchlib.start_gateway(work, upstream, max_concurrent=256)
            print(f"soak: {minutes:g} min against pid {gateway.pid} on port {gateway.port}; "
                  f"warm-up {warmup_s:.0f} s; {args.http_workers} HTTP + {args.ws_workers} WS "
                  f"workers; sample every {args.interval:g} s", flush=True)
            result = asyncio.run(soak(gateway.port, gateway.pid, seconds, args.interval,
                                      args.http_workers, args.ws_workers, args.turns,
                                      args.pause))
            alive = gateway.proc.poll() is None
            code = benchlib.CHILDREN.stop(gateway.proc)
            log = gateway.log_path.read_text(errors="replace")
            if args.keep:
                print(f"kept {work}")
    finally:
        benchlib.CHILDREN.stop_all()

    series, end, stats = result["series"], result["end"], result["stats"]
    first = series[0]
    warm = next((row for row in series if row["t_s"] >= warmup_s), series[-1])
    last = series[-1]
    growth = ((last["rss_kb"] - warm["rss_kb"]) / warm["rss_kb"] * 100
              if warm["rss_kb"] and last["rss_kb"] else float("nan"))
    print()
    print(f"{'':14} {'t (s)':>6} {'RSS MB':>8} {'fds':>5} {'runs':>5} {'lag ms':>7}")
    for name, row in (("first", first), ("after warm-up", warm), ("last", last),
                      ("after load", end)):
        print(f"{name:14} {row['t_s']:>6} {row['rss_kb'] / 1024:>8.1f} {row['fds']:>5} "
              f"{row['active_runs']!s:>5} {row['lag_ms']:>7}")
    lags = sorted(row["lag_ms"] for row in series)
    print(f"\nrequests {stats.requests} (ok {stats.ok}, deliberate disconnects "
          f"{stats.disconnects}), WS sessions {stats.ws_sessions}; failures {stats.failed} "
          f"{stats.failures}; lag max {lags[-1]} ms")
    for example in stats.examples:
        print("  e.g.", example)
    tracebacks = log.count("Traceback (most recent call last)")
    print(f"daemon: alive at the end {alive}, exit status after SIGTERM {code}, "
          f"tracebacks in its log {tracebacks}")
    checks = {
        f"RSS growth after warm-up {growth:.1f} % < 10 %": growth < 10,
        f"fds after the load {end['fds']} <= before it {first['fds']} + {FD_SLACK}":
            end["fds"] <= first["fds"] + FD_SLACK,
        f"active runs after the load {end['active_runs']} == 0": end["active_runs"] == 0,
        f"failed requests {stats.failed} == 0": stats.failed == 0,
        "daemon alive, exit 0": alive and code == 0,
    }
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    verdict = all(checks.values())
    print("SOAK", "PASS" if verdict else "FAIL")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "minutes": minutes, "series": series, "end": end, "warmup_s": warmup_s,
            "rss_growth_pct": growth, "requests": stats.requests, "ok": stats.ok,
            "disconnects": stats.disconnects, "ws_sessions": stats.ws_sessions,
            "failures": stats.failures, "checks": checks, "pass": verdict}, indent=2))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
