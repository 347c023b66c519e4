#!/usr/bin/env python
"""Profile the gateway's request path: the gateway runs in this process under cProfile while
wrk drives ``POST /v1/chat/completions`` (non-streaming, c=16 by default) for a few seconds.

    python benchmarks/profile.py                  # cProfile, non-streaming c=16, 5 s
    python benchmarks/profile.py --stream         # streaming instead
    python benchmarks/profile.py --stream --agent oneread   # whole SSE body in one read
    python benchmarks/profile.py --users 32       # with `user` sessions (transcript writes)
    python benchmarks/profile.py --users 32 --redis redis://127.0.0.1:6379/0   # in Redis
    python benchmarks/profile.py --py-spy         # sample the twistd daemon with py-spy instead
                                                  # (no profiler overhead; pip install py-spy)

Prints the time by component, then the top functions by cumulative and by own (tottime)
time, each as a share of the busy (non-idle) time of the reactor thread, restricted to the
request path: the idle wait in epoll and the reactor's dispatch frames are left out.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file is named like the stdlib module cProfile imports: keep its folder off the path
# while importing cProfile, then add it back for benchlib.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import cProfile  # noqa: E402
import pstats  # noqa: E402

sys.path.append(str(HERE))
import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import benchlib as bl  # noqa: E402

IDLE = {"<method 'poll' of 'select.epoll' objects>", "<method 'poll' of 'select.poll' objects>",
        "<built-in method select.select>", "<method 'acquire' of '_thread.lock' objects>"}
# Frames that only dispatch (their cumulative time is "everything"): hidden from the
# cumulative list, kept in the own-time list.
DISPATCH = re.compile(
    r"twisted/internet/(base\.py:\d+\((run|mainLoop|runUntilCurrent|doIteration|_runThread)\)"
    r"|epollreactor\.py:\d+\((doPoll|_doReadOrWrite)\)|posixbase\.py:\d+\(_doReadOrWrite\))"
    r"|twisted/python/(log|context)\.py:\d+\(callWithContext|callWithLogger\)"
    r"|twisted/python/context\.py:\d+\(callWithContext\)"
    r"|benchmarks/profile\.py")
COMPONENTS = [
    ("moltbot_gw", re.compile(r"/moltbot_gw/")),
    ("klein", re.compile(r"/klein/")),
    ("werkzeug", re.compile(r"/werkzeug/")),
    ("treq", re.compile(r"/treq/")),
    ("autobahn", re.compile(r"/autobahn/")),
    ("twisted.web", re.compile(r"/twisted/web/")),
    ("twisted.logger + python.log", re.compile(r"/twisted/(logger|python/log\.py)")),
    ("twisted.internet.defer", re.compile(r"/twisted/internet/defer\.py")),
    ("twisted (other)", re.compile(r"/twisted/")),
    ("json", re.compile(r"/json/|_json")),
    ("builtins (socket, str, ...)", re.compile(r"^~")),
    ("stdlib/other python", re.compile(r".")),
]


def short_name(key) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        i = filename.find(marker)
        if i >= 0:
            filename = filename[i + len(marker):]
            break
    return f"{filename}:{line}({func})"


def component(key) -> str:
    name = key[0] if key[0] != "~" else "~"
    for label, regex in COMPONENTS:
        if regex.search(name):
            return label
    return "stdlib/other python"


def report(stats: pstats.Stats, requests: int, top: int) -> list[str]:
    entries = stats.stats  # key -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in entries.values())
    idle = sum(v[2] for k, v in entries.items() if k[2] in IDLE)
    busy = max(total - idle, 1e-9)
    out = [f"profiled {total:.2f} s of the reactor thread: busy {busy:.2f} s, idle (epoll wait) "
           f"{idle:.2f} s; {requests} requests -> {busy / max(requests, 1) * 1e6:.0f} us busy "
           "per request (under cProfile, which inflates small calls)", ""]

    by_comp = defaultdict(float)
    for k, v in entries.items():
        if k[2] not in IDLE:
            by_comp[component(k)] += v[2]
    out.append("own time by component:")
    for label, t in sorted(by_comp.items(), key=lambda kv: -kv[1]):
        out.append(f"  {100 * t / busy:5.1f}%  {label}")
    out.append("")

    def table(title, sort_index, keep):
        rows = sorted(((k, v) for k, v in entries.items() if keep(k)),
                      key=lambda kv: -kv[1][sort_index])[:top]
        out.append(title)
        out.append(f"  {'cum%':>6} {'own%':>6} {'calls/req':>9}  function")
        for k, v in rows:
            out.append(f"  {100 * v[3] / busy:6.1f} {100 * v[2] / busy:6.1f} "
                       f"{v[1] / max(requests, 1):9.2f}  {short_name(k)}")
        out.append("")

    request_path = lambda k: k[2] not in IDLE and not DISPATCH.search(short_name(k))  # noqa
    table(f"top {top} by cumulative time (request path):", 3, request_path)
    table(f"top {top} by own time (tottime):", 2, lambda k: k[2] not in IDLE)
    table("moltbot_gw functions by cumulative time:", 3,
          lambda k: "/moltbot_gw/" in k[0])
    return out


class GcWatch:
    """Time spent in the cyclic garbage collector while profiling: cProfile charges it to
    whatever function happened to allocate, so it is reported on its own."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.count = defaultdict(int)
        self._began = 0.0

    def _callback(self, phase, info):
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._began
            self.count[info["generation"]] += 1

    def start(self):
        gc.callbacks.append(self._callback)

    def stop(self):
        gc.callbacks.remove(self._callback)

    def lines(self, requests: int) -> list[str]:
        total = sum(self.seconds.values())
        per_gen = ", ".join(f"gen{g}: {self.count[g]} x {1e3 * self.seconds[g] / self.count[g]:.2f}"
                            " ms" for g in sorted(self.count))
        return [f"garbage collector: {total:.2f} s, {1e6 * total / max(requests, 1):.0f} us per"
                f" request ({per_gen or 'no collections'}); included in the times above", ""]


