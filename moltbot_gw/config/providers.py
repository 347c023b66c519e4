"""The ``models`` section: the upstream LLM providers a model reference ``provider/model`` may
name, each with its wire API, address, credentials and timeouts."""
from types import MappingProxyType
from typing import Annotated, Literal, Mapping, Optional

from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass

from .types import NULL_IS_DEFAULTS, SECTION_CONFIG, HttpUrl, PositiveFloat, Str

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
        default=120.0, description="longest silence from the upstream mid-request")


@dataclass(frozen=True, config=SECTION_CONFIG)
class ModelsConfig:
    providers: Annotated[Mapping[Str, Annotated[ProviderConfig, NULL_IS_DEFAULTS]],
                         _READ_ONLY] = Field(
        default_factory=lambda: MappingProxyType({}),
        description='upstream providers by name; "builtin" is reserved')
