"""A gateway daemon in a subprocess (``twistd -n moltbot-gw``), for the tests that need a real
process: bad input over plain sockets, signals, kill -9. Its own config and state dir; the log
goes to a file, read back for the port it listens on and for what it logged."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .raw_http import request

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
TOKEN = "fuzz-token-0123456789abcdef"


class GatewayDaemon:
    """``twistd -n moltbot-gw`` with its own config and state dir; its log goes to a file (a
    pipe nobody reads would fill up and stall the daemon)."""

    # the log line that says the daemon serves (a subclass may wait for another one)
    listening_pattern = r"listening on 127\.0\.0\.1:(\d+)"

    def __init__(self, workdir: Path, config: dict, token: str = TOKEN,
                 env: Optional[dict] = None, args: tuple = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.config_path = self.workdir / "moltbot.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = self.workdir / "daemon.log"
        self.token = token
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MOLTBOT_", "CLAWDBOT_"))}
        self.env.update({"MOLTBOT_STATE_DIR": str(self.state_dir),
                         "CLAWDBOT_GATEWAY_TOKEN": token, **(env or {})})
        self.args = list(args)       # more moltbot-gw options
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.starts = 0

    def start(self, port: int = 0, timeout: float = 30.0) -> int:
        """Start (again, on the same state dir); returns the port once it listens."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--config", str(self.config_path),
                          "--port", str(port)] + self.args,
                env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            match = re.search(self.listening_pattern, text)
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError("daemon did not start:\n" + self.log_text()[-4000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            return self.alive() and request(self.port, "GET", "/health").status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> Optional[int]:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

