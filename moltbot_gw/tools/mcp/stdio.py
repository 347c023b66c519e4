"""The stdio transport: an MCP server as a child process (Twisted process support, its own
process group) speaking newline-delimited JSON-RPC on stdin/stdout. Its stderr is logged line
by line, capped, never shown to a client. The environment is fresh: PATH, HOME, LANG and the
configured ``env``, never the gateway's secrets."""
from __future__ import annotations

import json
import os
import signal
from typing import Any, Callable, Mapping

from twisted.internet import defer, protocol
from twisted.logger import Logger

from ..exec import CHILD_PATH, SETSID

log = Logger()
MAX_LINE_BYTES = 16 * 1024 * 1024     # one JSON-RPC message; a longer line ends the server
MAX_STDERR_LINE = 1000                # characters of one stderr line that are logged
STOP_GRACE_SECONDS = 2.0              # after closing stdin, before SIGKILL


def server_env(configured: Mapping[str, str]) -> dict[str, str]:
    """A fresh environment: nothing is inherited from the gateway but HOME, so no token,
    password or provider key reaches the server unless its config hands it one."""
    env = {"PATH": CHILD_PATH, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}
    env.update(configured)
    return env


class StdioTransport(protocol.ProcessProtocol):
    """One running stdio server. ``on_message`` gets each parsed message; ``ended`` fires
    (never fails) with a short reason once the process is gone."""

    def __init__(self, server: str, on_message: Callable[[Any], None]):
        self.server = server
        self.on_message = on_message
        self.ended: defer.Deferred = defer.Deferred()
        self.pid: Any = None
        self._out = bytearray()
        self._err = bytearray()
        self._gone = False
        self._kill_timer: Any = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid if self.transport is not None else None

    def send(self, message: dict[str, Any]) -> None:
        if self._gone or self.transport is None:
            return
        self.transport.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def outReceived(self, data: bytes) -> None:
        self._out += data
        while True:
            end = self._out.find(b"\n")
            if end < 0:
                break
            line = bytes(self._out[:end]).strip()
            del self._out[:end + 1]
            if line:
                self._line(line)
        if len(self._out) > MAX_LINE_BYTES:
            log.warn("MCP server {server} wrote a message over {n} bytes: stopping it",
                     server=self.server, n=MAX_LINE_BYTES)
            self._out.clear()
            self.kill()

    def _line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("MCP server {server} wrote a line that is not JSON on stdout",
                     server=self.server)
            return
        self.on_message(message)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, rest = bytes(self._err).split(b"\n")
        self._err = bytearray(rest[-MAX_STDERR_LINE * 4:])
        for line in lines:
            text = line.decode("utf-8", errors="replace").rstrip()
            if text:
                log.info("MCP server {server} stderr: {line}", server=self.server,
                         line=text[:MAX_STDERR_LINE])

    def processEnded(self, reason: Any) -> None:
        self._gone = True
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        code, signum = reason.value.exitCode, reason.value.signal
        why = f"signal {signum}" if signum is not None else f"exit code {code}"
        self.ended.callback(why)

    def stop(self, reactor: Any) -> defer.Deferred:
        """Close stdin (an MCP server exits on it), SIGKILL its group if it has not exited
        after ``STOP_GRACE_SECONDS``; fires once it has ended."""
        if not self._gone and self.transport is not None:
            self.transport.closeStdin()
            self._kill_timer = reactor.callLater(STOP_GRACE_SECONDS, self.kill)
        return self.ended_copy()

    def ended_copy(self) -> defer.Deferred:
        """A Deferred of its own firing when the process is gone."""
        copy: defer.Deferred = defer.Deferred()

        def fire(why: str) -> str:
            copy.callback(why)
            return why

        self.ended.addCallback(fire)
        return copy

    def kill(self) -> None:
        """SIGKILL the server's process group (its pid is the group id: setsid)."""
        if self._gone or not self.pid:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def spawn(reactor: Any, server: str, settings: Any,
          on_message: Callable[[Any], None]) -> StdioTransport:
    """Start the server ``settings`` (an ``MCPServerConfig`` with ``command``) describes."""
    process = StdioTransport(server, on_message)
    argv = [SETSID, settings.command, *settings.args]
    reactor.spawnProcess(process, SETSID, argv, env=server_env(settings.env),
                         path=settings.cwd or None)
    return process
