"""Shared machinery of the benchmark harness: child processes (fake upstream, bare baseline,
gateway daemon) with guaranteed cleanup, RSS readings, wrk runs, and the asyncio clients used
by the connection-count scenarios. Everything talks to 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import base64
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_SCRIPT = HERE / "wrk" / "chat.lua"
HOST = "127.0.0.1"          # the only address any benchmark traffic goes to
NOFILE = 65536
TOKEN = "bench-token-0123456789abcdef"

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


# --- limits and processes ---------------------------------------------------------------

def raise_nofile(target: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit); returns soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, target), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_libc = None


def _child_setup() -> None:
    """preexec_fn: raise the fd limit and die with the harness (even on SIGKILL of it)."""
    raise_nofile()
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# scaleout.py: run the load generator (and, there, the upstream and Redis) as SCHED_BATCH
# tasks -- same nice level and CPU share, but they do not preempt a gateway on every wakeup
WRK_SCHED_BATCH = False


def as_batch_task(pid: int = 0) -> None:
    """``pid`` (0: this process) becomes SCHED_BATCH: it gets its fair share of the CPU but
    never preempts a running task when it wakes up."""
    os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))


def _wrk_setup() -> None:
    _child_setup()
    if WRK_SCHED_BATCH:
        as_batch_task()


class Children:
    """Every child process the harness started; ``stop_all`` ends them (TERM, then KILL)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(args, preexec_fn=_child_setup, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc, timeout=5.0)
            except Exception:
                try:
                    proc.kill()
                except Exception:
                    pass


CHILDREN = Children()


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGINT (also when started in the background, where it is inherited as ignored),
    SIGTERM and SIGHUP unwind like Ctrl-C, and the ``finally`` blocks clean up."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    signal.signal(signal.SIGHUP, _sigterm_to_interrupt)


def rss_kb(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid) -> float:
    """CPU seconds of a process plus its waited-for children (utime+stime+cutime+cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_cpu_s(pid) -> float:
    """CPU seconds of a process and of its live children too (a gateway's transcript writer,
    the workers of a ``--workers`` parent): ``proc_cpu_s`` counts only children that ended."""
    total = proc_cpu_s(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_cpu_s(int(child)) for child in children)


def _busy_s() -> float:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


class CpuMeter:
    """How busy the machine was during a measurement, and how much of that was not ours
    (the harness, wrk, and the given server pids): other processes skew the numbers."""

    def __init__(self, pids):
        self.pids = list(pids) + ["self"]
        self.t0 = time.monotonic()
        self.busy0 = _busy_s()
        self.ours0 = {p: tree_cpu_s(p) for p in self.pids}

    def stop(self) -> dict:
        elapsed = max(1e-6, time.monotonic() - self.t0)
        busy = _busy_s() - self.busy0
        ours = sum(tree_cpu_s(p) - v for p, v in self.ours0.items())
        return {"busy_cores": busy / elapsed, "ours_cores": ours / elapsed,
                "foreign_cores": max(0.0, busy - ours) / elapsed}


def fd_count(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def wait_fds(pid: int, at_most: int, timeout: float) -> Optional[float]:
    """Wait until the process has at most ``at_most`` open fds; seconds taken, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        count = fd_count(pid)
        if count is None or count <= at_most:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def mb(kb: Optional[int]) -> str:
    return "?" if kb is None else f"{kb / 1024:.0f} MB"


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_kb(self) -> Optional[int]:
        return rss_kb(self.proc.pid)


def _wait_for_line(proc, path: Path, pattern: str, timeout: float, what: str) -> re.Match:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        match = regex.search(text)
        if match:
            return match
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else ""
    raise RuntimeError(f"{what} did not start (exit status {proc.poll()}):\n{tail}")


def start_script(name: str, script: str, args: list[str], workdir: Path, env=None) -> Server:
    """Start ``benchmarks/<script>`` (prints ``PORT n`` when listening)."""
    out = workdir / f"{name}.out"
    with open(out, "wb") as f:
        proc = CHILDREN.spawn([sys.executable, str(HERE / script)] + args, stdout=f,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env, cwd=str(workdir))
    match = _wait_for_line(proc, out, r"PORT (\d+)", 30, name)
    return Server(name, proc, int(match.group(1)), out)


