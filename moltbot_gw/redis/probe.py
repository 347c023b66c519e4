"""The daemon's check, before it serves, that the configured Redis answers: an unreachable
Redis at start is a refusal to start (exit 1) naming the URL, password masked, and the reason —
not a gateway that listens and then fails every request.

It runs in ``makeService``, before the reactor runs, so a plain socket with a timeout is the
simple and honest tool here; everything after start goes through ``RedisLink``."""
from __future__ import annotations

import socket
import ssl
from typing import Optional

from .connection import masked_url, parse_redis_url


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply_line(stream) -> bytes:
    line = stream.readline(4096)
    if not line:
        raise ConnectionError("the connection was closed")
    return line.rstrip(b"\r\n")


def redis_start_problem(url: str, timeout: float) -> Optional[str]:
    """None when Redis at ``url`` answers ``PING`` (after ``AUTH`` and ``SELECT``) within
    ``timeout`` seconds; otherwise why not, with the password masked."""
    address = parse_redis_url(url)
    try:
        raw = socket.create_connection((address.host, address.port), timeout=timeout)
        with raw:
            sock = (ssl.create_default_context().wrap_socket(raw, server_hostname=address.host)
                    if address.tls else raw)
            sock.settimeout(timeout)
            stream = sock.makefile("rb")
            if address.password is not None:
                auth = (("AUTH", address.username, address.password) if address.username
                        else ("AUTH", address.password))
                sock.sendall(_command(*auth))
                if not _reply_line(stream).startswith(b"+"):
                    return f"Redis at {masked_url(url)} refused the credentials"
            if address.db:
                sock.sendall(_command("SELECT", str(address.db)))
                if not _reply_line(stream).startswith(b"+"):
                    return f"Redis at {masked_url(url)} has no database {address.db}"
            sock.sendall(_command("PING"))
            reply = _reply_line(stream)
            if reply != b"+PONG":
                shown = reply[:80].decode("utf-8", "replace")
                return f"Redis at {masked_url(url)} did not answer PING: {shown}"
    except (OSError, ssl.SSLError, ConnectionError) as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        return f"Redis at {masked_url(url)} is unreachable: {reason}"
    return None
