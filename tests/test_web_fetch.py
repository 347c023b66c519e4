"""Issue 15, acceptance 5: the ``web_fetch`` tool (group:web). A page on a real loopback server
comes back as readable text; loopback, ``[::1]``, link-local metadata and ``localhost``
targets, and a redirect to loopback, are refused before any connection to them.

127.0.0.2 stands in for a public address where a test injects a policy admitting it; a
server on 127.0.0.1 plays the internal service that must never be reached (it counts
connections). End to end, builtin/echo asks for the tool with ``call web_fetch {json}``."""
from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from moltbot_gw.fetch import AddressPolicy, GuardedFetcher
from moltbot_gw.tools.base import ToolContext, ToolError
from moltbot_gw.tools.web import DEFAULT_MAX_CHARS, WebFetchTool

from .chat_helpers import PATH, no_leftovers  # noqa: F401
from .fakes.internet import PUBLIC_IP, SimulatedInternet
from .fakes.origin import Origin
from .fakes.resolver import ScriptedResolver
from .support.network import ipv6_loopback

PUBLIC_STAND_IN = "127.0.0.2"
POLICY = AddressPolicy(allowed=[f"{PUBLIC_STAND_IN}/32"])
CONTEXT = ToolContext(agent_id="main", workspace=None, reactor=reactor)
PAGE = (b"<!doctype html><html><head><title>Milk</title><style>p {color: red}</style>"
        b"<script>var secret = 1;</script></head><body><h1>Buying milk</h1>"
        b"<p>Go to the <a href='/shop'>shop</a> before noon.</p>"
        b"<ul><li>whole</li><li>skimmed</li></ul></body></html>")


@pytest_twisted.async_yield_fixture
async def site():
    """The allowed "public" site, and an internal one on 127.0.0.1 that must see nothing."""
    public = await Origin.start(reactor, PUBLIC_STAND_IN)
    internal = await Origin.start(reactor, "127.0.0.1")
    internal.route("/", body=b"internal secret page", content_type="text/plain")
    yield public, internal
    await public.stop()
    await internal.stop()


def admitting_tool(answers=None) -> WebFetchTool:
    """The tool with a fetcher whose policy admits 127.0.0.2 (and only that on loopback)."""
    return WebFetchTool(GuardedFetcher(reactor, policy=POLICY,
                                       resolver=ScriptedResolver(answers or {})))


@pytest_twisted.ensureDeferred
async def test_html_page_comes_back_as_readable_text(site):
    public, _ = site
    public.route("/milk", body=PAGE, content_type="text/html; charset=utf-8")
    url = f"http://{PUBLIC_STAND_IN}:{public.port}/milk"
    text = await admitting_tool().call({"url": url}, CONTEXT)
    assert text.splitlines()[0] == f"URL: {url}"
    assert "# Buying milk" in text
    assert f"Go to the [shop](http://{PUBLIC_STAND_IN}:{public.port}/shop) before noon." \
        in text   # links made absolute against the page's URL
    assert "whole" in text and "skimmed" in text
    assert "<" not in text and "secret" not in text and "color" not in text


@pytest_twisted.ensureDeferred
async def test_charset_of_the_page_is_used(site):
    public, _ = site
    public.route("/latin", body="<p>Caf\u00e9 cr\u00e8me</p>".encode("latin-1"),
                 content_type="text/html; charset=iso-8859-1")
    public.route("/meta", body="<html><head><meta charset='utf-8'></head><body><p>na\u00efve"
                 "</p></body></html>".encode(), content_type="text/html")
    tool = admitting_tool()
    base = f"http://{PUBLIC_STAND_IN}:{public.port}"
    assert "Caf\u00e9 cr\u00e8me" in await tool.call({"url": base + "/latin"}, CONTEXT)
    assert "na\u00efve" in await tool.call({"url": base + "/meta"}, CONTEXT)


@pytest_twisted.ensureDeferred
async def test_max_chars_cuts_and_marks_the_cut(site):
    public, _ = site
    public.route("/long", body=b"a" * 50_000, content_type="text/plain")
    tool = admitting_tool()
    url = f"http://{PUBLIC_STAND_IN}:{public.port}/long"
    text = await tool.call({"url": url, "max_chars": 100}, CONTEXT)
    assert text.endswith("[... cut at 100 characters]")
    assert text.split("\n\n")[1] == "a" * 100
    default = await tool.call({"url": url}, CONTEXT)
    assert default.split("\n\n")[1] == "a" * DEFAULT_MAX_CHARS and "cut at 20000" in default
    for bad in (0, -5, "10", 200_001):
        with pytest.raises(ToolError, match="max_chars"):
            await tool.call({"url": url, "max_chars": bad}, CONTEXT)


@pytest_twisted.ensureDeferred
async def test_text_and_json_as_is_images_refused(site):
    public, _ = site
    public.route("/data", body=b'{"price": 1.25}', content_type="application/json")
    public.route("/note", body=b"plain note\n", content_type="text/plain")
    public.route("/cat.png", body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, content_type="image/png")
    tool = admitting_tool()
    base = f"http://{PUBLIC_STAND_IN}:{public.port}"
    assert json.loads((await tool.call({"url": base + "/data"}, CONTEXT))
                      .split("\n\n", 1)[1]) == {"price": 1.25}
    assert (await tool.call({"url": base + "/note"}, CONTEXT)).endswith("\n\nplain note")
    with pytest.raises(ToolError, match="unsupported content type 'image/png'"):
        await tool.call({"url": base + "/cat.png"}, CONTEXT)


