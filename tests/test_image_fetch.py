"""Remote image URLs through the real gateway (issue 13 items 1 and 4): the gateway fetches
with the guarded fetcher — a scripted in-process resolver and a policy admitting 127.0.0.2 as
the stand-in public host are injected — and the client never learns more than the host."""
from __future__ import annotations

import base64
import json

import pytest_twisted
from twisted.internet import reactor

from moltbot_gw.fetch import AddressPolicy, GuardedFetcher

from .chat_helpers import config, http, no_leftovers  # noqa: F401
from .fakes.origin import Origin
from .fakes.resolver import ScriptedResolver
from .test_chat_completions import assert_error, post, upstream_messages

PUBLIC_STAND_IN = "127.0.0.2"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
MB = 1024 * 1024


@pytest_twisted.async_yield_fixture
async def sites():
    public = await Origin.start(reactor, PUBLIC_STAND_IN)
    internal = await Origin.start(reactor, "127.0.0.1")
    internal.route("/secret.png", body=PNG, content_type="image/png")
    yield public, internal
    await public.stop()
    await internal.stop()


async def gateway(start_gateway, upstream, answers, **images):
    fetcher = GuardedFetcher(reactor, policy=AddressPolicy(allowed=[PUBLIC_STAND_IN]),
                             resolver=ScriptedResolver(answers))
    return await start_gateway(config(upstream, chat={"images": {"allowUrl": True, **images}}),
                               fetcher=fetcher)


def image_request(url):
    return {"model": "moltbot:beta", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]}]}


@pytest_twisted.ensureDeferred
async def test_remote_image_reaches_the_upstream_as_a_data_uri(start_gateway, http, upstream,
                                                                sites):
    public, _ = sites
    public.route("/cat.png", body=PNG, content_type="image/png")
    gw = await gateway(start_gateway, upstream,
                       {"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    response, body = await post(http, gw, image_request("http://img.example/cat.png"))
    assert response.code == 200, body
    part = upstream_messages(upstream)[-1]["content"][1]
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_through_the_gateway_never_reaches_loopback(start_gateway, http,
                                                                          upstream, sites):
    public, internal = sites
    public.route("/a.png", status=302, redirect="/secret.png")
    gw = await gateway(start_gateway, upstream, {"rebind.example": [
        [(PUBLIC_STAND_IN, public.port)], [("127.0.0.1", internal.port)]]})
    response, body = await post(http, gw, image_request("http://rebind.example/a.png"))
    error = assert_error(response, body, 400, param="messages[0].content[1]",
                         code="invalid_image")
    assert error["message"] == "image could not be fetched from rebind.example"
    assert internal.connections == 0
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_fetch_errors_reveal_neither_status_nor_content_type(start_gateway, http,
                                                                    upstream, sites):
    public, _ = sites
    public.route("/gone.png", status=404, body=b"<h1>internal wiki</h1>",
                 content_type="text/html")
    public.route("/page.png", body=b"<h1>hello</h1>", content_type="text/html")
    gw = await gateway(start_gateway, upstream,
                       {"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    for path in ("/gone.png", "/page.png"):
        response, body = await post(http, gw, image_request(f"http://img.example{path}"))
        error = assert_error(response, body, 400, param="messages[0].content[1]")
        assert error["message"] == "image could not be fetched from img.example"
        for leak in (b"404", b"text/html", b"127.0.0.2", b"wiki"):
            assert leak not in body


@pytest_twisted.ensureDeferred
async def test_huge_redirect_body_and_trickle_are_bounded(start_gateway, http, upstream,
                                                          sites):
    public, _ = sites
    public.route("/a.png", status=302, redirect="/slow.png", body_bytes=50 * MB)
    public.route("/slow.png", content_type="image/png", trickle=0.1)
    gw = await gateway(start_gateway, upstream,
                       {"img.example": [[(PUBLIC_STAND_IN, public.port)]]},
                       fetchSeconds=0.5)
    response, body = await post(http, gw, image_request("http://img.example/a.png"))
    error = assert_error(response, body, 400, param="messages[0].content[1]")
    assert error["message"] == "image could not be fetched from img.example"
    assert public.bytes_written < 16 * MB
    await public.ended[-1]     # the trickling response was abandoned, not left running


@pytest_twisted.ensureDeferred
async def test_responses_input_image_url_uses_the_same_guarded_fetch(start_gateway, http,
                                                                     upstream, sites):
    public, internal = sites
    public.route("/cat.png", body=PNG, content_type="image/png")
    public.route("/a.png", status=302, redirect=f"http://127.0.0.1:{internal.port}/secret.png")
    raw = config(upstream, chat={"images": {"allowUrl": True}})
    raw["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    fetcher = GuardedFetcher(reactor, policy=AddressPolicy(allowed=[PUBLIC_STAND_IN]),
                             resolver=ScriptedResolver(
                                 {"img.example": [[(PUBLIC_STAND_IN, public.port)]]}))
    gw = await start_gateway(raw, fetcher=fetcher)

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
    part = upstream_messages(upstream)[-1]["content"][1]
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    response, body = await respond("/a.png")
    error = assert_error(response, body, 400)
    assert error["message"] == "image could not be fetched from img.example"
    assert internal.connections == 0
