#!/usr/bin/env python
"""moltbot-gw benchmarks: gateway vs a bare Klein+treq pass-through, same machine, same run.

    python benchmarks/run.py --quick            # every scenario, short (< 2 minutes)
    python benchmarks/run.py                    # every scenario, longer wrk runs
    python benchmarks/run.py --only stream_c16  # one scenario (comma-separated for several)
    python benchmarks/run.py --json results.json

See benchmarks/README.md for what each scenario measures and how to read the table.
All traffic goes to 127.0.0.1; every child process is stopped on exit, error or Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

PROMPT = [{"role": "user", "content": "Say hello in ten words."}]
WRK_SCENARIOS = ("upstream", "nonstream_c1", "nonstream_c16", "nonstream_c64", "stream_c16",
                 "stream_c16_oneread", "sessions_c16", "tools_c16")
ALL_SCENARIOS = WRK_SCENARIOS + ("streams_1000", "ws_10000")
DESCRIPTIONS = {
    "upstream": "fake upstream direct, c=16 (ceiling; not a target)",
    "nonstream_c1": "non-streaming, c=1",
    "nonstream_c16": "non-streaming, c=16 (stateless)",
    "nonstream_c64": "non-streaming, c=64",
    "stream_c16": "streaming (SSE), c=16",
    "stream_c16_oneread": "streaming c=16, whole SSE body in one upstream read",
    "sessions_c16": "non-streaming c=16, `user` sessions",
    "tools_c16": "non-streaming c=16, echo + one `read` tool call",
    "streams_1000": "concurrent slow SSE streams",
    "ws_10000": "idle authenticated WebSockets",
}
SESSION_USERS = 32
# tools_c16: builtin/echo asks for the read tool, then answers with the file's text.
TOOL_PROMPT = 'call read {"path":"notes.txt"}'


@dataclass
class Row:
    scenario: str
    description: str
    status: str = "ok"                  # ok | skipped | error
    gw_rps: Optional[float] = None
    base_rps: Optional[float] = None
    gw_p50: Optional[float] = None
    gw_p99: Optional[float] = None
    base_p50: Optional[float] = None
    base_p99: Optional[float] = None
    unit: str = "req/s"
    notes: list = field(default_factory=list)
    extra_cpu: dict = field(default_factory=dict)
    gateway: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)

    @property
    def ratio(self) -> Optional[float]:
        if self.gw_rps is None or not self.base_rps:
            return None
        return self.gw_rps / self.base_rps


class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.wd = workdir
        self.quick = args.quick
        self.duration = args.duration or (1.0 if args.quick else 5.0)
        self.rounds = args.rounds or 3
        self.warmup = 1.0 if args.quick else 3.0
        self.upstream: Optional[bl.Server] = None
        self.baseline: Optional[bl.Server] = None
        self.gateway: Optional[bl.Server] = None
        self.gateway_logs: list[Path] = []
        self.tag = uuid.uuid4().hex[:8]
        self.stateless_gw_rps: Optional[float] = None
        self.stateless_gw: dict = {}      # nonstream_c16's gateway figures, for tools_c16

    # --- servers --------------------------------------------------------------------------

    def ensure_upstream(self):
        if self.upstream is None:
            self.upstream = bl.start_upstream(self.wd, self.args.slow_interval)
            progress(f"fake upstream on {self.upstream.origin} (pid {self.upstream.pid})")
        return self.upstream

    def ensure_baseline(self):
        if self.baseline is None:
            self.baseline = bl.start_baseline(self.wd, self.ensure_upstream())
            progress(f"baseline (Klein+treq) on {self.baseline.origin} (pid {self.baseline.pid})")
            if bl.wrk_path():
                self._warm(self.baseline)
        return self.baseline

    def ensure_gateway(self):
        if self.gateway is None:
            self.gateway = self.start_gateway("gateway")
            if bl.wrk_path():
                self._warm(self.gateway)
        return self.gateway

    def start_gateway(self, name):
        gw = bl.start_gateway(self.wd, self.ensure_upstream(), name=name)
        self.gateway_logs.append(gw.log_path)
        progress(f"gateway daemon '{name}' on {gw.origin} (pid {gw.pid}, "
                 f"RSS {bl.mb(gw.rss_kb())})")
        return gw

    def stop_gateway(self):
        if self.gateway is not None:
            bl.CHILDREN.stop(self.gateway.proc)
            self.gateway = None

    def _warm(self, server):
        for stream in (False, True):
            bl.run_wrk(self.chat_url(server), 16, self.warmup, token=self.token(server),
                       stream=stream, tag=self.tag + "w")

    def token(self, server) -> str:
        return bl.TOKEN if server.name.startswith("gateway") else ""

    @staticmethod
    def chat_url(server) -> str:
        return f"{server.origin}/v1/chat/completions"

    # --- wrk scenarios --------------------------------------------------------------------

    def wrk_pair(self, row: Row, conns: int, stream=False, users=0, agent="main"):
        """Baseline and gateway, same parameters, alternating for ``rounds`` rounds so that
        a transient load elsewhere on the machine hits both alike. ``agent`` other than
        "main" picks the gateway agent of that name and the baseline's ``/<agent>/v1`` path
        (the same upstream shape on both sides)."""
        servers = (("baseline", self.ensure_baseline()), ("gateway", self.ensure_gateway()))
        runs: dict = {"baseline": [], "gateway": []}
        meter = bl.CpuMeter([s.pid for _, s in servers] + [self.upstream.pid])
        cpu_s = {"baseline": 0.0, "gateway": 0.0}
        upstream_conns = {"baseline": 0, "gateway": 0}
        for _ in range(self.rounds):
            for side, server in servers:
                bl.upstream_stats(self.upstream)
                before = bl.tree_cpu_s(server.pid)
                url = self.chat_url(server)
                if agent != "main" and side == "baseline":
                    url = f"{server.origin}/{agent}/v1/chat/completions"
                runs[side].append(bl.run_wrk(
                    url, conns, self.duration, token=self.token(server),
                    stream=stream, users=users, model=f"moltbot:{agent}",
                    tag=f"{self.tag}-{row.scenario}"))
                cpu_s[side] += bl.tree_cpu_s(server.pid) - before
                upstream_conns[side] += bl.upstream_stats(self.upstream)["connections"]
        self.note_cpu(row, meter.stop())
        results = {side: bl.merge_wrk(r) for side, r in runs.items()}
        for side, r in results.items():
            r["upstream_connections"] = upstream_conns[side]
            seconds = r["duration_us"] / 1e6
            r["cpu_cores"] = cpu_s[side] / seconds if seconds else None
            r["cpu_ms_per_req"] = 1000 * cpu_s[side] / r["requests"] if r["requests"] else None
        if results["gateway"]["cpu_ms_per_req"] and results["baseline"]["cpu_ms_per_req"]:
            g, b = results["gateway"], results["baseline"]
            row.notes.append(f"CPU/req {g['cpu_ms_per_req']:.2f} ms vs {b['cpu_ms_per_req']:.2f}"
                             f" ms (busy {g['cpu_cores']:.2f} / {b['cpu_cores']:.2f} cores)")
        g, b = results["gateway"]["upstream_connections"], results["baseline"]["upstream_connections"]
        if g > 2 * conns * self.rounds or b > 2 * conns * self.rounds:
            row.notes.append(f"upstream connections opened {g} vs {b} (pool churn)")
        for side, r in results.items():
            problems = []
            if r["err_status"]:
                problems.append(f"{r['err_status']} non-2xx")
            if r["errors"]:
                problems.append(f"{r['errors']} socket errors/timeouts")
            if problems:
                row.notes.append(f"{side}: " + ", ".join(problems))
        gw, base = results["gateway"], results["baseline"]
        row.gateway, row.baseline = gw, base
        row.gw_rps, row.gw_p50, row.gw_p99 = gw["rps"], gw["p50_ms"], gw["p99_ms"]
        row.base_rps, row.base_p50, row.base_p99 = base["rps"], base["p50_ms"], base["p99_ms"]

    @staticmethod
    def note_cpu(row: Row, cpu: dict):
        row.extra_cpu = cpu
        if cpu["foreign_cores"] >= 0.15:
            row.notes.append(f"NOISY: other processes used {cpu['foreign_cores']:.1f} cores")

    def s_upstream(self, row: Row):
        up = self.ensure_upstream()
        bl.run_wrk(f"{up.origin}/sse/v1/chat/completions", 16, 1)  # warm-up
        r = bl.run_wrk(f"{up.origin}/sse/v1/chat/completions", 16, 2)
        row.gw_rps, row.gw_p50, row.gw_p99 = r["rps"], r["p50_ms"], r["p99_ms"]
        row.gateway = r
        row.notes.append("SSE body, no proxy; must be >> baseline")

    def s_nonstream_c1(self, row: Row):
        self.wrk_pair(row, 1)
        row.notes.insert(0, f"added p50 {row.gw_p50 - row.base_p50:+.2f} ms")

    def s_nonstream_c16(self, row: Row):
        self.wrk_pair(row, 16)
        self.stateless_gw_rps = row.gw_rps
        self.stateless_gw = row.gateway

    def s_nonstream_c64(self, row: Row):
        self.wrk_pair(row, 64)

    def s_stream_c16(self, row: Row):
        self.wrk_pair(row, 16, stream=True)

    def s_stream_c16_oneread(self, row: Row):
        self.wrk_pair(row, 16, stream=True, agent="oneread")
        row.notes.insert(0, "upstream sends 13 events in one read (Content-Length body)")

    def s_sessions_c16(self, row: Row):
        self.wrk_pair(row, 16, users=SESSION_USERS)
        row.notes.insert(0, f"{SESSION_USERS} users round-robin")
        if self.stateless_gw_rps:
            row.notes.insert(1, f"{row.gw_rps / self.stateless_gw_rps:.0%} of stateless gw")
        sessions = self.gateway.extra["state_dir"] / "agents" / "main" / "sessions"
        files = list(sessions.glob("*.jsonl")) if sessions.is_dir() else []
        lines = sum(p.read_bytes().count(b"\n") for p in files)
        row.notes.append(f"{len(files)} transcripts, {lines} lines")
        if not files:
            row.notes.append("WARNING: no transcript written")

    def s_tools_c16(self, row: Row):
        """Agent ``tools`` (builtin/echo, group:fs): each request is two model steps and one
        ``read`` of notes.txt. Alternates with the same agent answering without a tool, so
        the difference is one tool iteration; compared with nonstream_c16 when it ran."""
        gw = self.ensure_gateway()
        url, token = self.chat_url(gw), self.token(gw)
        answer = bl.chat_answer(url, token, "moltbot:tools", TOOL_PROMPT)
        if bl.TOOLS_NOTES.strip() not in answer:
            raise RuntimeError(f"the tools agent did not answer with notes.txt: {answer[:200]!r}")
        kinds = {"tool": TOOL_PROMPT, "plain": PROMPT[0]["content"]}
        for content in kinds.values():       # warm-up of this agent's path
            bl.run_wrk(url, 16, self.warmup, token=token, model="moltbot:tools",
                       content=content, tag=self.tag + "w")
        runs: dict = {kind: [] for kind in kinds}
        cpu_s = dict.fromkeys(kinds, 0.0)
        meter = bl.CpuMeter([gw.pid, self.ensure_upstream().pid])
        for _ in range(self.rounds):
            for kind, content in kinds.items():
                before = bl.tree_cpu_s(gw.pid)
                runs[kind].append(bl.run_wrk(url, 16, self.duration, token=token,
                                             model="moltbot:tools", content=content,
                                             tag=f"{self.tag}-{row.scenario}"))
                cpu_s[kind] += bl.tree_cpu_s(gw.pid) - before
        self.note_cpu(row, meter.stop())
        tool, plain = (bl.merge_wrk(runs[kind]) for kind in kinds)
        for kind, r in (("tool", tool), ("plain", plain)):
            r["cpu_ms_per_req"] = 1000 * cpu_s[kind] / r["requests"] if r["requests"] else None
            if r["err_status"] or r["errors"]:
                row.notes.append(f"{kind}: {r['err_status']} non-2xx, {r['errors']} socket "
                                 "errors/timeouts")
        row.gateway = dict(tool, echo_without_tool=plain)   # no Klein baseline: no tools
        row.gw_rps, row.gw_p50, row.gw_p99 = tool["rps"], tool["p50_ms"], tool["p99_ms"]
        row.notes.insert(0, f"echo without a tool {plain['rps']:.0f} req/s, mean "
                            f"{plain['mean_ms']:.2f} ms")
        added = f"per tool iteration: mean {tool['mean_ms'] - plain['mean_ms']:+.2f} ms"
        if tool["cpu_ms_per_req"] is not None and plain["cpu_ms_per_req"] is not None:
            added += f", CPU/req {tool['cpu_ms_per_req'] - plain['cpu_ms_per_req']:+.2f} ms"
        row.notes.insert(1, added + " (vs echo without a tool)")
        stateless = self.stateless_gw.get("mean_ms")
        if stateless is None:
            row.notes.insert(2, "nonstream_c16 not run: no comparison with it")
        else:
            row.notes.insert(2, f"mean {tool['mean_ms']:.2f} ms vs nonstream_c16 gw "
                                f"{stateless:.2f} ms: {tool['mean_ms'] - stateless:+.2f} ms")

    # --- connection-count scenarios -------------------------------------------------------

    def s_streams_1000(self, row: Row):
        n = self.args.streams
        row.description = f"{n} concurrent slow SSE streams"
        row.unit = "streams/s"
        self.stop_gateway()   # a fresh daemon: RSS growth of this scenario alone
        body = json.dumps({"model": "moltbot:slow", "stream": True, "messages": PROMPT}).encode()
        warm = json.dumps({"model": "moltbot:main", "stream": True, "messages": PROMPT}).encode()
        sides = (("baseline", self.ensure_baseline(), "/slow/v1/chat/completions"),
                 ("gateway", None, "/v1/chat/completions"))
        for side, server, path in sides:
            if server is None:
                server = self.start_gateway("gateway-streams")
            token = self.token(server)
            wpath = "/v1/chat/completions"
            asyncio.run(bl.slow_streams(server.port, wpath, warm, token, 20))
            time.sleep(0.5)
            before = server.rss_kb()
            bl.upstream_stats(self.upstream)   # reset its peak counter
            fds_before = bl.fd_count(server.pid)
            meter = bl.CpuMeter([server.pid, self.upstream.pid])
            r = asyncio.run(bl.slow_streams(server.port, path, body, token, n,
                                            rss_pid=server.pid, deadline=180.0))
            r["cpu"] = meter.stop()
            r["upstream"] = bl.upstream_stats(self.upstream)
            time.sleep(1.0)
            r["fds_before"], r["fds_after"] = fds_before, bl.fd_count(server.pid)
            r["rss_before_kb"], r["rss_after_kb"] = before, server.rss_kb()
            r["growth_peak_kb"] = (r["peak_rss_kb"] or 0) - (before or 0)
            r["growth_after_kb"] = (r["rss_after_kb"] or 0) - (before or 0)
            setattr(row, side, r)
            if side == "gateway":
                bl.CHILDREN.stop(server.proc)
        gw, base = row.gateway, row.baseline
        row.gw_rps, row.gw_p50, row.gw_p99 = gw["rps"], gw["p50_ms"], gw["p99_ms"]
        row.base_rps, row.base_p50, row.base_p99 = base["rps"], base["p50_ms"], base["p99_ms"]
        row.notes.append(f"gw {gw['ok']}/{n} ok ({gw['upstream']['slow_peak']} concurrent "
                         "upstream streams at peak)")
        if gw["errors"]:
            row.notes.append(f"gw failures {dict(gw['errors'])}")
        row.notes.append(f"gw RSS {bl.mb(gw['rss_before_kb'])} -> peak "
                         f"{bl.mb(gw['peak_rss_kb'])} (+{gw['growth_peak_kb'] / 1024:.0f} MB), "
                         f"after {bl.mb(gw['rss_after_kb'])}; open fds {gw['fds_before']} -> "
                         f"{gw['fds_after']}")
        row.notes.append(f"base {base['ok']}/{n} ok ({base['upstream']['slow_peak']} concurrent"
                         f"), RSS +{base['growth_peak_kb'] / 1024:.0f} MB peak")
        if base["errors"]:
            row.notes.append(f"base failures {dict(base['errors'])}")
        if gw["cpu"]["foreign_cores"] >= 0.15:
            row.notes.append(f"NOISY: other processes used {gw['cpu']['foreign_cores']:.1f} cores")
        row.notes.append(f"p50/p99 = whole-stream time ({self.args.slow_interval:g} s x 10 "
                         "chunks upstream)")

    def s_ws_10000(self, row: Row):
        n = self.args.ws
        row.description = f"{n} idle authenticated WebSockets"
        row.unit = "conn/s"
        self.stop_gateway()
        gw = self.start_gateway("gateway-ws")
        try:
            conn, info = asyncio.run(_probe_ws(gw.port, bl.TOKEN))
            if not info.get("ok"):
                doc = bl.ROOT / "docs" / "ws-protocol.rst"
                row.status = "skipped"
                row.notes.append("skipped: ws protocol not available"
                                 + ("" if doc.exists() else " (no docs/ws-protocol.rst)")
                                 + f" - connect answered: {info.get('error')}")
                return
            asyncio.run(bl.ws_idle(gw.port, bl.TOKEN, 10, hold=0))  # warm the code paths
            time.sleep(0.5)
            before = gw.rss_kb()
            fds_before = bl.fd_count(gw.pid)
            meter = bl.CpuMeter([gw.pid, self.upstream.pid])
            r = asyncio.run(bl.ws_idle(gw.port, bl.TOKEN, n, rss_pid=gw.pid,
                                       hold=self.args.ws_hold))
            self.note_cpu(row, meter.stop())
            r["fds_before"] = fds_before
            r["close_s"] = bl.wait_fds(gw.pid, fds_before + 5, timeout=20.0)
            time.sleep(0.5)
            r["rss_before_kb"], r["rss_after_close_kb"] = before, gw.rss_kb()
            r["fds_after_close"] = bl.fd_count(gw.pid)
            row.gateway = r
        finally:
            bl.CHILDREN.stop(gw.proc)
        base_srv = self.ensure_baseline()
        time.sleep(0.3)
        asyncio.run(bl.ws_idle(base_srv.port, "", 10, hold=0))   # load autobahn's code paths
        time.sleep(0.3)
        bbefore = base_srv.rss_kb()
        b = asyncio.run(bl.ws_idle(base_srv.port, "", n, rss_pid=base_srv.pid,
                                   hold=self.args.ws_hold))
        b["rss_before_kb"] = bbefore
        row.baseline = b
        r = row.gateway
        row.gw_rps, row.gw_p50, row.gw_p99 = r["rps"], r["p50_ms"], r["p99_ms"]
        row.base_rps, row.base_p50, row.base_p99 = b["rps"], b["p50_ms"], b["p99_ms"]
        per_conn = ((r["rss_held_kb"] or 0) - (before or 0)) / max(1, r["ok"])
        row.notes.append(f"gw {r['ok']}/{n} authed, {r['still_open']} open after "
                         f"{self.args.ws_hold:g}s idle")
        if r["errors"]:
            row.notes.append(f"gw failures {dict(r['errors'])}")
        row.notes.append(f"gw RSS {bl.mb(before)} -> {bl.mb(r['rss_held_kb'])} held "
                         f"(~{per_conn:.1f} KB/conn), {bl.mb(r['rss_after_close_kb'])} "
                         f"after close (open fds {r['fds_before']} -> {r['fds_after_close']}"
                         + (f", {r['close_s']:.1f}s to close all)" if r["close_s"] is not None
                            else ", NOT all closed after 20 s)"))
        bper = ((b["rss_held_kb"] or 0) - (bbefore or 0)) / max(1, b["ok"])
        row.notes.append(f"bare autobahn: {b['ok']}/{n}, RSS {bl.mb(bbefore)} -> "
                         f"{bl.mb(b['rss_held_kb'])} (~{bper:.1f} KB/conn)")
        if r.get("pushed_frames"):
            row.notes.append(f"gw pushed {r['pushed_frames']} frames to idle clients")

    # --- driver ---------------------------------------------------------------------------

    def run(self, names) -> list[Row]:
        rows = []
        for name in names:
            row = Row(name, DESCRIPTIONS[name])
            if name in WRK_SCENARIOS and not bl.wrk_path():
                row.status = "skipped"
                row.notes.append("skipped: wrk not installed (apt-get install -y wrk)")
            else:
                progress(f"--- {name}: {row.description}")
                t = time.monotonic()
                try:
                    getattr(self, "s_" + name)(row)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - one failing scenario is reported
                    row.status = "error"
                    row.notes.append(f"error: {type(e).__name__}: {str(e)[:400]}")
                progress(f"    {short(row)} [{time.monotonic() - t:.1f}s]")
            rows.append(row)
        return rows


async def _probe_ws(port, token):
    conn, info = await bl.ws_open(port, token)
    if conn is not None:
        conn.writer.close()
    return None, info


# --- output ---------------------------------------------------------------------------------

def progress(msg: str) -> None:
    print(msg, flush=True)


def fmt(v, spec=".0f") -> str:
    return "-" if v is None else format(v, spec)


def short(row: Row) -> str:
    if row.status != "ok":
        return f"{row.status}: {'; '.join(row.notes)}"
    ratio = f" ratio {row.ratio:.2f}" if row.ratio is not None else ""
    return (f"gw {fmt(row.gw_rps)} {row.unit}, base {fmt(row.base_rps)}{ratio}, "
            f"p50 {fmt(row.gw_p50, '.2f')} ms, p99 {fmt(row.gw_p99, '.2f')} ms")


def table(rows: list[Row]) -> str:
    header = ["scenario", "gateway", "baseline", "ratio", "p50 ms gw/base", "p99 ms gw/base",
              "notes"]
    lines = []
    for r in rows:
        rate = lambda v: "-" if v is None else f"{v:.0f} {r.unit}"  # noqa: E731
        lines.append([
            r.scenario, rate(r.gw_rps) if r.status == "ok" else r.status,
            rate(r.base_rps) if r.status == "ok" else "-",
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            f"{fmt(r.gw_p50, '.2f')} / {fmt(r.base_p50, '.2f')}",
            f"{fmt(r.gw_p99, '.2f')} / {fmt(r.base_p99, '.2f')}",
            "; ".join(r.notes)])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(header[:-1])]
    out = []

    def emit(cells):
        out.append(" | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " | " + cells[-1])

    emit(header)
    out.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 40)
    for l in lines:
        emit(l)
    return "\n".join(out)


def targets(rows: list[Row]) -> list[str]:
    by = {r.scenario: r for r in rows}
    out = []

    def verdict(name, ok, text):
        r = by.get(name)
        if r is None:
            return
        if r.status != "ok":
            out.append(f"  SKIP  {text} ({r.status})")
        else:
            out.append(f"  {'PASS' if ok(r) else 'FAIL'}  {text}")

    verdict("nonstream_c16", lambda r: r.ratio >= 0.60,
            f"non-streaming c=16 >= 60% of baseline req/s: "
            f"{_pct(by.get('nonstream_c16'))}")
    verdict("stream_c16", lambda r: r.ratio >= 0.60,
            f"streaming c=16 >= 60% of baseline req/s: {_pct(by.get('stream_c16'))}")
    verdict("stream_c16_oneread", lambda r: r.ratio >= 0.75,
            f"streaming c=16, one-read upstream >= 75% of baseline req/s: "
            f"{_pct(by.get('stream_c16_oneread'))}")
    c1 = by.get("nonstream_c1")
    added = (c1.gw_p50 - c1.base_p50) if c1 and c1.status == "ok" else None
    verdict("nonstream_c1", lambda r: added <= 2.0,
            f"added p50 at c=1 <= 2 ms: {fmt(added, '+.2f')} ms")
    s = by.get("streams_1000")
    if s is not None:
        g = s.gateway or {}
        verdict("streams_1000",
                lambda r: g.get("ok") == g.get("n") and g.get("growth_peak_kb", 1e9) <= 150 * 1024,
                f"{g.get('n', '?')} streams all complete, RSS growth <= 150 MB: "
                f"{g.get('ok', '?')} ok, +{(g.get('growth_peak_kb') or 0) / 1024:.0f} MB peak")
    w = by.get("ws_10000")
    if w is not None:
        g = w.gateway or {}
        verdict("ws_10000",
                lambda r: g.get("ok") == g.get("n") and (g.get("rss_held_kb") or 1e12) <= 600 * 1024,
                f"{g.get('n', '?')} idle WS, RSS <= 600 MB: {g.get('ok', '?')} authed, "
                f"{bl.mb(g.get('rss_held_kb'))}")
    return out


def _pct(r: Optional[Row]) -> str:
    return "-" if r is None or r.ratio is None else f"{r.ratio:.0%}"


# The gateway's access line: "[moltbot_gw.access#info] <request id> POST /path 200 7.0ms ..."
ACCESS = re.compile(rb'\[moltbot_gw\.access#\w+\] \S+ (?:GET|POST|HEAD|PUT|DELETE|OPTIONS) \S+ (\d{3}) ')
LEVEL = re.compile(rb"^\S+ \[([^\]#]*)#(warn|error|critical)\] (.*)$", re.M)


def log_findings(paths: list[Path]) -> list[str]:
    """Non-200 answers, warnings, errors and tracebacks in the gateway daemons' logs."""
    out = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        statuses = Counter(m.group(1).decode() for m in ACCESS.finditer(data))
        problems = Counter()
        for m in LEVEL.finditer(data):
            text = re.sub(rb"\b(run|chatcmpl)[-_][0-9a-f]{8,}\b", b"<id>", m.group(3))
            problems[f"[{m.group(2).decode()}] {text.decode('utf-8', 'replace')[:160]}"] += 1
        tracebacks = data.count(b"Traceback (most recent call last)")
        first_tb = {}
        for m in re.finditer(rb"^\S+ \[[^\]#]*#(?:error|critical)\] (.*)\n((?:\t.*\n)+)", data,
                             re.M):
            key = re.sub(rb"\b(run|chatcmpl)[-_][0-9a-f]{8,}\b", b"<id>", m.group(1))
            tail = [l.strip() for l in m.group(2).decode("utf-8", "replace").splitlines()
                    if l.strip()][-3:]
            first_tb.setdefault(key.decode("utf-8", "replace")[:160], tail)
        name = path.parent.name
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "no access log"
        out.append(f"  {name}: HTTP status counts {{{summary}}}; {tracebacks} traceback(s)")
        for text, count in problems.most_common(8):
            out.append(f"    {count} x {text}")
            for tb_line in first_tb.get(text.split("] ", 1)[-1], []):
                out.append(f"        | {tb_line[:150]}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short wrk runs (3 x 1 s a side); the whole run stays under 2 minutes")
    parser.add_argument("--only", default=None,
                        help="comma-separated scenarios: " + ", ".join(ALL_SCENARIOS))
    parser.add_argument("--json", default=None, metavar="PATH", help="write results as JSON")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per wrk run (default 1 with --quick, else 5)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating baseline/gateway wrk runs per scenario (default 3)")
    parser.add_argument("--streams", type=int, default=1000,
                        help="concurrent slow streams (default 1000)")
    parser.add_argument("--slow-interval", type=float, default=0.2,
                        help="seconds between the slow upstream's chunks (default 0.2)")
    parser.add_argument("--ws", type=int, default=10000,
                        help="idle WebSocket connections (default 10000)")
    parser.add_argument("--ws-hold", type=float, default=None,
                        help="seconds the idle WebSockets are held open (default 2 with "
                             "--quick, else 20: long enough for the 15 s tick events)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (logs, configs, state) and print its path")
    args = parser.parse_args(argv)
    if args.ws_hold is None:
        args.ws_hold = 2.0 if args.quick else 20.0
    names = ALL_SCENARIOS
    if args.only:
        names = tuple(n.strip() for n in args.only.split(",") if n.strip())
        unknown = [n for n in names if n not in ALL_SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(ALL_SCENARIOS)}")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # no noise from Ctrl-C mid-gather
    nofile = bl.raise_nofile()
    bl.install_signal_handlers()
    started = time.monotonic()
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        progress(f"note: load average is {load1:.2f} before starting; other processes on this "
                 "machine will skew the numbers (rows measured under load say NOISY)")
    if not bl.wrk_path():
        progress("wrk not found: the throughput scenarios will be skipped "
                 "(install: apt-get update && apt-get install -y wrk)")
    if nofile < args.ws + 1000 and "ws_10000" in names:
        progress(f"warning: RLIMIT_NOFILE is {nofile}; {args.ws} WebSockets may fail")
    rows: list[Row] = []
    findings: list[str] = []
    with bl.workdir(keep=args.keep) as wd:
        bench = Bench(args, wd)
        try:
            rows = bench.run(names)
        except KeyboardInterrupt:
            progress("interrupted: stopping every child process")
            bl.CHILDREN.stop_all()
            return 130
        finally:
            bl.CHILDREN.stop_all()
            findings = log_findings(bench.gateway_logs)
            if args.keep:
                progress(f"kept {wd}")
    wall = time.monotonic() - started
    print()
    print(f"moltbot-gw benchmarks ({'quick' if args.quick else 'full'}; wrk {bench.rounds} x "
          f"{bench.duration:g} s a side, 1 thread; {os.cpu_count()} cores; Python "
          f"{platform.python_version()}; wall time {wall:.0f} s)")
    print(table(rows))
    print()
    print("targets:")
    for line in targets(rows) or ["  (no target scenario ran)"]:
        print(line)
    print()
    print("gateway logs (access-log statuses, warnings/errors):")
    for line in findings or ["  (no gateway ran)"]:
        print(line)
    if args.json:
        payload = {"mode": "quick" if args.quick else "full", "wall_s": wall,
                   "wrk_duration_s": bench.duration, "wrk_rounds": bench.rounds, "cores": os.cpu_count(),
                   "python": platform.python_version(),
                   "rows": [dict(asdict(r), ratio=r.ratio) for r in rows],
                   "targets": targets(rows), "log_findings": findings}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 1 if any(r.status == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
