"""Turn latency with a large session store (issue 13 acceptance): a gateway whose agent already
holds 100,000 sessions must answer a new user's turn and an existing user's turn in under
50 ms p50, while other clients keep it busy.

Seeds the sessions directly on disk in the store's format (no HTTP), starts the real daemon
under twistd on ``builtin/echo`` (no upstream), and measures non-streaming
``/v1/chat/completions`` turns with ``user`` sessions. Loopback only; a few minutes at most.

    python benchmarks/many_sessions.py [--sessions 100000] [--turns 200] [--load 4] [--keep]
"""
from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402
from benchlib import CHILDREN, HOST, TOKEN, TWISTD, percentile  # noqa: E402

from moltbot_gw.sessions.index import SessionEntry, write_snapshot  # noqa: E402
from moltbot_gw.sessions.transcript import (append_records, session_header,  # noqa: E402
                                            transcript_path)

AGENT = "main"
TRANSCRIPT_TURNS = 20   # history each seeded "existing" user brings to a turn


def user_key(name: str) -> str:
    return f"agent:{AGENT}:openai-user:{name}"


def seed(state_dir: Path, sessions: int, with_transcripts: int) -> float:
    """Write ``sessions`` index entries (the first ``with_transcripts`` with a transcript of
    ``TRANSCRIPT_TURNS`` turns); returns the seconds it took."""
    started = time.monotonic()
    directory = state_dir / "agents" / AGENT / "sessions"
    directory.mkdir(parents=True, mode=0o700)
    now_ms = int(time.time() * 1000)
    entries = []
    for n in range(sessions):
        stamp = now_ms - (sessions - n) * 1000   # spread over the last day or so
        entries.append(SessionEntry(key=user_key(f"seed-{n}"), agent_id=AGENT,
                                    session_id=f"seed{n:08d}", created_at=stamp,
                                    updated_at=stamp))
    write_snapshot(directory / "sessions.json", entries)
    for entry in entries[:with_transcripts]:
        records = []
        for turn in range(TRANSCRIPT_TURNS):
            records.append({"type": "message", "role": "user", "content": f"question {turn}",
                            "runId": "seed", "ts": entry.created_at})
            records.append({"type": "message", "role": "assistant", "status": "ok",
                            "content": f"answer {turn} " + "lorem ipsum " * 20,
                            "runId": "seed", "ts": entry.created_at})
        append_records(transcript_path(directory, entry.session_id), records,
                       header=session_header(entry.session_id, entry.key, entry.created_at))
    return time.monotonic() - started


def start_gateway(workdir: Path, sessions: int) -> benchlib.Server:
    config = {
        "gateway": {"port": 0, "bind": "loopback", "auth": {"mode": "token"},
                    "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
        "agents": {"defaults": {"model": "builtin/echo"}, "list": [{"id": AGENT}]},
        # Room for every seeded session plus the new ones: this measures a full store,
        # not pruning.
        "session": {"maxSessionsPerAgent": sessions * 2},
    }
    config_path = workdir / "many-sessions.json5"
    config_path.write_text(json.dumps(config, indent=2))
    log = workdir / "gateway.log"
    with open(log, "wb") as out:
        proc = CHILDREN.spawn(TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--config",
                                        str(config_path), "--port", "0"],
                              stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                              env=benchlib.gateway_env(workdir / "state"), cwd=str(workdir))
    match = benchlib._wait_for_line(proc, log, r"listening on \S+:(\d+)", 60, "gateway")
    return benchlib.Server("gateway", proc, int(match.group(1)), log)


class Client:
    """One keep-alive HTTP connection sending non-streaming chat turns."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection(HOST, port, timeout=60)

    def turn(self, user: str, text: str) -> float:
        body = json.dumps({"model": f"moltbot:{AGENT}", "user": user,
                           "messages": [{"role": "user", "content": text}]})
        started = time.perf_counter()
        self.connection.request("POST", "/v1/chat/completions", body=body, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
        return elapsed


def background_load(port: int, stop: threading.Event, index: int, counts: list,
                    existing: int) -> None:
    """Turns of existing users, back to back, until told to stop."""
    client = Client(port)
    n = 0
    while not stop.is_set():
        client.turn(f"seed-{(index * 7919 + n) % existing}", f"load {n}")
        n += 1
    counts[index] = n


def measure(port: int, turns: int, existing: int) -> dict[str, list[float]]:
    """Alternate a new user's first turn and an existing user's turn, one at a time."""
    client = Client(port)
    new, old = [], []
    for n in range(turns):
        new.append(client.turn(f"newcomer-{n}", f"hello {n}"))
        old.append(client.turn(f"seed-{(n * 31) % existing}", f"again {n}"))
    return {"new user": new, "existing user": old}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--existing", type=int, default=1000,
                        help="seeded sessions that get a transcript (the ones reused)")
    parser.add_argument("--turns", type=int, default=200, help="measured turns of each kind")
    parser.add_argument("--load", type=int, default=4, help="background clients")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    benchlib.install_signal_handlers()
    with benchlib.workdir(args.keep) as workdir:
        seconds = seed(workdir / "state", args.sessions, args.existing)
        print(f"seeded {args.sessions} sessions ({args.existing} with "
              f"{TRANSCRIPT_TURNS}-turn transcripts) in {seconds:.1f} s")
        try:
            gateway = start_gateway(workdir, args.sessions)
            first = Client(gateway.port).turn("warm-up", "load the index")
            print(f"first turn (loads the {args.sessions}-entry index): {first * 1000:.0f} ms")
            stop = threading.Event()
            counts = [0] * args.load
            load = [threading.Thread(target=background_load, daemon=True,
                                     args=(gateway.port, stop, i, counts, args.existing))
                    for i in range(args.load)]
            for thread in load:
                thread.start()
            started = time.monotonic()
            try:
                figures = measure(gateway.port, args.turns, args.existing)
            finally:
                stop.set()
                for thread in load:
                    thread.join(timeout=60)
            elapsed = time.monotonic() - started
            print(f"{args.turns} turns of each kind, measured one at a time while {args.load}"
                  f" other clients made {sum(counts)} existing-user turns "
                  f"({sum(counts) / elapsed:.0f}/s); RSS {benchlib.mb(gateway.rss_kb())}")
            print(f"{'':16} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
            verdict = 0
            for name, values in figures.items():
                p50 = percentile(values, 50) * 1000
                print(f"{name:16} {p50:8.1f} {percentile(values, 95) * 1000:8.1f} "
                      f"{max(values) * 1000:8.1f}")
                verdict |= p50 >= 50
            print("target p50 < 50 ms:", "met" if not verdict else "NOT met")
            return verdict
        finally:
            CHILDREN.stop_all()


if __name__ == "__main__":
    sys.exit(main())
