"""Redis stopped and started again while clients keep sending stored-session turns (issue 16,
acceptance 5): every answer is a 200 or a 503 ``service_unavailable`` in the OpenAI error
shape, none takes longer than the bound, turns succeed again once Redis is back without a
gateway restart, and every acknowledged (200) turn is in Redis afterwards (read directly)."""
from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from moltbot_gw.sessions.keys import openai_session_key

from .chat_helpers import PATH, config, http, no_leftovers  # noqa: F401  (fixtures)
from .support.redis_sync import stored_records, turn_stored

COMMAND_TIMEOUT = 0.5
# a turn needs a few bounded Redis commands (lock, history, record, release); under a loaded
# machine add some slack, but nowhere near a hang
BOUND = 4 * COMMAND_TIMEOUT + 2.0
LOOPS = 16
DOWN_SECONDS = 2.0
PREFIX = "outage:"


def redis_config(up, url):
    # the loops all connect from 127.0.0.1: one client to the per-client limit, which is not
    # what this file tests
    raw = config(up, gateway={"limits": {"perClientConcurrency": 64}})
    raw["session"] = {"store": {"backend": "redis", "redis": {
        "url": url, "keyPrefix": PREFIX, "commandTimeoutSeconds": COMMAND_TIMEOUT,
        "connectTimeoutSeconds": 1}}}
    return raw


class ClientLoop:
    """One client sending turns of its own session back to back until told to stop."""

    def __init__(self, http, gw, index: int):
        self.http = http
        self.gw = gw
        self.user = f"loop-{index:02d}"
        self.answers: list[tuple[str, int, dict, float, float]] = []  # prompt, code, body, t0, t
        self.stopping = False

    async def run(self) -> None:
        n = 0
        while not self.stopping:
            prompt = f"turn {n} of {self.user}"
            n += 1
            body = {"model": "moltbot:beta", "user": self.user,
                    "messages": [{"role": "user", "content": prompt}]}
            started = reactor.seconds()
            response = await self.http.post(self.gw.url + PATH, json=body,
                                            headers=self.gw.auth_headers)
            answer = await response.json()
            self.answers.append((prompt, response.code, answer, started, reactor.seconds()))
            if response.code != 200:
                await deferLater(reactor, 0.05, lambda: None)   # a client backs off a little

    def ok_since(self, moment: float) -> bool:
        return any(code == 200 and t0 >= moment for _, code, _, t0, _ in self.answers)


@pytest_twisted.ensureDeferred
async def test_redis_stopped_and_restarted_under_load(start_gateway, upstream, http,
                                                      private_redis):
    gw = await start_gateway(redis_config(upstream, private_redis.url))
    loops = [ClientLoop(http, gw, i) for i in range(LOOPS)]
    running = gatherResults([Deferred.fromCoroutine(loop.run()) for loop in loops],
                            consumeErrors=True)
    try:
        await deferLater(reactor, 1.0, lambda: None)          # the load is on
        assert all(loop.ok_since(0) for loop in loops)
        await threads.deferToThread(private_redis.stop)
        stopped_at = reactor.seconds()
        await deferLater(reactor, DOWN_SECONDS, lambda: None)
        restarting_at = reactor.seconds()
        await threads.deferToThread(private_redis.start)       # same port, same AOF
        back_at = reactor.seconds()
        deadline = back_at + 20
        while not all(loop.ok_since(back_at) for loop in loops):
            assert reactor.seconds() < deadline, [
                (loop.user, [(code, round(t0 - back_at, 2), round(t - t0, 2))
                             for _, code, _, t0, t in loop.answers[-4:]])
                for loop in loops if not loop.ok_since(back_at)]
            await deferLater(reactor, 0.1, lambda: None)
    finally:
        for loop in loops:
            loop.stopping = True
        await running

    answers = [(loop, *a) for loop in loops for a in loop.answers]
    codes = {code for _, _, code, _, _, _ in answers}
    assert codes <= {200, 503}, codes
    assert 503 in codes                    # the outage was seen
    for _, _, code, body, _, _ in answers:
        if code == 503:
            assert set(body["error"]) >= {"message", "type", "param", "code"}, body
            assert body["error"]["code"] == "service_unavailable", body
            assert body["error"]["type"] == "api_error", body
    slowest = max(t - t0 for _, _, _, _, t0, t in answers)
    assert slowest < BOUND, slowest
    # the turns asked and answered while Redis was down were all refused
    during = [code for _, _, code, _, t0, t in answers
              if t0 >= stopped_at and t <= restarting_at]
    assert during and set(during) == {503}, during

    # every acknowledged turn is in Redis, read directly (not through the gateway)
    for loop in loops:
        records = await threads.deferToThread(
            stored_records, private_redis.url, PREFIX, "beta",
            openai_session_key("beta", loop.user))
        acked = [prompt for prompt, code, _, _, _ in loop.answers if code == 200]
        missing = [prompt for prompt in acked if not turn_stored(records, prompt)]
        assert missing == [], (loop.user, missing)
    print(f"\nRedis down {DOWN_SECONDS} s under {LOOPS} client loops: "
          f"{sum(c == 200 for _, _, c, _, _, _ in answers)} turns acknowledged, "
          f"{sum(c == 503 for _, _, c, _, _, _ in answers)} answered 503; slowest answer "
          f"{slowest:.2f} s (bound {BOUND} s)")

