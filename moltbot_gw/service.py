"""``GatewayService``: the daemon as a Twisted service — it listens on the one port, owns the
Site, the WebSocket factory and the runtime, and stops gracefully (drain, then close).
"""
from __future__ import annotations

from typing import Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from . import __version__
from .agents.registry import AgentRegistry
from .agents.runner import AgentRunner
from .providers.registry import ProviderRegistry
from .sessions.store import SessionStore
from .auth import GatewayAuth
from .config import Config
from .metrics import CountingAuth, GatewayMetrics
from .openai.cors import CorsPolicy
from .openai.routes import OpenAIRoutes
from .site import GatewaySite
from .web import GatewayRoot, MetricsResource
from .ws.methods import GatewayMethods
from .ws.protocol import GatewayWSFactory


def endpoint_description(config: Config) -> str:
    interface = config.gateway.interface
    if ":" in interface:  # IPv6 literals need their colons escaped
        interface = interface.replace(":", "\\:")
    return f"tcp:{config.gateway.port}:interface={interface}"


class GatewayService(MultiService):
    """Everything one gateway process runs. Tests build several in one process."""

    log = Logger()

    def __init__(self, config: Config, reactor=None, auth: Optional[GatewayAuth] = None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.auth = auth or GatewayAuth.from_config(config, reactor)
        self.agents = AgentRegistry(config)
        self.providers = ProviderRegistry(config.models, reactor)
        self.store = SessionStore(config.state_dir, reactor)
        self.runner = AgentRunner(self.agents, self.providers, self.store, reactor,
                                  config.agents.defaults.maxConcurrent)
        # Metrics are always recorded (cheaply, in a registry of this gateway's own); the
        # config only decides whether GET /metrics serves them.
        self.metrics = GatewayMetrics()
        self.runner.metrics = self.metrics
        self.providers.client.metrics = self.metrics
        http_auth = CountingAuth(self.auth, lambda: self.metrics.auth_failed("http"))
        ws_auth = CountingAuth(self.auth, lambda: self.metrics.auth_failed("ws"))
        self.ws_factory = GatewayWSFactory(
            ws_auth, GatewayMethods(self.runner, self.store, self.agents, reactor),
            reactor=reactor)
        self.metrics.watch(self.runner, self.ws_factory)
        self.openai = OpenAIRoutes(config, http_auth, self.agents, self.runner, reactor)
        http = config.gateway.http
        cors = CorsPolicy(http.cors.allowedOrigins, http.sessionHeaders)
        metrics_config = config.gateway.metrics
        metrics_resource = (MetricsResource(self.metrics, http_auth, metrics_config.public)
                            if metrics_config.enabled else None)
        self.root = GatewayRoot(WebSocketResource(self.ws_factory), self.openai.resource(), cors,
                                metrics_resource)
        max_body = max(config.gateway.http.endpoints.chatCompletions.maxBodyBytes, 1024 * 1024)
        self.site = GatewaySite(self.root, max_body_bytes=max_body, metrics=self.metrics)
        self.site.displayTracebacks = False
        endpoint = serverFromString(reactor, endpoint_description(config))
        self.listener = StreamServerEndpointService(endpoint, self.site)
        # Under twistd a failure to bind must end the process with an error, not just a log.
        self.listener._raiseSynchronously = True
        # Not a child service: stopService drains in a set order around it.

    def when_listening(self) -> defer.Deferred:
        """Fires with the listening port (``.getHost().port``) once bound."""
        return self.listener._waitingForPort

    def startService(self):
        super().startService()
        self.listener.startService()
        self.when_listening().addCallback(self._announce)

    def _announce(self, port):
        # Announce once the reactor runs (signal handlers installed): scripts that wait
        # for this line may then send SIGTERM safely.
        self.reactor.callWhenRunning(self._log_listening, port.getHost())
        return port

    def _log_listening(self, host):
        self.log.info("moltbot-gw {version} listening on {host}:{port} (HTTP and WebSocket)",
                      version=__version__, host=host.host, port=host.port)

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting, let in-flight requests finish within the grace period, then
        close what remains."""
        grace = self.config.gateway.shutdownGraceSeconds
        self.site.draining = True
        yield self.listener.stopService()
        if self.site.inflight:
            self.log.info("Waiting up to {grace}s for {n} in-flight request(s)",
                          grace=grace, n=self.site.inflight)
            idle = self.site.wait_idle()
            timer = self.reactor.callLater(grace, idle.cancel)
            try:
                yield idle
            except defer.CancelledError:
                self.log.warn("Grace period over; closing {n} request(s)", n=self.site.inflight)
                self.site.abort_inflight()
            else:
                if timer.active():
                    timer.cancel()
        yield self.ws_factory.close_all()
        runs = list(self.runner.active.values())
        for run in runs:
            run.cancel()
        # Cancelled runs still record their turns; let them, then write what is pending.
        yield defer.DeferredList([run.wait() for run in runs], consumeErrors=True)
        yield self.store.flush()
        yield super().stopService()
        yield self.providers.close()
