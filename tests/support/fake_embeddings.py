"""A fake OpenAI-compatible embeddings upstream served from a thread of the test process, for
a gateway daemon in a subprocess (which cannot share the test's reactor)."""
from __future__ import annotations

import base64
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moltbot_gw.openai.embeddings import parse_embeddings_request
from moltbot_gw.openai.errors import APIError

HOST = "127.0.0.1"


class FakeEmbeddings:
    """An OpenAI-compatible ``POST /v1/embeddings`` on 127.0.0.1, served from a thread of this
    process (the daemon is a subprocess, so it cannot share a test reactor): one small vector
    per input, base64 when asked; ``dimensions`` over 1024 is refused with an OpenAI 400. It
    counts requests the gateway should never have sent on (``unexpected``)."""

    MAX_DIMENSIONS = 1024

    def __init__(self):
        self.requests = 0
        self.unexpected: list[str] = []
        self.server = ThreadingHTTPServer((HOST, 0), _EmbeddingsHandler)
        self.server.daemon_threads = True
        self.server.fake = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="fake-embeddings")
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: bytes) -> tuple[int, dict]:
        self.requests += 1
        try:
            request = json.loads(body)
            parsed = parse_embeddings_request(body)   # what the gateway must have checked
        except (ValueError, APIError) as error:
            self.unexpected.append(f"{error!r}: {body[:200]!r}")
            return 500, {"error": {"message": "the fake got a request it should not have"}}
        if set(request) - {"model", "input", "encoding_format", "dimensions"}:
            self.unexpected.append(f"extra fields: {body[:200]!r}")
        dimensions = parsed.dimensions or 4
        if dimensions > self.MAX_DIMENSIONS:
            return 400, {"error": {"message": f"dimensions {dimensions} is too large",
                                   "type": "invalid_request_error", "param": "dimensions",
                                   "code": None}}
        value = parsed.input
        count = len(value) if isinstance(value, list) and not isinstance(value[0], int) else 1
        data = []
        for index in range(count):
            vector = [round(0.001 * (index + 1) * (d + 1), 6) for d in range(dimensions)]
            if parsed.encoding_format == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return 200, {"object": "list", "data": data, "model": parsed.model,
                     "usage": {"prompt_tokens": count, "total_tokens": count}}


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.rstrip("/") != "/v1/embeddings":
            status, answer = 404, {"error": {"message": "no such path"}}
        else:
            status, answer = self.server.fake.answer(body)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):   # quiet: the test's output is for failures
        pass

