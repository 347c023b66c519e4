"""Issue 15, the ``exec`` tool (group:runtime) on real child processes: ``tools.exec.security``
(deny: not offered; allowlist: one program, no shell; full: /bin/sh -c), the timeout and a
cancel killing the whole process group (checked with pgrep), the environment without secrets,
the head+tail output cap, the cwd kept in the workspace, and end to end over HTTP chat."""
from __future__ import annotations

import json
import random

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError
from twisted.internet.utils import getProcessOutputAndValue

from moltbot_gw.agents.registry import AgentRegistry
from moltbot_gw.config import parse_config
from moltbot_gw.config.tools import ExecConfig
from moltbot_gw.tools.base import IServerTool, ToolContext, ToolError
from moltbot_gw.tools.exec import exec_tools
from moltbot_gw.tools.policy import ToolCatalog

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401
from .conftest import TOKEN


def exec_tool(**settings):
    return exec_tools(ExecConfig(**settings))["exec"]


@pytest.fixture
def workspace(tmp_path):
    return tmp_path / "ws"     # not created: exec creates it on use


async def run(tool, workspace, **arguments):
    return await tool.call(arguments, ToolContext("main", workspace, reactor))


async def refused(tool, workspace, **arguments) -> str:
    with pytest.raises(ToolError) as caught:
        await run(tool, workspace, **arguments)
    return caught.value.message


def marker() -> str:
    """A ``sleep`` argument no other process has: pgrep finds exactly our children."""
    return f"6{random.randrange(10**6):06d}.{random.randrange(1, 10**3)}"


async def running(pattern: str) -> bool:
    out, _err, code = await getProcessOutputAndValue("pgrep", ["-f", pattern], reactor=reactor)
    return code == 0


async def until(predicate, pattern: str, tries: int = 100) -> bool:
    """Poll ``predicate(pattern)`` every 0.1 s (the kill and reaping are asynchronous)."""
    for _ in range(tries):
        if await predicate(pattern):
            return True
        await task.deferLater(reactor, 0.1, lambda: None)
    return False


async def gone(pattern: str) -> bool:
    return not await running(pattern)


def test_deny_is_the_default_and_exec_is_then_not_offered_even_when_allowed(tmp_path):
    for exec_section in ({}, {"exec": {"security": "deny", "allowlist": ["echo"]}}):
        cfg = parse_config({"tools": {"profile": "coding", "allow": ["exec"], **exec_section},
                            "agents": {"list": [{"id": "main", "workspace": str(tmp_path)}]}},
                           env={})
        agent = AgentRegistry(cfg).get("main")
        catalog = ToolCatalog(cfg, reactor)
        assert "exec" not in catalog.for_agent(agent).names
        assert "read" in catalog.for_agent(agent).names
        why = {d.tool: (d.allowed, d.reason) for d in catalog.explain(agent)}
        assert why["exec"] == (False, 'tools.exec.security is "deny" (exec is not offered)')
    cfg = parse_config({"tools": {"profile": "coding", "exec": {"security": "full"}},
                        "agents": {"list": [{"id": "main", "workspace": str(tmp_path)}]}},
                       env={})
    tools = ToolCatalog(cfg, reactor).for_agent(AgentRegistry(cfg).get("main"))
    assert "exec" in tools.names and IServerTool.providedBy(tools.get("exec"))


@pytest_twisted.ensureDeferred
async def test_allowlist_runs_one_program_without_a_shell(workspace, tmp_path):
    tool = exec_tool(security="allowlist", allowlist=("echo", "/bin/ls"))
    out = await run(tool, workspace, command="echo hi")
    assert out.startswith("exit code 0\n") and "\nhi\n" in out
    # No shell: $HOME and globs are passed as they are, quotes follow shell rules.
    assert "$HOME * a b" in await run(tool, workspace, command="echo '$HOME' * 'a b'")
    victim = tmp_path / "x"
    victim.mkdir()
    for command in (f"rm -rf {victim}; echo", f"echo hi && rm -rf {victim}",
                    f"echo hi | rm -rf {victim}", "echo hi > out.txt", "echo $(id)",
                    "echo `id`", "echo hi\nrm -rf x", "echo hi & echo"):
        message = await refused(tool, workspace, command=command)
        assert "is refused" in message and "without a shell" in message, command
    assert victim.exists() and not (workspace / "out.txt").exists()
    assert "not in tools.exec.allowlist" in await refused(tool, workspace,
                                                          command=f"rm -rf {victim}")
    for path in ("/tmp/echo", "./echo", "/usr/bin/../../tmp/echo"):
        assert "not in tools.exec.allowlist" in await refused(tool, workspace, command=path)
    assert "\nws\n" in await run(tool, workspace, command="/bin/ls ..")
    assert victim.exists()


