"""JSON-RPC 2.0 for the MCP client: request ids, the table of requests waiting for their
answer, ``notifications/cancelled`` when a waiting request is given up, and answers to the
few requests a server may send us. The transport (stdio or HTTP) only moves messages."""
from __future__ import annotations

from itertools import count
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from ..base import ToolError

log = Logger()
METHOD_NOT_FOUND = -32601


class RPCError(ToolError):
    """The server answered a request with a JSON-RPC error."""

    def __init__(self, code: Any, message: str):
        super().__init__(message)
        self.code = code


class RPCClient:
    """Requests to one server connection. ``send(message)`` hands a message to the transport
    (it may return a Deferred that fails when the message cannot be delivered);
    ``received(message)`` is what the transport calls with each message from the server."""

    def __init__(self, server: str, send: Callable[[dict[str, Any]], Any]):
        self.server = server
        self._send = send
        self._ids = count(1)
        self._pending: dict[int, defer.Deferred] = {}
        self._closed: Optional[str] = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def request(self, method: str, params: Optional[dict[str, Any]] = None) -> defer.Deferred:
        """A Deferred firing with the answer's ``result``; failing with ``RPCError`` for an
        error answer, ``ToolError`` when the connection ends first. Cancelling it tells the
        server (``notifications/cancelled``) and forgets the request."""
        if self._closed is not None:
            return defer.fail(ToolError(self._closed))
        request_id = next(self._ids)

        def cancel(_d: defer.Deferred) -> None:
            if self._pending.pop(request_id, None) is not None:
                self.notify("notifications/cancelled",
                            {"requestId": request_id, "reason": "cancelled by the gateway"})

        waiter: defer.Deferred = defer.Deferred(cancel)
        self._pending[request_id] = waiter
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self._deliver(message, request_id)
        return waiter

    def notify(self, method: str, params: Optional[dict[str, Any]] = None) -> None:
        """Send a notification (no answer expected); lost silently if the connection is down."""
        if self._closed is not None:
            return
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._deliver(message, None)

    def _deliver(self, message: dict[str, Any], request_id: Optional[int]) -> None:
        sent = self._send(message)
        if isinstance(sent, defer.Deferred):
            sent.addErrback(self._undelivered, request_id)

    def _undelivered(self, failure: Any, request_id: Optional[int]) -> None:
        if failure.check(defer.CancelledError):
            return
        waiter = self._pending.pop(request_id, None) if request_id is not None else None
        error = failure.value
        message = (error.message if isinstance(error, ToolError) else
                   f"MCP server {self.server}: {type(error).__name__}")
        if waiter is not None:
            waiter.errback(ToolError(message))
        else:
            log.warn("MCP server {server}: a notification was not delivered: {error}",
                     server=self.server, error=message)

    def received(self, message: Any) -> None:
        """One message from the server: an answer to one of our requests, a request of its
        own (``ping`` answered, others refused) or a notification (ignored)."""
        if isinstance(message, list):          # a batch
            for item in message:
                self.received(item)
            return
        if not isinstance(message, dict):
            log.warn("MCP server {server} sent a message that is not a JSON object",
                     server=self.server)
            return
        if "method" in message:
            if "id" in message:
                self._answer_server_request(message)
            return
        waiter = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if waiter is None:
            return          # late answer to a cancelled or timed-out request
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            waiter.errback(RPCError(error.get("code"),
                                    f"MCP server {self.server}: "
                                    f"{str(error.get('message', 'error'))[:2000]}"))
        else:
            waiter.callback(message.get("result"))

    def _answer_server_request(self, message: dict[str, Any]) -> None:
        if message["method"] == "ping":
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
        else:
            reply = {"jsonrpc": "2.0", "id": message["id"],
                     "error": {"code": METHOD_NOT_FOUND,
                               "message": f"{message['method']} is not supported"}}
        self._deliver(reply, None)

    def close(self, reason: str) -> None:
        """The connection is gone: every waiting request fails with ``reason`` now."""
        self._closed = reason
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.errback(ToolError(reason))
