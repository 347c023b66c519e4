"""``GatewayService``: the daemon as a Twisted service — it listens on the one port, owns the
Site, the WebSocket factory and the runtime, and stops gracefully (drain, then close).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from . import __version__
from .agents.client_slots import ClientSlots
from .agents.registry import AgentRegistry
from .agents.runner import AgentRunner
from .providers.registry import ProviderRegistry
from .sessions.store import SessionStore
from .auth import GatewayAuth
from .config import Config, ConfigError
from .fetch import GuardedFetcher
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


def closed_paths(endpoints) -> frozenset:
    """The ``/v1`` paths of switched-off endpoints: they answer 404 as if absent, even
    without the secret, so the site neither asks for it nor reads their bodies."""
    chat, responses = endpoints.chatCompletions.enabled, endpoints.responses.enabled
    closed = set()
    if not chat:
        closed.update((b"/v1/chat/completions", b"/v1/completions"))
    if not responses:
        closed.add(b"/v1/responses")
    if not (chat or responses):
        closed.update((b"/v1/models", b"/v1/embeddings"))
    return frozenset(closed)


class GatewayService(MultiService):
    """Everything one gateway process runs. Tests build several in one process."""

    log = Logger()

    def __init__(self, config: Config, reactor=None, auth: Optional[GatewayAuth] = None,
                 fetcher: Optional[GuardedFetcher] = None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        # Every outbound fetch made for a client; tests pass one with their own address policy.
        self.fetcher = fetcher if fetcher is not None else GuardedFetcher(reactor)
        self.auth = auth or GatewayAuth.from_config(config, reactor)
        self.state_dir_lock = None   # the daemon's StateDirLock, set by the twistd plugin
        self.agents = AgentRegistry(config)
        self.providers = ProviderRegistry(
            config.models, reactor, extra_secrets=(config.gateway.auth.explicit_secret,))
        self.store = SessionStore(config.state_dir, reactor, limits=config.session)
        self.runner = AgentRunner(self.agents, self.providers, self.store, reactor,
                                  config.agents.defaults.maxConcurrent)
        # Metrics are always recorded (cheaply, in a registry of this gateway's own); the
        # config only decides whether GET /metrics serves them.
        self.metrics = GatewayMetrics()
        self.runner.metrics = self.metrics
        self.providers.client.metrics = self.metrics
        http_auth = CountingAuth(self.auth, lambda: self.metrics.auth_failed("http"))
        ws_auth = CountingAuth(self.auth, lambda: self.metrics.auth_failed("ws"))
        limits = config.gateway.limits
        # One per gateway: a client's HTTP and WebSocket runs share its slots.
        self.client_slots = ClientSlots(limits.perClientConcurrency, limits.perClientQueue)
        self.ws_factory = GatewayWSFactory(
            ws_auth, GatewayMethods(self.runner, self.store, self.agents, reactor,
                                    client_slots=self.client_slots, limits=limits),
            reactor=reactor, max_payload=config.gateway.ws.maxFrameBytes)
        self.metrics.watch(self.runner, self.ws_factory)
        self.http_auth = http_auth
        self.root = GatewayRoot(WebSocketResource(self.ws_factory))
        self.root.auth = self.auth
        self.site = GatewaySite(self.root, max_body_bytes=0, metrics=self.metrics, reactor=reactor)
        self._mount_http(config)
        self.site.displayTracebacks = False
        endpoint = serverFromString(reactor, endpoint_description(config))
        self.listener = StreamServerEndpointService(endpoint, self.site)
        # Under twistd a failure to bind must end the process with an error, not just a log.
        self.listener._raiseSynchronously = True
        # Not a child service: stopService drains in a set order around it.

    def _mount_http(self, config: Config) -> None:
        """(Re)build what serves HTTP from ``config``: the /v1 routes, CORS, /metrics, the
        body limit and the client timeouts. Connections and requests in flight keep what they
        started with."""
        previous = getattr(self, "openai", None)
        self.openai = OpenAIRoutes(config, self.http_auth, self.agents, self.runner,
                                   self.reactor, self.fetcher, client_slots=self.client_slots)
        if previous is not None:  # previous_response_id must survive a reload
            self.openai.responses_endpoint.adopt(previous.responses_endpoint)
        http = config.gateway.http
        metrics = config.gateway.metrics
        self.root.api_resource = self.openai.resource()
        self.root.cors = CorsPolicy(http.cors.allowedOrigins, http.sessionHeaders)
        self.root.metrics = (MetricsResource(self.metrics, self.http_auth, metrics.public)
                             if metrics.enabled else None)
        self.site.max_body_bytes = http.endpoints.chatCompletions.maxBodyBytes
        self.site.auth = self.http_auth
        self.site.closed_paths = closed_paths(http.endpoints)
        self.ws_factory.set_max_payload(config.gateway.ws.maxFrameBytes)
        self.site.timeOut = http.idleTimeoutSeconds  # for connections accepted from now on
        self.site.headers_timeout = http.headersTimeoutSeconds
        self.site.request_timeout = http.requestTimeoutSeconds

    def reload(self, config: Config) -> None:
        """Apply a new, already validated config without dropping a connection: agents,
        providers, auth secret, endpoint toggles and limits. Runs in flight finish on what
        they started with. Port and bind need a restart."""
        old = self.config
        if not old.gateway.is_loopback_only:
            # judged against where the gateway listens now: a bind change takes a restart
            problem = dataclasses.replace(config.gateway, bind=old.gateway.bind
                                          ).exposure_problem()
            if problem is not None:
                raise ValueError(f"the gateway listens on {old.gateway.interface}: "
                                 f"{problem}")
        if (config.gateway.port, config.gateway.interface) != (old.gateway.port,
                                                                old.gateway.interface):
            self.log.warn("gateway.port / gateway.bind changed: that takes a restart; still "
                          "listening on {host}:{port}", host=old.gateway.interface,
                          port=old.gateway.port)
            config = dataclasses.replace(config, gateway=dataclasses.replace(
                config.gateway, port=old.gateway.port, bind=old.gateway.bind))
        self.auth.reconfigure(config)
        old_providers = self.providers
        self.agents = AgentRegistry(config)
        self.providers = ProviderRegistry(
            config.models, self.reactor, extra_secrets=(config.gateway.auth.explicit_secret,))
        self.providers.client.metrics = self.metrics
        self.runner.agents = self.agents
        self.store.limits = config.session
        self.runner.providers = self.providers
        self.ws_factory.methods.agents = self.agents
        self.ws_factory.methods.admission.limits = config.gateway.limits
        self.client_slots.reconfigure(config.gateway.limits.perClientConcurrency,
                                      config.gateway.limits.perClientQueue)
        self.config = config
        self._mount_http(config)
        old_providers.close()  # idle pooled connections; calls in flight keep theirs
        self.log.info("Configuration reloaded: {n} agent(s): {ids}", n=len(self.agents),
                      ids=", ".join(self.agents.ids))

    @defer.inlineCallbacks
    def reload_with(self, load_config):
        """SIGHUP: run ``load_config()`` (reads and validates the file) off the reactor
        thread, then apply it. An invalid config is rejected with its errors logged and the
        old one stays in force. Fires with True when the new config was applied."""
        try:
            config = yield threads.deferToThread(load_config)
            self.reload(config)
        except ConfigError as e:
            for line in e.errors:
                self.log.error("Config reload rejected, keeping the old config: {problem}",
                               problem=line)
            return False
        except ValueError as e:  # e.g. password mode without a password
            self.log.error("Config reload rejected, keeping the old config: {problem}",
                           problem=str(e))
            return False
        return True

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
