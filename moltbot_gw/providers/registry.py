"""Builds the configured model providers once at start, all sharing one upstream HTTP pool.

Looks providers up by the name before the slash of a model ref; parsing model refs, choosing
fallbacks and retrying belong to the agent runtime, not here.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..config import ModelsConfig
from .anthropic_messages import AnthropicMessagesProvider
from .builtin import BuiltinProvider
from .interface import IProvider
from .openai_completions import OpenAICompletionsProvider
from .redaction import configured_secrets
from .slots import ProviderSlots
from .upstream_client import UpstreamClient

_APIS = {
    "openai-completions": OpenAICompletionsProvider,
    "anthropic-messages": AnthropicMessagesProvider,
}


class ProviderRegistry:
    """``get(name)`` returns the provider configured under ``models.providers.<name>`` or the
    built-in one (``builtin``)."""

    log = Logger()

    def __init__(self, models_config: ModelsConfig, reactor,
                 client: Optional[UpstreamClient] = None,
                 extra_secrets: Iterable[Optional[str]] = (), metrics=None,
                 previous: Optional["ProviderRegistry"] = None):
        """``extra_secrets`` (the gateway's own token or password) are redacted from upstream
        error text along with every provider's apiKey and header values; ``metrics`` (a
        ``GatewayMetrics``) is told of every upstream call of the client made here;
        ``previous`` (the registry a config reload replaces) hands on its providers'
        concurrency slots, so calls in flight stay counted against the new limits."""
        if client is None:
            client = UpstreamClient(reactor)
            client.metrics = metrics
        self.client = client
        self.secrets = configured_secrets(models_config, extra_secrets)
        self._providers: dict[str, IProvider] = {"builtin": BuiltinProvider(reactor)}
        self._slots: dict[str, ProviderSlots] = {"builtin": ProviderSlots("builtin")}
        for name, config in models_config.providers.items():
            if name == "builtin":
                raise ValueError('"builtin" is reserved for the built-in provider')
            self._providers[name] = _APIS[config.api](name, config, self.client,
                                                      secrets=self.secrets)
            self.log.info("provider {provider} uses {api}", provider=name, api=config.api)
            slots = previous._slots.get(name) if previous is not None else None
            if slots is None:
                slots = ProviderSlots(name)
            slots.reconfigure(config.maxConcurrent, config.maxQueue)
            self._slots[name] = slots

    def get(self, name: str) -> IProvider:
        """The provider called ``name``; ``KeyError`` naming the known ones if there is none."""
        try:
            return self._providers[name]
        except KeyError:
            known = ", ".join(sorted(self._providers))
            raise KeyError(f'unknown provider "{name}" (configured: {known})') from None

    def slots(self, name: str) -> ProviderSlots:
        """The concurrency slots of the provider called ``name`` (see ``get``)."""
        self.get(name)
        return self._slots[name]

    def slot_counts(self) -> dict[str, tuple[int, int]]:
        """``{provider: (in flight, queued)}`` of every configured provider, for metrics."""
        return {name: (slots.inflight, slots.queued)
                for name, slots in sorted(self._slots.items())}

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._providers))

    def close(self) -> Deferred:
        """Close the shared pool's idle connections; fires when they are closed."""
        return self.client.close()
