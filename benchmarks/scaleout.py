#!/usr/bin/env python
"""Scale-out benchmarks (issue 16): several workers, the Redis backend, two gateways behind
nginx. Same machine, same run, alternating rounds, like run.py.

    python benchmarks/scaleout.py --quick                     # every scenario
    python benchmarks/scaleout.py --only workers              # --workers 2 vs 1 (Redis)
    python benchmarks/scaleout.py --only redis_sessions       # Redis vs file, sessions_c16
    python benchmarks/scaleout.py --only nginx_streams        # 2 gateways behind nginx

Needs wrk, redis-server and (for nginx_streams) nginx (Debian packages of those names). The
harness starts a private redis-server (AOF on, ``appendfsync`` as --appendfsync says) and
nginx in its temp dir, and stops every child on exit. See benchmarks/README.md.

wrk, the fake upstream and Redis share the two cores with the gateways. They run as
SCHED_BATCH tasks (same nice level and share of the CPU, but a wakeup of theirs does not
preempt a running gateway): measured, a normal-policy helper preempted a worker of
``--workers 2`` about 1.5 times per request, and that alone cost the workers ~20 % more CPU
per request than the single worker, which keeps a core to itself. ``--no-batch-helpers``
measures without it.

Redis is the exception: it sits on every request's critical path (a run's client slot is
admitted by a Redis script before the run starts), so a Redis that waits behind a busy
worker for its turn leaves the workers idle, waiting for it (measured: ~0.2 of the two cores
idle with Redis as a batch task). It runs as a normal task at nice -5 (``--redis-nice``), as
if on a host of its own; it uses ~0.03 ms of CPU per request. ``--redis-nice 0`` with
``--no-batch-helpers`` treats it like the others.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

SCENARIOS = ("workers", "redis_sessions", "nginx_streams")
SESSION_USERS = 32
PROMPT = [{"role": "user", "content": "Say hello in ten words."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((bl.HOST, 0))
        return s.getsockname()[1]


def start_redis(workdir: Path, appendfsync: str) -> bl.Server:
    port = free_port()
    rdir = workdir / "redis"
    rdir.mkdir(exist_ok=True)
    log = rdir / "redis.log"
    proc = bl.CHILDREN.spawn(
        ["redis-server", "--port", str(port), "--bind", bl.HOST, "--dir", str(rdir),
         "--save", "", "--appendonly", "yes", "--appendfsync", appendfsync,
         "--daemonize", "no", "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((bl.HOST, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return bl.Server("redis", proc, port, log)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def start_gateway(workdir: Path, upstream: bl.Server, name: str, *, store: str,
                  redis: Optional[bl.Server] = None, prefix: str = "bench:",
                  workers: int = 1, metrics: bool = False) -> bl.Server:
    """``twistd -n moltbot-gw --workers N`` on ``store`` ("file" or "redis")."""
    gwdir = workdir / name
    gwdir.mkdir(parents=True, exist_ok=True)
    config = bl.gateway_config(upstream)
    if store == "redis":
        assert redis is not None
        config["session"] = {"store": {"backend": "redis", "redis": {
            "url": f"redis://{bl.HOST}:{redis.port}/0", "keyPrefix": prefix}}}
    if metrics:
        config["gateway"]["metrics"] = {"enabled": True}
    config_path = gwdir / "bench.json5"
    config_path.write_text(json.dumps(config, indent=2))
    log = gwdir / "gateway.log"
    args = bl.TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--config", str(config_path),
                        "--port", "0"]
    if workers > 1:
        args += ["--workers", str(workers)]
    with open(log, "wb") as f:
        proc = bl.CHILDREN.spawn(args, stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL,
                                 env=bl.gateway_env(gwdir / "state"), cwd=str(gwdir))
    # with --workers the parent says it once every worker serves
    pattern = (r"parent with \d+ workers listening on \S+:(\d+)" if workers > 1
               else r"listening on \S+:(\d+)")
    match = bl._wait_for_line(proc, log, pattern, 60, name)
    return bl.Server(name, proc, int(match.group(1)), log, {"state_dir": gwdir / "state"})


def wrk_rounds(servers: dict, conns: int, duration: float, rounds: int, *, stream=False,
               users=0, tag="t") -> dict:
    """Alternate the servers for ``rounds`` rounds; merged wrk figures and CPU per side."""
    runs: dict = {name: [] for name in servers}
    cpu: dict = {name: 0.0 for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            before = bl.tree_cpu_s(server.pid)
            runs[name].append(bl.run_wrk(f"{server.origin}/v1/chat/completions", conns,
                                         duration, token=bl.TOKEN, stream=stream, users=users,
                                         tag=f"{tag}-{name}"))
            cpu[name] += bl.tree_cpu_s(server.pid) - before
    out = {}
    for name, r in runs.items():
        merged = bl.merge_wrk(r)
        merged["cpu_ms_per_req"] = (1000 * cpu[name] / merged["requests"]
                                    if merged["requests"] else None)
        seconds = merged["duration_us"] / 1e6
        merged["busy_cores"] = cpu[name] / seconds if seconds else None
        out[name] = merged
    return out


def _cpu(x: dict) -> str:
    """The gateway's CPU per request (all its processes): the figure least moved by other
    load on the machine."""
    ms = x.get("cpu_ms_per_req")
    return f"{ms:5.2f} cpu-ms/req" if ms is not None else "  n/a cpu-ms/req"


def line(label: str, a: dict, b: dict, a_name: str, b_name: str) -> str:
    ratio = a["rps"] / b["rps"] if b["rps"] else float("nan")
    bad = sum(x["err_status"] + x["errors"] for x in (a, b))
    return (f"{label:<28} {a_name} {a['rps']:8.0f} req/s (p99 {a['p99_ms']:6.1f} ms, "
            f"{_cpu(a)})  {b_name} {b['rps']:8.0f} req/s (p99 {b['p99_ms']:6.1f} ms, "
            f"{_cpu(b)})  ratio {ratio:4.2f}" + (f"  ({bad} errors)" if bad else ""))


def per_core(w2: dict, w1: dict) -> str:
    """wrk, the upstream and Redis share the two cores with the workers, so two workers
    never get two cores here. Per busy gateway core, the throughput of two workers against
    one says what a second core of its own would give: that efficiency times two is the
    ratio on a machine whose load generator and upstream run elsewhere."""
    if not (w2.get("busy_cores") and w1.get("busy_cores")):
        return "    (no CPU figures)"
    per1 = w1["rps"] / w1["busy_cores"]
    per2 = w2["rps"] / w2["busy_cores"]
    return (f"    busy gateway cores w2 {w2['busy_cores']:.2f}, w1 {w1['busy_cores']:.2f}; "
            f"req/s per busy core w2 {per2:.0f}, w1 {per1:.0f}: with two cores of their own, "
            f"2 workers ~ {2 * per2 / per1:.2f} x 1")


def scenario_workers(wd: Path, upstream, redis, args) -> list[str]:
    w1 = start_gateway(wd, upstream, "gw-w1", store="redis", redis=redis, prefix="w1:")
    w2 = start_gateway(wd, upstream, "gw-w2", store="redis", redis=redis, prefix="w2:",
                       workers=2)
    out = []
    try:
        for stream in (False, True):
            for conns in (16, 64):
                for warm in (w2, w1):     # both sides warm (connection pools, caches)
                    bl.run_wrk(f"{warm.origin}/v1/chat/completions", conns, 2, token=bl.TOKEN,
                               stream=stream)
                r = wrk_rounds({"w2": w2, "w1": w1}, conns, args.duration, args.rounds,
                               stream=stream, tag=f"w{conns}")
                kind = "stream" if stream else "nonstream"
                out.append(line(f"{kind} c={conns} workers 2/1", r["w2"], r["w1"],
                                "w2", "w1"))
                out.append(per_core(r["w2"], r["w1"]))
    finally:
        for s in (w1, w2):
            bl.CHILDREN.stop(s.proc)
    return out


def scenario_redis_sessions(wd: Path, upstream, redis, args) -> list[str]:
    file_gw = start_gateway(wd, upstream, "gw-file", store="file")
    redis_gw = start_gateway(wd, upstream, "gw-redis", store="redis", redis=redis,
                             prefix="sess:")
    try:
        r = wrk_rounds({"redis": redis_gw, "file": file_gw}, 16, args.duration, args.rounds,
                       users=SESSION_USERS, tag=uuid.uuid4().hex[:6])
        return [line(f"sessions_c16 ({SESSION_USERS} users)", r["redis"], r["file"],
                     "redis", "file")]
    finally:
        for s in (file_gw, redis_gw):
            bl.CHILDREN.stop(s.proc)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream moltbot {{
        server {host}:{a};
        server {host}:{b};
        keepalive 64;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://moltbot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(wd: Path, a: int, b: int) -> bl.Server:
    ndir = wd / "nginx"
    ndir.mkdir(exist_ok=True)
    port = free_port()
    conf = ndir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=ndir, host=bl.HOST, a=a, b=b, port=port))
    log = ndir / "nginx.out"
    with open(log, "wb") as f:
        proc = bl.CHILDREN.spawn(["nginx", "-c", str(conf), "-p", str(ndir)], stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((bl.HOST, port), timeout=0.5).close()
            return bl.Server("nginx", proc, port, log)
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    raise RuntimeError("nginx did not start: " + log.read_text(errors="replace")[-2000:])


def completions_served(server: bl.Server) -> int:
    """The gateway's count of chat completions answered (from its /metrics)."""
    import urllib.request
    request = urllib.request.Request(f"{server.origin}/metrics",
                                     headers={"Authorization": f"Bearer {bl.TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for row in text.splitlines():
        if row.startswith("moltbot_http_requests_total{") and "chat/completions" in row:
            total += float(row.rsplit(" ", 1)[1])
    return int(total)


def scenario_nginx_streams(wd: Path, upstream, redis, args) -> list[str]:
    if shutil.which("nginx") is None:
        return ["nginx_streams: skipped: nginx not installed (apt-get install nginx)"]
    a = start_gateway(wd, upstream, "gw-a", store="redis", redis=redis, prefix="ng:",
                      metrics=True)
    b = start_gateway(wd, upstream, "gw-b", store="redis", redis=redis, prefix="ng:",
                      metrics=True)
    nginx = start_nginx(wd, a.port, b.port)
    try:
        body = json.dumps({"model": "moltbot:slow", "stream": True,
                           "messages": PROMPT}).encode()
        before = {s.name: completions_served(s) for s in (a, b)}
        r = asyncio.run(bl.slow_streams(nginx.port, "/v1/chat/completions", body, bl.TOKEN,
                                        args.streams, deadline=180.0))
        served = {s.name: completions_served(s) - before[s.name] for s in (a, b)}
        return [f"nginx_streams: {r['ok']}/{args.streams} streams complete through nginx "
                f"(p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms); served by "
                f"gw-a {served['gw-a']}, gw-b {served['gw-b']}"
                + (f"; failures {dict(r['errors'])}" if r["errors"] else "")]
    finally:
        for s in (nginx, a, b):
            bl.CHILDREN.stop(s.proc)


def redis_priority(pid: int, nice: int) -> str:
    """Redis as a normal task at ``nice`` (lowering it needs root or CAP_SYS_NICE); what the
    first output line says of it."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError as e:
        return f"redis at nice 0 (could not set {nice}: {e.strerror})"
    return f"redis at nice {nice}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="1 s wrk runs")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--streams", type=int, default=1000, help="nginx_streams count")
    parser.add_argument("--appendfsync", default="everysec", choices=("always", "everysec"),
                        help="the benchmark Redis's AOF policy (default everysec)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--no-batch-helpers", action="store_true",
                        help="run wrk and the upstream as normal tasks, not SCHED_BATCH")
    parser.add_argument("--redis-nice", type=int, default=-5,
                        help="Redis's nice level, a normal task (default -5; it is on every "
                             "request's critical path)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}")
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"scaleout: {tool} is not installed (Debian package {tool})", file=sys.stderr)
            return 2
    bl.install_signal_handlers()
    bl.raise_nofile()
    batch = not args.no_batch_helpers
    bl.WRK_SCHED_BATCH = batch
    lines = [f"scaleout {time.strftime('%Y-%m-%d %H:%M')} on {bl.os.cpu_count()} cores, "
             f"redis appendfsync {args.appendfsync}, wrk {args.duration:g} s x "
             f"{args.rounds} rounds, wrk/upstream "
             + ("SCHED_BATCH" if batch else "normal tasks")]
    try:
        with bl.workdir(args.keep) as wd:
            upstream = bl.start_upstream(wd, 0.2)
            redis = start_redis(wd, args.appendfsync)
            if batch:
                bl.as_batch_task(upstream.pid)
            lines[0] += ", " + redis_priority(redis.pid, args.redis_nice)
            for name in names:
                print(f"... {name}", file=sys.stderr, flush=True)
                lines += globals()[f"scenario_{name}"](wd, upstream, redis, args)
                print(lines[-1], file=sys.stderr, flush=True)
    finally:
        bl.CHILDREN.stop_all()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
