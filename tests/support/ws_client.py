"""A raw WebSocket client for fuzzing: builds client frames exactly as given (websocket-client
refuses to build broken ones), reads the gateway's frames one by one and checks each against
the documented frame shape (docs/ws-protocol.rst), and closes the way RFC 6455 has it."""
from __future__ import annotations

import json
import os
import struct
import time
from typing import Optional

import websocket

from .raw_http import HOST, TOKEN, fresh_client_address

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "/', b"builtins.")
WS_ERROR_CODES = {"INVALID_REQUEST", "UNKNOWN_METHOD", "HANDSHAKE_REQUIRED",
                  "PROTOCOL_MISMATCH", "UNAUTHORIZED", "RATE_LIMITED", "HANDSHAKE_TIMEOUT",
                  "NOT_FOUND", "ABORTED", "TIMEOUT", "UNAVAILABLE",
                  "IDEMPOTENCY_CONFLICT"}   # not INTERNAL: a bug


def check_ws_frame(raw: bytes) -> dict:
    """A text frame from the gateway: one JSON response or event, an error response with a
    documented code and a message (never INTERNAL), no traceback text."""
    assert not any(marker in raw for marker in TRACEBACK_MARKERS), raw[:500]
    frame = json.loads(raw.decode("utf-8"))      # strict: no lone surrogates on the wire
    assert isinstance(frame, dict) and frame.get("type") in ("res", "event"), raw[:500]
    if frame["type"] == "event":
        assert isinstance(frame.get("event"), str) and isinstance(frame.get("seq"), int), frame
        return frame
    assert frame.get("id") is None or isinstance(frame["id"], str), raw[:500]
    assert isinstance(frame.get("ok"), bool), raw[:500]
    if frame["ok"]:
        assert "payload" in frame, raw[:500]
    else:
        error = frame.get("error")
        assert isinstance(error, dict), raw[:500]
        assert error.get("code") in WS_ERROR_CODES, raw[:500]
        assert isinstance(error.get("message"), str) and error["message"], raw[:500]
        assert isinstance(error.get("retryAfterMs", 0), int), raw[:500]
        assert isinstance(error.get("details", {}), dict), raw[:500]
    return frame


def ws_frame_bytes(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
                   masked: bool = True) -> bytes:
    """One client frame, exactly as given (websocket-client refuses to build broken ones)."""
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 15)])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WSClosed(Exception):
    def __init__(self, code: Optional[int]):
        super().__init__(f"closed with {code}")
        self.code = code          # None: dropped without a close frame


class WSConnection:
    """One WebSocket connection to the daemon (websocket-client), its own client address."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.ws = websocket.create_connection(
            f"ws://{HOST}:{port}/", timeout=timeout,
            header=[f"X-Forwarded-For: {fresh_client_address()}"])
        self.closed: Optional[WSClosed] = None
        self.local_port = self.ws.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        """Raw frame bytes; a gateway that already closed is noticed on receive."""
        try:
            self.ws.sock.sendall(data)
        except OSError:
            pass

    def send_json(self, value) -> None:
        self.send(ws_frame_bytes(OP_TEXT, json.dumps(value).encode()))

    def receive(self, timeout: float) -> Optional[dict]:
        """The next text frame (checked), None on a timeout; raises WSClosed once closed.
        Frames are read one by one: websocket-client's own loop would answer a close frame
        and could lose its code to a broken pipe."""
        if self.closed is not None:
            raise self.closed
        self.ws.settimeout(timeout)
        try:
            while True:
                frame = self.ws.recv_frame()
                if frame.opcode == OP_TEXT:
                    assert frame.fin, "the gateway fragmented a message"
                    return check_ws_frame(frame.data)
                if frame.opcode == OP_CLOSE:
                    data = frame.data
                    self.closed = WSClosed(struct.unpack("!H", data[:2])[0]
                                           if len(data) >= 2 else 1005)
                    self._finish_closing(data[:2])
                    break
                assert frame.opcode in (OP_PING, OP_PONG), f"unexpected frame {frame}"
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketConnectionClosedException, ConnectionError) as error:
            self.closed = WSClosed(None)
            self.closed.__cause__ = error
        self.close()
        raise self.closed

    def _finish_closing(self, code: bytes) -> None:
        """Answer a close frame and wait for the gateway to close the TCP connection, as
        RFC 6455 has it. A client that just drops the socket leaves the gateway waiting out
        its closing handshake and then aborting (an RST), and on loopback, at fuzzing rates,
        the client port may meanwhile carry a new connection that the RST then kills."""
        try:
            self.ws.sock.sendall(ws_frame_bytes(OP_CLOSE, code))
            self.ws.sock.settimeout(5)
            while self.ws.sock.recv(65536):
                pass
        except OSError:
            pass

    def answer(self, request_id, timeout: float = 15.0) -> tuple[dict, list[dict]]:
        """The first response to ``request_id`` and every frame that came before it."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.receive(max(0.01, deadline - time.monotonic()))
            if frame is None:
                continue
            if frame["type"] == "res" and frame.get("id") == request_id:
                return frame, seen
            seen.append(frame)
        raise AssertionError(f"no answer to {request_id!r} within {timeout} s; saw {seen[-5:]}")

    def connect(self, token: str = TOKEN) -> dict:
        self.send_json({"type": "req", "id": "c1", "method": "connect", "params": {
            "minProtocol": 1, "maxProtocol": 1, "client": {"id": "fuzz"},
            "auth": {"token": token}}})
        hello, _ = self.answer("c1")
        assert hello["ok"] and hello["payload"]["type"] == "hello-ok", hello
        return hello

    def close(self) -> None:
        """Close as a polite client does (close frame, then the gateway's close), unless the
        connection is closed already."""
        if self.closed is None and self.ws.sock is not None:
            self.closed = WSClosed(1000)
            try:
                self.ws.sock.sendall(ws_frame_bytes(OP_CLOSE, struct.pack("!H", 1000)))
                self.ws.sock.settimeout(5)
                while self.ws.sock.recv(65536):   # its close frame, then the end
                    pass
            except OSError:
                pass
        try:
            self.ws.sock and self.ws.sock.close()
        except OSError:
            pass
        self.ws.connected = False

