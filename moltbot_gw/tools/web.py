"""The web tool (``group:web``): ``web_fetch`` GETs a public http(s) page through the SSRF-guarded
``fetch.GuardedFetcher`` (every address of every hop checked, byte and time caps) and gives
the model readable text: HTML converted to Markdown by ``markdownify``, text and JSON as is."""
from __future__ import annotations

import codecs
from typing import Any, Mapping, Optional
from urllib.parse import urljoin

from twisted.internet import defer, threads
from zope.interface import implementer

from ..fetch import DEFAULT_POLICY, FetchError, FetchRefused, FetchResult, GuardedFetcher
from .base import IServerTool, ToolContext, ToolError
from .workspace import int_arg, known_args, string_arg

GROUP = "group:web"
MAX_BODY_BYTES = 2 * 1024 * 1024     # body read from the site, redirects included
DEADLINE_SECONDS = 15.0              # the whole fetch: connects, redirects and body
MAX_REDIRECTS = 3
DEFAULT_MAX_CHARS = 20_000
LIMIT_MAX_CHARS = 200_000
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript",
                        "application/ld+json"})
CUT_MARK = "\n\n[... cut at {n} characters]"


def is_text_type(content_type: str) -> bool:
    """Types returned as decoded text; no content type at all is treated as text too."""
    return (not content_type or content_type.startswith("text/")
            or content_type in TEXT_TYPES or content_type.endswith("+json"))


def decode(body: bytes, charset: str) -> str:
    """The body as text in its declared charset (UTF-8 when none or unknown); bad bytes are
    replaced, never an error."""
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError:
        charset = "utf-8"
    return body.decode(charset or "utf-8", errors="replace")


def html_to_markdown(body: bytes, charset: str, base_url: str) -> str:
    """Readable Markdown of a page (scripts and styles dropped), its links made absolute
    against ``base_url`` so the model can fetch them next. CPU-bound on a large page:
    callers run it in a worker thread. Without a declared charset, Beautiful Soup sniffs
    the page's own ``<meta charset>``."""
    # Imported on the first page converted: an idle gateway does not carry them (~5 MB).
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    markup: Any = decode(body, charset) if charset else body
    soup = BeautifulSoup(markup, "html.parser")
    for link in soup.find_all("a", href=True):
        try:
            link["href"] = urljoin(base_url, str(link["href"]))
        except ValueError:   # a malformed href stays as written
            pass
    text = MarkdownConverter(heading_style="ATX", strip=["img"]).convert_soup(soup)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def readable(result: FetchResult) -> str:
    """The fetched body as text for the model; a ToolError for types that are not text."""
    if result.content_type in HTML_TYPES:
        return html_to_markdown(result.body, result.charset, result.final_url)
    if is_text_type(result.content_type):
        return decode(result.body, result.charset).strip()
    raise ToolError(f"unsupported content type {result.content_type!r} (web_fetch reads "
                    "HTML, text and JSON)")


def cut(text: str, max_chars: int) -> str:
    """``text`` at most ``max_chars`` long, the cut marked."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + CUT_MARK.format(n=max_chars)


@implementer(IServerTool)
class WebFetchTool:
    """``web_fetch``: one guarded GET. The fetcher is given so tests can inject a policy and
    a resolver; the gateway uses the default policy (only globally routable addresses)."""

    name = "web_fetch"
    group = GROUP
    description = ("Fetch a public web page (http or https) and return its text: HTML as "
                   "Markdown, text and JSON as is. Private, loopback and link-local "
                   f"addresses are refused; at most {MAX_BODY_BYTES // (1024 * 1024)} MiB "
                   f"and {DEADLINE_SECONDS:g} s per fetch.")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "the http:// or https:// URL to GET"},
            "max_chars": {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX_CHARS,
                          "description": f"longest text returned (default "
                                         f"{DEFAULT_MAX_CHARS}); the cut is marked"},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, fetcher: Optional[GuardedFetcher] = None):
        self.fetcher = fetcher

    def call(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        if self.fetcher is None:   # built on first use, on the reactor the runs use
            self.fetcher = GuardedFetcher(context.reactor, policy=DEFAULT_POLICY)
        return defer.Deferred.fromCoroutine(self._call(self.fetcher, dict(arguments)))

    async def _call(self, fetcher: GuardedFetcher, arguments: dict[str, Any]) -> str:
        known_args(arguments, self.parameters)
        url = string_arg(arguments, "url").strip()
        max_chars = int_arg(arguments, "max_chars", 1)
        if max_chars is None:
            max_chars = DEFAULT_MAX_CHARS
        if max_chars > LIMIT_MAX_CHARS:
            raise ToolError(f"max_chars: at most {LIMIT_MAX_CHARS}")
        if not url.lower().startswith(("http://", "https://")):
            raise ToolError("url: only http:// and https:// URLs are fetched")
        try:
            result = await fetcher.fetch(url, max_bytes=MAX_BODY_BYTES,
                                              deadline_seconds=DEADLINE_SECONDS,
                                              max_redirects=MAX_REDIRECTS)
        except FetchRefused as e:   # e.reason may name an internal address: logs only
            raise ToolError(f"refused: fetching from {e.host} is not allowed (only public "
                            "addresses are)") from None
        except FetchError as e:
            raise ToolError(f"{e} (the name has no public address, a network error, an "
                            f"HTTP error status, over {MAX_BODY_BYTES // (1024 * 1024)} MiB "
                            f"or over {DEADLINE_SECONDS:g} s)") from None
        text = await threads.deferToThread(readable, result)
        return f"URL: {result.final_url}\n\n{cut(text, max_chars)}"


def web_tools(fetcher: Optional[GuardedFetcher] = None) -> dict[str, Any]:
    """The ``group:web`` tools by name; without a fetcher, one with the default policy is
    built on first use (no reactor is touched while a config is only being explained)."""
    tool = WebFetchTool(fetcher)
    return {tool.name: tool}
