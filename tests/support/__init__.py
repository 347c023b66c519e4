"""Test support modules: the daemon harness, a raw HTTP client, a raw WebSocket client, a fake
embeddings upstream (for the tests that drive a real daemon over plain sockets), and the leak
check every test runs under."""
