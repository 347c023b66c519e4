"""The ``tools`` section and ``agents.list[].tools``: which server tools agents may use
(a profile, then allow and deny lists; docs/tools.rst). Names are checked against the tool
catalogue in ``config/references.py``."""
from typing import Annotated, Literal, Optional

from pydantic import Field
from pydantic.dataclasses import dataclass

from .mcp import MCPConfig
from .types import NULL_IS_DEFAULTS, SECTION_CONFIG, PositiveInt, Str

ToolProfile = Literal["minimal", "coding", "full"]
ExecSecurity = Literal["deny", "allowlist", "full"]
ExecSandbox = Literal["none", "bwrap"]


@dataclass(frozen=True, config=SECTION_CONFIG)
class ExecConfig:
    security: ExecSecurity = Field(
        default="deny", description='"deny" (exec is not offered), "allowlist" (no shell; the '
                                    'program must be in tools.exec.allowlist) or "full" '
                                    '(/bin/sh -c)')
    allowlist: tuple[Str, ...] = Field(
        default=(), description='programs (names or absolute paths) exec may run under '
                                '"allowlist"')
    sandbox: ExecSandbox = Field(
        default="none", description='"none" or "bwrap" (bubblewrap: read-only root, the '
                                    'workspace writable, no network)')
    timeoutSeconds: PositiveInt = Field(
        default=120, description="an exec call's timeout when it gives none")
    maxTimeoutSeconds: PositiveInt = Field(
        default=600, description="the longest timeout an exec call may ask for")
    maxOutputChars: PositiveInt = Field(
        default=32000, description="stdout and stderr each kept to this many characters "
                                   "(head and tail)")


@dataclass(frozen=True, config=SECTION_CONFIG)
class ToolsConfig:
    profile: ToolProfile = Field(
        default="minimal", description='"minimal" (no server tools), "coding" (group:fs, '
                                       'group:runtime) or "full" (all)')
    allow: tuple[Str, ...] = Field(
        default=(), description="tools, group:* names or mcp__<server>__* patterns added")
    deny: tuple[Str, ...] = Field(
        default=(), description="tools, groups or patterns refused; deny always wins")
    exec: Annotated[ExecConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=ExecConfig, description="the exec tool (group:runtime)")
    mcp: Annotated[MCPConfig, NULL_IS_DEFAULTS] = Field(
        default_factory=MCPConfig, description="MCP servers whose tools agents may use")


@dataclass(frozen=True, config=SECTION_CONFIG)
class AgentToolsConfig:
    profile: Optional[ToolProfile] = Field(default=None, description="overrides tools.profile")
    allow: Optional[tuple[Str, ...]] = Field(default=None, description="overrides tools.allow")
    deny: Optional[tuple[Str, ...]] = Field(default=None, description="overrides tools.deny")
