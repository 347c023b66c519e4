"""``twistd -n moltbot-gw --workers N`` as an operator runs it, in subprocesses: both workers
serve from the one port (each counting its own requests, a burst of connections dealt evenly
to them), SIGTERM drains every worker and
the parent exits 0, a killed worker is replaced, SIGHUP reaches every worker, the workers
follow a killed parent, and the refusals (file store, port in use) happen once, exit 1.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid

import pytest

from .support.daemon import TWISTD, GatewayDaemon
from .support.network import ipv6_loopback
from .support.raw_http import request
from .test_crash_safety import Stream, Upstream, daemon_config, wait_until


class WorkersDaemon(GatewayDaemon):
    """The daemon with ``--workers``: ready once the parent says every worker serves."""

    listening_pattern = r"parent with \d+ workers listening on 127\.0\.0\.1:(\d+)"

    def worker_pids(self, index: int) -> list[int]:
        """Every PID worker ``index`` had, oldest first."""
        return [int(pid) for pid in
                re.findall(rf"Started worker {index} \(pid (\d+)\)", self.log_text())]

    def metrics(self) -> tuple[int, str]:
        """GET /metrics: which worker answered, and its metrics."""
        text = request(self.port, "GET", "/metrics").body.decode()
        workers = set(re.findall(r'^moltbot_\w+\{.*worker="(\d+)"\}', text, re.M))
        assert len(workers) == 1, text     # every series names the one worker that answered
        return int(workers.pop()), text

    def answered_by(self) -> tuple[int, float]:
        """GET /metrics: which worker answered, and how many /metrics it had answered."""
        worker, text = self.metrics()
        count = re.search(r'moltbot_http_requests_total\{route="/metrics",status="200",'
                          rf'worker="{worker}"\}} (\S+)', text)
        return worker, float(count.group(1)) if count else 0.0


def config(redis_url: str, base: dict | None = None) -> dict:
    config = dict(base or {})
    config["gateway"] = {**config.get("gateway", {}),
                         "metrics": {"enabled": True, "public": True}}
    # a key prefix of this daemon's own: tests share one Redis (tests/support/redis_server.py)
    config["session"] = {"store": {"backend": "redis", "redis": {
        "url": redis_url, "keyPrefix": f"workers-{uuid.uuid4().hex[:8]}:"}}}
    return config


def until_both_answered(daemon: WorkersDaemon, seen: dict, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while set(seen) != {1, 2}:
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
        worker, count = daemon.answered_by()
        seen.setdefault(worker, []).append(count)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def daemon(tmp_path, redis_url):
    gateway = WorkersDaemon(tmp_path / "gw", config(redis_url), args=("--workers", "2"))
    yield gateway
    gateway.kill()
    for index in (1, 2):
        for pid in gateway.worker_pids(index):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_both_workers_serve_and_count_their_own_requests(daemon):
    daemon.start(timeout=60)
    seen: dict[int, list[float]] = {}
    until_both_answered(daemon, seen)
    for _ in range(6):
        worker, count = daemon.answered_by()
        seen[worker].append(count)
    # each worker's counter counts its own earlier answers, and only those
    for worker, counts in seen.items():
        assert counts == [float(n) for n in range(len(counts))], (worker, counts)
    log = daemon.log_text()
    assert re.search(r"\[worker 1 moltbot_gw\.access#info\] \S+ GET /metrics 200", log)
    assert re.search(r"\[worker 2 moltbot_gw\.access#info\] \S+ GET /metrics 200", log)


def test_a_burst_of_connections_is_dealt_evenly_to_the_workers(daemon):
    """The parent hands connections out in turn: 16 opened at once (a load balancer's pool)
    are 8 on each worker, not all on whichever worker woke first."""
    port = daemon.start(timeout=60)
    burst = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
    served_by = []
    try:
        for sock in burst:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for sock in burst:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            served_by.append(re.search(rb'worker="(\d)"', answer).group(1))
    finally:
        for sock in burst:
            sock.close()
    assert sorted(served_by) == [b"1"] * 8 + [b"2"] * 8


def test_sigterm_drains_both_workers_and_the_parent_exits_0(tmp_path, redis_url):
    up = Upstream(slow_interval=0.6)            # streams of ~6 s
    try:
        gateway = WorkersDaemon(tmp_path / "gw", config(redis_url, daemon_config(up)),
                                args=("--workers", "2"))
        port = gateway.start(timeout=60)
        try:
            # one stream at a time until both workers have one in flight (the kernel may
            # hand a burst of connections to one worker)
            streaming: set[int] = set()
            streams: list[Stream] = []
            while streaming != {1, 2}:
                assert len(streams) < 20, f"streams only on workers {streaming}"
                stream = Stream(port, len(streams), None).start()
                streams.append(stream)
                assert stream.started.wait(timeout=30)
                for _ in range(4):
                    worker, text = gateway.metrics()
                    if re.search(r'moltbot_sse_streams_active\{worker="\d"\} [1-9]', text):
                        streaming.add(worker)
            gateway.proc.send_signal(signal.SIGTERM)
            code = gateway.proc.wait(timeout=40)
            for stream in streams:
                assert stream.finished.wait(timeout=5)
            assert [s.done for s in streams] == [True] * len(streams), \
                [(s.status, s.error, s.raw[-200:]) for s in streams]
            assert code == 0, gateway.log_text()[-3000:]
            log = gateway.log_text()
            for index in (1, 2):
                assert f"[worker {index} moltbot_gw.daemon#info] Received SIGTERM" in log
                assert re.search(rf"Worker {index} \(pid \d+\) ended: exit status 0", log)
                assert all(gone(pid) for pid in gateway.worker_pids(index))
            # the streams were spread over both workers, and each finished its own
            served = set(re.findall(r"\[worker (\d) moltbot_gw\.access#info\] \S+ POST "
                                    r"/v1/chat/completions 200", log))
            assert served == {"1", "2"}, log[-3000:]
        finally:
            gateway.kill()
    finally:
        up.stop()


def test_json_log_events_of_a_worker_carry_its_index(tmp_path, redis_url):
    gateway = WorkersDaemon(tmp_path / "gw", config(redis_url),
                            args=("--workers", "2", "--log-format", "json"))
    try:
        gateway.start(timeout=60)
        until_both_answered(gateway, {})
        assert gateway.terminate() == 0
        events = [json.loads(line) for line in gateway.log_text().splitlines()
                  if line.startswith("{")]
        served = {e.get("moltbot_worker") for e in events
                  if e.get("log_namespace") == "moltbot_gw.access"}
        assert served == {1, 2}
        parent = [e for e in events if "parent with 2 workers listening" in e["text"]]
        assert len(parent) == 1 and "moltbot_worker" not in parent[0]
    finally:
        gateway.kill()


def test_workers_adopt_an_ipv6_socket(tmp_path, redis_url):
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    gateway = WorkersDaemon(tmp_path / "gw", config(redis_url),
                            args=("--workers", "2", "--bind", "::1"))
    gateway.listening_pattern = r"parent with 2 workers listening on ::1:(\d+)"
    try:
        port = gateway.start(timeout=60)
        with socket.create_connection(("::1", port), timeout=15) as client:
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
        assert gateway.terminate() == 0
    finally:
        gateway.kill()


def test_a_killed_worker_is_replaced_by_a_new_one_that_serves(daemon):
    daemon.start(timeout=60)
    until_both_answered(daemon, {})
    [old] = daemon.worker_pids(1)
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: len(daemon.worker_pids(1)) == 2, timeout=30), \
        daemon.log_text()[-3000:]
    new = daemon.worker_pids(1)[1]
    assert new != old
    assert wait_until(lambda: f"Worker 1 (pid {new}) is serving" in daemon.log_text(),
                      timeout=60)
    assert re.search(rf"Worker 1 \(pid {old}\) died \(signal 9\)", daemon.log_text())
    seen: dict[int, list[float]] = {}
    until_both_answered(daemon, seen)
    # the new worker 1 counts from zero: a new process
    assert seen[1][0] == 0.0
    assert daemon.alive()


def test_a_worker_crashing_at_start_is_restarted_with_a_growing_delay(daemon):
    daemon.start(timeout=60)
    good = daemon.config_path.read_text()
    daemon.config_path.write_text('{gateway: {prot: 1}}')   # every new worker refuses it
    [old] = daemon.worker_pids(2)
    os.kill(old, signal.SIGKILL)
    delays = r"Worker 2 \(pid \d+\) died \((?:signal 9|exit status 1)\) after \S+s; " \
             r"starting a new one in (\d+)s"
    assert wait_until(lambda: len(re.findall(delays, daemon.log_text())) >= 3, timeout=60), \
        daemon.log_text()[-3000:]
    assert re.findall(delays, daemon.log_text())[:3] == ["1", "2", "4"]
    assert "gateway.prot: unknown key" in daemon.log_text()
    daemon.config_path.write_text(good)
    assert wait_until(lambda: re.search(r"Worker 2 \(pid \d+\) is serving",
                                        daemon.log_text()[daemon.log_text().index(
                                            "starting a new one in 4s"):]), timeout=60), \
        daemon.log_text()[-3000:]
    assert daemon.terminate() == 0


def test_a_worker_that_does_not_drain_is_killed_and_the_parent_exits_1(tmp_path, redis_url):
    settings = config(redis_url, {"gateway": {"shutdownGraceSeconds": 0.5}})
    gateway = WorkersDaemon(tmp_path / "gw", settings, args=("--workers", "2"))
    try:
        gateway.start(timeout=60)
        [stuck] = gateway.worker_pids(1)
        os.kill(stuck, signal.SIGSTOP)      # cannot handle SIGTERM
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=40) == 1
        log = gateway.log_text()
        assert f"Worker 1 (pid {stuck}) did not stop; killing it" in log
        assert f"Worker 1 (pid {stuck}) ended: signal 9" in log
        assert re.search(r"Worker 2 \(pid \d+\) ended: exit status 0", log)
    finally:
        gateway.kill()


def test_sighup_reaches_every_worker(daemon):
    daemon.start(timeout=60)
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: all(
        f"[worker {i} moltbot_gw.service.GatewayService#info] Configuration reloaded"
        in daemon.log_text() for i in (1, 2)), timeout=30), daemon.log_text()[-3000:]
    assert daemon.terminate() == 0


def test_workers_stop_when_the_parent_is_killed(daemon):
    daemon.start(timeout=60)
    pids = daemon.worker_pids(1) + daemon.worker_pids(2)
    assert len(pids) == 2
    daemon.kill()
    assert wait_until(lambda: all(gone(pid) for pid in pids), timeout=30), \
        daemon.log_text()[-3000:]
    assert "The worker parent is gone; draining and stopping" in daemon.log_text()


def run_daemon(tmp_path, *args, config_text="{}", env=None):
    path = tmp_path / "moltbot.json5"
    path.write_text(config_text)
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}, **(env or {})}
    env["MOLTBOT_STATE_DIR"] = str(tmp_path / "state")
    return subprocess.run(TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--config", str(path),
                                    *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


def test_several_workers_on_the_file_store_are_refused_with_the_reason(tmp_path):
    result = run_daemon(tmp_path, "--port", "0", "--workers", "2")
    assert result.returncode == 1
    assert ('sessions live in local files of one process; --workers 2 needs '
            'session.store.backend "redis" (docs/operations.rst)') in result.stderr


def test_workers_below_one_are_a_usage_error(tmp_path):
    result = run_daemon(tmp_path, "--port", "0", "--workers", "0")
    assert result.returncode != 0
    assert "--workers must be 1 or more, got 0" in result.stderr + result.stdout


def test_a_port_in_use_is_reported_once_by_the_parent(tmp_path, redis_url):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        result = run_daemon(tmp_path, "--port", str(port), "--workers", "2",
                            config_text=json.dumps(config(redis_url)))
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.count(f"cannot listen on 127.0.0.1:{port}") == 1, result.stderr
    assert "Started worker" not in result.stdout + result.stderr


def test_a_config_every_worker_would_refuse_is_refused_once_by_the_parent(tmp_path,
                                                                          redis_url):
    settings = config(redis_url, {"tools": {"exec": {"security": "full", "sandbox": "bwrap"}}})
    result = run_daemon(tmp_path, "--port", "0", "--workers", "2",
                        config_text=json.dumps(settings), env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.count('tools.exec.sandbox is "bwrap" but the bwrap program') == 1, \
        result.stderr
    assert "Started worker" not in result.stdout + result.stderr


def test_restart_delay_doubles_while_a_worker_crashes_in_a_loop():
    from moltbot_gw.workers.parent import (
        FIRST_RESTART_DELAY,
        MAX_RESTART_DELAY,
        STABLE_SECONDS,
        next_restart_delay,
    )

    delay = next_restart_delay(0.0, lived=0.1)
    delays = [delay]
    for _ in range(6):
        delay = next_restart_delay(delay, lived=0.1)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert next_restart_delay(MAX_RESTART_DELAY, lived=STABLE_SECONDS) == FIRST_RESTART_DELAY
