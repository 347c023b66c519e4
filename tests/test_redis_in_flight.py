"""The deadlines of the Redis commands in flight (``redis/in_flight.py``), on a fake clock."""
from __future__ import annotations

from twisted.internet.task import Clock

from moltbot_gw.redis.in_flight import InFlight


def test_each_command_expires_at_its_own_deadline_with_one_timer():
    clock = Clock()
    in_flight = InFlight(clock, 5)
    expired: list[str] = []
    in_flight.add(lambda: expired.append("a"))
    clock.advance(2)
    in_flight.add(lambda: expired.append("b"))
    answered = in_flight.add(lambda: expired.append("c"))
    assert len(clock.getDelayedCalls()) == 1
    in_flight.done(answered)
    clock.advance(2.9)
    assert expired == []
    clock.advance(0.1)                  # t=5: a's deadline
    assert expired == ["a"]
    clock.advance(1.9)
    assert expired == ["a"]
    clock.advance(0.1)                  # t=7: b's; c was answered
    assert expired == ["a", "b"]
    assert clock.getDelayedCalls() == [] and len(in_flight) == 0


def test_the_timer_goes_once_nothing_waits_and_comes_back_with_the_next_command():
    clock = Clock()
    in_flight = InFlight(clock, 1)
    first = in_flight.add(lambda: None)
    second = in_flight.add(lambda: None)
    in_flight.done(first)
    assert len(clock.getDelayedCalls()) == 1
    in_flight.done(second)
    assert clock.getDelayedCalls() == []
    expired = []
    in_flight.add(lambda: expired.append(True))
    clock.advance(1)
    assert expired == [True]


def test_an_answer_after_the_deadline_is_ignored():
    clock = Clock()
    in_flight = InFlight(clock, 1)
    expired = []
    late = in_flight.add(lambda: expired.append(True))
    clock.advance(1)
    in_flight.done(late)                # nothing to undo, nothing raised
    assert expired == [True] and len(in_flight) == 0
