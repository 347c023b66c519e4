"""A tiny blocking RESP client, for tests that check what is in Redis from outside the reactor
(threads, subprocess daemons) without going through the gateway: one connection, one command
at a time, and the stored transcript of a session read the way ``RedisSessionStore`` writes it."""
from __future__ import annotations

import json
import socket
from typing import Any, Optional
from urllib.parse import urlsplit


class RedisReplyError(Exception):
    """Redis answered ``-ERR ...``."""


class SyncRedis:
    """``with SyncRedis(url) as r: r.command("HGET", key, field)``."""

    def __init__(self, url: str, timeout: float = 5.0):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 6379),
                                             timeout=timeout)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> "SyncRedis":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def command(self, *args: Any) -> Any:
        encoded = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        out = b"*%d\r\n" % len(encoded) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)
        self.sock.sendall(out)
        return self._reply()

    def _reply(self) -> Any:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            return data[:-2].decode("utf-8")
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise ConnectionError(f"unexpected RESP reply {line!r}")


def stored_records(url: str, prefix: str, agent_id: str, session_key: str) -> list[dict]:
    """The transcript records of the session's current id, in order (``[]`` if none)."""
    with SyncRedis(url) as r:
        raw: Optional[str] = r.command("HGET", f"{prefix}sessions:{agent_id}", session_key)
        if raw is None:
            return []
        session_id = json.loads(raw)["sessionId"]
        items = r.command("XRANGE", f"{prefix}transcript:{session_id}", "-", "+")
    records = []
    for _entry_id, fields in items or ():
        values = dict(zip(fields[::2], fields[1::2], strict=False))
        if "r" in values:
            records.append(json.loads(values["r"]))
    return records


def turn_stored(records: list[dict], prompt: str) -> bool:
    """The user message ``prompt`` is stored, followed by its run's assistant reply with
    status ok and content (a whole acknowledged turn)."""
    messages = [r for r in records if r.get("type") == "message"]
    for i, record in enumerate(messages[:-1]):
        reply = messages[i + 1]
        if (record.get("role") == "user" and record.get("content") == prompt
                and reply.get("role") == "assistant" and reply.get("status") == "ok"
                and reply.get("runId") == record.get("runId") and reply.get("content")):
            return True
    return False
