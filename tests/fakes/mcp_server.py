"""A real MCP server for the tests, written with the official ``mcp`` package
(``MCPServer``): ``python -m tests.fakes.mcp_server`` speaks stdio; ``--http`` serves
Streamable HTTP on 127.0.0.1 port 0 and prints ``PORT <n>`` once listening. With
``MCP_PID_FILE`` set it writes its pid there at start (the crash tests kill it)."""
from __future__ import annotations

import asyncio
import os
import socket
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("demo")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def env(name: str) -> str:
    """The value of one environment variable in the server, or <unset>."""
    return os.environ.get(name, "<unset>")


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def fail(message: str) -> str:
    """Always fails with ``message``."""
    raise ValueError(message)


@server.tool(name="bad.name")
def bad_name() -> str:
    """A name OpenAI function names cannot hold: the gateway skips it."""
    return "unreachable"


def serve_http() -> None:
    import uvicorn

    app = server.streamable_http_app(json_response="--json" in sys.argv)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def main() -> None:
    pid_file = os.environ.get("MCP_PID_FILE")
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
    print("demo MCP server starting", file=sys.stderr, flush=True)
    if "--http" in sys.argv:
        serve_http()
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
