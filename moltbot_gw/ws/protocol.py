"""The WebSocket endpoint at ``/``: one autobahn protocol instance per client connection.

For now every frame is answered with a JSON "not implemented" error; the control protocol
(connect handshake, methods, events) is built on this class later.
"""
from __future__ import annotations

import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

MAX_FRAME_BYTES = 4 * 1024 * 1024


class GatewayWSProtocol(WebSocketServerProtocol):
    def onOpen(self):
        self.factory.connections.add(self)

    def onClose(self, wasClean, code, reason):
        self.factory.connections.discard(self)

    def onMessage(self, payload, isBinary):
        reply = {"type": "res", "id": None, "ok": False,
                 "error": {"code": "not_implemented",
                           "message": "the WebSocket control protocol is not implemented yet"}}
        try:
            frame = json.loads(payload)
            if isinstance(frame, dict):
                reply["id"] = frame.get("id")
        except (ValueError, UnicodeDecodeError):
            pass
        self.sendMessage(json.dumps(reply).encode("utf-8"))


class GatewayWSFactory(WebSocketServerFactory):
    """Holds what every connection shares, and the set of open connections (for shutdown)."""

    protocol = GatewayWSProtocol

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections: set[GatewayWSProtocol] = set()
        self.setProtocolOptions(maxFramePayloadSize=MAX_FRAME_BYTES,
                                maxMessagePayloadSize=MAX_FRAME_BYTES)

    def close_all(self, code: int = 1001, reason: str = "gateway shutting down") -> None:
        for conn in list(self.connections):
            conn.sendClose(code, reason)
