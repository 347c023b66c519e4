"""The ``--workers N`` parent: binds the port once, starts N worker processes, hands each
accepted connection to the next worker that serves (``dealer.py``), restarts a worker that
dies (with a backoff if it crashes in a loop), and forwards SIGTERM (every worker drains) and
SIGHUP (every worker reloads). It serves no request itself.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Optional, Sequence

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .dealer import ConnectionDealer, channel_pair
from .worker import CHANNEL_FD, LIFELINE_FD, READY_FD, READY_LINE, WORKER_ENV

FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# A worker that ran this long before dying was not crashing in a loop: restart it promptly.
STABLE_SECONDS = 10.0
# After the workers' own grace period, how long the parent waits before SIGKILL.
KILL_MARGIN_SECONDS = 10.0
LISTEN_BACKLOG = 128


def bind_listening_socket(interface: str, port: int) -> socket.socket:
    """The parent's listening socket (raises ``OSError``: port in use, no such address).
    Blocking calls: this runs once, before the reactor does."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # as Twisted's listenTCP does (and, like it, an IPv6 socket keeps the system's
        # dual-stack default)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def next_restart_delay(previous: float, lived: float) -> float:
    """1 s after a worker that ran a while; doubling up to 30 s while it keeps dying fast."""
    if lived >= STABLE_SECONDS or previous <= 0:
        return FIRST_RESTART_DELAY
    return min(previous * 2, MAX_RESTART_DELAY)


class _WorkerProcess(protocol.ProcessProtocol):
    """One running worker as the parent sees it."""

    def __init__(self, parent: "WorkerParent", index: int):
        self.parent = parent
        self.index = index
        self.started_at = parent.reactor.seconds()
        self.pid: Optional[int] = None     # once spawned
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: Optional[int] = None
        self.ready = False
        self.channel: Optional[socket.socket] = None   # the parent's end (dealer.py)
        self._buffer = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != READY_FD:
            return
        self._buffer += data
        if READY_LINE in self._buffer:
            self._buffer = b""
            self.parent.worker_ready(self)

    def processEnded(self, reason: Failure) -> None:
        self.ready = False
        if self.channel is not None:
            self.channel.close()
        self.exit_code = getattr(reason.value, "exitCode", None)
        signal_number = getattr(reason.value, "signal", None)
        self.parent.worker_ended(self, self.exit_code, signal_number)
        self.ended.callback(self.exit_code)

    def send(self, signum: int) -> None:
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess(signum)


class WorkerParent(Service):
    """Owns the listening socket and the workers; ``argv`` starts one worker (twistd)."""

    log = Logger(namespace="moltbot_gw.workers.parent")

    def __init__(self, reactor, listening: socket.socket, count: int, argv: Sequence[str],
                 grace_seconds: float, state_dir_lock=None):
        self.reactor = reactor
        self.listening = listening
        self.count = count
        self.argv = list(argv)
        self.grace_seconds = grace_seconds
        self.state_dir_lock = state_dir_lock   # held for the parent's life: one gateway
        self.workers: dict[int, _WorkerProcess] = {}
        self.dealer = ConnectionDealer(reactor, listening, self._channels)
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._announced = False
        self.stopping = False
        self.failed = False

    # -- starting and restarting ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        env = dict(os.environ, **{WORKER_ENV: str(index)})
        worker = _WorkerProcess(self, index)
        worker.channel, worker_end = channel_pair()
        try:
            transport = self.reactor.spawnProcess(
                worker, sys.executable, self.argv, env=env,
                childFDs={1: 1, 2: 2, CHANNEL_FD: worker_end.fileno(), LIFELINE_FD: "w",
                          READY_FD: "r"})
        finally:
            worker_end.close()   # the worker has its copy
        worker.pid = transport.pid
        self.workers[index] = worker
        self.log.info("Started worker {worker} (pid {pid})", worker=index, pid=worker.pid)

    def worker_ready(self, worker: _WorkerProcess) -> None:
        self.log.info("Worker {worker} (pid {pid}) is serving", worker=worker.index,
                      pid=worker.pid)
        worker.ready = True
        if not self.stopping:
            self.dealer.start()
        if not self._announced and len(self.workers) == self.count and all(
                w.ready for w in self.workers.values()):
            self._announced = True
            host, port = self.listening.getsockname()[:2]
            self.log.info("moltbot-gw parent with {n} workers listening on {host}:{port} "
                          "(HTTP and WebSocket)", n=self.count, host=host, port=port)

    def worker_ended(self, worker: _WorkerProcess, code: Optional[int],
                     signum: Optional[int]) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        how = f"exit status {code}" if signum is None else f"signal {signum}"
        if self.stopping:
            self.log.info("Worker {worker} (pid {pid}) ended: {how}", worker=worker.index,
                          pid=worker.pid, how=how)
            # a worker SIGTERMed (by the whole process group, say) before its handlers
            # were in place had nothing to drain: that is a clean stop too
            if code != 0 and not (signum == signal.SIGTERM and not worker.ready):
                self.failed = True
            return
        lived = self.reactor.seconds() - worker.started_at
        delay = next_restart_delay(self._delays.get(worker.index, 0.0), lived)
        self._delays[worker.index] = delay
        self.log.warn("Worker {worker} (pid {pid}) died ({how}) after {lived:.1f}s; "
                      "starting a new one in {delay:.0f}s", worker=worker.index,
                      pid=worker.pid, how=how, lived=lived, delay=delay)
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn,
                                                              worker.index)

    def _channels(self) -> list[socket.socket]:
        """The channels of the workers that serve, in worker order: the dealer's turns."""
        return [worker.channel for _, worker in sorted(self.workers.items())
                if worker.ready and worker.channel is not None]

    # -- signals -----------------------------------------------------------------------

    def reload_workers(self) -> None:
        """SIGHUP: every worker re-reads the config itself (the parent has nothing to apply:
        port and bind take a restart). Only workers that serve: one still starting has no
        handler yet (SIGHUP would kill it) and reads the file as it starts."""
        ready = [worker for worker in self.workers.values() if worker.ready]
        self.log.info("Received SIGHUP; asking {n} worker(s) to reload", n=len(ready))
        for worker in ready:
            worker.send(signal.SIGHUP)

    @defer.inlineCallbacks
    def stopService(self):
        """SIGTERM every worker, wait while they drain (their grace period, then a margin,
        then SIGKILL); the parent's exit status says whether all of them ended cleanly."""
        self.stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        self.dealer.stop()
        self.listening.close()   # no new connections; the workers drain theirs
        workers = list(self.workers.values())
        for worker in workers:
            worker.send(signal.SIGTERM)
        kill = self.reactor.callLater(self.grace_seconds + KILL_MARGIN_SECONDS,
                                      self._kill, workers)
        yield defer.DeferredList([w.ended for w in workers])
        if kill.active():
            kill.cancel()
        yield super().stopService()
        if self.failed:
            self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)

    def _kill(self, workers) -> None:
        for worker in workers:
            if worker.exit_code is None and worker.transport is not None:
                self.log.error("Worker {worker} (pid {pid}) did not stop; killing it",
                               worker=worker.index, pid=worker.pid)
                worker.send(signal.SIGKILL)


def _exit_failed() -> None:
    """A worker did not end cleanly: the parent's exit status must say so (twistd itself
    always exits 0 after a requested stop)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
