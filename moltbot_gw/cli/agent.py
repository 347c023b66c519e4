"""``moltbot-gw agent``: one agent turn, through the running gateway's WebSocket protocol or
(``--local``) in this process, its answer printed as it streams.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from ..config import Config
from .gateway import default_url, gateway_credential
from .running import load, react


async def _run_agent_locally(reactor, config: Config, args) -> int:
    """The turn in this process, with the configured MCP servers started for it (each given
    up on after a bounded wait, as ``tools explain`` does) and stopped after it."""
    if not any(s.enabled for s in config.tools.mcp.servers.values()):
        return await _run_local_turn(reactor, config, args, None)
    from ..tools.mcp.probe import started_servers

    async with started_servers(reactor, config.tools.mcp) as servers:
        for name, problem in servers.problems().items():
            print(f"moltbot-gw: MCP server {name} is not connected ({problem}); "
                  "its tools are missing from this run", file=sys.stderr)
        return await _run_local_turn(reactor, config, args, servers)


async def _run_local_turn(reactor, config: Config, args, mcp: Any) -> int:
    from ..agents.registry import AgentRegistry, UnknownAgent
    from ..agents.run import RunRequest
    from ..agents.runner import AgentRunner
    from ..providers.registry import ProviderRegistry
    from ..redis import RedisUnavailable
    from ..sessions.backend import store_for
    from ..tools.policy import ToolCatalog

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
                         tools_for=ToolCatalog(config, reactor, mcp=mcp).for_agent)
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

    from ..ws.client import GatewayClient, GatewayError, GatewayUnreachable, ws_url

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
    config = load(args.config)
    if args.local:
        return react(_run_agent_locally, config, args)
    return react(_run_agent_remotely, config, args)
