"""The guarded fetch client against real servers on loopback, with a scripted resolver in
process (no real DNS): DNS rebinding, a loopback AAAA next to an allowed A record, redirects
to refused places, a huge redirect body, a trickling server, cookies.

127.0.0.2 stands in for a public address: the injected policy admits it and nothing else on
loopback, so a server on 127.0.0.1 or ::1 plays the internal service that must never be
reached (it counts connections)."""
from __future__ import annotations


import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IHostnameResolver

from moltbot_gw.fetch import (AddressPolicy, FetchFailed, FetchRefused, GuardedFetcher,
                              GuardedResolver)

from .chat_helpers import no_leftovers  # noqa: F401
from .fakes.origin import Origin
from .fakes.resolver import ScriptedResolver
from .support.network import ipv6_loopback

PUBLIC_STAND_IN = "127.0.0.2"
POLICY = AddressPolicy(allowed=[f"{PUBLIC_STAND_IN}/32"])
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
MB = 1024 * 1024


@pytest_twisted.async_yield_fixture
async def site():
    """The allowed "public" site, and an internal one on 127.0.0.1 that must see nothing."""
    public = await Origin.start(reactor, PUBLIC_STAND_IN)
    internal = await Origin.start(reactor, "127.0.0.1")
    internal.route("/secret", body=b"internal", content_type="image/png")
    yield public, internal
    await public.stop()
    await internal.stop()


def fetcher(answers, policy=POLICY):
    resolver = ScriptedResolver(answers)
    return GuardedFetcher(reactor, policy=policy, resolver=resolver), resolver


async def fetch(client, url, max_bytes=MB, deadline=5.0, **kw):
    return await client.fetch(url, max_bytes=max_bytes, deadline_seconds=deadline, **kw)


def test_guarded_resolver_is_a_hostname_resolver():
    verifyObject(IHostnameResolver, GuardedResolver(ScriptedResolver({}), POLICY))
    verifyObject(IHostnameResolver, ScriptedResolver({}))


@pytest_twisted.ensureDeferred
async def test_allowed_address_is_fetched(site):
    public, _ = site
    public.route("/cat.png", body=PNG, content_type="image/png; charset=binary")
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    result = await fetch(client, "http://img.example/cat.png")
    assert (result.body, result.content_type) == (PNG, "image/png")
    assert result.final_url == "http://img.example/cat.png"


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_to_loopback_never_connects_there(site):
    public, internal = site
    public.route("/a.png", status=302, redirect="/secret")
    # First answer public, every later one loopback: the redirect's connection resolves again.
    client, resolver = fetcher({"rebind.example": [[(PUBLIC_STAND_IN, public.port)],
                                                   [("127.0.0.1", internal.port)]]})
    with pytest.raises(FetchFailed) as raised:
        await fetch(client, "http://rebind.example/a.png")
    assert resolver.lookups == ["rebind.example", "rebind.example"]
    assert raised.value.host == "rebind.example"
    assert internal.connections == 0


@pytest_twisted.ensureDeferred
async def test_name_resolving_only_to_loopback_fails_without_connecting(site):
    _, internal = site
    client, _ = fetcher({"evil.example": [[("127.0.0.1", internal.port)]]})
    with pytest.raises(FetchFailed):
        await fetch(client, "http://evil.example/secret")
    assert internal.connections == 0


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest_twisted.ensureDeferred
async def test_loopback_aaaa_next_to_an_allowed_a_record_is_never_used(site):
    public, _ = site
    public.route("/cat.png", body=PNG, content_type="image/png")
    internal6 = await Origin.start(reactor, "::1")
    internal6.route("/cat.png", body=b"internal", content_type="image/png")
    try:
        # AAAA ::1 first, as a happy-eyeballs client would try it first.
        client, _ = fetcher({"dual.example": [[("::1", internal6.port),
                                               (PUBLIC_STAND_IN, public.port)]]})
        result = await fetch(client, "http://dual.example/cat.png")
        assert result.body == PNG
        assert internal6.connections == 0
    finally:
        await internal6.stop()


@pytest_twisted.ensureDeferred
async def test_redirects_to_internal_or_odd_places_are_refused(site):
    public, internal = site
    targets = [f"http://127.0.0.1:{internal.port}/secret",
               f"http://[::ffff:127.0.0.1]:{internal.port}/secret",
               "http://169.254.169.254/latest/meta-data", "file:///etc/passwd",
               "ftp://img.example/x", f"http://user:pw@img.example:{public.port}/x"]
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    for target in targets:
        public.route("/go", status=302, redirect=target)
        with pytest.raises(FetchRefused):
            await fetch(client, "http://img.example/go")
    assert internal.connections == 0


@pytest_twisted.ensureDeferred
async def test_ip_literal_urls_are_judged_by_the_policy_before_connecting(site):
    _, internal = site
    client, resolver = fetcher({})
    for url in (f"http://127.0.0.1:{internal.port}/secret",
                f"http://[::ffff:7f00:1]:{internal.port}/secret", "http://10.0.0.1/x",
                "http://[64:ff9b::7f00:1]/x", "http://100.64.0.1/x"):
        with pytest.raises(FetchRefused):
            await fetch(client, url)
    assert internal.connections == 0
    assert resolver.lookups == []


