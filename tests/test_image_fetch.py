"""Remote image URLs through the real gateway (issue 13 items 1 and 4), on a simulated
internet (tests/fakes/internet.py): the gateway runs its default address policy and real
resolution code; only DNS answers are scripted and "public" addresses are routed to servers
on 127.0.0.2. A server on 127.0.0.1 or ::1 plays the internal service that must never be
reached (it counts connections)."""
from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from .chat_helpers import config, http, no_leftovers  # noqa: F401
from .fakes.internet import PUBLIC_IP, SimulatedInternet
from .fakes.origin import Origin
from .test_chat_completions import assert_error, post, upstream_messages
from .support.network import ipv6_loopback

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
INTERNAL_PNG = b"\x89PNG\r\n\x1a\n" + b"internal" * 8
MB = 1024 * 1024
FAILED = "image could not be fetched from {}"


@pytest_twisted.async_yield_fixture
async def sites():
    """The "public" image site and two internal ones (IPv4 and, if there is one, IPv6
    loopback) serving what an attacker wants."""
    public = await Origin.start(reactor, "127.0.0.2")
    internal = [await Origin.start(reactor, "127.0.0.1")]
    if ipv6_loopback():
        internal.append(await Origin.start(reactor, "::1"))
    for site in internal:
        site.route("/secret.png", body=INTERNAL_PNG, content_type="image/png")
        site.route("/cat.png", body=INTERNAL_PNG, content_type="image/png")
    yield public, internal
    for site in [public, *internal]:
        await site.stop()


async def gateway(start_gateway, upstream, public, answers, responses=False, **images):
    net = SimulatedInternet(reactor, answers, routes={PUBLIC_IP: ("127.0.0.2", public.port)})
    raw = config(upstream, chat={"images": {"allowUrl": True, **images}})
    if responses:
        raw["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    return await start_gateway(raw, reactor=net), net


def image_request(url):
    return {"model": "moltbot:beta", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]}]}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest_twisted.ensureDeferred
async def test_remote_image_reaches_the_upstream_as_a_data_uri(start_gateway, http, upstream,
                                                                sites):
    public, _ = sites
    public.route("/cat.png", body=PNG, content_type="image/png")
    gw, _ = await gateway(start_gateway, upstream, public,
                          {"img.example": [[(PUBLIC_IP, 80)]]})
    response, body = await post(http, gw, image_request("http://img.example/cat.png"))
    assert response.code == 200, body
    assert upstream_messages(upstream)[-1]["content"][1]["image_url"]["url"] == data_uri(PNG)


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_to_loopback_is_refused(start_gateway, http, upstream, sites):
    public, internal = sites
    public.route("/cat.png", body=PNG, content_type="image/png")
    # First answer public, every later one loopback.
    gw, _ = await gateway(start_gateway, upstream, public, {"rebind.example": [
        [(PUBLIC_IP, 80)], [("127.0.0.1", internal[0].port)]]})
    for _ in range(2):
        response, body = await post(http, gw, image_request("http://rebind.example/cat.png"))
        if response.code != 200:
            break
        assert upstream_messages(upstream)[-1]["content"][1]["image_url"]["url"] \
            == data_uri(PNG)
    error = assert_error(response, body, 400, param="messages[0].content[1]",
                         code="invalid_image")
    assert error["message"] == FAILED.format("rebind.example")
    assert internal[0].connections == 0


@pytest_twisted.ensureDeferred
async def test_loopback_aaaa_next_to_a_public_a_record_is_never_used(start_gateway, http,
                                                                       upstream, sites):
    public, internal = sites
    if len(internal) < 2:
        pytest.skip("no IPv6 loopback on this machine")
    public.route("/cat.png", body=PNG, content_type="image/png")
    gw, net = await gateway(start_gateway, upstream, public, {"dual.example": [
        [("::1", internal[1].port), (PUBLIC_IP, 80)]]})
    response, body = await post(http, gw, image_request("http://dual.example/cat.png"))
    assert response.code == 200, body
    assert upstream_messages(upstream)[-1]["content"][1]["image_url"]["url"] == data_uri(PNG)
    assert internal[1].connections == 0
    assert ("::1", internal[1].port) not in net.connected_to


@pytest_twisted.ensureDeferred
async def test_redirect_to_internal_addresses_is_refused(start_gateway, http, upstream, sites):
    public, internal = sites
    gw, _ = await gateway(start_gateway, upstream, public, {
        "img.example": [[(PUBLIC_IP, 80)]], "intra.example": [[("10.0.0.7", 80)]]})
    for target in (f"http://127.0.0.1:{internal[0].port}/secret.png",
                   f"http://[::ffff:127.0.0.1]:{internal[0].port}/secret.png",
                   "http://intra.example/secret.png", "http://169.254.169.254/latest"):
        public.route("/go.png", status=302, redirect=target)
        response, body = await post(http, gw, image_request("http://img.example/go.png"))
        error = assert_error(response, body, 400, param="messages[0].content[1]")
        assert error["message"] == FAILED.format("img.example")
    assert all(site.connections == 0 for site in internal)


