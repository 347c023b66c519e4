"""Real ``redis-server`` processes for the tests (Debian's ``redis-server`` package).

``redis_url`` (fixture): a Redis every test may use, under a key prefix of its own so tests
never see each other's keys. ``.ci/run`` starts one server for the whole run and passes it in
``MOLTBOT_TEST_REDIS_URL``; without that variable, each xdist worker starts its own. A test that
stops, kills or restarts Redis asks for ``private_redis``: a server of its own.

Under ``CI=true`` a Redis test whose server cannot start fails; elsewhere it is skipped with a
message saying how to run it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest
import pytest_twisted

HOW_TO_RUN = ("needs Debian's redis-server (apt-get install redis-server) or "
              "MOLTBOT_TEST_REDIS_URL=redis://127.0.0.1:<port>/0")


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Redis tests must run under CI: {reason}")
    pytest.skip(f"{reason}; {HOW_TO_RUN}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child on a loopback port, its data in a temp dir; it can be
    stopped, killed and started again on the same port (the same data with ``appendonly``)."""

    def __init__(self, directory: Path, appendonly: bool = True):
        self.directory = directory
        self.port = _free_port()
        self.appendonly = appendonly
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.directory), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--loglevel", "warning",
                "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                _missing(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def _shared_redis_url() -> Iterator[str]:
    given = os.environ.get("MOLTBOT_TEST_REDIS_URL")
    if given:
        yield given
        return
    directory = Path(tempfile.mkdtemp(prefix="moltbot-redis-"))
    server = RedisServer(directory, appendonly=False)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_url(_shared_redis_url: str) -> str:
    """The URL of a running Redis; use it with ``redis_prefix``."""
    return _shared_redis_url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (AOF on, ``appendfsync always``), to stop and restart."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest_twisted.async_yield_fixture
async def redis_link(redis_url: str, redis_prefix: str):
    """A connected ``RedisLink`` under ``redis_prefix``; the test's keys are deleted after."""
    from twisted.internet import reactor

    from moltbot_gw.redis import RedisLink

    link = RedisLink(redis_url, reactor, key_prefix=redis_prefix, command_timeout=5)
    await link.connect()
    yield link
    keys = await link.execute("KEYS", redis_prefix + "*")
    if keys:
        await link.execute("DEL", *keys)
    await link.disconnect()
