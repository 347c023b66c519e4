"""Image inputs of chat requests: validate ``data:`` URIs against the configured limits and,
when allowed, fetch remote ``http(s)`` images into data URIs — never from loopback, private
or link-local addresses (checked on the resolved address of every hop)."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any, Mapping
from urllib.parse import urljoin, urlsplit

import treq
from twisted.logger import Logger

from ..config import ImagesConfig
from .errors import APIError

ALLOWED_MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.S)
MAX_REDIRECTS = 3
FETCH_TIMEOUT_SECONDS = 10.0
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
            raise _bad(f"messages[{message_index}]: image data is not valid base64", where)
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


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def fetch_remote_images(budget: ImageBudget, http_client, reactor) -> None:
    """Replace each remote image part's URL by a data URI of the fetched bytes."""
    for part, url, where in budget.remote:
        mime, body = await _fetch(url, where, budget, http_client, reactor)
        encoded = base64.b64encode(body).decode("ascii")
        part["image_url"]["url"] = f"data:{mime};base64,{encoded}"


async def _fetch(url: str, where: str, budget: ImageBudget, http_client, reactor):
    config = budget.config
    for _hop in range(MAX_REDIRECTS + 1):
        await _check_destination(url, where, config, reactor)
        try:
            response = await http_client.get(url, allow_redirects=False,
                                             timeout=FETCH_TIMEOUT_SECONDS)
        except Exception:
            raise _bad(f"could not fetch the image at {_host(url)}", where)
        if response.code in (301, 302, 303, 307, 308):
            location = response.headers.getRawHeaders(b"location", [b""])[0].decode("latin-1")
            await response.content()
            if not location:
                raise _bad("image URL redirected without a location", where)
            url = urljoin(url, location)
            continue
        if response.code != 200:
            raise _bad(f"fetching the image gave HTTP {response.code}", where)
        mime = (response.headers.getRawHeaders(b"content-type", [b""])[0]
                .split(b";")[0].strip().decode("latin-1").lower())
        if mime not in ALLOWED_MIME_TYPES:
            raise _bad(f"the fetched image has type {mime or 'unknown'}, not one of "
                       f"{', '.join(ALLOWED_MIME_TYPES)}", where)
        chunks: list[bytes] = []
        received = [0]

        def collect(data: bytes) -> None:
            received[0] += len(data)
            if received[0] > config.maxBytes:
                raise _bad(f"the fetched image is over the limit of {config.maxBytes} bytes",
                           where)
            chunks.append(data)

        await treq.collect(response, collect)
        body = b"".join(chunks)
        budget._count(len(body), 0, where)
        return mime, body
    raise _bad(f"image URL redirected more than {MAX_REDIRECTS} times", where)


def _host(url: str) -> str:
    return urlsplit(url).hostname or "?"


async def _check_destination(url: str, where: str, config: ImagesConfig, reactor) -> None:
    """Refuse hosts off the allowlist and any that resolve to a non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("image URL must be http(s) with a host", where)
    host = parts.hostname.lower()
    if config.urlAllowlist and host not in {h.lower() for h in config.urlAllowlist}:
        raise _bad(f"image host {host} is not in images.urlAllowlist", where)
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        try:
            address = await reactor.resolve(host, timeout=(2, 3))
        except Exception:
            raise _bad(f"image host {host} does not resolve", where)
    if not is_public_address(address):
        raise _bad(f"image host {host} is a loopback, private or link-local address; "
                   "refused", where)
