"""The Streamable HTTP transport: each JSON-RPC message is POSTed to the server's endpoint
(``Accept: application/json, text/event-stream``); the answer comes as JSON or as an SSE
stream. The ``Mcp-Session-Id`` the server gives at ``initialize`` is sent back on every
request, ``MCP-Protocol-Version`` once the version is agreed."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Optional

import treq
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from ..base import ToolError

log = Logger()
MAX_BODY_BYTES = 16 * 1024 * 1024


def sse_messages(body: bytes) -> list[Any]:
    """The JSON messages of an SSE stream's ``data`` fields, one per event; events without
    data (priming events, keep-alives) are skipped."""
    messages = []
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n")
    for event in text.split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in event.split("\n")
                if line.startswith("data:")]
        if data and "".join(data).strip():
            messages.append(json.loads("\n".join(data)))
    return messages


class HttpTransport:
    """One Streamable HTTP server. ``send`` POSTs a message and hands what the server
    answers to ``on_message``; ``close`` aborts what is in flight and ends the session."""

    def __init__(self, reactor: Any, server: str, url: str, headers: Mapping[str, str],
                 on_message: Callable[[Any], None], connect_timeout: float = 10.0):
        self.reactor = reactor
        self.server = server
        self.url = url
        self.on_message = on_message
        self.session_id: Optional[str] = None
        self.protocol_version: Optional[str] = None
        self._headers = dict(headers)
        self._connect_timeout = connect_timeout
        # No kept-alive connections: nothing lingers after close (and a stopped gateway
        # leaves no socket behind).
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._in_flight: set[defer.Deferred] = set()

    def _request_headers(self) -> dict[Any, Any]:
        headers: dict[Any, Any] = {**self._headers, "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream"}
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.protocol_version is not None:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    def send(self, message: dict[str, Any]) -> defer.Deferred:
        posted = defer.ensureDeferred(self._post(message))
        self._in_flight.add(posted)

        def done(result: Any) -> Any:
            self._in_flight.discard(posted)
            return result

        posted.addBoth(done)
        return posted

    async def _post(self, message: dict[str, Any]) -> None:
        try:
            response = await treq.post(self.url, data=json.dumps(message).encode(),
                                       headers=self._request_headers(), pool=self._pool,
                                       reactor=self.reactor, timeout=None,
                                       browser_like_redirects=False)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ToolError(f"MCP server {self.server} is unreachable: "
                            f"{type(e).__name__}") from None
        session_id = response.headers.getRawHeaders(b"mcp-session-id")
        if session_id and self.session_id is None:
            self.session_id = session_id[0].decode("ascii", errors="replace")
        body = await self._read_capped(response)
        if response.code == 202:
            return
        if response.code >= 300:
            raise ToolError(f"MCP server {self.server} answered HTTP {response.code}")
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode(
            "ascii", errors="replace").split(";")[0].strip().lower()
        try:
            messages = (sse_messages(body) if kind == "text/event-stream"
                        else [json.loads(body)] if body.strip() else [])
        except ValueError:
            raise ToolError(f"MCP server {self.server} answered with invalid JSON") from None
        for item in messages:
            self.on_message(item)

    async def _read_capped(self, response: Any) -> bytes:
        """The body, read chunk by chunk; past ``MAX_BODY_BYTES`` the connection is aborted
        (treq.collect does that when the collector raises), so a runaway server cannot fill
        the gateway's memory."""
        chunks: list[bytes] = []
        size = 0

        def take(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ToolError(f"MCP server {self.server} answered with over "
                                f"{MAX_BODY_BYTES} bytes")
            chunks.append(chunk)

        await treq.collect(response, take)
        return b"".join(chunks)

    def close(self) -> defer.Deferred:
        """Abort the requests in flight; end the session (DELETE, best effort)."""
        for posted in list(self._in_flight):
            posted.cancel()
        if self.session_id is None:
            return self._pool.closeCachedConnections()
        ended = treq.delete(self.url, headers=self._request_headers(), pool=self._pool,
                            reactor=self.reactor)
        ended.addCallback(treq.content)
        ended.addTimeout(self._connect_timeout, self.reactor)
        ended.addErrback(lambda _f: None)
        ended.addCallback(lambda _r: self._pool.closeCachedConnections())
        return ended
