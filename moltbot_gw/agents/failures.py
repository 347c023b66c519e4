"""The one table from the ways a run (or a provider call) can fail to what clients are told:
HTTP status, OpenAI error type and code, WebSocket error code and the message. Both transports
read it through ``describe_failure``; they only shape the result. Plain ints and strings here:
nothing of HTTP or WebSocket libraries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..providers import errors as provider
from ..providers.slots import ProviderBusy
from ..redis.connection import RedisUnavailable
from ..retry_after import TellsRetryAfter
from ..sessions.lease import LeaseLost
from .client_slots import ClientBusy
from .registry import UnknownAgent
from .run import InvalidRunRequest, ModelNotFound, RunCancelled, RunTimedOut
from .session_order import TAKEN_OVER
from .tool_loop import ToolLoopLimitReached


@dataclass(frozen=True)
class FailureKind:
    """One row of the table. ``message`` turns the exception into the client's message
    (its own ``message`` is already safe to show: no secrets, no tracebacks). ``aborted``
    says the run was stopped rather than broken (WebSocket ``details.status``)."""

    name: str
    http_status: int
    openai_type: str
    openai_code: str
    ws_code: str                        # a ws.frames.ErrorCode value
    message: Callable[[BaseException], str]
    aborted: bool = False
    tells_retry_after: bool = False     # pass the failure's ``retry_after`` on to the client


@dataclass(frozen=True)
class FailureDescription(TellsRetryAfter):
    """What one failure is to a client; ``retry_after`` in seconds when the client may
    try again later, ``param`` the part of the request at fault (``InvalidRunRequest``)."""

    kind: FailureKind
    message: str
    retry_after: Optional[float] = None
    param: Optional[str] = None


def _own(error: BaseException) -> str:
    return getattr(error, "message", None) or "the agent run failed"


def _client_busy(error: BaseException) -> str:
    busy = error if isinstance(error, ClientBusy) else None
    at_most = (f": at most {busy.per_client} at once and {busy.queue_size} waiting "
               "(gateway.limits.perClientConcurrency / perClientQueue)"
               if busy is not None and busy.per_client is not None else "")
    return f"too many concurrent runs from your address{at_most}"


PROVIDER_RATE_LIMITED = FailureKind(
    "provider_rate_limited", 429, "rate_limit_error", "upstream_rate_limited", "RATE_LIMITED",
    lambda e: f"the model provider is rate limiting requests: {_own(e)}",
    tells_retry_after=True)
PROVIDER_TIMEOUT = FailureKind(
    "provider_timeout", 504, "timeout_error", "upstream_timeout", "TIMEOUT",
    lambda e: f"the model provider did not answer in time: {_own(e)}")
PROVIDER_BAD_REQUEST = FailureKind(
    "provider_bad_request", 400, "invalid_request_error", "upstream_bad_request",
    "INVALID_REQUEST", lambda e: f"the model provider rejected the request: {_own(e)}")
PROVIDER_NOT_FOUND = FailureKind(
    "provider_not_found", 502, "api_error", "provider_not_found", "UNAVAILABLE", _own)
PROVIDER_AUTH = FailureKind(
    "provider_auth", 502, "api_error", "provider_auth_failed", "UNAVAILABLE",
    lambda e: _own(e) if getattr(e, "call", None)
    else "the model provider refused the gateway's credentials")
MODEL_NOT_FOUND = FailureKind(
    "model_not_found", 404, "not_found_error", "model_not_found", "NOT_FOUND", _own)
PROVIDER_REPLY_TOO_LARGE = FailureKind(
    "provider_reply_too_large", 502, "api_error", "upstream_reply_too_large", "UNAVAILABLE",
    _own)
PROVIDER_UNAVAILABLE = FailureKind(
    "provider_unavailable", 502, "api_error", "upstream_error", "UNAVAILABLE",
    lambda e: f"the model provider failed: {_own(e)}")
PROVIDER_BUSY = FailureKind(
    "provider_busy", 429, "rate_limit_error", "provider_busy", "RATE_LIMITED", _own,
    tells_retry_after=True)
RUN_TIMED_OUT = FailureKind(
    "run_timed_out", 504, "timeout_error", "upstream_timeout", "TIMEOUT", _own, aborted=True)
RUN_CANCELLED = FailureKind(
    "run_cancelled", 500, "api_error", "run_cancelled", "ABORTED",
    lambda e: "the run was cancelled", aborted=True)
INVALID_RUN_REQUEST = FailureKind(
    "invalid_run_request", 400, "invalid_request_error", "invalid_request", "INVALID_REQUEST",
    _own)
UNKNOWN_AGENT = FailureKind(
    "unknown_agent", 404, "not_found_error", "model_not_found", "NOT_FOUND",
    lambda e: f'unknown agent "{getattr(e, "agent_id", "")}"')
CLIENT_BUSY = FailureKind(
    "client_busy", 429, "rate_limit_error", "too_many_concurrent_requests", "RATE_LIMITED",
    _client_busy, tells_retry_after=True)
# The run's lease on its session expired (its process stalled) and another process took the
# session: the gateway's trouble, not the client's; the turn was not recorded, so a retry
# (which the OpenAI SDKs make by themselves on 503) is safe and sees the other run's turn.
SESSION_TAKEN_OVER = FailureKind(
    "session_taken_over", 503, "api_error", "session_taken_over", "UNAVAILABLE",
    lambda e: TAKEN_OVER)
TOOL_LOOP_LIMIT = FailureKind(
    "tool_loop_limit", 502, "api_error", "tool_loop_limit", "UNAVAILABLE", _own)
# The shared state (Redis) did not answer within its bound; the message names no address.
SERVICE_UNAVAILABLE = FailureKind(
    "service_unavailable", 503, "api_error", "service_unavailable", "UNAVAILABLE",
    lambda e: "the gateway's shared state (Redis) is unavailable; try again shortly")
INTERNAL = FailureKind(
    "internal", 500, "api_error", "internal_error", "INTERNAL",
    lambda e: "internal error while running the agent")

# Most specific first: the first class the failure is an instance of picks its row. A bare
# ``ProviderError`` (the runner's wrapper for an unexpected exception) is internal.
TABLE: tuple[tuple[type, FailureKind], ...] = (
    (provider.ProviderRateLimited, PROVIDER_RATE_LIMITED),
    (provider.ProviderTimeout, PROVIDER_TIMEOUT),
    (provider.ProviderBadRequest, PROVIDER_BAD_REQUEST),
    (provider.ProviderNotFound, PROVIDER_NOT_FOUND),
    (provider.ProviderAuthError, PROVIDER_AUTH),
    (provider.ProviderReplyTooLarge, PROVIDER_REPLY_TOO_LARGE),
    (provider.ProviderUnavailable, PROVIDER_UNAVAILABLE),
    (ProviderBusy, PROVIDER_BUSY),
    (RunTimedOut, RUN_TIMED_OUT),
    (RunCancelled, RUN_CANCELLED),
    (InvalidRunRequest, INVALID_RUN_REQUEST),
    (UnknownAgent, UNKNOWN_AGENT),
    (ModelNotFound, MODEL_NOT_FOUND),
    (ClientBusy, CLIENT_BUSY),
    (LeaseLost, SESSION_TAKEN_OVER),
    (ToolLoopLimitReached, TOOL_LOOP_LIMIT),
    (RedisUnavailable, SERVICE_UNAVAILABLE),
)
KINDS: tuple[FailureKind, ...] = tuple(kind for _cls, kind in TABLE) + (INTERNAL,)


def failure_kind(error: BaseException) -> FailureKind:
    """The row of ``error``; ``INTERNAL`` for anything the table does not name."""
    for cls, kind in TABLE:
        if isinstance(error, cls):
            return kind
    return INTERNAL


def describe_failure(error: BaseException) -> FailureDescription:
    """What a client is told about ``error`` (a run, provider or admission failure)."""
    kind = failure_kind(error)
    retry_after = getattr(error, "retry_after", None) if kind.tells_retry_after else None
    return FailureDescription(kind, kind.message(error), retry_after=retry_after,
                              param=getattr(error, "param", None))
