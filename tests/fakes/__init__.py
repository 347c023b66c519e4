"""Test doubles that are real network servers (fake model upstreams on loopback)."""
from .upstream import FakeAnthropic, FakeOpenAI, FakeUpstream, RecordedRequest, Script, unused_port

__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeUpstream", "RecordedRequest", "Script",
           "unused_port"]