def write_config(workdir: Path, upstream, redis_url=None) -> Path:
    path = workdir / "bench.json5"
    config = bl.gateway_config(upstream)
    if redis_url:   # sessions in Redis (a server you started), under a fresh key prefix
        config["session"] = {"store": {"backend": "redis", "redis": {
            "url": redis_url, "keyPrefix": f"profile-{os.getpid()}-{time.time():.0f}:"}}}
    path.write_text(json.dumps(config, indent=2))
    return path


def run_cprofile(args, workdir: Path, upstream) -> list[str]:
    state = workdir / "state"
    for k in [k for k in os.environ if k.startswith(("MOLTBOT_", "CLAWDBOT_"))]:
        del os.environ[k]
    os.environ.update(bl.gateway_env(state))
    config_path = write_config(workdir, upstream, args.redis)

    from twisted.internet import defer, reactor, threads
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from moltbot_gw.config import load_config, with_overrides
    from moltbot_gw.service import GatewayService
    from moltbot_gw.gc_tuning import tune_gc_for_serving

    # log to a file as twistd does (the access log is part of the request path)
    log_file = open(workdir / "gateway.log", "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)
    config = with_overrides(load_config(str(config_path)), port=0, bind=None)
    service = GatewayService(config, reactor)
    profiler = cProfile.Profile()
    outcome: dict = {}
    gc_watch = GcWatch()

    @defer.inlineCallbacks
    def drive():
        service.startService()
        port = yield service.when_listening()
        tune_gc_for_serving()   # as the twistd daemon does once running
        url = f"http://{bl.HOST}:{port.getHost().port}/v1/chat/completions"
        wrk = dict(token=bl.TOKEN, stream=args.stream, users=args.users, tag="prof",
                   model=f"moltbot:{args.agent}")
        yield threads.deferToThread(bl.run_wrk, url, args.connections, 1, **wrk)  # warm up
        profiler.enable()
        gc_watch.start()
        try:
            outcome["wrk"] = yield threads.deferToThread(
                bl.run_wrk, url, args.connections, args.duration, **wrk)
        finally:
            profiler.disable()
            gc_watch.stop()
        yield service.stopService()

    def done(result):
        if isinstance(result, Exception) or hasattr(result, "getTraceback"):
            outcome["error"] = result
        reactor.stop()

    reactor.callWhenRunning(lambda: drive().addBoth(done))
    reactor.run()
    log_file.close()
    if "error" in outcome:
        raise RuntimeError(outcome["error"].getTraceback())
    if args.save:
        profiler.dump_stats(args.save)
    w = outcome["wrk"]
    head = [f"wrk: {w['rps']:.0f} req/s under the profiler, p50 {w['p50_ms']:.2f} ms, "
            f"non-2xx {w['err_status']}, socket errors {w['errors']}"]
    head += gc_watch.lines(w["requests"])
    return head + report(pstats.Stats(profiler), w["requests"], args.top)


# --- py-spy (sampling the daemon) ---------------------------------------------------------

SPY_DISPATCH = re.compile(
    r"^(<module>|run|main|_run_code|_run_module_as_main|runApp|ReactorBase\.run|"
    r"ReactorBase\.mainLoop|ReactorBase\.runUntilCurrent|runReactorWithLogging|"
    r"ApplicationRunner\.\w+|UnixApplicationRunner\.\w+|\w*ContextTracker\.callWithContext|"
    r"callWithContext|callWithLogger|_PollLikeMixin\._doReadOrWrite|EPollReactor\.doPoll) ")


def run_py_spy(args, workdir: Path, upstream) -> list[str]:
    spy = shutil.which("py-spy")
    if not spy:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    gw = bl.start_gateway(workdir, upstream)
    url = f"{gw.origin}/v1/chat/completions"
    wrk = dict(token=bl.TOKEN, stream=args.stream, users=args.users, tag="spy",
               model=f"moltbot:{args.agent}")
    bl.run_wrk(url, args.connections, 1, **wrk)
    raw = workdir / "pyspy.txt"
    spy_proc = bl.CHILDREN.spawn([spy, "record", "--pid", str(gw.pid), "--duration",
                                  str(args.duration + 1), "--rate", "500", "--format", "raw",
                                  "--output", str(raw), "--nonblocking"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    w = bl.run_wrk(url, args.connections, args.duration, **wrk)
    _, err = spy_proc.communicate(timeout=args.duration + 30)
    if not raw.exists():
        raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-1000:]}")
    own, incl = defaultdict(int), defaultdict(int)
    samples = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        # "func (file:line)" -> "func (file)": aggregate a function's lines
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        samples += n
        if "epollreactor" in frames[-1] and "poll" in frames[-1]:
            idle += n
            continue
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    busy = max(samples - idle, 1)
    out = [f"wrk: {w['rps']:.0f} req/s while sampled, p50 {w['p50_ms']:.2f} ms",
           f"py-spy: {samples} samples, {idle} idle in epoll; shares are of the {busy} busy "
           "samples (wall-clock: time in system calls counts)", ""]
    by_comp = defaultdict(int)
    for f, n in own.items():
        m = re.search(r"\(([^()]*)\)$", f)
        by_comp[component(("/" + m.group(1) if m else "~", 0, f))] += n
    out.append("own time by component:")
    for label, n in sorted(by_comp.items(), key=lambda kv: -kv[1]):
        out.append(f"  {100 * n / busy:5.1f}%  {label}")
    out.append("")
    for title, table in (("by inclusive time (request path)", incl), ("by own time", own)):
        out.append(f"top {args.top} {title}:")
        rows = [(f, n) for f, n in table.items() if not SPY_DISPATCH.search(f)]
        for f, n in sorted(rows, key=lambda kv: -kv[1])[:args.top]:
            out.append(f"  {100 * n / busy:6.1f}%  {f}")
        out.append("")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of load (default 5)")
    parser.add_argument("--connections", "-c", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streaming requests")
    parser.add_argument("--users", type=int, default=0, help="distinct `user` sessions")
    parser.add_argument("--agent", default="main",
                        help="gateway agent: main, or oneread (the whole SSE body in one read)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="the Redis session store at URL (a redis-server you started)")
    parser.add_argument("--save", default=None, metavar="PATH", help="dump the pstats file")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample the twistd daemon with py-spy instead of cProfile")
    args = parser.parse_args(argv)
    if not bl.wrk_path():
        print("wrk is required: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    bl.raise_nofile()
    bl.install_signal_handlers()
    with bl.workdir() as wd:
        try:
            upstream = bl.start_upstream(wd)
            lines = (run_py_spy if args.py_spy else run_cprofile)(args, wd, upstream)
        except KeyboardInterrupt:
            return 130
        finally:
            bl.CHILDREN.stop_all()
    print(f"profile: {'streaming' if args.stream else 'non-streaming'} c={args.connections}"
          + (f", {args.users} users" if args.users else "") + f", {args.duration} s")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
