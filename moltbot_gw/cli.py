"""The ``moltbot-gw`` console script: operator commands around the daemon.

The daemon itself runs under twistd (``twistd -n moltbot-gw``); these commands validate
config, print the token, check health, run agent turns — those two through the running
gateway's WebSocket protocol (``agent --local`` runs in this process instead) — prune the
session store of a stopped gateway, check that the configured model providers answer and
explain which server tools each agent may use.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from . import __version__
from .auth import UnsafeTokenFile, load_or_create_token, read_token
from .config import Config, ConfigError, load_config


def _load(path: Optional[str]) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        raise SystemExit(1) from e


def cmd_config_validate(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"moltbot-gw: {len(e.errors)} error(s) in the configuration:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    where = config.path if config.path and config.path.exists() else "defaults (no file)"
    print(f"OK: {where}")
    return 0


def cmd_config_schema(args) -> int:
    """Print the JSON Schema of the config file, for editors to complete and check it."""
    from .config import json_schema
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_config_docs(args) -> int:
    """Rewrite the generated key table of docs/configuration.rst from the config models."""
    from .config.docs import replace_table
    path = Path(args.path)
    path.write_text(replace_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"rewrote the key table in {path}")
    return 0


def cmd_token(args) -> int:
    config = _load(args.config)
    auth = config.gateway.auth
    if auth.mode == "password":
        print("moltbot-gw: the gateway uses password auth (gateway.auth.mode is \"password\"); "
              "there is no token", file=sys.stderr)
        return 1
    if auth.token:
        print(auth.token)
        return 0
    try:
        token, created = load_or_create_token(config.state_dir)
    except UnsafeTokenFile as e:
        print(f"moltbot-gw: {e}", file=sys.stderr)
        return 1
    if created:
        print(f"moltbot-gw: generated a new token in {config.state_dir / 'gateway.token'}",
              file=sys.stderr)
    print(token)
    return 0


def default_url(config: Config) -> str:
    """The WebSocket URL of the gateway this config describes."""
    host = config.gateway.interface
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{config.gateway.port}/"


def gateway_credential(config: Config) -> Optional[dict]:
    """What to send in ``connect``'s ``auth``: the configured (or environment) secret, else
    the token the gateway generated in the state dir. Never creates a token."""
    auth = config.gateway.auth
    secret = auth.explicit_secret
    if auth.mode == "password":
        return {"password": secret} if secret else None
    if secret is None:
        try:
            secret = read_token(config.state_dir)
        except (OSError, UnsafeTokenFile):   # a symlinked token file is never sent
            secret = None
    return {"token": secret} if secret else None


def _react(main, *args) -> int:
    """Run ``main(reactor, *args)`` (a coroutine function returning an exit code)."""
    from twisted.internet import defer, task

    codes: list[int] = []

    def run(reactor):
        return defer.ensureDeferred(main(reactor, *args)).addCallback(codes.append)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code)
    return codes[0] if codes else 1


async def _health(reactor, config: Config, args) -> int:
    from twisted.internet import defer

    from .ws.client import GatewayClient, GatewayError, GatewayUnreachable, ws_url

    url = ws_url(args.url) if args.url else default_url(config)
    try:
        client = await GatewayClient.connect(reactor, url, gateway_credential(config),
                                             timeout=args.timeout)
    except GatewayUnreachable as e:
        print(f"moltbot-gw: gateway at {url} is not healthy: {e.reason}", file=sys.stderr)
        return 1
    except GatewayError as e:
        print(f"moltbot-gw: gateway at {url} is not healthy: it refused the connection: "
              f"{e.message}", file=sys.stderr)
        return 1
    try:
        body = await client.call("health").addTimeout(args.timeout, reactor)
    except (GatewayError, defer.TimeoutError) as e:
        print(f"moltbot-gw: gateway at {url} is not healthy: "
              f"{getattr(e, 'message', None) or 'no answer in time'}", file=sys.stderr)
        return 1
    finally:
        await client.disconnect()
    if body.get("ok") is True:
        print(f"OK: gateway at {url} is up (moltbot-gw {body.get('version')})")
        return 0
    print(f"moltbot-gw: gateway at {url} answered {body!r}", file=sys.stderr)
    return 1


def cmd_health(args) -> int:
    return _react(_health, _load(args.config), args)


async def _run_agent_locally(reactor, config: Config, args) -> int:
    from .agents.registry import AgentRegistry, UnknownAgent
    from .agents.run import RunRequest
    from .agents.runner import AgentRunner
    from .providers.registry import ProviderRegistry
    from .redis import RedisUnavailable
    from .sessions.backend import store_for
    from .tools.policy import ToolCatalog

    agents = AgentRegistry(config)
    store, link = store_for(config, reactor)   # session.store.backend: files or Redis
    if link is not None:
        try:
            await link.connect()
        except RedisUnavailable as e:
            print(f"moltbot-gw: {e}", file=sys.stderr)
            return 1
    providers = ProviderRegistry(config.models, reactor)
    runner = AgentRunner(agents, providers, store, reactor,
                         config.agents.defaults.maxConcurrent,
                         tools_for=ToolCatalog(config, reactor).for_agent)
    request = RunRequest(input=({"role": "user", "content": args.message},),
                         agent_id=args.agent, session_key=args.session_key,
                         persist=args.session_key is not None)
    try:
        try:
            run = runner.run(request)
        except (UnknownAgent, ValueError) as e:
            print(f"moltbot-gw: {e}", file=sys.stderr)
            return 2
        if not args.json:
            run.subscribe(_print_delta)
        try:
            result = await run.wait()
        except Exception as e:  # a provider or run error: say what it was, no traceback
            message = getattr(e, "message", None) or str(e)
            print(f"\nmoltbot-gw: the run failed: {message}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps({"runId": result.run_id, "agentId": result.agent_id,
                              "sessionKey": result.session_key, "text": result.text,
                              "finishReason": result.finish_reason, "model": result.model,
                              "usage": {"prompt_tokens": result.usage.prompt_tokens,
                                        "completion_tokens": result.usage.completion_tokens,
                                        "total_tokens": result.usage.total_tokens}}))
        else:
            print()
        return 0
    finally:
        await providers.close()
        if link is not None:
            await link.disconnect()


def _print_delta(event) -> None:
    """Print the answer's text as it streams. Reasoning events (``{"reasoning"}``) are not
    the answer: they are left out, as ``agent`` through the gateway leaves them out."""
    if event.stream == "assistant" and "delta" in event.data:
        sys.stdout.write(event.data["delta"])
        sys.stdout.flush()
    _print_server_tool(event.stream, event.data)


def _print_server_tool(stream: str, data) -> None:
    """One stderr line per server tool the agent ran (its ``tool`` end event), so the answer
    on stdout stays clean."""
    if stream == "tool" and data.get("phase") == "end":
        status = "ok" if data.get("ok") else "error"
        preview = " ".join(str(data.get("preview", "")).split())[:80]
        print(f"[tool {data.get('name')}: {status}, {data.get('durationMs')} ms] {preview}",
              file=sys.stderr, flush=True)


USAGE_ERRORS = ("NOT_FOUND", "INVALID_REQUEST")


async def _run_agent_remotely(reactor, config: Config, args) -> int:
    import uuid

    from .ws.client import GatewayClient, GatewayError, GatewayUnreachable, ws_url

    url = ws_url(args.url) if args.url else default_url(config)
    accepted: dict[str, Any] = {}

    def on_event(event: str, payload) -> None:
        # Only this connection's own runs are streamed to it (it subscribes to nothing).
        if (event == "agent" and not args.json and payload.get("stream") == "assistant"
                and payload.get("runId") == accepted.get("runId")):
            sys.stdout.write(payload.get("data", {}).get("delta", ""))
            sys.stdout.flush()
        if (event == "agent" and not args.json and payload.get("runId") == accepted.get("runId")):
            _print_server_tool(payload.get("stream", ""), payload.get("data", {}))

    try:
        client = await GatewayClient.connect(reactor, url, gateway_credential(config),
                                             timeout=args.timeout, on_event=on_event)
    except GatewayUnreachable as e:
        print(f"moltbot-gw: {e}. Start it with `twistd -n moltbot-gw` or use --local.",
              file=sys.stderr)
        return 1
    except GatewayError as e:
        print(f"moltbot-gw: the gateway at {url} refused the connection: {e.message}",
              file=sys.stderr)
        return 1
    params = {"message": args.message, "idempotencyKey": str(uuid.uuid4())}
    if args.agent:
        params["agentId"] = args.agent
    if args.session_key:
        params["sessionKey"] = args.session_key
    try:
        result = await client.agent(params, on_accepted=accepted.update)
    except GatewayError as e:
        if not accepted and e.code in USAGE_ERRORS:
            print(f"moltbot-gw: {e.message}", file=sys.stderr)
            return 2
        print(f"\nmoltbot-gw: the run failed: {e.message}", file=sys.stderr)
        return 1
    finally:
        await client.disconnect()
    if args.json:
        usage = result.get("usage") or {}
        print(json.dumps({"runId": result.get("runId"), "agentId": result.get("agentId"),
                          "sessionKey": result.get("sessionKey"), "text": result.get("text"),
                          "finishReason": result.get("finishReason"),
                          "model": result.get("model"),
                          "usage": {"prompt_tokens": usage.get("inputTokens", 0),
                                    "completion_tokens": usage.get("outputTokens", 0),
                                    "total_tokens": usage.get("totalTokens", 0)}}))
    else:
        print()
    return 0


def cmd_agent(args) -> int:
    config = _load(args.config)
    if args.local:
        return _react(_run_agent_locally, config, args)
    return _react(_run_agent_remotely, config, args)


def cmd_sessions_prune(args) -> int:
    """Apply session retention to the state dir of a stopped gateway (docs/operations.rst)."""
    import time

    from .config import AGENT_ID_RE
    from .sessions.retention import agent_ids_on_disk, prune_agent

    config = _load(args.config)
    if args.agent is not None and not AGENT_ID_RE.fullmatch(args.agent):
        print(f"moltbot-gw: {args.agent!r} is not a valid agent id", file=sys.stderr)
        return 2
    if config.session.store.backend == "redis":
        from .sessions.backend import prune_redis_command

        return _react(prune_redis_command, config, args)
    agent_ids = [args.agent] if args.agent else agent_ids_on_disk(config.state_dir)
    now_ms = int(time.time() * 1000)
    verb = "would prune" if args.dry_run else "pruned"
    for agent_id in agent_ids:
        report = prune_agent(config.state_dir, agent_id, config.session, now_ms,
                             dry_run=args.dry_run)
        print(f"agent {agent_id}: {verb} {len(report.pruned)} session(s), kept {report.kept}")
        if args.dry_run:
            for entry in report.pruned:
                print(f"  {entry.key} (session {entry.session_id}, last used "
                      f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(entry.updated_at / 1000))}"
                      " UTC)")
    return 0


def cmd_sessions_migrate(args) -> int:
    """Copy sessions between the state dir and Redis (docs/operations.rst, "Redis backend")."""
    from .sessions.migrate import migrate_command

    return _react(migrate_command, _load(args.config), args)


async def _providers_check(reactor, config: Config, args) -> int:
    from .providers.check import check_providers

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
    return _react(_providers_check, _load(args.config), args)


def _react_value(main, *args):
    """Run ``main(reactor, *args)`` under the reactor; its value, or its exception raised."""
    outcome: list = []

    async def run(reactor):
        try:
            outcome.append((True, await main(reactor, *args)))
        except Exception as e:
            outcome.append((False, e))
        return 0

    _react(run)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def cmd_tools_explain(args) -> int:
    """Print each agent's server tools, allowed or not, and the config key that decided."""
    from .agents.registry import UnknownAgent
    from .tools.policy import explain_agents, explain_text

    config = _load(args.config)
    try:
        if any(s.enabled for s in config.tools.mcp.servers.values()):
            from .tools.mcp.probe import explain_with_mcp
            report = _react_value(explain_with_mcp, config, args.agent)
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


if __name__ == "__main__":
    sys.exit(main())
