"""Which server tools an agent gets: profiles, allow/deny precedence (deny wins), per-agent
keys over the global ``tools`` section, unknown names and a missing workspace rejected with
their config paths, and ``moltbot-gw tools explain`` run as the operator runs it."""
from __future__ import annotations

import json
import os
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from moltbot_gw.agents.registry import AgentRegistry
from moltbot_gw.config import ConfigError, load_config, parse_config
from moltbot_gw.tools.catalogue import is_known_name
from moltbot_gw.tools.policy import ToolCatalog

FS = ["edit", "glob", "grep", "ls", "read", "write"]


def config(tools=None, agents=None):
    raw = {"agents": {"list": agents if agents is not None else
                      [{"id": "main", "workspace": "/tmp/never-created-ws"}]}}
    if tools is not None:
        raw["tools"] = tools
    return parse_config(raw, env={})


def tools_of(cfg, agent_id="main"):
    agent = AgentRegistry(cfg).get(agent_id)
    return ToolCatalog(cfg, reactor).for_agent(agent)


def reasons(cfg, agent_id="main"):
    agent = AgentRegistry(cfg).get(agent_id)
    return {d.tool: (d.allowed, d.reason) for d in ToolCatalog(cfg).explain(agent)}


def errors_of(**kwargs):
    with pytest.raises(ConfigError) as info:
        config(**kwargs)
    return info.value.errors


def test_the_default_minimal_profile_gives_no_server_tools():
    assert sorted(tools_of(config()).names) == []
    assert tools_of(config(agents=[{"id": "main"}])).schemas() == []   # no workspace needed


def test_coding_and_full_profiles_give_the_fs_tools_with_their_context(tmp_path):
    for profile, names in (("coding", FS), ("full", sorted(FS + ["web_fetch"]))):
        cfg = config({"profile": profile}, [{"id": "main", "workspace": str(tmp_path / "w")}])
        tools = tools_of(cfg)
        assert sorted(tools.names) == names
        assert [s["function"]["name"] for s in tools.schemas()] == names
        assert tools.context.agent_id == "main"
        assert tools.context.workspace == tmp_path / "w"
        assert not (tmp_path / "w").exists()    # created by the tools on use, not here
        assert reasons(cfg)["read"] == (True, f"profile {profile}")


def test_allow_adds_to_the_profile_and_deny_always_wins():
    cfg = config({"allow": ["read", "group:fs"], "deny": ["write"]})
    assert sorted(tools_of(cfg).names) == ["edit", "glob", "grep", "ls", "read"]
    got = reasons(cfg)
    assert got["read"] == (True, "tools.allow")
    assert got["write"] == (False, "tools.deny")
    cfg = config({"profile": "full", "deny": ["group:fs", "group:web"]})
    assert tools_of(cfg).names == frozenset()
    assert reasons(cfg)["ls"] == (False, "tools.deny")


def test_an_agents_keys_override_the_global_ones_key_by_key():
    cfg = config({"profile": "coding", "deny": ["edit"]}, [
        {"id": "main", "workspace": "/tmp/w1"},
        {"id": "reader", "workspace": "/tmp/w2",
         "tools": {"profile": "minimal", "allow": ["read", "grep"]}},
        {"id": "writer", "workspace": "/tmp/w3", "tools": {"deny": []}},
        {"id": "none", "tools": {"profile": "minimal"}},
    ])
    assert sorted(tools_of(cfg, "main").names) == ["glob", "grep", "ls", "read", "write"]
    assert sorted(tools_of(cfg, "reader").names) == ["grep", "read"]
    assert reasons(cfg, "reader")["read"] == (True, "agents.list[1].tools.allow")
    assert reasons(cfg, "reader")["edit"] == (False, "tools.deny")   # deny inherited
    assert reasons(cfg, "reader")["ls"] == (False, "not in profile minimal")
    assert sorted(tools_of(cfg, "writer").names) == FS
    assert tools_of(cfg, "none").names == frozenset()


def test_unknown_tool_and_group_names_are_errors_with_their_paths():
    errors = errors_of(tools={"allow": ["read", "reed"], "deny": ["group:files"],
                              "mcp": {"servers": {"git": {"command": "git-mcp"}}}},
                       agents=[{"id": "main", "workspace": "/tmp/w",
                                "tools": {"allow": ["mcp__git__*", "mcp_git"]}}])
    assert [e.split(":", 1)[0] for e in errors] == [
        "tools.allow[1]", "tools.deny[0]", "agents.list[0].tools.allow[1]"]
    assert '"reed"' in errors[0] and "group:fs" in errors[0]