def start_upstream(workdir: Path, slow_interval: float = 0.2) -> Server:
    return start_script("upstream", "upstream.py",
                        ["--port", "0", "--slow-interval", str(slow_interval)], workdir)


def start_baseline(workdir: Path, upstream: Server, pool_size: int = 64) -> Server:
    return start_script("baseline", "baseline.py",
                        ["--upstream", upstream.origin, "--port", "0", "--pool-size",
                         str(pool_size), "--log", str(workdir / "baseline.log")], workdir)


def upstream_stats(upstream: Server) -> dict:
    """The fake upstream's slow-stream counters since the last call (peak concurrency)."""
    import urllib.request
    with urllib.request.urlopen(f"{upstream.origin}/stats", timeout=10) as response:
        return json.loads(response.read())


def gateway_config(upstream: Server, max_concurrent: int = 1100,
                   tools_workspace: Optional[Path] = None) -> dict:
    """One agent ``main`` on ``bench/model`` (the fast upstream) and one agent ``slow`` on
    ``benchslow/model`` (the same upstream's slow path) for the concurrent-streams scenario,
    one agent ``oneread`` on ``benchoneread/model`` (the whole SSE body in one read), and
    with ``tools_workspace``, an agent ``tools`` on builtin/echo with group:fs there."""
    config = {
        "gateway": {
            "port": 0, "bind": "loopback", "auth": {"mode": "token"},
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            # every load generator connects from 127.0.0.1, i.e. as one client: the
            # per-client fairness limit must not be what the scenarios measure
            "limits": {"perClientConcurrency": max_concurrent},
        },
        "models": {"providers": {
            "bench": {"api": "openai-completions", "baseUrl": f"{upstream.origin}/v1"},
            "benchslow": {"api": "openai-completions", "baseUrl": f"{upstream.origin}/slow/v1"},
            "benchoneread": {"api": "openai-completions",
                             "baseUrl": f"{upstream.origin}/oneread/v1"},
        }},
        "agents": {
            "defaults": {"model": "bench/model", "maxConcurrent": max_concurrent},
            "list": [{"id": "main", "default": True, "model": "bench/model"},
                     {"id": "slow", "model": "benchslow/model"},
                     {"id": "oneread", "model": "benchoneread/model"}],
        },
    }
    if tools_workspace is not None:
        config["agents"]["list"].append({"id": "tools", "model": "builtin/echo",
                                         "workspace": str(tools_workspace),
                                         "tools": {"allow": ["group:fs"]}})
    return config


TOOLS_NOTES = "Buy milk. Call Ada at five. The benchmark reads this file.\n"


def tools_workspace(gwdir: Path) -> Path:
    """The ``tools`` agent's workspace: one small ``notes.txt`` for the ``read`` tool."""
    workspace = gwdir / "tools-ws"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "notes.txt").write_text(TOOLS_NOTES)
    return workspace


def gateway_env(state_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}
    env["MOLTBOT_STATE_DIR"] = str(state_dir)
    env["CLAWDBOT_GATEWAY_TOKEN"] = TOKEN
    return env


def start_gateway(workdir: Path, upstream: Server, name: str = "gateway",
                  max_concurrent: int = 1100) -> Server:
    """``twistd -n --pidfile= moltbot-gw --config FILE --port 0`` with its own state dir."""
    gwdir = workdir / name
    gwdir.mkdir(parents=True, exist_ok=True)
    config_path = gwdir / "bench.json5"
    config_path.write_text(json.dumps(gateway_config(upstream, max_concurrent,
                                                     tools_workspace(gwdir)), indent=2))
    log = gwdir / "gateway.log"
    with open(log, "wb") as f:
        proc = CHILDREN.spawn(TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--config",
                                        str(config_path), "--port", "0"],
                              stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=gateway_env(gwdir / "state"), cwd=str(gwdir))
    match = _wait_for_line(proc, log, r"listening on \S+:(\d+)", 60, "gateway daemon")
    return Server(name, proc, int(match.group(1)), log, {"state_dir": gwdir / "state"})


