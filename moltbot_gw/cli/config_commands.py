"""``moltbot-gw config validate|schema|docs`` and ``moltbot-gw token``: the configuration
file and the gateway token, without a running gateway.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..auth import UnsafeTokenFile, load_or_create_token
from ..config import ConfigError, load_config
from .running import load


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
    from ..config import json_schema
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_config_docs(args) -> int:
    """Rewrite the generated key table of docs/configuration.rst from the config models."""
    from ..config.docs import replace_table
    path = Path(args.path)
    path.write_text(replace_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"rewrote the key table in {path}")
    return 0


def cmd_token(args) -> int:
    config = load(args.config)
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
