"""The group:fs tools on a real temporary workspace, through the Deferreds their ``call``
returns (file I/O in the reactor's thread pool): each tool's behaviour and limits, and every
escape from the workspace (absolute path, ``..``, symlinks) refused with nothing outside read
or written."""
from __future__ import annotations

import os
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError

from moltbot_gw.tools.base import IServerTool, ToolContext, ToolError
from moltbot_gw.tools.fs import MAX_GREP_MATCHES, MAX_READ_BYTES, fs_tools

TOOLS = fs_tools()


@pytest.fixture
def workspace(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path):
    """A folder beside the workspace holding a secret no tool may read or change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("TOP SECRET\n")
    return folder


def context(workspace):
    return ToolContext(agent_id="main", workspace=workspace, reactor=reactor)


async def call(workspace, name, **arguments):
    return await TOOLS[name].call(arguments, context(workspace))


async def refused(workspace, name, **arguments) -> str:
    with pytest.raises(ToolError) as caught:
        await call(workspace, name, **arguments)
    return caught.value.message


def test_every_fs_tool_provides_the_interface_with_a_strict_schema():
    assert sorted(TOOLS) == ["edit", "glob", "grep", "ls", "read", "write"]
    for tool in TOOLS.values():
        assert IServerTool.providedBy(tool)
        assert tool.group == "group:fs"
        schema = tool.parameters
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])


@pytest_twisted.ensureDeferred
async def test_call_runs_the_file_io_off_the_reactor_thread(workspace, monkeypatch):
    seen = []
    original = type(TOOLS["ls"])._run

    def spy(self, arguments, root):
        seen.append(threading.current_thread() is threading.main_thread())
        return original(self, arguments, root)

    monkeypatch.setattr(type(TOOLS["ls"]), "_run", spy)
    pending = TOOLS["ls"].call({}, context(workspace))
    assert not pending.called          # the result arrives later, from the thread pool
    await pending
    assert seen == [False]


@pytest_twisted.ensureDeferred
async def test_a_cancelled_call_fails_with_cancelled_error(workspace):
    pending = TOOLS["write"].call({"path": "x.txt", "content": "x"}, context(workspace))
    pending.cancel()
    with pytest.raises(CancelledError):
        await pending


@pytest_twisted.ensureDeferred
async def test_read_returns_text_with_offset_and_limit(workspace):
    (workspace / "notes.txt").write_text("one\ntwo\nthree\nfour\n")
    assert await call(workspace, "read", path="notes.txt") == "one\ntwo\nthree\nfour\n"
    assert await call(workspace, "read", path="notes.txt", offset=2, limit=2) == "two\nthree\n"
    assert await call(workspace, "read", path=str(workspace / "notes.txt"), offset=4) == "four\n"
    assert "past the end" in await call(workspace, "read", path="notes.txt", offset=9)


@pytest_twisted.ensureDeferred
async def test_read_caps_large_files_and_refuses_binary_and_missing(workspace):
    (workspace / "big.txt").write_text(("x" * 99 + "\n") * (MAX_READ_BYTES // 50))
    text = await call(workspace, "read", path="big.txt")
    assert len(text.encode()) < MAX_READ_BYTES + 200
    assert "[cut at" in text and "offset=" in text
    (workspace / "blob.bin").write_bytes(b"\x00\x01\x02")
    assert "binary" in await refused(workspace, "read", path="blob.bin")
    assert "not found" in await refused(workspace, "read", path="nope.txt")
    assert "not a file" in await refused(workspace, "read", path=".")
    assert "offset" in await refused(workspace, "read", path="big.txt", offset=0)
    assert "unknown argument" in await refused(workspace, "read", path="big.txt", mode="x")


@pytest_twisted.ensureDeferred
async def test_write_creates_parents_replaces_atomically_and_round_trips(workspace):
    result = await call(workspace, "write", path="a/b/new.txt", content="héllo\n")
    assert "a/b/new.txt" in result
    assert (workspace / "a/b/new.txt").read_text() == "héllo\n"
    await call(workspace, "write", path="a/b/new.txt", content="second")
    assert await call(workspace, "read", path="a/b/new.txt") == "second"
    assert sorted(os.listdir(workspace / "a/b")) == ["new.txt"]   # no temp file left
    assert (workspace / "a/b/new.txt").stat().st_mode & 0o777 == 0o644
    os.chmod(workspace / "a/b/new.txt", 0o600)
    await call(workspace, "write", path="a/b/new.txt", content="third")
    assert (workspace / "a/b/new.txt").stat().st_mode & 0o777 == 0o600   # mode kept
    assert "folder" in await refused(workspace, "write", path="a", content="x")


@pytest_twisted.ensureDeferred
async def test_the_workspace_is_created_on_first_use(tmp_path):
    folder = tmp_path / "fresh" / "ws"
    await call(folder, "write", path="x.txt", content="x")
    assert (folder / "x.txt").read_text() == "x"


@pytest_twisted.ensureDeferred
async def test_an_agent_without_workspace_gets_a_tool_error():
    with pytest.raises(ToolError, match="no workspace"):
        await TOOLS["ls"].call({}, ToolContext(agent_id="main", workspace=None, reactor=reactor))


@pytest_twisted.ensureDeferred
async def test_edit_replaces_a_unique_string_and_refuses_missing_or_ambiguous(workspace):
    (workspace / "f.py").write_text("a = 1\nb = 1\n")
    assert "1 replacement" in await call(workspace, "edit", path="f.py", old_string="a = 1",
                                         new_string="a = 2")
    assert (workspace / "f.py").read_text() == "a = 2\nb = 1\n"
    assert "not found" in await refused(workspace, "edit", path="f.py", old_string="zzz",
                                        new_string="y")
    assert "occurs 2 times" in await refused(workspace, "edit", path="f.py", old_string=" = ",
                                             new_string="=")
    assert (workspace / "f.py").read_text() == "a = 2\nb = 1\n"
    assert "2 replacement" in await call(workspace, "edit", path="f.py", old_string=" = ",
                                         new_string="=", replace_all=True)
    assert (workspace / "f.py").read_text() == "a=2\nb=1\n"


@pytest_twisted.ensureDeferred
async def test_ls_glob_and_grep(workspace):
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "src" / "pkg" / "m.py").write_text("def f():\n    return 42\n")
    (workspace / "src" / "top.py").write_text("x = 42\n")
    (workspace / "README").write_text("the answer is 42\n")
    assert await call(workspace, "ls") == "README\nsrc/"
    assert await call(workspace, "ls", path="src") == "pkg/\ntop.py"
    assert await call(workspace, "glob", pattern="**/*.py") == "src/pkg/m.py\nsrc/top.py"
    assert await call(workspace, "glob", pattern="*.md") == "(no match)"
    assert await call(workspace, "grep", pattern=r"\b42\b") == (
        # A folder's files before its subfolders, each sorted by name.
        "README:1:the answer is 42\nsrc/top.py:1:x = 42\nsrc/pkg/m.py:2:    return 42")
    assert await call(workspace, "grep", pattern="42", glob="*.py", path="src/pkg") == (
        "src/pkg/m.py:2:    return 42")
    assert "regular expression" in await refused(workspace, "grep", pattern="(")


@pytest_twisted.ensureDeferred
async def test_grep_caps_its_matches(workspace):
    (workspace / "many.txt").write_text("hit\n" * (MAX_GREP_MATCHES + 50))
    lines = (await call(workspace, "grep", pattern="hit")).splitlines()
    assert len(lines) == MAX_GREP_MATCHES + 1
    assert lines[-1].startswith("[matches after the first")


ESCAPES = [
    ("read", {"path": "../outside/secret.txt"}),
    ("read", {"path": "OUTSIDE/secret.txt"}),
    ("write", {"path": "../outside/secret.txt", "content": "pwned"}),
    ("write", {"path": "OUTSIDE/secret.txt", "content": "pwned"}),
    ("write", {"path": "OUTSIDE/new.txt", "content": "pwned"}),
    ("edit", {"path": "../outside/secret.txt", "old_string": "TOP", "new_string": "NO"}),
    ("edit", {"path": "OUTSIDE/secret.txt", "old_string": "TOP", "new_string": "NO"}),
    ("ls", {"path": ".."}),
    ("ls", {"path": "OUTSIDE"}),
    ("grep", {"pattern": "SECRET", "path": "../outside"}),
    ("grep", {"pattern": "SECRET", "path": "OUTSIDE"}),
    ("glob", {"pattern": "../outside/*"}),
    ("glob", {"pattern": "OUTSIDE/*"}),
]


@pytest.mark.parametrize("how", ["relative", "absolute"])
@pytest.mark.parametrize("name,arguments", ESCAPES, ids=lambda v: v if isinstance(v, str)
                         else v.get("path", v.get("pattern")))
@pytest_twisted.ensureDeferred
async def test_paths_outside_the_workspace_are_refused(workspace, outside, name, arguments,
                                                       how):
    """``..``, absolute paths and the absolute path of the folder itself are all refused."""
    arguments = dict(arguments)
    key = "pattern" if name == "glob" else "path"
    value = arguments[key].replace("OUTSIDE", str(outside))
    if "OUTSIDE" in arguments[key] and how == "relative":
        value = os.path.relpath(value, workspace)
    elif how == "absolute" and not value.startswith("/"):
        value = str(workspace / value)
    arguments[key] = value
    message = await refused(workspace, name, **arguments)
    assert "outside the workspace" in message or "relative to the workspace" in message
    assert "TOP SECRET" not in message
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "TOP SECRET\n"


@pytest_twisted.ensureDeferred
async def test_symlinks_pointing_outside_are_refused(workspace, outside):
    (workspace / "link.txt").symlink_to(outside / "secret.txt")
    (workspace / "linkdir").symlink_to(outside)
    for name, arguments in [
            ("read", {"path": "link.txt"}),
            ("write", {"path": "link.txt", "content": "pwned"}),
            ("edit", {"path": "link.txt", "old_string": "TOP", "new_string": "NO"}),
            ("read", {"path": "linkdir/secret.txt"}),            # a symlinked parent
            ("write", {"path": "linkdir/new.txt", "content": "pwned"}),
            ("write", {"path": "linkdir/sub/new.txt", "content": "pwned"}),
            ("ls", {"path": "linkdir"}),
            ("grep", {"pattern": "SECRET", "path": "linkdir"})]:
        message = await refused(workspace, name, **arguments)
        assert "outside the workspace" in message, (name, arguments)
    # Walking the workspace never follows a link out, nor shows what lies behind it.
    assert "SECRET" not in await call(workspace, "grep", pattern="SECRET")
    assert "secret" not in await call(workspace, "glob", pattern="**/*")
    assert await call(workspace, "glob", pattern="linkdir/*") == "(no match)"
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "TOP SECRET\n"


@pytest_twisted.ensureDeferred
async def test_symlinks_inside_the_workspace_work(workspace):
    (workspace / "real.txt").write_text("inside\n")
    (workspace / "alias.txt").symlink_to(workspace / "real.txt")
    assert await call(workspace, "read", path="alias.txt") == "inside\n"
    assert "alias.txt -> " in await call(workspace, "ls")