@pytest_twisted.ensureDeferred
async def test_a_non_zero_exit_is_a_tool_error_with_the_exit_code_and_both_outputs(workspace):
    tool = exec_tool(security="full")
    message = await refused(tool, workspace, command="echo out; echo err >&2; exit 3")
    assert message.startswith("exit code 3\n")
    assert "--- stdout ---\nout\n" in message and "--- stderr ---\nerr\n" in message


@pytest_twisted.ensureDeferred
async def test_full_timeout_kills_the_whole_process_group(workspace):
    tool = exec_tool(security="full")
    first, second = marker(), marker()
    # a background child too: only killing the group reaches it
    message = await refused(tool, workspace, command=f"sleep {first} & sleep {second}",
                            timeout=1)
    assert message.startswith("timed out after 1 s")
    assert await until(gone, first) and await until(gone, second)


@pytest_twisted.ensureDeferred
async def test_cancelling_the_call_kills_the_process_group(workspace):
    tool = exec_tool(security="full")
    first, second = marker(), marker()
    call = tool.call({"command": f"sleep {first} & sleep {second}"},
                     ToolContext("main", workspace, reactor))
    assert await until(running, first) and await until(running, second)
    call.cancel()
    with pytest.raises(CancelledError):
        await call
    assert await until(gone, first) and await until(gone, second)


@pytest_twisted.ensureDeferred
async def test_the_timeout_argument_is_checked_against_its_maximum(workspace):
    tool = exec_tool(security="full", maxTimeoutSeconds=5)
    assert "at most 5" in await refused(tool, workspace, command="true", timeout=6)
    assert "timeout" in await refused(tool, workspace, command="true", timeout=0)
    assert "unknown argument" in await refused(tool, workspace, command="true", shell=True)


@pytest_twisted.ensureDeferred
async def test_the_environment_is_fresh_and_holds_no_secret(workspace, monkeypatch):
    monkeypatch.setenv("CLAWDBOT_GATEWAY_TOKEN", "tok-in-the-gateway-env")
    monkeypatch.setenv("MOLTBOT_SOMETHING", "moltbot-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-gateway-env")
    out = await run(exec_tool(security="full"), workspace, command="env")
    names = {line.split("=", 1)[0] for line in out.split("--- stdout ---\n")[1]
             .split("\n--- stderr")[0].splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "LANG", "TERM", "PWD", "SHLVL", "_"}
    assert "tok-in-the-gateway-env" not in out and "sk-from-the-gateway-env" not in out
    assert f"HOME={workspace.resolve()}" in out


@pytest_twisted.ensureDeferred
async def test_output_is_capped_keeping_head_and_tail(workspace):
    tool = exec_tool(security="full", maxOutputChars=1000)
    out = await run(tool, workspace, command="echo START; yes line | head -n 100000; echo END")
    stdout = out.split("--- stdout ---\n")[1].split("\n--- stderr")[0]
    assert stdout.startswith("START\nline\n") and stdout.endswith("line\nEND\n")
    assert "characters cut" in stdout and len(stdout) < 1100


@pytest_twisted.ensureDeferred
async def test_cwd_is_inside_the_workspace(workspace, tmp_path):
    tool = exec_tool(security="full")
    (workspace / "sub").mkdir(parents=True)
    assert f"{workspace.resolve()}/sub\n" in await run(tool, workspace, command="pwd",
                                                       cwd="sub")
    for escape in ("..", str(tmp_path), "sub/../../"):
        assert "outside the workspace" in await refused(tool, workspace, command="pwd",
                                                        cwd=escape)


@pytest_twisted.ensureDeferred
async def test_exec_over_http_chat_with_the_allowlist(start_gateway, http, upstream,
                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("CLAWDBOT_GATEWAY_TOKEN", TOKEN)
    raw = config(upstream, provider={"apiKey": "key-Provider123",
                                     "headers": {"x-secret": "hdr-Secret456"}})
    raw["agents"]["list"][0].update({"workspace": str(tmp_path / "ws"),
                                     "tools": {"allow": ["exec"]}})
    raw["tools"] = {"exec": {"security": "allowlist", "allowlist": ["echo", "env"]}}
    gw = await start_gateway(raw)

    async def ask(text):
        response = await http.post(gw.url + PATH, json={
            "model": "moltbot:main", "messages": [{"role": "user", "content": text}]},
            headers=gw.auth_headers)
        body = await response.content()
        assert response.code == 200, body
        return json.loads(body)["choices"][0]["message"]["content"]

    assert "hi" in await ask('call exec {"command": "echo hi"}')
    answer = await ask('call exec {"command": "env"}')
    assert "PATH=" in answer
    for secret in (TOKEN, "key-Provider123", "hdr-Secret456", "CLAWDBOT", "MOLTBOT"):
        assert secret not in answer
    assert "refused" in await ask('call exec {"command": "echo hi; env"}')
