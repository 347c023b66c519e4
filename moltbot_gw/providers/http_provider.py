"""``HTTPProvider``: what every provider that calls an upstream over HTTP shares — its config,
the shared ``UpstreamClient``, the URL it posts to, and the ``stream``/``complete`` entry points
around a subclass's ``_post``. The wire formats are the subclasses'.
"""
from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import ProviderAuthError, ProviderNotFound, no_embeddings
from .interface import IFlowControlledProvider
from .upstream_client import UpstreamClient
from .upstream_errors import redact


@implementer(IFlowControlledProvider)
class HTTPProvider:
    """A configured HTTP upstream; subclasses set ``default_base_url`` and ``path`` and
    implement ``_post``."""

    log = Logger()
    default_base_url = ""
    path = ""
    models_path = ""

    def __init__(self, name: str, config, client: UpstreamClient,
                 secrets: Optional[tuple[str, ...]] = None):
        self.name = name
        self._config = config
        self._client = client
        # Blanked out of upstream error text: the registry passes every configured secret
        # (all providers' keys and header values, the gateway's own), not just this one's.
        self.secrets = secrets if secrets is not None else tuple(
            s for s in (config.apiKey, *config.headers.values()) if s)
        self.base_url = (config.baseUrl or self.default_base_url).rstrip("/")
        self.url = self.base_url + self.path

    def stream(self, request, on_delta, on_tool_call=None, on_reasoning=None,
               flow=None) -> Deferred:
        """Stream a reply: ``on_delta`` per text fragment, ``on_tool_call`` per tool-call
        fragment, ``on_reasoning`` per reasoning fragment; fires with a ``ModelResult``.
        ``flow`` (a ``FlowControl``) lets a slow consumer pause the upstream read."""
        d = self._post(request, on_delta, on_tool_call, on_reasoning, stream=True,
                       flow=flow)
        return d.addErrback(self._explain, request.model)

    def complete(self, request) -> Deferred:
        """Ask for a reply in one piece (``stream: false``); fires with a ``ModelResult``."""
        d = self._post(request, None, None, None, stream=False)
        return d.addErrback(self._explain, request.model)

    def _explain(self, failure: Failure, model: str) -> Failure:
        """Say what to check when the upstream refused the call itself (404, 401/403): those
        are this provider's configuration, which only the operator can fix."""
        error = failure.value
        if isinstance(error, ProviderNotFound):
            names_model = bool(model) and model in error.detail
            error.missing_model = model if names_model else None
            check = (f'that the server serves model "{model}" and '
                     if names_model else "") + self.base_url_check()
            error.message = f"{error.message}: check {check}"
            (self.log.info if names_model else self.log.warn)(
                "provider {provider} answered 404 for {call} at {base_url}: check {check}",
                provider=self.name, call=error.call, base_url=self._logged_base_url(),
                check=check)
        elif isinstance(error, ProviderAuthError) and error.call:
            check = f"models.providers.{self.name}.apiKey (and its headers)"
            error.message = f"{error.message}: check {check}"
            self.log.warn("provider {provider} refused the gateway's credentials "
                          "({status} for {call} at {base_url}): check {check}",
                          provider=self.name, status=error.status, call=error.call,
                          base_url=self._logged_base_url(), check=check)
        return failure

    def _logged_base_url(self) -> str:
        return redact(safe_url(self.base_url), self.secrets)

    def base_url_check(self) -> str:
        """What to check of ``baseUrl`` when the upstream has no such path."""
        return f"models.providers.{self.name}.baseUrl (does it end in /v1?)"

    def headers(self) -> dict[str, str]:
        """The headers every call carries (the key, the API's own, the configured ones)."""
        return dict(self._config.headers)

    def idle_timeout(self, stream: bool) -> Optional[float]:
        """The idle timeout of a chat call: ``idleTimeoutSeconds`` for a stream, whose silence
        means a fault; none for a whole answer (``stream: false``), which is silent until the
        model has finished, however slow the hardware. The run's ``timeoutSeconds`` bounds
        that call instead: the runner cancels it, which closes the connection."""
        return self._config.idleTimeoutSeconds if stream else None

    def embeddings(self, model: str, input: Any, encoding_format: Optional[str] = None,
                   dimensions: Optional[int] = None) -> Deferred:
        """Fails with ``ProviderBadRequest`` unless the provider overrides it."""
        return fail(no_embeddings(self.name))

    def _post(self, request, on_delta, on_tool_call, on_reasoning, stream: bool,
              flow=None) -> Deferred:
        raise NotImplementedError


def safe_url(url: str) -> str:
    """``url`` for a log line: scheme, host, port and path; no user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
