"""The workspace tools (``group:fs``): ``read``, ``write``, ``edit``, ``ls``, ``glob`` and
``grep``, confined to the agent's workspace (``workspace.py``). Every call runs its file I/O
in a worker thread (``deferToThread``) and returns that Deferred."""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from twisted.internet import threads
from zope.interface import implementer

from ..sessions.transcript import replace_atomically
from .base import IServerTool, ToolContext, ToolError
from .workspace import confine, int_arg, is_inside, known_args, shown, string_arg, workspace_root

GROUP = "group:fs"
MAX_READ_BYTES = 256 * 1024      # text returned by one read
MAX_EDIT_BYTES = 1024 * 1024     # largest file edit rewrites
MAX_LIST_ENTRIES = 1000          # ls and glob results
MAX_GREP_MATCHES = 200
MAX_GREP_FILE_BYTES = 4 * 1024 * 1024   # larger files are skipped by grep
MAX_GREP_LINE_CHARS = 500
_BINARY_PROBE = 8192


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\x00" in f.read(_BINARY_PROBE)


def _write_atomically(target: Path, text: str) -> None:
    """Readers never see half a file; mkstemp's 0600 is not kept: an existing file keeps
    its mode, a new one gets 0644."""
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    replace_atomically(target, lambda f: f.write(text.encode("utf-8")), mode=mode)


