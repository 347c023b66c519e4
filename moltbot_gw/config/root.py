"""The whole config: ``ConfigFile`` is what a JSON5 file may hold (its JSON Schema is what
``moltbot-gw config schema`` prints); ``Config`` adds where it came from and where state lives."""
import functools
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import Field, TypeAdapter
from pydantic.dataclasses import dataclass

from .agents import AgentsConfig, SessionConfig
from .gateway import GatewayConfig
from .providers import ModelsConfig
from .tools import ToolsConfig
from .types import NULL_IS_DEFAULTS, SECTION_CONFIG

DEFAULT_STATE_DIR = Path("~/.moltbot").expanduser()


@dataclass(frozen=True, config=SECTION_CONFIG)
class ConfigFile:
    gateway: Annotated[GatewayConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=GatewayConfig, description="listener, auth, HTTP and WebSocket front door")
    models: Annotated[ModelsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=ModelsConfig, description="upstream model providers")
    agents: Annotated[AgentsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=AgentsConfig, description="the agents and their defaults")
    session: Annotated[SessionConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=SessionConfig, description="retention and size bounds of the session store")
    tools: Annotated[ToolsConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=ToolsConfig, description="which server tools agents may use")


@dataclass(frozen=True, config=SECTION_CONFIG)
class Config(ConfigFile):
    # Not in the file (ConfigFile rejects them there): where it came from, where state lives.
    state_dir: Path = DEFAULT_STATE_DIR
    path: Optional[Path] = None


@functools.cache
def file_adapter() -> TypeAdapter:
    """Validates a parsed JSON5 document into a ``ConfigFile`` (built once, on first use)."""
    return TypeAdapter(ConfigFile)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file, with every key's description and default."""
    schema = file_adapter().json_schema()
    schema["title"] = "moltbot-gw configuration"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
