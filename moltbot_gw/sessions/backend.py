"""The session store a config asks for (``session.store.backend``), for the commands that
run outside the gateway (``agent --local``, ``sessions prune``): the file store on the state
dir, or the Redis store on a link of their own."""
from __future__ import annotations

import sys
from typing import Any, Optional

from moltbot_gw.config import Config
from moltbot_gw.redis.connection import RedisLink, RedisUnavailable
from moltbot_gw.sessions.interface import ISessionStore
from moltbot_gw.sessions.redis_store import RedisSessionStore
from moltbot_gw.sessions.store import SessionStore


def redis_link_for(config: Config, reactor: Any, pool_size: Optional[int] = None) -> RedisLink:
    r = config.session.store.redis
    return RedisLink(r.url, reactor, key_prefix=r.keyPrefix,
                     connect_timeout=r.connectTimeoutSeconds,
                     command_timeout=r.commandTimeoutSeconds,
                     pool_size=pool_size or r.poolSize)


def store_for(config: Config, reactor: Any) -> tuple[ISessionStore, Optional[RedisLink]]:
    """The store, and its Redis link (None for files) for the caller to connect and close."""
    if config.session.store.backend != "redis":
        return SessionStore(config.state_dir, reactor, limits=config.session), None
    link = redis_link_for(config, reactor, pool_size=1)
    return RedisSessionStore(link, config.session, reactor), link


async def prune_redis_command(reactor: Any, config: Config, args: Any) -> int:
    """``sessions prune`` with ``session.store.backend: "redis"``: retention applied in Redis
    (safe while gateways run: each removal is one script)."""
    link = redis_link_for(config, reactor, pool_size=1)
    store = RedisSessionStore(link, config.session, reactor)
    verb = "would prune" if args.dry_run else "pruned"
    try:
        await link.connect()
        agent_ids = [args.agent] if args.agent else await store.agent_ids()
        for agent_id in agent_ids:
            pruned = await store.prune(agent_id, dry_run=args.dry_run)
            kept = int(await link.execute("HLEN", store.index_key(agent_id)))
            kept -= len(pruned) if args.dry_run else 0
            print(f"agent {agent_id}: {verb} {len(pruned)} session(s), kept {kept}")
            if args.dry_run:
                for key in pruned:
                    print(f"  {key}")
    except RedisUnavailable as error:
        print(f"moltbot-gw: {error}", file=sys.stderr)
        return 1
    finally:
        await link.disconnect()
    return 0
