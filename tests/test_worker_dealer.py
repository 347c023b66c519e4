"""``--workers``: the parent accepts connections and deals them to the workers in turn over
UNIX socket pairs (``workers/dealer.py``); a worker adopts what it is handed. Real sockets and
the real reactor, in one process: the parent's and the workers' sides of the channels."""
from __future__ import annotations

import fcntl
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from moltbot_gw.workers.dealer import (
    ConnectionDealer,
    HandedConnections,
    channel_pair,
    listening_address,
)

from .support.waiting import until


@pytest.fixture
def listening():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def pairs():
    """Two workers' channels: (parent's end, worker's end) each."""
    made = [channel_pair() for _ in range(2)]
    yield made
    for parent_end, worker_end in made:
        parent_end.close()
        worker_end.close()


def connect(listening: socket.socket, n: int) -> list[socket.socket]:
    """``n`` clients, their connections complete in the listening socket's queue."""
    return [socket.create_connection(listening.getsockname(), timeout=5) for _ in range(n)]


def handed(worker_end: socket.socket) -> list[socket.socket]:
    """The connections waiting in a worker's end of its channel."""
    worker_end.setblocking(False)
    out = []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(worker_end, 64, 64)
        except BlockingIOError:
            return out
        out += [socket.socket(fileno=fd) for fd in fds]
        if not data:
            return out


def test_connections_are_dealt_to_the_workers_in_turn(listening, pairs):
    dealer = ConnectionDealer(reactor, listening, lambda: [p for p, _ in pairs])
    clients = connect(listening, 6)
    try:
        dealer.doRead()
        got = [handed(worker_end) for _, worker_end in pairs]
        assert [len(g) for g in got] == [3, 3]
        # each handed socket is one of the clients' connections, in the order they came
        order = [got[i % 2][i // 2].getpeername() for i in range(6)]
        assert order == [c.getsockname() for c in clients]
        got[1][0].sendall(b"from worker 2")
        assert clients[1].recv(64) == b"from worker 2"
        for sockets in got:
            for s in sockets:
                # non-blocking, ready for the worker's reactor
                assert fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
                s.close()
    finally:
        for c in clients:
            c.close()


def test_a_worker_that_stopped_taking_connections_is_skipped_and_none_is_lost(listening,
                                                                              pairs):
    dealer = ConnectionDealer(reactor, listening, lambda: [p for p, _ in pairs])
    pairs[0][1].shutdown(socket.SHUT_RD)     # worker 1 drains
    clients = connect(listening, 4)
    try:
        dealer.doRead()
        assert len(handed(pairs[1][1])) == 4
    finally:
        for c in clients:
            c.close()


def test_without_a_worker_that_serves_connections_wait_in_the_queue(listening):
    channels: list = []
    dealer = ConnectionDealer(reactor, listening, lambda: channels)
    dealer.start()
    assert not dealer._reading                  # nobody to hand them to: not accepting
    clients = connect(listening, 2)
    parent_end, worker_end = channel_pair()
    try:
        channels.append(parent_end)             # a worker is ready
        dealer.doRead()
        assert len(handed(worker_end)) == 2
    finally:
        dealer.stop()
        for c in clients:
            c.close()
        parent_end.close()
        worker_end.close()


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


@pytest_twisted.ensureDeferred
async def test_a_worker_serves_what_it_is_handed_and_stops_taking_more(listening):
    (parent_1, end_1), (parent_2, end_2) = channel_pair(), channel_pair()
    worker = HandedConnections(reactor, end_1, Factory.forProtocol(Echo),
                               listening_address("127.0.0.1", listening.getsockname()[1]))
    worker.startListening()
    dealer = ConnectionDealer(reactor, listening, lambda: [parent_1, parent_2])
    clients = connect(listening, 2)
    try:
        dealer.deal(listening.accept()[0])          # to worker 1, adopted by its reactor
        clients[0].setblocking(False)
        clients[0].send(b"ping")
        echoed = []

        def read():
            try:
                echoed.append(clients[0].recv(64))
            except BlockingIOError:
                pass
            return echoed
        await until(read)
        assert echoed == [b"ping"]
        assert worker.getHost().port == listening.getsockname()[1]
        await worker.stopListening()                # draining: it takes no more ...
        dealer.deal(listening.accept()[0])          # ... so the next goes to worker 2
        assert len(handed(end_2)) == 1
    finally:
        for c in clients:
            c.close()
        for s in (parent_1, parent_2, end_2):
            s.close()
