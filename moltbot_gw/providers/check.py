"""``moltbot-gw providers check``: asks every configured provider for its model list, the way
the gateway would call it (its baseUrl, apiKey and headers), and says for each whether it is
reachable, refuses the key, has a wrong path, refuses connections or times out. No gateway
needs to run; the CLI only prints what ``check_providers`` finds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from ..config import Config
from ..config.types import normalize_agent_id, parse_model_ref
from .http_provider import HTTPProvider, safe_url
from .registry import ProviderRegistry
from .upstream_errors import redact

MAX_MODEL_LIST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class AgentModel:
    """One model an agent uses (its primary or a fallback) on the checked provider."""

    agent: str
    model: str                      # the provider's own model id
    listed: Optional[bool] = None   # in the provider's model list; None: no list to look in

    def describe(self) -> str:
        where = {True: "listed", False: "NOT listed", None: "not checked"}[self.listed]
        return f'agent {self.agent}: "{self.model}" {where}'


@dataclass(frozen=True)
class ProviderCheck:
    """What one provider answered. ``status`` is one of ``reachable``, ``built_in``,
    ``auth_refused``, ``wrong_path``, ``http_error``, ``connection_refused``, ``timed_out``
    or ``unreachable``; ``ok`` says whether it could serve the agents."""

    provider: str
    status: str
    summary: str                    # the line's text after "<provider>: "
    url: str = ""                   # what was called, without credentials or query
    models: tuple[str, ...] = ()
    used_by: tuple[AgentModel, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status in ("reachable", "built_in")

    @property
    def used(self) -> bool:
        return bool(self.used_by)

    def line(self) -> str:
        uses = "; ".join(use.describe() for use in self.used_by)
        return f"{self.provider}: {self.summary}" + (f" ({uses})" if uses else "")

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "ok": self.ok, "status": self.status,
                "message": self.summary, "url": self.url or None, "models": list(self.models),
                "usedBy": [{"agent": use.agent, "model": use.model, "listed": use.listed}
                           for use in self.used_by]}


def agent_models(config: Config) -> dict[str, list[tuple[str, str]]]:
    """provider name -> [(agent id, model id)] over every agent's primary and fallbacks."""
    defaults = config.agents.defaults
    entries = config.agents.list or ()
    uses: dict[str, list[tuple[str, str]]] = {}
    if not entries:
        entries_models = [("main", defaults.model)]
    else:
        entries_models = [(normalize_agent_id(e.id) or e.id, e.model or defaults.model)
                          for e in entries]
    for agent_id, choice in entries_models:
        for ref in choice.chain:
            parsed = parse_model_ref(ref)
            if parsed is not None:
                uses.setdefault(parsed[0], []).append((agent_id, parsed[1]))
    return uses


async def check_providers(reactor, config: Config, timeout: float = 5.0) -> list[ProviderCheck]:
    """Check every configured provider at once (and ``builtin``); one result each, by name."""
    registry = ProviderRegistry(config.models, reactor)
    uses = agent_models(config)
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool, connectTimeout=timeout))
    names = sorted(set(config.models.providers) | ({"builtin"} if "builtin" in uses else set()))
    calls = []
    for name in names:
        if name == "builtin":
            calls.append(Deferred.fromCoroutine(_builtin(uses.get(name, []))))
        else:
            provider = registry.get(name)
            assert isinstance(provider, HTTPProvider)
            calls.append(Deferred.fromCoroutine(_check_one(
                reactor, http, provider, uses.get(name, []), timeout, registry.secrets)))
    try:
        results = await DeferredList(calls, consumeErrors=True)
    finally:
        await pool.closeCachedConnections()
        await registry.close()
    checks = []
    for name, (_succeeded, value) in zip(names, results, strict=True):
        if isinstance(value, ProviderCheck):
            checks.append(value)
        else:   # a bug here, not the provider's doing: say so rather than crash the report
            checks.append(ProviderCheck(name, "unreachable",
                                        f"check failed: {type(value.value).__name__}"))
    return checks


