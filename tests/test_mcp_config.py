"""Issue 15, ``tools.mcp`` config: exactly one of command/url per server, server names, and
allow/deny patterns naming a server that is not configured — each an error with its path."""
from __future__ import annotations

import pytest

from moltbot_gw.config import ConfigError, parse_config

from .support.mcp import stdio_server


def errors_of(raw):
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={"CLAWDBOT_GATEWAY_TOKEN": "x" * 20})
    return caught.value.errors


def test_a_server_needs_exactly_one_transport():
    errors = errors_of({"tools": {"mcp": {"servers": {
        "both": {"command": "x", "url": "http://127.0.0.1:1/mcp"}, "none": {}}}}})
    assert any(e.startswith("tools.mcp.servers.both: needs exactly one of command")
               for e in errors), errors
    assert any(e.startswith("tools.mcp.servers.none: needs exactly one of command")
               for e in errors), errors


def test_server_names_are_checked():
    errors = errors_of({"tools": {"mcp": {"servers": {"a_b": stdio_server()}}}})
    assert errors == ["tools.mcp.servers.a_b: a server name must match [A-Za-z0-9-]+"]


def test_a_pattern_for_an_unknown_server_is_an_error_with_its_path():
    errors = errors_of({"tools": {"deny": ["mcp__demo__add", "mcp__nope__*"],
                                  "mcp": {"servers": {"demo": stdio_server()}}},
                        "agents": {"list": [{"id": "main",
                                             "tools": {"allow": ["mcp__other__x"]}}]}})
    assert len(errors) == 2, errors
    assert errors[0].startswith('tools.deny[1]: "mcp__nope__*" names MCP server "nope"')
    assert errors[1].startswith('agents.list[0].tools.allow[0]: "mcp__other__x" names MCP '
                                'server "other"')


def test_secrets_in_env_and_headers_are_not_shown():
    errors = errors_of({"tools": {"mcp": {"servers": {
        "h": {"url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": 12345}}}}}})
    assert errors == ["tools.mcp.servers.h.headers.Authorization: expected a string, got "
                      "(hidden)"]
