"""Reaching the running gateway from a command: its WebSocket URL, the credential to send,
and ``moltbot-gw health``.
"""
from __future__ import annotations

import sys
from typing import Optional

from ..auth import UnsafeTokenFile, read_token
from ..config import Config
from .running import load, react


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


async def _health(reactor, config: Config, args) -> int:
    from twisted.internet import defer

    from ..ws.client import GatewayClient, GatewayError, GatewayUnreachable, ws_url

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
    return react(_health, load(args.config), args)