@contextmanager
def running(server_factory, *args, **kwargs):
    server = server_factory(*args, **kwargs)
    try:
        yield server
    finally:
        CHILDREN.stop(server.proc)


@contextmanager
def workdir(keep: bool = False):
    path = Path(tempfile.mkdtemp(prefix="moltbot-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def chat_answer(url: str, token: str, model: str, content: str, timeout: float = 10.0) -> str:
    """One non-streaming chat completion (urllib, blocking): the assistant's text. The
    scenarios check with it that the load they are about to measure does what they claim."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]})
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"] or ""


# --- wrk ---------------------------------------------------------------------------------

def wrk_path() -> Optional[str]:
    return shutil.which("wrk")


def run_wrk(url: str, connections: int, duration: float, *, token: str = "",
            stream: bool = False, users: int = 0, model: str = "moltbot:main",
            tag: str = "t", timeout_s: float = 10.0, content: str = "") -> dict:
    """One wrk run (one thread, ``connections`` keep-alive connections); returns the
    BENCHJSON numbers plus ``rps``. Bounded: wrk stops after ``duration``. ``content``: the
    user message (wrk/chat.lua's default when empty)."""
    assert url.startswith(f"http://{HOST}:"), url
    env = dict(os.environ, BENCH_TOKEN=token, BENCH_STREAM="1" if stream else "0",
               BENCH_USERS=str(users), BENCH_MODEL=model, BENCH_TAG=tag,
               BENCH_CONTENT=json.dumps(content)[1:-1])
    args = [wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
            f"--timeout", f"{timeout_s:g}s", "-s", str(WRK_SCRIPT), url]
    proc = subprocess.run(args, env=env, capture_output=True, text=True,
                          timeout=duration + timeout_s + 30, preexec_fn=_wrk_setup)
    match = re.search(r"BENCHJSON (\{.*\})", proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} "
                           f"{proc.stderr[-2000:]}")
    result = json.loads(match.group(1))
    seconds = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / seconds if seconds else 0.0
    result["errors"] = sum(result[k] for k in ("err_connect", "err_read", "err_write",
                                               "err_timeout"))
    return result


def merge_wrk(runs: list[dict]) -> dict:
    """Several wrk runs as one: summed counts, req/s over the summed time, and the median
    of the runs' percentiles."""
    if len(runs) == 1:
        return dict(runs[0], rounds=1)
    out = {k: sum(r[k] for r in runs) for k in ("requests", "duration_us", "bytes", "err_connect",
                                                 "err_read", "err_write", "err_status",
                                                 "err_timeout", "errors")}
    for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        out[k] = percentile([r[k] for r in runs], 50)
    out["max_ms"] = max(r["max_ms"] for r in runs)
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6) if out["duration_us"] else 0.0
    out["rounds"] = len(runs)
    out["rps_per_round"] = [round(r["rps"], 1) for r in runs]
    return out


# --- asyncio clients -------------------------------------------------------------------

def percentile(values: list[float], p: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * (len(ordered) - 1)))))
    return ordered[k]