def test_names_of_tools_arriving_in_later_steps_are_known():
    for name in ("exec", "web_fetch", "group:runtime", "group:web", "group:fs",
                 "mcp__github__*", "mcp__github__create_issue"):
        assert is_known_name(name), name
    # an MCP pattern must name a configured server (tests/test_mcp_config.py)
    cfg = config({"allow": ["exec", "group:web", "mcp__github__*"], "deny": ["web_fetch"],
                  "mcp": {"servers": {"github": {"url": "http://127.0.0.1:1/mcp"}}}})
    assert tools_of(cfg).names == frozenset()          # none of them exists yet
    assert errors_of(tools={"profile": "everything"})[0].startswith("tools.profile:")


def test_an_agent_allowed_group_fs_without_a_workspace_is_rejected():
    errors = errors_of(tools={"profile": "coding"},
                       agents=[{"id": "a", "workspace": "/tmp/w"}, {"id": "b"},
                               {"id": "c", "tools": {"deny": ["group:fs"]}}])
    assert errors == ["agents.list[1].workspace: required, the agent may use the group:fs "
                      "tools"]
    errors = errors_of(tools={"allow": ["read"]}, agents=[])
    assert errors[0].startswith("tools:") and "workspace" in errors[0]


async def tools_explain(tmp_path, document, *extra):
    path = tmp_path / "moltbot.json"
    path.write_text(json.dumps(document))
    env = {**os.environ, "MOLTBOT_STATE_DIR": str(tmp_path / "state")}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "moltbot_gw.cli", "tools", "explain", "--config", str(path),
                         *extra], env=env, reactor=reactor)
    return code, out.decode(), err.decode()


EXPLAINED = {"tools": {"profile": "coding", "deny": ["write"]},
             "agents": {"list": [
                 {"id": "main", "workspace": "ws"},
                 {"id": "ro", "workspace": "ws", "tools": {"profile": "minimal",
                                                          "allow": ["read"]}}]}}


@pytest_twisted.ensureDeferred
async def test_tools_explain_prints_every_agents_decisions(tmp_path):
    code, out, err = await tools_explain(tmp_path, EXPLAINED)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "agent main: edit, glob, grep, ls, read"
    assert "  deny  write (group:fs): tools.deny" in lines
    assert "  allow read (group:fs): profile coding" in lines
    assert "agent ro: read" in lines
    assert "  allow read (group:fs): agents.list[1].tools.allow" in lines
    assert "  deny  ls (group:fs): not in profile minimal" in lines


@pytest_twisted.ensureDeferred
async def test_tools_explain_json_for_one_agent_and_unknown_agent(tmp_path):
    code, out, err = await tools_explain(tmp_path, EXPLAINED, "--agent", "RO", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert list(report["agents"]) == ["ro"]
    assert {d["tool"]: [d["allowed"], d["reason"]] for d in report["agents"]["ro"]}["read"] == [
        True, "agents.list[1].tools.allow"]
    code, out, err = await tools_explain(tmp_path, EXPLAINED, "--agent", "ghost")
    assert code == 2 and 'unknown agent "ghost"' in err


@pytest_twisted.ensureDeferred
async def test_tools_explain_reports_config_errors(tmp_path):
    code, out, err = await tools_explain(tmp_path, {"tools": {"deny": ["rm"]}})
    assert code == 1 and 'tools.deny[0]: unknown tool or group "rm"' in err


def test_the_quickstart_agent_has_the_fs_tools_in_its_workspace(monkeypatch, tmp_path):
    monkeypatch.setenv("MOLTBOT_STATE_DIR", str(tmp_path / "state"))
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "quickstart.json5")
    tools = tools_of(load_config(path))
    assert sorted(tools.names) == FS
    assert str(tools.context.workspace).endswith("/.moltbot/workspace")


def test_an_agents_tools_are_worked_out_once_per_catalogue():
    """Every run asks for its agent's tools: the answer is computed once per config (issue
    #16, per-request cost), and a new catalogue (a reload) answers from the new policy."""
    cfg = config(tools={"allow": ["read"]})
    agent = AgentRegistry(cfg).get("main")
    catalog = ToolCatalog(cfg, reactor)
    first = catalog.for_agent(agent)
    assert catalog.for_agent(agent) is first
    assert first.names == {"read"}
    reloaded = config(tools={"allow": ["read", "ls"]})
    again = ToolCatalog(reloaded, reactor).for_agent(AgentRegistry(reloaded).get("main"))
    assert again.names == {"read", "ls"} and again is not first
