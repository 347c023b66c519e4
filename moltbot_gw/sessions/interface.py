"""``ISessionStore``: the contract every session store keeps (the file store in ``store.py``,
the Redis store in ``redis_store.py``), so the runner, the WebSocket methods and the CLI can
take either one."""
from __future__ import annotations

from zope.interface import Attribute, Interface


class ISessionStore(Interface):
    """Sessions (key -> entry) and their transcripts. Every method returns a Deferred."""

    limits = Attribute("The SessionConfig in force (retention and transcript limits).")

    def get_or_create(session_key):
        """Fire with the key's ``SessionEntry``, creating (and persisting) it if absent."""

    def get(session_key):
        """Fire with the key's ``SessionEntry``, or ``None``."""

    def load_history(session_key, enough=None):
        """Fire with the newest transcript records of the key's current session, in file
        order, read from the end until ``enough(record)`` (newest first) is true."""

    def record_turn(session_key, records, model=None, usage=None, lease=None, release=False):
        """Append one turn's records and update the entry; fire (with the entry) only once
        they are stored. With a ``lease`` the turn is written only while it is still held
        (else ``LeaseLost``); with ``release`` as well, the write frees it (the run's last)."""

    def reset(session_key):
        """Start a new session id for the key; fire with whether it existed."""

    def delete(session_key):
        """Remove the key's entry and set its transcript aside; fire with whether it
        existed."""

    def list_sessions(agent_id=None):
        """Fire with the entries of one agent (or of all), most recently updated first."""

    def flush():
        """Write whatever is delayed now (on shutdown)."""

    def reconfigure(limits):
        """A config reload: retention and transcript limits from now on."""
