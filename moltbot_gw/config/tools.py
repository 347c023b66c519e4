"""The ``tools`` section and ``agents.list[].tools``: which server tools agents may use
(a profile, then allow and deny lists; docs/tools.rst). Names are checked against the tool
catalogue in ``config/references.py``."""
from typing import Literal, Optional

from pydantic import Field
from pydantic.dataclasses import dataclass

from .types import SECTION_CONFIG, Str

ToolProfile = Literal["minimal", "coding", "full"]


@dataclass(frozen=True, config=SECTION_CONFIG)
class ToolsConfig:
    profile: ToolProfile = Field(
        default="minimal", description='"minimal" (no server tools), "coding" (group:fs, '
                                       'group:runtime) or "full" (all)')
    allow: tuple[Str, ...] = Field(
        default=(), description="tools, group:* names or mcp__<server>__* patterns added")
    deny: tuple[Str, ...] = Field(
        default=(), description="tools, groups or patterns refused; deny always wins")


@dataclass(frozen=True, config=SECTION_CONFIG)
class AgentToolsConfig:
    profile: Optional[ToolProfile] = Field(default=None, description="overrides tools.profile")
    allow: Optional[tuple[Str, ...]] = Field(default=None, description="overrides tools.allow")
    deny: Optional[tuple[Str, ...]] = Field(default=None, description="overrides tools.deny")