class _FsTool:
    """Shared by the fs tools: check the arguments, then run ``_run`` in a thread."""

    name = ""
    group = GROUP
    description = ""
    parameters: dict[str, Any] = {}

    def call(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        return threads.deferToThread(self._guarded, dict(arguments), context)

    def _guarded(self, arguments: dict[str, Any], context: ToolContext) -> str:
        known_args(arguments, self.parameters)
        root = workspace_root(context)
        try:
            return self._run(arguments, root)
        except ToolError:
            raise
        except OSError as e:   # the message names the problem, never a host path outside
            raise ToolError(f"{self.name} failed: {e.strerror or type(e).__name__}") from None
        except UnicodeDecodeError:
            raise ToolError(f"{self.name} failed: the file is not UTF-8 text") from None

    def _run(self, arguments: dict[str, Any], root: Path) -> str:
        raise NotImplementedError


@implementer(IServerTool)
class ReadTool(_FsTool):
    name = "read"
    description = ("Read a UTF-8 text file in the workspace. Optional offset (first line, "
                   f"1-based) and limit (number of lines). At most {MAX_READ_BYTES // 1024} "
                   "KiB are returned; a cut is marked.")
    parameters = _schema({
        "path": {"type": "string", "description": "file path, relative to the workspace"},
        "offset": {"type": "integer", "minimum": 1, "description": "first line to read (1-based)"},
        "limit": {"type": "integer", "minimum": 1, "description": "number of lines to read"},
    }, ["path"])

    def _run(self, arguments: dict[str, Any], root: Path) -> str:
        raw = string_arg(arguments, "path")
        offset = int_arg(arguments, "offset", 1) or 1
        limit = int_arg(arguments, "limit", 1)
        path = confine(root, raw)
        if not path.is_file():
            raise ToolError(f"path: {raw!r} is not a file" if path.exists()
                            else f"path: {raw!r} not found")
        if _is_binary(path):
            raise ToolError(f"path: {raw!r} is a binary file")
        parts: list[str] = []
        size = 0
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for number, line in enumerate(f, start=1):
                if number < offset:
                    continue
                if limit is not None and number >= offset + limit:
                    break
                size += len(line.encode("utf-8"))
                if size > MAX_READ_BYTES:
                    parts.append(f"\n[cut at {MAX_READ_BYTES} bytes: read on with "
                                 f"offset={number}]")
                    break
                parts.append(line)
        if not parts and offset > 1:
            return f"(offset {offset} is past the end: the file has fewer lines)"
        return "".join(parts)


@implementer(IServerTool)
class WriteTool(_FsTool):
    name = "write"
    description = ("Write a UTF-8 text file in the workspace, replacing it if it exists; "
                   "missing parent folders are created. The write is atomic.")
    parameters = _schema({
        "path": {"type": "string", "description": "file path, relative to the workspace"},
        "content": {"type": "string", "description": "the whole new content"},
    }, ["path", "content"])

    def _run(self, arguments: dict[str, Any], root: Path) -> str:
        raw = string_arg(arguments, "path")
        content = string_arg(arguments, "content", allow_empty=True)
        target = confine(root, raw)
        if target == root or target.is_dir():
            raise ToolError(f"path: {raw!r} is a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not is_inside(root, target.parent):   # a folder swapped for a symlink meanwhile
            raise ToolError(f"path: {raw!r} is outside the workspace")
        _write_atomically(target, content)
        return f"wrote {len(content.encode('utf-8'))} bytes to {shown(root, target)}"


@implementer(IServerTool)
class EditTool(_FsTool):
    name = "edit"
    description = ("Replace old_string with new_string in a workspace text file. old_string "
                   "must occur exactly once unless replace_all is true.")
    parameters = _schema({
        "path": {"type": "string", "description": "file path, relative to the workspace"},
        "old_string": {"type": "string", "description": "the exact text to replace"},
        "new_string": {"type": "string", "description": "the replacement text"},
        "replace_all": {"type": "boolean", "description": "replace every occurrence"},
    }, ["path", "old_string", "new_string"])

    def _run(self, arguments: dict[str, Any], root: Path) -> str:
        raw = string_arg(arguments, "path")
        old = string_arg(arguments, "old_string")
        new = string_arg(arguments, "new_string", allow_empty=True)
        replace_all = arguments.get("replace_all", False)
        if not isinstance(replace_all, bool):
            raise ToolError("replace_all: expected a boolean")
        path = confine(root, raw)
        if not path.is_file():
            raise ToolError(f"path: {raw!r} not found")
        if path.stat().st_size > MAX_EDIT_BYTES:
            raise ToolError(f"path: {raw!r} is larger than {MAX_EDIT_BYTES} bytes")
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        count = text.count(old)
        if count == 0:
            raise ToolError(f"old_string not found in {raw!r}")
        if count > 1 and not replace_all:
            raise ToolError(f"old_string occurs {count} times in {raw!r}: add context to make "
                            "it unique, or set replace_all")
        _write_atomically(path, text.replace(old, new) if replace_all
                          else text.replace(old, new, 1))
        replaced = count if replace_all else 1
        return f"edited {shown(root, path)}: {replaced} replacement(s)"


@implementer(IServerTool)
class LsTool(_FsTool):
    name = "ls"
    description = ("List a workspace folder: one entry a line, folders end with '/', "
                   "symlinks show their target.")
    parameters = _schema({
        "path": {"type": "string", "description": 'folder, relative to the workspace '
                                                  '(default ".")'},
    }, [])

    def _run(self, arguments: dict[str, Any], root: Path) -> str:
        raw = string_arg(arguments, "path", ".")
        folder = confine(root, raw)
        if not folder.is_dir():
            raise ToolError(f"path: {raw!r} is not a folder")
        lines = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_symlink():
                lines.append(f"{entry.name} -> {os.readlink(entry.path)}")
            elif entry.is_dir():
                lines.append(entry.name + "/")
            else:
                lines.append(entry.name)
        return _capped(lines, MAX_LIST_ENTRIES, "entries") or "(empty folder)"


def _capped(lines: list[str], cap: int, what: str) -> str:
    if len(lines) > cap:
        lines = lines[:cap] + [f"[{what} after the first {cap} left out]"]
    return "\n".join(lines)


def _relative_pattern(pattern: str, param: str) -> str:
    """A glob pattern that stays in the workspace: relative, no ``..`` part."""
    parts = PurePosixPath(pattern).parts
    if pattern.startswith(("/", "~")) or ".." in parts:
        raise ToolError(f"{param}: must be relative to the workspace, without '..'")
    return pattern


@implementer(IServerTool)
class GlobTool(_FsTool):
    name = "glob"
    description = ("Find workspace paths matching a glob pattern ('**' for any depth, e.g. "
                   f"'**/*.py'); at most {MAX_LIST_ENTRIES} paths, sorted.")
    parameters = _schema({
        "pattern": {"type": "string", "description": "glob, relative to the workspace"},
    }, ["pattern"])

    def _run(self, arguments: dict[str, Any], root: Path) -> str:
        pattern = _relative_pattern(string_arg(arguments, "pattern"), "pattern")
        found = sorted(str(path.relative_to(root)) for path in root.glob(pattern)
                       if is_inside(root, path))
        return _capped(found, MAX_LIST_ENTRIES, "paths") or "(no match)"


@implementer(IServerTool)
class GrepTool(_FsTool):
    name = "grep"
    description = ("Search workspace text files for a regular expression (Python syntax); "
                   "prints file:line:text, at most "
                   f"{MAX_GREP_MATCHES} matches. Optional path (file or folder) and glob "
                   "(file name filter such as '*.py').")
    parameters = _schema({
        "pattern": {"type": "string", "description": "regular expression"},
        "path": {"type": "string", "description": 'file or folder to search (default ".")'},
        "glob": {"type": "string", "description": "only files whose path matches this glob"},
    }, ["pattern"])

    def _run(self, arguments: dict[str, Any], root: Path) -> str:
        try:
            regex = re.compile(string_arg(arguments, "pattern"))
        except re.error as e:
            raise ToolError(f"pattern: not a valid regular expression ({e})") from None
        raw = string_arg(arguments, "path", ".")
        glob = arguments.get("glob")
        if glob is not None:
            glob = _relative_pattern(string_arg(arguments, "glob"), "glob")
        start = confine(root, raw)
        if not start.exists():
            raise ToolError(f"path: {raw!r} not found")
        matches: list[str] = []
        for path in _files_under(start):
            relative = path.relative_to(root)
            if glob is not None and not PurePosixPath(relative).match(glob):
                continue
            _grep_file(root, path, regex, matches)
            if len(matches) > MAX_GREP_MATCHES:
                break
        return _capped(matches, MAX_GREP_MATCHES, "matches") or "(no match)"


def _files_under(start: Path):
    """Regular files at or below ``start``, sorted, without following folder symlinks."""
    if start.is_file():
        yield start
        return
    for folder, dirs, files in os.walk(start):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def _grep_file(root: Path, path: Path, regex: re.Pattern, matches: list[str]) -> None:
    """Append ``file:line:text`` for each matching line; skip files outside, binary, huge."""
    if not is_inside(root, path) or not path.is_file():
        return
    if path.stat().st_size > MAX_GREP_FILE_BYTES or _is_binary(path):
        return
    name = shown(root, path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if regex.search(line):
                matches.append(f"{name}:{number}:{line.rstrip()[:MAX_GREP_LINE_CHARS]}")
                if len(matches) > MAX_GREP_MATCHES:
                    return


FS_TOOLS: tuple[Callable[[], Any], ...] = (ReadTool, WriteTool, EditTool, LsTool, GlobTool,
                                          GrepTool)


def fs_tools() -> dict[str, Any]:
    """One instance of each fs tool, by name."""
    return {tool.name: tool for tool in (cls() for cls in FS_TOOLS)}
