"""``HTTPProvider``: what every provider that calls an upstream over HTTP shares — its config,
the shared ``UpstreamClient``, the URL it posts to, and the ``stream``/``complete`` entry points
around a subclass's ``_post``. The wire formats are the subclasses'.
"""
from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from .errors import no_embeddings
from .interface import IFlowControlledProvider
from .upstream_client import UpstreamClient


@implementer(IFlowControlledProvider)
class HTTPProvider:
    """A configured HTTP upstream; subclasses set ``default_base_url`` and ``path`` and
    implement ``_post``."""

    default_base_url = ""
    path = ""

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
        return self._post(request, on_delta, on_tool_call, on_reasoning, stream=True,
                          flow=flow)

    def complete(self, request) -> Deferred:
        """Ask for a reply in one piece (``stream: false``); fires with a ``ModelResult``."""
        return self._post(request, None, None, None, stream=False)

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