@pytest_twisted.ensureDeferred
async def test_allowlist_applies_to_every_hop(site):
    public, _ = site
    public.route("/go", status=302, redirect=f"http://other.example:{public.port}/cat.png")
    public.route("/cat.png", body=PNG, content_type="image/png")
    answers = [[(PUBLIC_STAND_IN, public.port)]]
    client, _ = fetcher({"img.example": answers, "other.example": answers})
    with pytest.raises(FetchRefused):
        await fetch(client, f"http://img.example:{public.port}/go",
                    allowed_hosts=["IMG.example"])
    result = await fetch(client, f"http://img.example:{public.port}/go",
                         allowed_hosts=["img.example", "other.example"])
    assert result.body == PNG


@pytest_twisted.ensureDeferred
async def test_huge_redirect_body_is_discarded_unread(site):
    public, _ = site
    public.route("/a", status=302, redirect="/cat.png", body_bytes=50 * MB)
    public.route("/cat.png", body=PNG, content_type="image/png")
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    result = await fetch(client, "http://img.example/a", max_bytes=64 * 1024)
    assert result.body == PNG
    # Loopback socket buffers take a few MB before the client closes; never the 50 MB.
    assert public.bytes_written < 16 * MB


@pytest_twisted.ensureDeferred
async def test_body_over_the_budget_fails_after_reading_about_the_budget(site):
    public, _ = site
    public.route("/big", status=200, content_type="image/png", body_bytes=50 * MB)
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    with pytest.raises(FetchFailed) as raised:
        await fetch(client, "http://img.example/big", max_bytes=256 * 1024)
    assert "content-length" in raised.value.reason
    assert public.bytes_written < 16 * MB


@pytest_twisted.ensureDeferred
async def test_body_without_length_stops_at_the_budget(site):
    public, _ = site
    public.route("/chunked", status=200, content_type="image/png", body_bytes=50 * MB,
                 chunked=True)
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    with pytest.raises(FetchFailed) as raised:
        await fetch(client, "http://img.example/chunked", max_bytes=256 * 1024)
    assert "over" in raised.value.reason
    assert public.bytes_written < 16 * MB


@pytest_twisted.ensureDeferred
async def test_trickling_server_fails_at_the_overall_deadline(site):
    public, _ = site
    public.route("/slow", content_type="image/png", trickle=0.1)
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    with pytest.raises(FetchFailed) as raised:
        await fetch(client, "http://img.example/slow", deadline=0.5)
    assert "deadline" in raised.value.reason
    # Each byte came well within any per-read idle timeout, yet the fetch ended.
    await public.ended[-1]
    assert public.requests[-1]._disconnected


@pytest_twisted.ensureDeferred
async def test_deadline_covers_the_redirect_chain(site):
    public, _ = site
    public.route("/a", status=302, redirect="/slow", body_bytes=50 * MB)
    public.route("/slow", content_type="image/png", trickle=0.1)
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    with pytest.raises(FetchFailed) as raised:
        await fetch(client, "http://img.example/a", deadline=0.5)
    assert "deadline" in raised.value.reason
    await public.ended[-1]


@pytest_twisted.ensureDeferred
async def test_no_cookie_is_kept_across_hops_or_fetches(site):
    public, _ = site
    public.route("/a", status=302, redirect="/cat.png", set_cookie="sid=secret; Path=/")
    public.route("/cat.png", body=PNG, content_type="image/png")
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    await fetch(client, "http://img.example/a")
    await fetch(client, "http://img.example/cat.png")
    assert [r.path for r in public.requests] == [b"/a", b"/cat.png", b"/cat.png"]
    assert [r.getHeader("cookie") for r in public.requests] == [None, None, None]


@pytest_twisted.ensureDeferred
async def test_error_statuses_and_redirect_loops_are_fetch_failures(site):
    public, _ = site
    public.route("/gone", status=404, body=b"<h1>nope</h1>", content_type="text/html")
    public.route("/loop", status=302, redirect="/loop")
    client, _ = fetcher({"img.example": [[(PUBLIC_STAND_IN, public.port)]]})
    with pytest.raises(FetchFailed) as raised:
        await fetch(client, "http://img.example/gone")
    assert "404" in raised.value.reason and "404" not in str(raised.value)
    with pytest.raises(FetchFailed) as raised:
        await fetch(client, "http://img.example/loop")
    assert "redirects" in raised.value.reason
    assert len(public.requests) == 1 + 4


@pytest_twisted.ensureDeferred
async def test_system_resolver_answers_for_odd_loopback_spellings_are_dropped(site):
    """The reactor's own resolver (getaddrinfo: no DNS needed for these) turns a decimal or
    short IPv4 spelling and ``localhost`` into loopback; the policy never sees a literal, the
    resolver wrapper still drops the answer."""
    _, internal = site
    client = GuardedFetcher(reactor)   # the default policy and the system resolver
    for host in ("2130706433", "127.1", "0x7f.0.0.1", "localhost"):
        with pytest.raises(FetchFailed):
            await fetch(client, f"http://{host}:{internal.port}/secret")
    assert internal.connections == 0


@pytest_twisted.ensureDeferred
async def test_the_guarded_reactors_simple_resolve_is_filtered_too():
    client, _ = fetcher({"evil.example": [[("127.0.0.1", 80)]],
                         "ok.example": [[(PUBLIC_STAND_IN, 80)]]})
    guarded = client.guarded_reactor
    assert await guarded.resolve("ok.example") == PUBLIC_STAND_IN
    with pytest.raises(Exception):
        await guarded.resolve("evil.example")