@pytest_twisted.ensureDeferred
async def test_bad_arguments_are_tool_errors():
    tool = admitting_tool()
    for arguments, message in (({"url": "file:///etc/passwd"}, "only http"),
                               ({"url": "ftp://example.com/"}, "only http"),
                               ({"url": ""}, "url"), ({"url": 5}, "url"),
                               ({"url": "http://a.example/", "x": 1}, "unknown argument")):
        with pytest.raises(ToolError, match=message):
            await tool.call(arguments, CONTEXT)


@pytest_twisted.ensureDeferred
async def test_internal_targets_are_refused_with_the_default_policy(site):
    """No injected policy: the tool as the gateway builds it, on the real resolver."""
    _, internal = site
    tool = WebFetchTool()
    urls = [f"http://127.0.0.1:{internal.port}/", f"http://localhost:{internal.port}/",
            "http://169.254.169.254/latest/meta-data/", f"http://[::1]:{internal.port}/",
            f"http://0.0.0.0:{internal.port}/", f"http://[::ffff:127.0.0.1]:{internal.port}/"]
    for url in urls:
        with pytest.raises(ToolError) as refused:
            await tool.call({"url": url}, CONTEXT)
        message = refused.value.message
        assert "internal secret" not in message
        if "localhost" in url:   # refused at resolution: the message names only the host
            assert "no public address" in message and "127.0.0.1" not in message
        else:                    # an IP literal: refused before any connection attempt
            assert message.startswith("refused:"), message
    assert internal.connections == 0
    if ipv6_loopback():   # a server really listening on [::1] sees nothing either
        v6 = await Origin.start(reactor, "::1")
        try:
            with pytest.raises(ToolError, match="refused"):
                await tool.call({"url": f"http://[::1]:{v6.port}/"}, CONTEXT)
            assert v6.connections == 0
        finally:
            await v6.stop()


@pytest_twisted.ensureDeferred
async def test_redirect_to_loopback_is_refused(site):
    public, internal = site
    public.route("/go", status=302, redirect=f"http://127.0.0.1:{internal.port}/")
    public.route("/named", status=302, redirect=f"http://intra.example:{internal.port}/")
    tool = admitting_tool({"intra.example": [[("127.0.0.1", internal.port)]]})
    for path in ("/go", "/named"):
        with pytest.raises(ToolError) as refused:
            await tool.call({"url": f"http://{PUBLIC_STAND_IN}:{public.port}{path}"}, CONTEXT)
        assert "internal secret" not in refused.value.message
    assert public.connections == 2 and internal.connections == 0


def web_config(workspace=None, **tools):
    agent = {"id": "main", "default": True, "model": "builtin/echo", "tools": tools}
    if workspace is not None:   # profiles with group:fs require one
        agent["workspace"] = str(workspace)
    return {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "agents": {"list": [agent]}}


async def ask(http, gw, text):
    response = await http.post(gw.url + PATH, json={
        "model": "moltbot:main", "messages": [{"role": "user", "content": text}]},
        headers=gw.auth_headers)
    body = await response.content()
    assert response.code == 200, body
    message = json.loads(body)["choices"][0]["message"]
    assert not message.get("tool_calls")          # server tools stay invisible
    return message["content"]


@pytest_twisted.ensureDeferred
async def test_echo_agent_fetch_of_loopback_gets_the_refusal(start_gateway, http, site):
    _, internal = site
    gw = await start_gateway(web_config(allow=["group:web"]))
    answer = await ask(http, gw, 'call web_fetch {"url": "http://127.0.0.1:%d/"}'
                       % internal.port)
    assert "refused" in answer and "error" in answer, answer
    assert "internal secret" not in answer
    assert internal.connections == 0


@pytest_twisted.ensureDeferred
async def test_echo_agent_fetches_a_public_page(start_gateway, http, site, tmp_path):
    """The gateway's default policy, on a simulated internet: the page's text is the reply."""
    public, _ = site
    public.route("/milk", body=PAGE, content_type="text/html")
    net = SimulatedInternet(reactor, {"news.example": [[(PUBLIC_IP, 80)]]},
                            routes={PUBLIC_IP: (PUBLIC_STAND_IN, public.port)})
    gw = await start_gateway(web_config(tmp_path / "ws", profile="full"), reactor=net)
    answer = await ask(http, gw, 'call web_fetch {"url": "http://news.example/milk"}')
    assert "# Buying milk" in answer and "before noon" in answer and "<p>" not in answer


@pytest.mark.parametrize("tools", [{"profile": "coding"},
                                   {"profile": "full", "deny": ["group:web"]}])
@pytest_twisted.ensureDeferred
async def test_web_fetch_not_offered_unless_allowed(start_gateway, http, site, tmp_path, tools):
    """A public page the tool would fetch: an agent not allowed group:web never gets it."""
    public, _ = site
    public.route("/milk", body=PAGE, content_type="text/html")
    net = SimulatedInternet(reactor, {"news.example": [[(PUBLIC_IP, 80)]]},
                            routes={PUBLIC_IP: (PUBLIC_STAND_IN, public.port)})
    gw = await start_gateway(web_config(tmp_path / "ws", **tools), reactor=net)
    answer = await ask(http, gw, 'call web_fetch {"url": "http://news.example/milk"}')
    assert "Buying milk" not in answer and public.connections == 0
