#!/usr/bin/env python
"""What one Redis command costs the gateway's reactor: ``RedisLink.execute`` (``GET``) and
``RedisLink.script`` (a one-line Lua script by ``EVALSHA``) against a real redis-server this
script starts on a free loopback port, 16 commands in flight at a time, as a busy gateway
sends them. Prints this process's CPU time and the wall time per command.

    python benchmarks/redis_commands.py              # 8,000 commands of each kind, twice
    python benchmarks/redis_commands.py --count 20000

The figure to compare is the CPU time: it is what a command costs the reactor thread that
also serves HTTP (the redis-server's own time is not counted).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time

import benchlib as bl
from scaleout import start_redis
from twisted.internet import defer, reactor

from moltbot_gw.redis import RedisLink
from moltbot_gw.redis.connection import LuaScript

GET_SCRIPT = LuaScript("return redis.call('GET', KEYS[1])")
IN_FLIGHT = 16


async def measure(port: int, count: int) -> None:
    link = RedisLink(f"redis://{bl.HOST}:{port}/0", reactor)
    await link.connect()
    try:
        await link.script(GET_SCRIPT, ["bench:key"], [])      # loaded: EVALSHA from now on
        for kind in ("execute", "script") * 2:
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(count // IN_FLIGHT):
                await defer.gatherResults([
                    link.execute("GET", "bench:key") if kind == "execute"
                    else link.script(GET_SCRIPT, ["bench:key"], [])
                    for _ in range(IN_FLIGHT)])
            done = count // IN_FLIGHT * IN_FLIGHT
            print(f"{kind:8s} {1e6 * (time.process_time() - cpu) / done:6.1f} us CPU/command, "
                  f"{1e6 * (time.perf_counter() - wall) / done:6.1f} us wall "
                  f"({done} commands, {IN_FLIGHT} in flight)", flush=True)
    finally:
        await link.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8000, help="commands per measurement")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis_commands: redis-server is not installed (Debian package redis-server)",
              file=sys.stderr)
        return 2
    outcome: list = []
    try:
        with bl.workdir() as wd:
            server = start_redis(wd, "everysec")
            d = defer.ensureDeferred(measure(server.port, args.count))
            d.addErrback(outcome.append).addBoth(lambda _: reactor.stop())
            reactor.run()
    finally:
        bl.CHILDREN.stop_all()
    if outcome:
        print(outcome[0].getTraceback(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
