"""Every provider provides the interfaces it declares (``verifyObject``), the capabilities are
told apart by interface, and the runner asks the interface, not an attribute, before handing a
provider its flow control."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from moltbot_gw.agents.registry import AgentRegistry
from moltbot_gw.agents.run import RunRequest
from moltbot_gw.agents.runner import AgentRunner
from moltbot_gw.config import ModelsConfig, ProviderConfig, parse_config
from moltbot_gw.providers.base import FlowControl, ModelResult
from moltbot_gw.providers.builtin import BuiltinProvider
from moltbot_gw.providers.interface import (IEmbeddingProvider, IFlowControlledProvider,
                                            IProvider)
from moltbot_gw.providers.registry import ProviderRegistry
from moltbot_gw.providers.slots import ProviderSlots
from moltbot_gw.sessions.store import SessionStore

CONFIGURED = ModelsConfig(providers={
    "local": ProviderConfig(api="openai-completions", baseUrl="http://upstream.test/v1"),
    "claude": ProviderConfig(api="anthropic-messages", baseUrl="http://upstream.test")})


@pytest_twisted.async_yield_fixture
async def registry():
    providers = ProviderRegistry(CONFIGURED, reactor)
    yield providers
    await providers.close()


def test_every_registered_provider_provides_iprovider(registry):
    assert list(registry) == ["builtin", "claude", "local"]
    for name in registry:
        provider = registry.get(name)
        assert verifyObject(IProvider, provider)
        assert provider.name == name


def test_openai_completions_offers_embeddings_and_flow_control(registry):
    provider = registry.get("local")
    assert verifyObject(IEmbeddingProvider, provider)
    assert verifyObject(IFlowControlledProvider, provider)


def test_anthropic_offers_flow_control_but_no_embeddings(registry):
    provider = registry.get("claude")
    assert verifyObject(IFlowControlledProvider, provider)
    assert not IEmbeddingProvider.providedBy(provider)


def test_builtin_offers_neither_embeddings_nor_flow_control():
    provider = BuiltinProvider(reactor)
    assert verifyObject(IProvider, provider)
    assert not IEmbeddingProvider.providedBy(provider)
    assert not IFlowControlledProvider.providedBy(provider)


@implementer(IProvider)
class PlainProvider:
    """A provider with nothing but ``IProvider``: its ``stream`` takes no ``flow``."""

    def __init__(self, name: str):
        self.name = name
        self.calls: list[dict] = []

    def stream(self, request, on_delta, on_tool_call=None, on_reasoning=None):
        self.calls.append({})
        on_delta("plain answer")
        return succeed(ModelResult(text="plain answer", model=request.model))

    def complete(self, request):
        return succeed(ModelResult(text="plain answer", model=request.model))

    def embeddings(self, model, input, encoding_format=None, dimensions=None):
        raise NotImplementedError


@implementer(IFlowControlledProvider)
class PausableProvider(PlainProvider):
    """A provider that declares flow control: its ``stream`` also takes ``flow``."""

    def stream(self, request, on_delta, on_tool_call=None, on_reasoning=None, flow=None):
        self.calls.append({"flow": flow})
        on_delta("plain answer")
        return succeed(ModelResult(text="plain answer", model=request.model))


class OneProvider(dict):
    """What the runner needs of a ``ProviderRegistry``: providers by name and their
    concurrency slots (here unlimited)."""

    def slots(self, name: str) -> ProviderSlots:
        return ProviderSlots(name)


@pytest.mark.parametrize("provider_class, flow_given", [
    (PlainProvider, False), (PausableProvider, True)])
@pytest_twisted.ensureDeferred
async def test_runner_hands_flow_control_only_to_providers_that_declare_it(
        state_dir, provider_class, flow_given):
    assert verifyObject(IProvider, provider_class("builtin"))
    provider = provider_class("builtin")
    config = parse_config({}, env={}, state_dir=state_dir)
    runner = AgentRunner(AgentRegistry(config), OneProvider(builtin=provider),
                         SessionStore(state_dir, reactor), reactor)
    result = await runner.run(RunRequest(input=({"role": "user", "content": "hi"},),
                                         session_key="flow")).wait()
    assert result.text == "plain answer"
    assert len(provider.calls) == 1
    if flow_given:
        assert isinstance(provider.calls[0]["flow"], FlowControl)
    else:
        assert provider.calls[0] == {}
