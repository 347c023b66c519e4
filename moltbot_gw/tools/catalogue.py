"""The names a tool policy may use, in one explicit list: every built-in tool and its group
(including tools that later steps bring), the profiles, and ``mcp__<server>__*`` patterns; and
the pure rule that decides whether one tool is allowed. No Twisted here: config checks use it."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Optional

# Every built-in tool by group. A name here is valid in config even before its tool exists.
GROUPS: dict[str, tuple[str, ...]] = {
    "group:fs": ("read", "write", "edit", "ls", "glob", "grep"),
    "group:runtime": ("exec",),
    "group:web": ("web_fetch",),
}
BUILTIN_TOOLS: dict[str, str] = {tool: group for group, tools in GROUPS.items()
                                 for tool in tools}
PROFILES: dict[str, Optional[frozenset[str]]] = {
    "minimal": frozenset(),                                # no server tools
    "coding": frozenset({"group:fs", "group:runtime"}),
    "full": None,                                          # every tool, MCP included
}
_MCP_NAME_RE = re.compile(r"^mcp__[A-Za-z0-9_-]+?__(\*|[A-Za-z0-9_-]+)$")


def is_known_name(name: str) -> bool:
    """Whether a config allow/deny entry names a tool, a group or an MCP pattern we know."""
    return name in BUILTIN_TOOLS or name in GROUPS or bool(_MCP_NAME_RE.match(name))


def matches(entry: str, tool: str, group: str) -> bool:
    """Whether a policy entry (tool name, group or mcp pattern) covers ``tool``."""
    if entry == tool or entry == group:
        return True
    return entry.startswith("mcp__") and fnmatch.fnmatchcase(tool, entry)


@dataclass(frozen=True)
class EffectivePolicy:
    """One agent's policy with per-agent keys over the global ones; ``*_from`` says which
    config key each value came from (``tools`` or ``agents.list[i].tools``)."""

    profile: str
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    profile_from: str = "tools"
    allow_from: str = "tools"
    deny_from: str = "tools"

    def decide(self, tool: str, group: str) -> tuple[bool, str]:
        """(allowed, reason) for one tool; deny wins over allow, allow over the profile."""
        if any(matches(entry, tool, group) for entry in self.deny):
            return False, f"{self.deny_from}.deny"
        if any(matches(entry, tool, group) for entry in self.allow):
            return True, f"{self.allow_from}.allow"
        granted = PROFILES[self.profile]
        if granted is None or group in granted:
            return True, f"profile {self.profile}"
        return False, f"not in profile {self.profile}"

    def allows_group(self, group: str) -> bool:
        """Whether any built-in tool of ``group`` is allowed."""
        return any(self.decide(tool, group)[0] for tool in GROUPS[group])


def effective_policy(tools: Any, agent_tools: Any, agent_where: str) -> EffectivePolicy:
    """The global ``tools`` section with an agent's ``tools`` keys (None = inherit) over it."""
    def pick(key: str) -> tuple[Any, str]:
        value = getattr(agent_tools, key, None) if agent_tools is not None else None
        if value is not None:
            return value, f"{agent_where}.tools"
        return getattr(tools, key), "tools"

    (profile, profile_from), (allow, allow_from), (deny, deny_from) = (
        pick("profile"), pick("allow"), pick("deny"))
    return EffectivePolicy(profile, tuple(allow), tuple(deny), profile_from, allow_from,
                           deny_from)


def unknown_names(tools: Any, where: str) -> list[str]:
    """``path: problem`` lines for allow/deny entries that name nothing we know."""
    problems = []
    for key in ("allow", "deny"):
        for i, name in enumerate(getattr(tools, key, None) or ()):
            if not is_known_name(name):
                problems.append(
                    f'{where}.{key}[{i}]: unknown tool or group "{name}" (known: '
                    f"{', '.join(sorted(GROUPS))}, {', '.join(sorted(BUILTIN_TOOLS))}, "
                    "mcp__<server>__<tool> or mcp__<server>__*)")
    return problems
