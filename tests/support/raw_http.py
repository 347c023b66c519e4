"""A blocking HTTP/1.1 client that sends exactly the bytes it is given (one connection per
request, ``Connection: close``), so no client library smooths a malformed request over."""
from __future__ import annotations

import http.client
import itertools
import json
import socket
from typing import Optional

HOST = "127.0.0.1"
TOKEN = "fuzz-token-0123456789abcdef"


def as_bytes(value) -> bytes:
    """Bytes as they are; str as UTF-8, lone surrogates included (``surrogatepass``)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} {self.body[:300]!r}>"


def request(port: int, method: str, target, headers=(), body: Optional[bytes] = None,
            timeout: float = 15.0) -> Response:
    """One request on its own connection (``Connection: close``); ``target`` and header
    names/values may be bytes (sent as they are) or str (UTF-8)."""
    b = as_bytes

    lines = [b(method) + b" " + b(target) + b" HTTP/1.1", b"Host: " + b(f"{HOST}:{port}"),
             b"Connection: close"]
    lines += [b(name) + b": " + b(value) for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    data = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.sendall(data)
        return read_response(sock, method)
    finally:
        sock.close()


def read_response(sock, method: Optional[str] = None) -> Response:
    response = http.client.HTTPResponse(sock, method=method if method == "HEAD" else None)
    response.begin()
    payload = response.read()
    return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, payload)


_client_counter = itertools.count(1)


def fresh_client_address() -> str:
    n = next(_client_counter)
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def auth_header(token: str = TOKEN) -> tuple:
    return ("Authorization", f"Bearer {token}")