class RSSSampler:
    """Samples a process's VmRSS every ``interval`` s in the running event loop."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.peak: Optional[int] = None
        self._task: Optional[asyncio.Task] = None

    async def _run(self):
        while True:
            value = rss_kb(self.pid)
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value
            await asyncio.sleep(self.interval)

    def start(self):
        self._task = asyncio.ensure_future(self._run())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


@dataclass
class StreamOutcome:
    ok: bool = False
    status: int = 0
    events: int = 0
    ttfb: Optional[float] = None
    duration: Optional[float] = None
    error: str = ""


async def slow_streams(port: int, path: str, body: bytes, token: Optional[str], n: int,
                       *, connect_parallel: int = 40, stream_timeout: float = 60.0,
                       deadline: float = 120.0, rss_pid: Optional[int] = None) -> dict:
    """Open ``n`` connections first (ramped), then send ``n`` streaming requests at once so
    that all of them are in flight together, and read each to the end (``Connection: close``).
    A stream is good when it answered 200 and ended with ``data: [DONE]``."""
    head = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Accept: text/event-stream", "Connection: close"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    outcomes = [StreamOutcome() for _ in range(n)]
    conns: list = [None] * n
    sem = asyncio.Semaphore(connect_parallel)
    active = 0
    peak_active = 0
    sampler = RSSSampler(rss_pid) if rss_pid else None
    if sampler:
        sampler.start()

    async def connect(i):
        async with sem:
            try:
                conns[i] = await asyncio.wait_for(asyncio.open_connection(HOST, port), 15)
            except Exception as e:  # noqa: BLE001 - reported per stream
                outcomes[i].error = f"connect: {type(e).__name__}"

    async def one(i):
        nonlocal active, peak_active
        if conns[i] is None:
            outcomes[i].error = outcomes[i].error or "not connected"
            return
        reader, writer = conns[i]
        out = outcomes[i]
        start = time.monotonic()
        chunks = []
        try:
            writer.write(request)
            active += 1
            peak_active = max(peak_active, active)

            async def read_all():
                while True:
                    data = await reader.read(65536)
                    if not data:
                        return
                    if out.ttfb is None:
                        out.ttfb = time.monotonic() - start
                    chunks.append(data)

            await asyncio.wait_for(read_all(), stream_timeout)
            raw = b"".join(chunks)
            status_line = raw.split(b"\r\n", 1)[0]
            parts = status_line.split(b" ")
            out.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            out.events = raw.count(b"data: ")
            out.ok = out.status == 200 and b"data: [DONE]" in raw
            if not out.ok:
                out.error = f"status {out.status}" if out.status != 200 else "no [DONE]"
        except asyncio.TimeoutError:
            out.error = "timeout"
        except Exception as e:  # noqa: BLE001
            out.error = f"{type(e).__name__}"
        finally:
            out.duration = time.monotonic() - start
            active -= 1
            writer.close()

    t0 = time.monotonic()
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(connect(i) for i in range(n))), deadline / 2)
        except asyncio.TimeoutError:
            pass
        connected = sum(c is not None for c in conns)
        t1 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), deadline / 2)
        except asyncio.TimeoutError:
            for o in outcomes:
                if not o.ok and not o.error:
                    o.error = "harness deadline"
    finally:
        for c in conns:
            if c is not None:
                c[1].close()
        if sampler:
            await sampler.stop()
    wall = time.monotonic() - t1
    good = [o for o in outcomes if o.ok]
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            errors[o.error or "?"] = errors.get(o.error or "?", 0) + 1
    durations = [o.duration for o in good]
    return {"n": n, "connected": connected, "ok": len(good), "errors": errors,
            "connect_s": t1 - t0, "wall_s": wall, "peak_active": peak_active,
            "rps": len(good) / wall if wall else 0.0,
            "p50_ms": (percentile(durations, 50) or 0) * 1000,
            "p99_ms": (percentile(durations, 99) or 0) * 1000,
            "ttfb_p50_ms": (percentile([o.ttfb for o in good if o.ttfb], 50) or 0) * 1000,
            "events_min": min((o.events for o in good), default=0),
            "peak_rss_kb": sampler.peak if sampler else None}


# --- WebSocket client (raw asyncio: handshake, masked text frames) -----------------------

def ws_connect_frame(token: str, req_id: str = "1") -> dict:
    return {"type": "req", "id": req_id, "method": "connect",
            "params": {"minProtocol": 1, "maxProtocol": 1,
                       "client": {"id": "bench", "version": "0", "platform": "linux"},
                       "auth": {"token": token}}}


def ws_encode(payload: bytes, opcode: int = 1) -> bytes:
    n = len(payload)
    mask = os.urandom(4)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    if n:
        keystream = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
            n, "big")
    return head + mask + payload


async def ws_read_frame(reader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n) if n else b""
    if mask:
        keystream = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
            n, "big")
    return b0 & 0x0F, payload


class WSConn:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.frames = 0
        self.drain_task: Optional[asyncio.Task] = None

    async def drain(self):
        """Idle client: read whatever the server pushes, answer pings, note a close."""
        try:
            while True:
                opcode, payload = await ws_read_frame(self.reader)
                self.frames += 1
                if opcode == 0x9:
                    self.writer.write(ws_encode(payload, 0xA))
                elif opcode == 0x8:
                    self.closed = True
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.closed = True
        except asyncio.CancelledError:
            raise


async def ws_open(port: int, token: str, timeout: float = 15.0) -> tuple[Optional[WSConn], dict]:
    """Handshake + ``connect``; returns (connection, info). info["ok"] tells the outcome."""
    info: dict = {"ok": False}
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except Exception as e:  # noqa: BLE001
        return None, {"ok": False, "error": f"connect: {type(e).__name__}"}
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            return None, {"ok": False, "error": "upgrade refused: "
                          + head.split(b"\r\n", 1)[0].decode("latin-1")}
        writer.write(ws_encode(json.dumps(ws_connect_frame(token)).encode()))

        async def answer():
            while True:
                opcode, payload = await ws_read_frame(reader)
                if opcode == 0x9:
                    writer.write(ws_encode(payload, 0xA))
                    continue
                if opcode == 0x8:
                    return {"ok": False, "error": "closed by server "
                            + payload[2:].decode("utf-8", "replace")}
                if opcode != 0x1:
                    continue
                try:
                    frame = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(frame, dict) and frame.get("type") == "res" \
                        and frame.get("id") == "1":
                    if frame.get("ok") is True:
                        return {"ok": True}
                    err = frame.get("error") or {}
                    return {"ok": False, "error": f"{err.get('code')}: {err.get('message')}"}

        info = await asyncio.wait_for(answer(), timeout)
    except Exception as e:  # noqa: BLE001
        writer.close()
        return None, {"ok": False, "error": f"{type(e).__name__}: {e}"[:200]}
    if not info.get("ok"):
        writer.close()
        return None, info
    return WSConn(reader, writer), info


async def ws_idle(port: int, token: str, n: int, *, parallel: int = 40, hold: float = 2.0,
                  deadline: float = 150.0, rss_pid: Optional[int] = None) -> dict:
    """Open ``n`` authenticated WebSocket connections, keep them idle ``hold`` seconds
    (reading pushes, answering pings), sample the server's RSS, then close them all."""
    sem = asyncio.Semaphore(parallel)
    conns: list[WSConn] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sampler = RSSSampler(rss_pid, 0.25) if rss_pid else None
    result: dict = {"n": n}

    async def one(i):
        async with sem:
            t = time.monotonic()
            conn, info = await ws_open(port, token)
        if conn is None:
            key = (info.get("error") or "?")[:80]
            errors[key] = errors.get(key, 0) + 1
            return
        latencies.append(time.monotonic() - t)
        conn.drain_task = asyncio.ensure_future(conn.drain())
        conns.append(conn)

    if sampler:
        sampler.start()
    t0 = time.monotonic()
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), deadline)
        except asyncio.TimeoutError:
            errors["harness deadline"] = n - len(conns) - sum(errors.values())
        connect_s = time.monotonic() - t0
        await asyncio.sleep(hold)
        result.update(
            ok=len(conns), errors=errors, connect_s=connect_s,
            rps=len(conns) / connect_s if connect_s else 0.0,
            p50_ms=(percentile(latencies, 50) or 0) * 1000,
            p99_ms=(percentile(latencies, 99) or 0) * 1000,
            rss_held_kb=rss_kb(rss_pid) if rss_pid else None,
            still_open=sum(not c.closed for c in conns),
            pushed_frames=sum(c.frames for c in conns))
    finally:
        for c in conns:
            if c.drain_task:
                c.drain_task.cancel()
            c.writer.close()
        if sampler:
            await sampler.stop()
    result["peak_rss_kb"] = sampler.peak if sampler else None
    return result