async def _builtin(uses: list[tuple[str, str]]) -> ProviderCheck:
    return ProviderCheck("builtin", "built_in", "built in",
                         used_by=tuple(AgentModel(a, m) for a, m in uses))


async def _check_one(reactor, http: HTTPClient, provider: HTTPProvider,
                     uses: list[tuple[str, str]], timeout: float,
                     secrets: tuple[str, ...]) -> ProviderCheck:
    url = provider.base_url + provider.models_path
    shown = redact(safe_url(url), secrets)
    name = provider.name
    unlisted = tuple(AgentModel(a, m) for a, m in uses)

    def failed(status: str, summary: str) -> ProviderCheck:
        return ProviderCheck(name, status, summary, url=shown, used_by=unlisted)

    expired: list[bool] = []

    def too_late(result, _timeout):
        # cancelling the request fails it with treq's own error; remember why
        expired.append(True)
        return result

    try:
        headers = Headers({k: [v] for k, v in provider.headers().items()})
        request = http.get(url, headers=headers, allow_redirects=False)
        response = await request.addTimeout(timeout, reactor, onTimeoutCancel=too_late)
        body = await _read(response).addTimeout(timeout, reactor, onTimeoutCancel=too_late)
    except BaseException:
        if expired:
            return failed("timed_out", f"timed out after {timeout:g} s (GET {shown})")
        return _connect_failure(Failure(), failed, timeout, shown)
    status = response.code
    if status in (401, 403):
        return failed("auth_refused", f"auth refused ({status} for GET {shown}): check "
                                      f"models.providers.{name}.apiKey")
    if status == 404:
        return failed("wrong_path", f"wrong path (404 for GET {shown}): check "
                                    f"{provider.base_url_check()}")
    if not 200 <= status < 300:
        return failed("http_error", f"answered HTTP {status} for GET {shown}")
    models = _model_ids(body)
    if models is None:
        return ProviderCheck(name, "reachable", f"reachable at {shown}, but its model list "
                             "is not one the gateway can read", url=shown, used_by=unlisted)
    listed = tuple(AgentModel(a, m, m in models) for a, m in uses)
    count = f"{len(models)} model" + ("" if len(models) == 1 else "s")
    return ProviderCheck(name, "reachable", f"reachable, {count}", url=shown,
                         models=tuple(models), used_by=listed)


def _read(response) -> Deferred:
    """The body, at most ``MAX_MODEL_LIST_BYTES`` of it (a model list is small)."""
    from treq import collect

    parts: list[bytes] = []
    size = [0]

    def keep(data: bytes) -> None:
        if size[0] < MAX_MODEL_LIST_BYTES:
            parts.append(data)
            size[0] += len(data)

    return collect(response, keep).addCallback(lambda _: b"".join(parts))


def _connect_failure(failure: Failure, failed, timeout: float, shown: str) -> ProviderCheck:
    if failure.check(net_error.ConnectionRefusedError):
        return failed("connection_refused", f"connection refused (GET {shown})")
    if failure.check(DeferredTimeout, net_error.TimeoutError, CancelledError):
        return failed("timed_out", f"timed out after {timeout:g} s (GET {shown})")
    if failure.check(net_error.DNSLookupError):
        return failed("unreachable", f"host name not found (GET {shown})")
    return failed("unreachable", f"could not connect ({type(failure.value).__name__}, "
                                 f"GET {shown})")


def _model_ids(body: bytes) -> Optional[list[str]]:
    """The ``id``s of an OpenAI or Anthropic ``{"data": [{"id": ...}]}`` list; Ollama's
    native ``{"models": [{"name": ...}]}`` too."""
    try:
        payload = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    items = payload.get("data", payload.get("models"))
    if not isinstance(items, list):
        return None
    ids = []
    for item in items:
        if isinstance(item, dict):
            value = item.get("id", item.get("name"))
            if isinstance(value, str):
                ids.append(value)
    return ids
