"""Typed failures of model providers.

Providers raise these; protocol layers map them to status codes (400/404/429/502/504) and the
runner uses ``retryable`` to decide whether a fallback model may be tried.
"""
from __future__ import annotations

from typing import Optional


class ProviderError(Exception):
    """Base class. ``message`` is safe to show a client: no secrets, no tracebacks."""

    retryable = False
    kind = "upstream_error"

    def __init__(self, message: str, *, status: Optional[int] = None,
                 retry_after: Optional[float] = None):
        super().__init__(message)
        self.message = message
        self.status = status            # upstream HTTP status, when there was one
        self.retry_after = retry_after  # seconds, from an upstream Retry-After


class ProviderAuthError(ProviderError):
    """The upstream refused our credentials (401/403). ``call`` ("POST /v1/chat/completions")
    is set when the gateway wrote ``message`` itself from the status, with no upstream text."""
    kind = "upstream_auth"
    call: Optional[str] = None


class ProviderNotFound(ProviderError):
    """The upstream answered 404 for what the gateway called: a ``baseUrl`` with a wrong path,
    or a model the server does not serve. Either is the gateway's configuration, unless the
    client chose the model (``missing_model`` names it when the upstream's answer did)."""
    kind = "upstream_not_found"
    call: Optional[str] = None              # "POST /v1/chat/completions"
    detail: str = ""                        # the upstream's own (redacted) words
    missing_model: Optional[str] = None     # set by the provider that knows the model


class ProviderRateLimited(ProviderError):
    """The upstream said 429."""
    retryable = True
    kind = "upstream_rate_limited"


class ProviderBadRequest(ProviderError):
    """The upstream rejected the request itself (400/404/413/422)."""
    kind = "upstream_bad_request"


class ProviderUnavailable(ProviderError):
    """Connect failure, 5xx, connection dropped, or output we cannot parse."""
    retryable = True
    kind = "upstream_unavailable"


class ProviderTimeout(ProviderError):
    """No answer within the connect or idle timeout."""
    retryable = True
    kind = "upstream_timeout"


class ProviderReplyTooLarge(ProviderError):
    """The model's reply (text, reasoning and tool-call arguments) outgrew the agent's limit;
    the rest is not read, so one runaway reply cannot exhaust the gateway's memory."""
    kind = "upstream_reply_too_large"


def no_embeddings(provider: str) -> ProviderBadRequest:
    """What a provider without an embeddings endpoint fails ``embeddings()`` with."""
    return ProviderBadRequest(f'provider "{provider}" does not offer embeddings')
