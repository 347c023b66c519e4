"""Which connections get which ``agent`` events: those that asked for a run and those
subscribed to its session, each once. Runs of this process are watched through their
handles; runs of other processes (Redis backend) arrive relayed, already as event payloads.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

from ..agents.run import Run, RunEvent


class EventTarget(Protocol):
    def send_event(self, event: str, payload: Mapping[str, Any]) -> None: ...


class EventRouter:
    """Sends each event of a watched run to the connections that asked for the run and to
    those subscribed to its session, each once."""

    def __init__(self):
        self._askers: dict[str, set] = {}                 # run id -> connections
        self._listeners: dict[str, Callable[[RunEvent], None]] = {}
        self._sessions: dict[str, set] = {}               # session key -> connections

    def watch(self, run: Run) -> None:
        if run.run_id in self._listeners:
            return
        self._askers[run.run_id] = set()
        listener = self._listeners[run.run_id] = lambda event: self._deliver(run, event)
        run.subscribe(listener)
        run.wait().addBoth(self._forget, run)

    def add_asker(self, run: Run, connection: EventTarget) -> None:
        askers = self._askers.get(run.run_id)
        if askers is not None:  # a finished run has nothing left to send
            askers.add(connection)

    def subscribe_session(self, connection: EventTarget, session_key: str) -> None:
        self._sessions.setdefault(session_key, set()).add(connection)

    def drop(self, connection: EventTarget) -> None:
        """Forget a closed connection everywhere."""
        for askers in self._askers.values():
            askers.discard(connection)
        for key in [k for k, subs in self._sessions.items() if connection in subs]:
            self._sessions[key].discard(connection)
            if not self._sessions[key]:
                del self._sessions[key]

    def _deliver(self, run: Run, event: RunEvent) -> None:
        payload = event.to_json()
        payload["sessionKey"] = run.session_key
        self.deliver(run.run_id, run.session_key, payload)

    def deliver(self, run_id: str, session_key: str, payload: Mapping[str, Any]) -> None:
        """One event payload to the run's askers and its session's subscribers."""
        targets = self._askers.get(run_id, set()) | self._sessions.get(session_key, set())
        for connection in targets:
            connection.send_event("agent", payload)

    # -- runs of other processes ------------------------------------------------------

    def watch_remote(self, run_id: str) -> None:
        """Let connections ask for a run another process runs (``add_asker_id``)."""
        self._askers.setdefault(run_id, set())

    def add_asker_id(self, run_id: str, connection: EventTarget) -> None:
        askers = self._askers.get(run_id)
        if askers is not None:
            askers.add(connection)

    def forget_remote(self, run_id: str) -> None:
        if run_id not in self._listeners:
            self._askers.pop(run_id, None)

    def has_session(self, session_key: str) -> bool:
        return bool(self._sessions.get(session_key))

    def has_askers(self, run_id: str) -> bool:
        return bool(self._askers.get(run_id))

    def _forget(self, _outcome, run: Run) -> None:
        listener = self._listeners.pop(run.run_id, None)
        if listener is not None:
            run.unsubscribe(listener)
        self._askers.pop(run.run_id, None)
        return None  # the outcome is delivered to other waiters; none is lost here
