"""The ``moltbot-gw`` console script: operator commands around the daemon.

The daemon itself runs under twistd (``twistd -n moltbot-gw``); these commands validate
config, print the token, check health, run agent turns — those two through the running
gateway's WebSocket protocol (``agent --local`` runs in this process instead) — prune the
session store of a stopped gateway, check that the configured model providers answer and
explain which server tools each agent may use.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .. import __version__
from .agent import cmd_agent
from .config_commands import cmd_config_docs, cmd_config_schema, cmd_config_validate, cmd_token
from .gateway import cmd_health
from .inspect_commands import cmd_providers_check, cmd_tools_explain
from .sessions import cmd_sessions_migrate, cmd_sessions_prune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moltbot-gw", description=(
        "Operator commands for the moltbot-gw gateway. Run the daemon with "
        "`twistd -n moltbot-gw --config PATH`."))
    parser.add_argument("--version", action="version", version=f"moltbot-gw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="work with the configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    validate = config_sub.add_parser("validate", help="check the config; print every error")
    validate.add_argument("--config", help="config path (default: resolved as the daemon does)")
    validate.set_defaults(func=cmd_config_validate)
    schema = config_sub.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(func=cmd_config_schema)
    docs = config_sub.add_parser("docs", help="regenerate the key table of the configuration "
                                              "docs (for developers)")
    docs.add_argument("path", nargs="?", default="docs/configuration.rst",
                      help="the .rst holding the table (default: docs/configuration.rst)")
    docs.set_defaults(func=cmd_config_docs)

    token = sub.add_parser("token", help="print the gateway token, generating it if needed")
    token.add_argument("--config", help="config path")
    token.set_defaults(func=cmd_token)

    health = sub.add_parser("health", help="check that the gateway answers (over WebSocket)")
    health.add_argument("--url", help="gateway URL, ws:// or http:// (default: "
                                      "ws://127.0.0.1:<gateway.port>/ from the config)")
    health.add_argument("--config", help="config path")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    health.set_defaults(func=cmd_health)

    agent = sub.add_parser("agent", help="run one agent turn and print the reply as it streams")
    agent.add_argument("--message", "-m", required=True, help="the user message")
    agent.add_argument("--agent", help="agent id (default: the default agent)")
    agent.add_argument("--session-key", help="session to continue (default: the agent's main "
                                             "session; with --local a fresh one, not stored)")
    agent.add_argument("--json", action="store_true", help="print one JSON object at the end")
    agent.add_argument("--local", action="store_true",
                       help="run in this process instead of through a running gateway")
    agent.add_argument("--url", help="gateway URL (default: ws://127.0.0.1:<gateway.port>/ "
                                     "from the config)")
    agent.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for the connection and handshake")
    agent.add_argument("--config", help="config path")
    agent.set_defaults(func=cmd_agent)

    sessions = sub.add_parser("sessions", help="work with the session store")
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True)
    prune = sessions_sub.add_parser(
        "prune", help="apply session.maxSessionsPerAgent and session.idleDays now "
                      "(stop the gateway first)")
    prune.add_argument("--config", help="config path")
    prune.add_argument("--agent", help="only this agent (default: every agent on disk)")
    prune.add_argument("--dry-run", action="store_true",
                       help="list what would be pruned; change nothing")
    prune.set_defaults(func=cmd_sessions_prune)
    migrate = sessions_sub.add_parser(
        "migrate", help="copy every session and transcript between the file store and Redis "
                        "(idempotent; stop the gateways first)")
    migrate.add_argument("--from", dest="source", choices=("file", "redis"), required=True)
    migrate.add_argument("--to", dest="target", choices=("file", "redis"), required=True)
    migrate.add_argument("--config", help="config path (session.store.redis, the state dir)")
    migrate.set_defaults(func=cmd_sessions_migrate)

    providers = sub.add_parser("providers", help="work with the configured model providers")
    providers_sub = providers.add_subparsers(dest="providers_command", required=True)
    check = providers_sub.add_parser(
        "check", help="call each provider's model list; exit 1 when one an agent uses fails "
                      "(no running gateway needed)")
    check.add_argument("--config", help="config path")
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.add_argument("--timeout", type=float, default=5.0,
                       help="seconds to wait for each provider (default: 5)")
    check.set_defaults(func=cmd_providers_check)

    tools = sub.add_parser("tools", help="work with the agents' server tools")
    tools_sub = tools.add_subparsers(dest="tools_command", required=True)
    explain = tools_sub.add_parser(
        "explain", help="print each agent's tools, allowed or denied, and which config key "
                        "decided")
    explain.add_argument("--config", help="config path")
    explain.add_argument("--agent", help="only this agent (default: every agent)")
    explain.add_argument("--json", action="store_true", help="print one JSON document")
    explain.set_defaults(func=cmd_tools_explain)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
