"""``moltbot-gw providers check`` and ``moltbot-gw tools explain``: what the configuration
gives the agents (model providers that answer, server tools they may use).
"""
from __future__ import annotations

import json
import sys

from ..config import Config
from .running import load, react, react_value


async def _providers_check(reactor, config: Config, args) -> int:
    from ..providers.check import check_providers

    checks = await check_providers(reactor, config, timeout=args.timeout)
    failing = [c for c in checks if c.used and not c.ok]
    if args.json:
        print(json.dumps({"ok": not failing, "providers": [c.to_json() for c in checks]},
                         indent=2))
    else:
        for check in checks:
            print(check.line())
        if not checks:
            print("no providers configured")
    return 1 if failing else 0


def cmd_providers_check(args) -> int:
    """Ask every configured provider for its models; exit 1 if one an agent uses fails."""
    return react(_providers_check, load(args.config), args)


def cmd_tools_explain(args) -> int:
    """Print each agent's server tools, allowed or not, and the config key that decided."""
    from ..agents.registry import UnknownAgent
    from ..tools.policy import explain_agents, explain_text

    config = load(args.config)
    try:
        if any(s.enabled for s in config.tools.mcp.servers.values()):
            from ..tools.mcp.probe import explain_with_mcp
            report = react_value(explain_with_mcp, config, args.agent)
        else:
            report = explain_agents(config, args.agent)
    except UnknownAgent as e:
        print(f"moltbot-gw: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"agents": {agent_id: [d.to_json() for d in decisions]
                                     for agent_id, decisions in report.items()}}, indent=2))
    else:
        print(explain_text(report))
    return 0
