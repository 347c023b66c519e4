"""The ``models`` section: the upstream LLM providers a model reference ``provider/model`` may
name, each with its wire API, address, credentials and timeouts."""
from types import MappingProxyType
from typing import Annotated, Literal, Mapping, Optional

from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass

from .types import (
    NULL_IS_DEFAULTS,
    SECTION_CONFIG,
    HttpUrl,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
)

# Mappings are handed out read-only: the config is shared by every request.
_READ_ONLY = AfterValidator(MappingProxyType)


@dataclass(frozen=True, config=SECTION_CONFIG)
class ProviderConfig:
    api: Literal["openai-completions", "anthropic-messages"] = Field(
        description='"openai-completions" or "anthropic-messages"')
    baseUrl: Optional[HttpUrl] = Field(
        default=None, description="API base URL (Anthropic defaults to the public API)")
    # Secrets: repr=False keeps them out of any logged Config; errors.py hides their values.
    apiKey: Optional[Str] = Field(
        default=None, repr=False, description="sent as Bearer / x-api-key")
    headers: Annotated[Mapping[Str, Str], _READ_ONLY] = Field(
        default_factory=lambda: MappingProxyType({}), repr=False,
        description="extra request headers")
    connectTimeoutSeconds: PositiveFloat = Field(
        default=10.0, description="TCP/TLS connect timeout")
    idleTimeoutSeconds: PositiveFloat = Field(
        default=120.0, description="longest silence of a streamed upstream answer "
                           "(a whole answer: the run's timeoutSeconds)")
    # A self-hosted server has a fixed number of slots (llama.cpp: one) and may cut a running
    # answer when another request arrives; the gateway queues in front of it (providers/slots.py).
    maxConcurrent: Optional[PositiveInt] = Field(
        default=None, description="requests sent to this provider at once; more wait first-in "
        "first-out (null: unlimited)")
    maxQueue: Optional[NonNegativeInt] = Field(
        default=None, description="requests waiting for this provider; past it the next "
        "fallback, else 429 (null: unlimited)")


@dataclass(frozen=True, config=SECTION_CONFIG)
class ModelsConfig:
    providers: Annotated[Mapping[Str, Annotated[ProviderConfig, NULL_IS_DEFAULTS]],
                         _READ_ONLY] = Field(
        default_factory=lambda: MappingProxyType({}),
        description='upstream providers by name; "builtin" is reserved')
