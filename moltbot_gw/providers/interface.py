"""What plugs in as a model provider, declared as ``zope.interface`` interfaces (the Twisted
idiom): ``IProvider`` is what the runner and the embeddings route call; the capabilities some
providers add are interfaces of their own, so callers ask ``providedBy`` instead of probing.
"""
from __future__ import annotations

from zope.interface import Attribute, Interface


class IProvider(Interface):
    """A configured upstream (or the built-in ``echo``) that answers ``ModelRequest``s.

    Both calls return a Deferred firing with a ``ModelResult`` or failing with a
    ``ProviderError``; cancelling it aborts the upstream request (its connection is closed).
    """

    name = Attribute("The name the provider is configured under (before the slash of a "
                     "model ref).")

    def stream(request, on_delta, on_tool_call=None, on_reasoning=None):
        """Stream a reply: ``on_delta(text)`` per text fragment as it arrives.

        ``on_tool_call(index, id, name, fragment)`` (optional) hears each tool call as it
        streams: the first call for an index carries its id and name, later ones ``None`` for
        both; the fragments concatenate to the call's arguments. ``on_reasoning(text)``
        (optional) hears thinking text, which never goes to ``on_delta``.
        """

    def complete(request):
        """Ask for a reply in one piece; nothing is streamed."""

    def embeddings(model, input, encoding_format=None, dimensions=None):
        """Fires with an OpenAI-shaped ``{"object": "list", "data": [...], ...}`` answer when
        the provider also provides ``IEmbeddingProvider``; otherwise fails with
        ``ProviderBadRequest`` saying it does not offer embeddings."""


class IEmbeddingProvider(IProvider):
    """A provider whose ``embeddings`` really asks an upstream (``/v1/embeddings`` may route
    to it)."""


class IFlowControlledProvider(IProvider):
    """A provider whose stream a slow consumer can pause (backpressure to the upstream read)."""

    def stream(request, on_delta, on_tool_call=None, on_reasoning=None, flow=None):
        """As ``IProvider.stream``; ``flow`` (a ``FlowControl``) lets the consumer pause
        reading the upstream body while it catches up."""
