"""A Twisted-native MCP client: JSON-RPC 2.0 over a stdio child or Streamable HTTP, the
``initialize`` handshake, ``tools/list`` and ``tools/call``, and the service that keeps the
configured servers running so their tools can be offered as ``mcp__<server>__<tool>``."""
