"""What the shared upstream client puts on the wire and accepts back, now that it drives
twisted's ``Agent`` directly instead of through treq (issue #16, per-request cost): the
request URI (percent-encoded, as treq made it), gzip answers decoded, no cookies kept, no
redirect followed. A real HTTP server on loopback stands in for the upstream."""
from __future__ import annotations

import gzip
import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from moltbot_gw.providers.errors import ProviderError
from moltbot_gw.providers.sinks import JSONSink
from moltbot_gw.providers.upstream_client import UpstreamClient, request_uri

ANSWER = {"ok": True, "text": "héllo"}


class _Upstream(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []     # (uri, headers) per request

    def render_POST(self, request):
        self.seen.append((request.uri, {k.lower(): v for k, v in
                                        request.requestHeaders.getAllRawHeaders()}))
        request.content.read()
        if request.uri.endswith(b"/moved"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/elsewhere")
            return b""
        request.setHeader(b"set-cookie", b"session=abc; Path=/")
        request.setHeader(b"content-type", b"application/json")
        body = json.dumps(ANSWER).encode()
        if b"gzip" in (request.getHeader(b"accept-encoding") or b""):
            request.setHeader(b"content-encoding", b"gzip")
            body = gzip.compress(body)
        return body


@pytest.fixture
def wire():
    resource = _Upstream()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    client = UpstreamClient(reactor)
    yield resource, f"http://127.0.0.1:{port.getHost().port}", client
    client.pool.closeCachedConnections()
    port.stopListening()


def _post(client, url):
    sink = JSONSink("up")
    d = client.post_json(url, {"a": 1}, sink, label="up")
    return d.addCallback(lambda _response: sink.finish())


@pytest_twisted.ensureDeferred
async def test_gzip_answer_is_decoded_and_cookies_are_never_sent_back(wire):
    resource, origin, client = wire
    assert await _post(client, origin + "/v1/chat/completions") == ANSWER
    assert await _post(client, origin + "/v1/chat/completions") == ANSWER
    (uri1, headers1), (uri2, headers2) = resource.seen
    assert uri1 == uri2 == b"/v1/chat/completions"
    assert headers1[b"accept-encoding"] == [b"gzip"]
    assert headers1[b"content-type"] == [b"application/json"]
    assert b"cookie" not in headers1 and b"cookie" not in headers2


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_not_followed(wire):
    resource, origin, client = wire
    with pytest.raises(ProviderError):
        await _post(client, origin + "/v1/moved")
    assert [uri for uri, _ in resource.seen] == [b"/v1/moved"]


def test_request_uri_is_encoded_as_treq_encodes_it():
    assert request_uri("http://127.0.0.1:8080/v1/chat/completions") == \
        b"http://127.0.0.1:8080/v1/chat/completions"
    assert request_uri("http://example.com/a b/ü?x=1") == \
        b"http://example.com/a%20b/%C3%BC?x=1"
    assert request_uri("http://bücher.example/v1") == b"http://xn--bcher-kva.example/v1"


def test_one_endpoint_per_origin_serves_every_request():
    from twisted.web.client import URI
    from twisted.web.error import SchemeNotSupported

    from moltbot_gw.providers.upstream_client import _EndpointPerOrigin

    factory = _EndpointPerOrigin(reactor, 5.0)
    a = factory.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9/v1/chat/completions"))
    assert factory.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9/v1/embeddings")) is a
    assert factory.endpointForURI(URI.fromBytes(b"http://127.0.0.1:10/v1")) is not a
    assert factory.endpointForURI(URI.fromBytes(b"https://127.0.0.1:9/v1")) is not a
    with pytest.raises(SchemeNotSupported):
        factory.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1:9/v1"))
