"""``moltbot-gw sessions prune|migrate``: maintenance of the session store of a stopped
gateway (docs/operations.rst).
"""
from __future__ import annotations

import sys

from .running import load, react


def cmd_sessions_prune(args) -> int:
    """Apply session retention to the state dir of a stopped gateway (docs/operations.rst)."""
    import time

    from ..config import AGENT_ID_RE
    from ..sessions.retention import agent_ids_on_disk, prune_agent

    config = load(args.config)
    if args.agent is not None and not AGENT_ID_RE.fullmatch(args.agent):
        print(f"moltbot-gw: {args.agent!r} is not a valid agent id", file=sys.stderr)
        return 2
    if config.session.store.backend == "redis":
        from ..sessions.backend import prune_redis_command

        return react(prune_redis_command, config, args)
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
    from ..sessions.migrate import migrate_command

    return react(migrate_command, load(args.config), args)
