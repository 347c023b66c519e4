"""Image inputs of chat requests: validate ``data:`` URIs against the configured limits and,
when allowed, fetch remote ``http(s)`` images into data URIs through the guarded fetcher
(``moltbot_gw.fetch``: never an internal address, one deadline and byte budget per image)."""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from twisted.logger import Logger

from ..config import ImagesConfig
from ..fetch import FetchError, GuardedFetcher
from .errors import APIError

ALLOWED_MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.S)
MAX_REDIRECTS = 3
log = Logger()


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_image")


def _url_of(part: Mapping[str, Any]) -> Any:
    value = part.get("image_url")
    if isinstance(value, dict):
        return value.get("url")
    return value  # Responses-style input_image parts carry the URL string directly


class ImageBudget:
    """Counts the image parts and bytes of one request while its messages are parsed."""

    def __init__(self, config: ImagesConfig):
        self.config = config
        self.parts = 0
        self.total_bytes = 0
        self.remote: list[tuple[dict, str, str]] = []  # (part, url, param) to fetch

    def image_part(self, part: Mapping[str, Any], message_index: int, where: str) -> dict:
        self.parts += 1
        if self.parts > self.config.maxParts:
            raise _bad(f"messages[{message_index}]: more than {self.config.maxParts} image "
                       "parts in one request", where)
        url = _url_of(part)
        if not isinstance(url, str) or not url:
            raise _bad(f"messages[{message_index}]: image part without a URL", where)
        if url.startswith("data:"):
            self._check_data_uri(url, message_index, where)
            return {"type": "image_url", "image_url": {"url": url}}
        if not url.startswith(("http://", "https://")):
            raise _bad(f"messages[{message_index}]: image URL must be a data: URI or "
                       "http(s)", where)
        if not self.config.allowUrl:
            raise _bad(f"messages[{message_index}]: remote image URLs are not allowed; send "
                       "the image as a data: URI (or enable gateway.http.endpoints."
                       "chatCompletions.images.allowUrl)", where)
        fetched = {"type": "image_url", "image_url": {"url": url}}
        self.remote.append((fetched, url, where))
        return fetched

    def _check_data_uri(self, url: str, message_index: int, where: str) -> tuple[str, int]:
        match = _DATA_URI.match(url)
        if match is None:
            raise _bad(f"messages[{message_index}]: image is not a base64 data URI "
                       "(data:<mime>;base64,<data>)", where)
        mime = match.group("mime").lower()
        if mime not in ALLOWED_MIME_TYPES:
            raise _bad(f"messages[{message_index}]: image type {mime} is not allowed "
                       f"(allowed: {', '.join(ALLOWED_MIME_TYPES)})", where)
        try:
            size = len(base64.b64decode(match.group("data"), validate=True))
        except (binascii.Error, ValueError):
            raise _bad(f"messages[{message_index}]: image data is not valid base64",
                       where) from None
        self._count(size, message_index, where)
        return mime, size

    def _count(self, size: int, message_index: int, where: str) -> None:
        if size > self.config.maxBytes:
            raise _bad(f"messages[{message_index}]: image of {size} bytes is over the limit "
                       f"of {self.config.maxBytes}", where)
        self.total_bytes += size
        if self.total_bytes > self.config.maxTotalBytes:
            raise _bad(f"messages[{message_index}]: images total more than "
                       f"{self.config.maxTotalBytes} bytes", where)


async def fetch_remote_images(budget: ImageBudget, fetcher: GuardedFetcher) -> None:
    """Replace each remote image part's URL by a data URI of the fetched bytes."""
    for part, url, where in budget.remote:
        mime, body = await _fetch(url, where, budget, fetcher)
        encoded = base64.b64encode(body).decode("ascii")
        part["image_url"]["url"] = f"data:{mime};base64,{encoded}"


async def _fetch(url: str, where: str, budget: ImageBudget, fetcher: GuardedFetcher):
    """One image through the guarded fetcher. The client learns only the URL's host: never
    a status code, content type or address of what answered (those go to the log)."""
    config = budget.config
    host = _host(url)
    unfetchable = _bad(f"image could not be fetched from {host}", where)
    try:
        result = await fetcher.fetch(url, max_bytes=config.maxBytes,
                                     deadline_seconds=config.fetchSeconds,
                                     allowed_hosts=config.urlAllowlist,
                                     max_redirects=MAX_REDIRECTS)
    except FetchError:
        raise unfetchable from None   # the fetcher logged why
    if result.content_type not in ALLOWED_MIME_TYPES:
        log.info("image from {host} refused: content type {mime!r} is not an image type "
                 "we accept", host=host, mime=result.content_type)
        raise unfetchable
    budget._count(len(result.body), 0, where)
    return result.content_type, result.body


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
