"""Confinement of the fs tools to an agent's workspace: every path a tool touches is resolved
(symlinks followed) and refused unless it lies inside the resolved workspace folder. These
functions do file I/O: call them only from a worker thread, never on the reactor."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from .base import ToolContext, ToolError


def workspace_root(context: ToolContext) -> Path:
    """The agent's workspace, created if missing, with its own symlinks resolved."""
    if context.workspace is None:
        raise ToolError(f'agent "{context.agent_id}" has no workspace folder')
    folder = Path(context.workspace).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolError(f"cannot create the workspace folder: {e.strerror}") from None
    return Path(os.path.realpath(folder))


def is_inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) is ``root`` or below it."""
    return Path(os.path.realpath(path)).is_relative_to(root)


def confine(root: Path, raw: str, *, param: str = "path") -> Path:
    """``raw`` (relative to the workspace, or absolute) resolved; a ToolError when it, or
    what a symlink on its way points to, lies outside the workspace."""
    if "\x00" in raw:
        raise ToolError(f"{param}: must not contain NUL")
    resolved = Path(os.path.realpath(root / raw))
    if not resolved.is_relative_to(root):
        raise ToolError(f"{param}: {raw!r} is outside the workspace")
    return resolved


def shown(root: Path, path: Path) -> str:
    """A path as the model sees it: relative to the workspace ("." for the workspace)."""
    return str(path.relative_to(root)) if path != root else "."


def string_arg(arguments: Mapping[str, Any], key: str, default: Optional[str] = None,
               *, allow_empty: bool = False) -> str:
    """A string argument; a ToolError naming it when missing or of the wrong type."""
    value = arguments.get(key, default)
    if not isinstance(value, str):
        raise ToolError(f"{key}: expected a string")
    if not value and not allow_empty:
        raise ToolError(f"{key}: must not be empty")
    return value


def int_arg(arguments: Mapping[str, Any], key: str, minimum: int) -> Optional[int]:
    """An optional integer argument of at least ``minimum``."""
    value = arguments.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ToolError(f"{key}: expected an integer >= {minimum}")
    return value


def known_args(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Refuse arguments the schema does not name (its additionalProperties is false)."""
    extra = sorted(set(arguments) - set(schema["properties"]))
    if extra:
        raise ToolError(f"unknown argument(s): {', '.join(extra)}")
