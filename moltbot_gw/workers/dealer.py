"""How the connections of ``--workers N`` reach the workers: the parent accepts each one and
hands it to the next worker in turn (round robin), over a UNIX socket pair per worker that
carries the connection's file descriptor (``SCM_RIGHTS``); the worker adopts it.

Why not let every worker accept from the shared socket: whichever worker the kernel runs
first takes the whole queue, so a burst of keep-alive connections (a load balancer's pool,
a benchmark's 16) could all land on one worker while the other sat idle -- measured here.
Why not ``SO_REUSEPORT``: the kernel's hash splits a burst unevenly too, and any process of
the same user could bind the port as well and silently take a share of the connections.
Node.js's cluster module deals connections round robin from its parent for the same reason.

A worker that stops taking connections (it drains, or died) shuts its end for reading: the
parent's next hand-over then fails (``EPIPE``) and goes to the next worker, so no accepted
connection is lost in between; what was already handed over is still read and served.
"""
from __future__ import annotations

import os
import socket
from typing import Callable, Sequence

from twisted.internet import address
from twisted.internet.defer import execute, succeed
from twisted.internet.interfaces import IListeningPort, IReadDescriptor, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

MAX_ACCEPTS = 64          # connections a parent accepts per wakeup
MAX_FDS_PER_READ = 64

log = Logger(namespace="moltbot_gw.workers")


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """The parent's end (non-blocking) and the worker's end of one worker's channel."""
    parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_end.setblocking(False)
    return parent_end, worker_end


@implementer(IReadDescriptor)
class ConnectionDealer:
    """The parent's side: accepts from the listening socket and deals each connection to
    the channels ``channels()`` gives (the ready workers'), taking turns."""

    def __init__(self, reactor, listening: socket.socket,
                 channels: Callable[[], Sequence[socket.socket]]):
        self.reactor = reactor
        self.listening = listening
        self.channels = channels
        self._turn = 0
        self._reading = False

    def fileno(self) -> int:
        return self.listening.fileno()

    def logPrefix(self) -> str:
        return "ConnectionDealer"

    def start(self) -> None:
        """Accept while at least one worker takes connections (call again when one is
        ready); until then connections wait in the listening socket's queue."""
        if not self._reading and self.channels():
            self._reading = True
            self.reactor.addReader(self)

    def stop(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def doRead(self) -> None:
        for _ in range(MAX_ACCEPTS):
            if not self.channels():
                self.stop()
                return
            try:
                connection, _ = self.listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:   # out of fds, say: the queue keeps it for later
                log.warn("Cannot accept a connection: {error}", error=str(error))
                return
            with connection:
                connection.setblocking(False)   # the worker's copy shares this flag
                self.deal(connection)

    def deal(self, connection: socket.socket) -> bool:
        """Hand ``connection`` to the next worker that takes it; False when none did (the
        connection is then closed with the caller's copy)."""
        channels = list(self.channels())
        for attempt in range(len(channels)):
            channel = channels[(self._turn + attempt) % len(channels)]
            try:
                socket.send_fds(channel, [b"c"], [connection.fileno()])
            except OSError:   # EPIPE: that worker stopped taking them; full: it is stuck
                continue
            self._turn = (self._turn + attempt + 1) % len(channels)
            return True
        log.warn("No worker took a connection; closed it")
        return False

    def connectionLost(self, reason: failure.Failure) -> None:
        self._reading = False


@implementer(IReadDescriptor, IListeningPort)
class HandedConnections:
    """The worker's side, in place of a listening port: adopts every connection the
    parent hands over on ``channel`` and gives it to ``factory``."""

    def __init__(self, reactor, channel: socket.socket, factory, host: address.IAddress):
        self.reactor = reactor
        self.channel = channel
        self.factory = factory
        self.host = host
        self._listening = False

    def fileno(self) -> int:
        return self.channel.fileno()

    def logPrefix(self) -> str:
        return "HandedConnections"

    def startListening(self) -> None:
        self.channel.setblocking(False)
        self.factory.doStart()
        self._listening = True
        self.reactor.addReader(self)

    def stopListening(self):
        """Take no more connections: the parent's next hand-over to this worker fails and
        goes to another; the connections already handed over are adopted first."""
        if not self._listening:
            return succeed(None)
        self._listening = False
        self.reactor.removeReader(self)
        try:
            self.channel.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        self._adopt_waiting()
        self.factory.doStop()
        return succeed(None)

    def getHost(self) -> address.IAddress:
        return self.host

    def doRead(self) -> None:
        if not self._adopt_waiting():
            log.warn("The parent closed the connection channel; taking no more connections")
            self.stopListening()

    def _adopt_waiting(self) -> bool:
        """Adopt every connection waiting in the channel; False at end of file."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, MAX_FDS_PER_READ,
                                                  MAX_FDS_PER_READ)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            for fd in fds:
                self._adopt(fd)
            if not data:
                return False

    def _adopt(self, fd: int) -> None:
        try:
            probe = socket.socket(fileno=fd)
            family = probe.family
            probe.detach()   # the fd stays ours
            self.reactor.adoptStreamConnection(fd, family, self.factory)
        except Exception:   # noqa: BLE001 - one bad connection must not stop the others
            log.failure("Could not adopt a connection the parent handed over")
        finally:
            os.close(fd)   # the reactor works on its own duplicate

    def connectionLost(self, reason: failure.Failure) -> None:
        self._listening = False


@implementer(IStreamServerEndpoint)
class HandedConnectionsEndpoint:
    """An endpoint whose ``listen`` takes the connections the parent hands over on the
    inherited channel ``fd``; ``host`` is the address the parent listens on."""

    def __init__(self, reactor, fd: int, host: address.IAddress):
        self.reactor = reactor
        self.fd = fd
        self.host = host

    def listen(self, factory):
        def start() -> HandedConnections:
            port = HandedConnections(self.reactor, socket.socket(fileno=self.fd), factory,
                                     self.host)
            port.startListening()
            return port

        return execute(start)


def listening_address(interface: str, port: int) -> address.IAddress:
    """The address the parent listens on, as a worker's port reports it (``getHost``)."""
    if ":" in interface:
        return address.IPv6Address("TCP", interface, port)
    return address.IPv4Address("TCP", interface, port)