@pytest_twisted.ensureDeferred
async def test_fetch_errors_reveal_neither_status_nor_content_type(start_gateway, http,
                                                                    upstream, sites):
    public, _ = sites
    public.route("/gone.png", status=404, body=b"<h1>internal wiki</h1>",
                 content_type="text/html")
    public.route("/page.png", body=b"<h1>wiki</h1>", content_type="text/html")
    gw, _ = await gateway(start_gateway, upstream, public, {"img.example": [[(PUBLIC_IP, 80)]]})
    for path in ("/gone.png", "/page.png"):
        response, body = await post(http, gw, image_request(f"http://img.example{path}"))
        error = assert_error(response, body, 400, param="messages[0].content[1]")
        assert error["message"] == FAILED.format("img.example")
        for leak in (b"404", b"text/html", PUBLIC_IP.encode(), b"wiki"):
            assert leak not in body


@pytest_twisted.ensureDeferred
async def test_huge_redirect_body_is_not_read(start_gateway, http, upstream, sites):
    public, _ = sites
    public.route("/a.png", status=302, redirect="/cat.png", body_bytes=50 * MB)
    public.route("/cat.png", body=PNG, content_type="image/png")
    gw, _ = await gateway(start_gateway, upstream, public, {"img.example": [[(PUBLIC_IP, 80)]]})
    response, body = await post(http, gw, image_request("http://img.example/a.png"))
    assert response.code == 200, body
    assert upstream_messages(upstream)[-1]["content"][1]["image_url"]["url"] == data_uri(PNG)
    assert public.bytes_written < 16 * MB    # socket buffers, not the 50 MB
    await public.ended[0]


@pytest_twisted.ensureDeferred
async def test_trickling_image_fails_at_the_fetch_deadline(start_gateway, http, upstream,
                                                           sites):
    public, _ = sites
    public.route("/a.png", status=302, redirect="/slow.png")
    public.route("/slow.png", content_type="image/png", trickle=0.1)
    gw, _ = await gateway(start_gateway, upstream, public, {"img.example": [[(PUBLIC_IP, 80)]]},
                          fetchSeconds=0.5)
    response, body = await post(http, gw, image_request("http://img.example/a.png"))
    error = assert_error(response, body, 400, param="messages[0].content[1]")
    assert error["message"] == FAILED.format("img.example")
    await public.ended[-1]     # the trickling response was abandoned, not left running
    assert public.requests[-1]._disconnected


@pytest_twisted.ensureDeferred
async def test_image_fetches_keep_no_cookies(start_gateway, http, upstream, sites):
    public, _ = sites
    public.route("/a.png", status=302, redirect="/cat.png", set_cookie="sid=secret; Path=/")
    public.route("/cat.png", body=PNG, content_type="image/png")
    gw, _ = await gateway(start_gateway, upstream, public, {"img.example": [[(PUBLIC_IP, 80)]]})
    for path in ("/a.png", "/cat.png"):
        response, body = await post(http, gw, image_request(f"http://img.example{path}"))
        assert response.code == 200, body
    assert [r.path for r in public.requests] == [b"/a.png", b"/cat.png", b"/cat.png"]
    assert [r.getHeader("cookie") for r in public.requests] == [None, None, None]


@pytest_twisted.ensureDeferred
async def test_responses_input_image_url_uses_the_same_guarded_fetch(start_gateway, http,
                                                                     upstream, sites):
    public, internal = sites
    public.route("/cat.png", body=PNG, content_type="image/png")
    public.route("/a.png", status=302,
                 redirect=f"http://127.0.0.1:{internal[0].port}/secret.png")
    gw, _ = await gateway(start_gateway, upstream, public, {"img.example": [[(PUBLIC_IP, 80)]]},
                          responses=True)

    async def respond(path):
        body = {"model": "moltbot:beta", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "see"},
            {"type": "input_image", "image_url": f"http://img.example{path}"}]}]}
        response = await http.post(gw.url + "/v1/responses", json.dumps(body).encode(),
                                   headers={**gw.auth_headers,
                                            "Content-Type": "application/json"})
        return response, await response.content()

    response, body = await respond("/cat.png")
    assert response.code == 200, body
    assert upstream_messages(upstream)[-1]["content"][1]["image_url"]["url"] == data_uri(PNG)
    response, body = await respond("/a.png")
    error = assert_error(response, body, 400)
    assert error["message"] == FAILED.format("img.example")
    assert internal[0].connections == 0
