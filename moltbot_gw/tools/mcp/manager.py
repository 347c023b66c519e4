"""``MCPServers``: the service (owned by ``GatewayService``) that keeps every configured MCP
server connected — started with the gateway, reconciled on reload, stopped on shutdown — and
hands out their tools. A stdio server that exits is restarted with exponential backoff; the
calls it had in flight fail at once with a tool error."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..base import ToolError
from .http import HttpTransport
from .jsonrpc import RPCClient
from .stdio import StdioTransport, spawn
from .tool import MCPTool, server_tools

if TYPE_CHECKING:     # imported when a server connects: the mcp package costs ~30 MB of RSS
    from .session import MCPSession

log = Logger()
FIRST_BACKOFF = 0.5       # seconds before the first restart
MAX_BACKOFF = 30.0
HEALTHY_SECONDS = 60.0    # up this long: the next crash restarts after FIRST_BACKOFF again


# Numbers for tool lists, unique in the process: a restarted server's new list never shares
# one with its old list.
_TOOL_LISTS = itertools.count()


class ServerConnection:
    """One configured server: its live session (if any), its last listed tools, and the
    restart schedule."""

    def __init__(self, name: str, settings: Any, reactor: Any):
        self.name = name
        self.settings = settings
        self.reactor = reactor
        self.tools: dict[str, MCPTool] = {}
        self.tools_version = next(_TOOL_LISTS)   # changes whenever ``tools`` does
        self.problem: Optional[str] = "not started"
        self._session: Optional[MCPSession] = None
        self._process: Optional[StdioTransport] = None
        self._http: Optional[HttpTransport] = None
        self._rpc: Optional[RPCClient] = None
        self._waiters: list[defer.Deferred] = []
        self._backoff = FIRST_BACKOFF
        self._restart: Any = None
        self._stopping = False
        self._up_since = 0.0

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def pid(self) -> Any:
        return self._process.pid if self._process is not None else None

    def start(self) -> defer.Deferred:
        """Connect; fires (never fails) once this attempt has succeeded or failed."""
        self._stopping = False
        return defer.ensureDeferred(self._connect())

    async def _connect(self) -> None:
        from .session import MCPSession

        self._restart = None
        self.problem = "starting"
        self._up_since = self.reactor.seconds()
        transport: list[Any] = []      # the transport, once it exists
        rpc = self._rpc = RPCClient(self.name, lambda message: transport[0].send(message))
        if self.settings.command is not None:
            process = spawn(self.reactor, self.name, self.settings, rpc.received)
            transport.append(process)
            self._process = process
            process.ended.addCallback(self._exited, rpc, process)
        else:
            http = HttpTransport(self.reactor, self.name, self.settings.url,
                                 self.settings.headers, rpc.received)
            transport.append(http)
            self._http = http
        session = MCPSession(self.name, rpc, self.reactor, self.settings.timeoutSeconds)
        try:
            await session.initialize()
            if self._http is not None:
                self._http.protocol_version = session.protocol_version
            listed = await session.list_tools()
        except Exception as e:
            if self._stopping:
                return
            message = e.message if isinstance(e, ToolError) else type(e).__name__
            self._failed(f"cannot connect: {message}")
            return
        if self._stopping:
            return
        self._session = session
        self.tools = server_tools(self, self.name, listed)
        self.tools_version = next(_TOOL_LISTS)
        self.problem = None
        log.info("MCP server {server} ready: {n} tool(s)", server=self.name, n=len(self.tools))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(session)

    def _failed(self, problem: str) -> None:
        """The handshake failed: a child is stopped (its exit schedules the retry), an
        HTTP server is retried after the backoff."""
        self.problem = problem
        log.warn("MCP server {server}: {problem}", server=self.name, problem=problem)
        if self._process is not None:
            self._process.kill()
        elif self._http is not None:
            self._http.close()
            self._http = None
            self._schedule_restart()

    def _exited(self, why: str, rpc: RPCClient, process: StdioTransport) -> str:
        rpc.close(f"MCP server {self.name} exited ({why})")
        if process is self._process:
            self._process = None
            self._session = None
            if not self._stopping:
                self.problem = f"exited ({why}); restarting"
                log.warn("MCP server {server} exited ({why})", server=self.name, why=why)
                self._schedule_restart()
        return why

    def _schedule_restart(self) -> None:
        if self._stopping:
            return
        if self.reactor.seconds() - self._up_since >= HEALTHY_SECONDS:
            self._backoff = FIRST_BACKOFF
        delay, self._backoff = self._backoff, min(self._backoff * 2, MAX_BACKOFF)
        log.info("MCP server {server}: restarting in {delay} s", server=self.name, delay=delay)
        self._restart = self.reactor.callLater(delay, self.start)

    def call(self, tool: str, arguments: Any) -> defer.Deferred:
        """``tools/call`` on the live session; while the server restarts, waits for it
        (bounded by ``timeoutSeconds``)."""
        return defer.Deferred.fromCoroutine(self._call(tool, arguments))

    async def _call(self, tool: str, arguments: Any) -> str:
        session = self._session
        if session is None:
            if self._stopping:
                raise ToolError(f"MCP server {self.name} is stopped")
            waiter: defer.Deferred = defer.Deferred(lambda d: self._forget(d))
            self._waiters.append(waiter)
            waiter.addTimeout(self.settings.timeoutSeconds, self.reactor,
                              onTimeoutCancel=self._not_running)
            session = await waiter
        return await session.call_tool(tool, arguments)

    def _forget(self, waiter: defer.Deferred) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _not_running(self, result: Any, _timeout: float) -> Any:
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            return Failure(ToolError(f"MCP server {self.name} is not running "
                                     f"({self.problem})"))
        return result

    async def stop(self) -> None:
        """Stop for good: no restart; waiting calls fail; the child is stopped."""
        self._stopping = True
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        self._session = None
        self.problem = "stopped"
        if self._rpc is not None:
            self._rpc.close(f"MCP server {self.name} is stopped")
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(ToolError(f"MCP server {self.name} is stopped"))
        if self._process is not None:
            await self._process.stop(self.reactor)
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()


class MCPServers(Service):
    """Every configured MCP server of one gateway, kept connected while the service runs."""

    def __init__(self, settings: Any, reactor: Any):
        self.settings = settings
        self.reactor = reactor
        self.servers: dict[str, ServerConnection] = {}
        self._started: defer.Deferred = defer.succeed(None)

    def _wanted(self, settings: Any) -> dict[str, Any]:
        return {name: server for name, server in settings.servers.items() if server.enabled}

    def startService(self) -> None:
        super().startService()
        self._started = defer.DeferredList([self._add(name, server) for name, server in
                                            self._wanted(self.settings).items()])

    def _add(self, name: str, settings: Any) -> defer.Deferred:
        connection = ServerConnection(name, settings, self.reactor)
        self.servers[name] = connection
        return connection.start()

    def started(self) -> defer.Deferred:
        """Fires once every server's first connection attempt has ended."""
        done: defer.Deferred = defer.Deferred()

        def fire(result: Any) -> Any:
            done.callback(None)
            return result

        self._started.addBoth(fire)
        return done

    def reconfigure(self, settings: Any) -> None:
        """Reload: removed or changed servers are stopped, new or changed ones started."""
        self.settings = settings
        if not self.running:
            return
        wanted = self._wanted(settings)
        for name, connection in list(self.servers.items()):
            if wanted.get(name) != connection.settings:
                del self.servers[name]
                defer.ensureDeferred(connection.stop())
        for name, server in wanted.items():
            if name not in self.servers:
                self._add(name, server)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        servers, self.servers = list(self.servers.values()), {}
        return defer.DeferredList([defer.ensureDeferred(s.stop()) for s in servers])

    def tools(self) -> dict[str, MCPTool]:
        """The tools of every server, by gateway name (a restarting server keeps its last
        list: a call waits for it)."""
        tools: dict[str, MCPTool] = {}
        for connection in self.servers.values():
            tools.update(connection.tools)
        return tools

    @property
    def version(self) -> tuple:
        """Equal while every server's tool list stays the same (ToolCatalog caches by it)."""
        return tuple((name, c.tools_version) for name, c in self.servers.items())

    def problems(self) -> dict[str, str]:
        """Servers with no live session (and why), by name."""
        return {name: c.problem for name, c in self.servers.items() if c.problem}
