"""Memory under anonymous ``POST /v1/responses`` calls: does the daemon stay flat?

Starts ``twistd moltbot-gw`` as a child (127.0.0.1 only, its own state dir) with the
Responses endpoint enabled and one agent on ``builtin/echo`` (no upstream: only the
gateway's own cost is measured), then makes ``--calls`` (default 100,000) non-streamed
anonymous calls (no ``user``, no session header) from ``--concurrency`` keep-alive
connections. Every ``--chain``-th call of a worker starts a new conversation; the others
continue the worker's previous response with ``previous_response_id`` (anonymous chains
live in the bounded response index, not in sessions).

Every ``--sample-every`` calls it samples the daemon's RSS (/proc). At the end it prints the
series, the growth after warm-up (the first ``--warmup`` fraction of the calls, by default
20 %: longer than it takes to fill the index's default 10,000 entries), the failures, and
the sessions on disk (session files and ``sessions.json`` entries; anonymous calls must
leave none). PASS needs growth after warm-up < ``--max-growth`` % (default 10), no failed
call and no session on disk.

    python benchmarks/responses_memory.py                  # 100,000 calls
    python benchmarks/responses_memory.py --calls 20000 --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import HOST, TOKEN, TWISTD, rss_kb  # noqa: E402

PATH = "/v1/responses"


def gateway_config() -> dict:
    return {
        "gateway": {"port": 0, "bind": "loopback", "auth": {"mode": "token"},
                    "http": {"endpoints": {"responses": {"enabled": True}}}},
        "agents": {"list": [{"id": "main", "default": True, "model": "builtin/echo"}]},
    }


def start_gateway(workdir: Path) -> benchlib.Server:
    gwdir = workdir / "gateway"
    gwdir.mkdir(parents=True, exist_ok=True)
    config_path = gwdir / "bench.json5"
    config_path.write_text(json.dumps(gateway_config(), indent=2))
    log = gwdir / "gateway.log"
    with open(log, "wb") as f:
        proc = benchlib.CHILDREN.spawn(
            TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--config", str(config_path),
                      "--port", "0"],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=benchlib.gateway_env(gwdir / "state"), cwd=str(gwdir))
    match = benchlib._wait_for_line(proc, log, r"listening on \S+:(\d+)", 60, "gateway daemon")
    return benchlib.Server("gateway", proc, int(match.group(1)), log,
                           {"state_dir": gwdir / "state"})


class Connection:
    """One keep-alive HTTP/1.1 connection making JSON POSTs one at a time."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, body: dict, timeout: float = 30.0) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port), 10)
        data = json.dumps(body).encode()
        self.writer.write((f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                           f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json"
                           f"\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await asyncio.wait_for(self._chunks(), timeout)
        else:
            length = int(headers.get("content-length", "0"))
            payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload

    async def _chunks(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")      # no trailers are sent
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Load:
    def __init__(self, calls: int, chain: int, sample_every: int, pid: int):
        self.calls = calls
        self.chain = chain
        self.sample_every = sample_every
        self.pid = pid
        self.started = 0
        self.done = 0
        self.failures: dict[str, int] = {}
        self.examples: list[str] = []
        self.samples: list[tuple[int, float, int]] = []     # (calls done, seconds, RSS kB)
        self.t0 = time.monotonic()

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {detail[:300]}")

    def finished_one(self) -> None:
        self.done += 1
        if self.done % self.sample_every == 0 or self.done == self.calls:
            self.samples.append((self.done, time.monotonic() - self.t0, rss_kb(self.pid) or 0))

    async def worker(self, port: int, number: int) -> None:
        connection = Connection(port)
        previous = None
        turn = 0
        try:
            while self.started < self.calls:
                self.started += 1
                body = {"model": "moltbot", "input": f"worker {number} turn {turn} "
                                                     f"call {self.started}"}
                if previous is not None and turn % self.chain != 0:
                    body["previous_response_id"] = previous
                try:
                    status, payload = await connection.post(body)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                        ValueError) as error:
                    connection.close()
                    self.fail("socket", f"{type(error).__name__}: {error}")
                    previous, turn = None, 0
                else:
                    if status == 200:
                        previous = json.loads(payload)["id"]
                        turn += 1
                    else:
                        self.fail(f"status {status}", payload.decode("utf-8", "replace"))
                        previous, turn = None, 0
                self.finished_one()
        finally:
            connection.close()


def sessions_on_disk(state_dir: Path) -> tuple[int, int]:
    """(files in the agents' session folders, entries of their sessions.json files)."""
    files = entries = 0
    for folder in state_dir.glob("agents/*/sessions"):
        for path in folder.iterdir():
            files += 1
            if path.name == "sessions.json":
                try:
                    entries += len(json.loads(path.read_text()))
                except ValueError:
                    pass
    return files, entries


def report(load: Load, warmup: float, sessions: tuple[int, int], max_growth: float,
           elapsed: float) -> dict:
    print(f"\n{'calls':>8} {'seconds':>8} {'RSS MB':>8}")
    for done, seconds, kb in load.samples:
        print(f"{done:>8} {seconds:>8.1f} {kb / 1024:>8.1f}")
    after = [s for s in load.samples if s[0] >= load.calls * warmup] or load.samples[-1:]
    base_kb, last_kb = after[0][2], load.samples[-1][2]
    peak_kb = max(s[2] for s in after)
    growth = 100.0 * (last_kb - base_kb) / base_kb if base_kb else 0.0
    failed = sum(load.failures.values())
    files, entries = sessions
    ok = growth < max_growth and failed == 0 and files == 0 and entries == 0
    print(f"\n{load.done} calls in {elapsed:.0f} s ({load.done / elapsed:.0f}/s)")
    print(f"RSS after warm-up ({after[0][0]} calls): {base_kb / 1024:.1f} MB; "
          f"last: {last_kb / 1024:.1f} MB; peak after warm-up: {peak_kb / 1024:.1f} MB; "
          f"growth after warm-up: {growth:+.1f} %")
    print(f"failed calls: {failed} {load.failures or ''}")
    for example in load.examples:
        print("  " + example)
    print(f"sessions on disk: {files} files, {entries} sessions.json entries")
    print("PASS" if ok else "FAIL")
    return {"calls": load.done, "seconds": elapsed, "samples": load.samples,
            "rss_after_warmup_kb": base_kb, "rss_last_kb": last_kb, "rss_peak_kb": peak_kb,
            "growth_percent": growth, "failures": load.failures, "session_files": files,
            "session_entries": entries, "pass": ok}


async def drive(port: int, load: Load, concurrency: int) -> None:
    await asyncio.gather(*(load.worker(port, n) for n in range(concurrency)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--chain", type=int, default=3,
                        help="turns per anonymous conversation (1: no previous_response_id)")
    parser.add_argument("--sample-every", type=int, default=5000)
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="fraction of the calls before the growth baseline")
    parser.add_argument("--max-growth", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    benchlib.install_signal_handlers()
    try:
        with benchlib.workdir(args.keep) as work:
            gateway = start_gateway(work)
            try:
                load = Load(args.calls, max(1, args.chain), args.sample_every, gateway.pid)
                load.samples.append((0, 0.0, gateway.rss_kb() or 0))
                started = time.monotonic()
                asyncio.run(drive(gateway.port, load, args.concurrency))
                elapsed = time.monotonic() - started
                sessions = sessions_on_disk(gateway.extra["state_dir"])
                figures = report(load, args.warmup, sessions, args.max_growth, elapsed)
            finally:
                benchlib.CHILDREN.stop(gateway.proc)
            if args.keep:
                print(f"kept {work}")
    finally:
        benchlib.CHILDREN.stop_all()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if figures["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
