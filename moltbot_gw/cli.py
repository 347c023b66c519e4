"""The ``moltbot-gw`` console script: operator commands around the daemon.

The daemon itself runs under twistd (``twistd -n moltbot-gw``); these commands validate
config, print the token and check health. They run outside any reactor.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Optional, Sequence

from . import __version__
from .auth import load_or_create_token
from .config import Config, ConfigError, load_config


def _load(path: Optional[str]) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        raise SystemExit(1)


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
    token, created = load_or_create_token(config.state_dir)
    if created:
        print(f"moltbot-gw: generated a new token in {config.state_dir / 'gateway.token'}",
              file=sys.stderr)
    print(token)
    return 0


def default_url(config: Config) -> str:
    host = config.gateway.interface
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.gateway.port}"


def cmd_health(args) -> int:
    url = (args.url or default_url(_load(args.config))).rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=args.timeout) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        print(f"moltbot-gw: gateway at {url} is not healthy: {reason}", file=sys.stderr)
        return 1
    if body.get("ok") is True:
        print(f"OK: gateway at {url} is up")
        return 0
    print(f"moltbot-gw: gateway at {url} answered {body!r}", file=sys.stderr)
    return 1


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

    token = sub.add_parser("token", help="print the gateway token, generating it if needed")
    token.add_argument("--config", help="config path")
    token.set_defaults(func=cmd_token)

    health = sub.add_parser("health", help="check that the gateway answers")
    health.add_argument("--url", help="gateway base URL (default: from the config)")
    health.add_argument("--config", help="config path")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    health.set_defaults(func=cmd_health)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
