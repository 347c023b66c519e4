"""Turns per second of the session store alone, in one process: 16 concurrent clients over 32
sessions, each turn a ``load_history`` with the runner's history budget, the history built
and capped as the runner does, and a ``record_turn`` (user + assistant record), as
``sessions_c16`` does through HTTP. For comparing store changes (group commit, issue 16):

    PYTHONPATH=$PWD python benchmarks/store_turns.py [turns per client, default 150]
"""
import sys
import tempfile
import time

from twisted.internet import defer, task

from moltbot_gw.agents.history_window import cap_history, history_budget
from moltbot_gw.config import HistoryConfig
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.sessions.transcript import history_messages

CLIENTS = 16
SESSIONS = 32
LIMITS = HistoryConfig()   # the default agent's history limits


def main(reactor, turns: int):
    store = SessionStore(tempfile.mkdtemp(prefix="moltbot-store-bench-"))

    async def client(number: int) -> None:
        for turn in range(turns):
            key = f"agent:main:u{(number + CLIENTS * turn) % SESSIONS}"
            records = await store.load_history(key, history_budget(LIMITS))
            cap_history(history_messages(records), LIMITS)
            await store.record_turn(key, [
                {"type": "message", "role": "user", "content": "q" * 200},
                {"type": "message", "role": "assistant", "content": "a" * 400}])

    def all_clients():
        return defer.gatherResults([defer.Deferred.fromCoroutine(client(n))
                                    for n in range(CLIENTS)])

    async def run() -> None:
        await all_clients()               # warm-up: creates the sessions
        wall, cpu = time.perf_counter(), time.process_time()
        await all_clients()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{CLIENTS * turns / wall:.0f} turns/s, CPU/turn "
              f"{cpu / (CLIENTS * turns) * 1000:.2f} ms")
        await store.flush()

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    task.react(main, [int(sys.argv[1]) if len(sys.argv) > 1 else 150])
