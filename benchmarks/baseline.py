"""The bare baseline: a minimal Klein + treq pass-through, the floor the gateway is compared with.

``POST /v1/chat/completions`` (and ``/slow/v1/...``, ``/oneread/v1/...``) forwards the request body
unchanged to the same path on the upstream through one persistent treq connection pool, and
streams an event-stream answer back as it arrives (a JSON answer is returned whole). No auth,
no sessions, no parsing. Like any twisted.web service it logs (access log included) to a file,
as the gateway does under twistd.

For the idle-WebSocket scenario it also serves a bare autobahn endpoint at ``/`` that answers
every ``req`` frame with ``{"type":"res","ok":true}``: the RSS floor for idle connections.

Run: ``python benchmarks/baseline.py --upstream http://127.0.0.1:N --port 0 --log FILE``;
it prints ``PORT <n>`` once listening.
"""
from __future__ import annotations

import argparse
import json
import sys

import treq
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from klein import Klein
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

app = Klein()
STATE: dict = {}


@app.route("/v1/chat/completions", methods=["POST"])
@app.route("/slow/v1/chat/completions", methods=["POST"])
@app.route("/oneread/v1/chat/completions", methods=["POST"])
async def chat(request):
    body = request.content.read()
    response = await STATE["client"].post(
        STATE["upstream"] + request.path.decode(), data=body,
        headers={b"Content-Type": [b"application/json"]}, unbuffered=True)
    request.setResponseCode(response.code)
    ctype = response.headers.getRawHeaders(b"content-type", [b"application/json"])[0]
    request.setHeader(b"content-type", ctype)
    if ctype.startswith(b"text/event-stream"):
        request.setHeader(b"cache-control", b"no-cache")
        await treq.collect(response, request.write)
        return b""
    return await response.content()


class BareWS(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if isinstance(frame, dict) and frame.get("type") == "req":
            self.sendMessage(json.dumps({"type": "res", "id": frame.get("id"), "ok": True,
                                         "payload": {"type": "hello-ok"}}).encode())


@app.route("/", methods=["GET"])
def ws(request):
    return STATE["ws"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT (no path)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=64,
                        help="persistent connections kept per upstream host")
    parser.add_argument("--log", default=None, help="log file (default: discard)")
    args = parser.parse_args(argv)
    if args.log:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(open(args.log, "a"))],
                                         redirectStandardIO=False)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = args.pool_size
    STATE["client"] = HTTPClient(Agent(reactor, pool=pool))
    STATE["upstream"] = args.upstream.rstrip("/")
    factory = WebSocketServerFactory()
    factory.protocol = BareWS
    STATE["ws"] = WebSocketResource(factory)
    site = Site(app.resource())
    port = reactor.listenTCP(args.port, site, backlog=50, interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
