"""``GatewayService``: the daemon as a Twisted service — it listens on the one port, owns the
Site, the WebSocket factory and the runtime, and stops gracefully (drain, then close).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import __version__
from .agents.client_slots import ClientSlots
from .agents.registry import AgentRegistry
from .agents.runner import AgentRunner
from .auth import GatewayAuth
from .config import Config, ConfigError
from .fetch import GuardedFetcher
from .metrics import CountingAuth, GatewayMetrics
from .openai.cors import CorsPolicy
from .openai.redis_response_index import RedisResponseIndex
from .openai.response_index import ResponseIndex, ResponseStore
from .openai.routes import OpenAIRoutes
from .providers.registry import ProviderRegistry
from .redis import RedisLink
from .redis.auth_failures import SharedAuthFailures
from .redis.client_slots import RedisClientSlots
from .redis.health import RedisHealth
from .redis.notices import RedisNotices
from .redis.run_bus import RunBus
from .redis.session_lock import SessionLocks
from .redis.subscriber import RedisSubscriber
from .sessions.interface import ISessionStore
from .sessions.redis_store import RedisSessionStore
from .sessions.store import SessionStore
from .site import DoorPolicy, GatewaySite
from .tools.mcp.manager import MCPServers
from .tools.policy import ToolCatalog
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
    closed: set[bytes] = set()
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
                 fetcher: Optional[GuardedFetcher] = None, state_dir_lock=None,
                 endpoint=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        # Every outbound fetch made for a client; tests pass one with their own address policy.
        self.fetcher = fetcher if fetcher is not None else GuardedFetcher(reactor)
        self.auth = auth or GatewayAuth.from_config(config, reactor)
        # The daemon's StateDirLock (twistd plugin), held for the service's life; tests run
        # several services on one state dir without one.
        self.state_dir_lock = state_dir_lock
        # Metrics are always recorded (cheaply, in a registry of this gateway's own); the
        # config only decides whether GET /metrics serves them.
        self.gateway_metrics = GatewayMetrics()
        # The state several gateway processes share (session.store.backend "redis"); None
        # with the file store. Connected in startService; the daemon has checked at start
        # that it answers (moltbot_gw/redis/probe.py).
        self.redis = self._redis_for(config)
        # The process's one pub/sub connection, shared by every feature below that listens
        # to the other processes (auth locks, freed client slots, lock releases, runs).
        self.redis_subscriber: Optional[RedisSubscriber] = None
        # Pub/sub between the processes (auth locks, freed client slots); redis backend only.
        self.redis_notices: Optional[RedisNotices] = None
        if self.redis is not None:
            self.redis_subscriber = RedisSubscriber(self.redis, reactor)
            self.redis_notices = RedisNotices(self.redis, reactor, self.redis_subscriber)
            self.auth.shared = SharedAuthFailures(self.redis, self.redis_notices,
                                                  self.auth.limiter)
        # One run of a session at a time across the processes sharing that Redis.
        self.session_locks: Optional[SessionLocks] = None
        if self.redis is not None:
            self.session_locks = SessionLocks(
                self.redis, config.session.store.redis.lockLeaseSeconds, reactor,
                subscriber=self.redis_subscriber)
        self.run_bus: Optional[RunBus] = None     # runs seen across processes (Redis)
        if self.redis is not None:
            redis_config = config.session.store.redis
            self.run_bus = RunBus(self.redis, reactor,
                                  lease_seconds=redis_config.lockLeaseSeconds,
                                  result_seconds=redis_config.runResultSeconds,
                                  subscriber=self.redis_subscriber)
        self.agents = AgentRegistry(config)
        self.providers = self._providers_for(config)
        self.store: ISessionStore
        self.redis_health: Optional[RedisHealth] = None   # what /health asks of Redis
        if self.redis is not None:
            # Sessions and transcripts shared by every gateway on this Redis and key prefix.
            self.store = RedisSessionStore(self.redis, config.session, reactor)
            self.redis_health = RedisHealth(self.redis, reactor)
        else:
            # Turns are written and fsynced by a child process (sessions/commit_process.py).
            self.store = SessionStore(config.state_dir, reactor, limits=config.session,
                                      writer_process=True)
        # MCP servers: connected at start (a child service), reconciled on reload.
        self.mcp = MCPServers(config.tools.mcp, reactor)
        self.mcp.setServiceParent(self)
        self.runner = AgentRunner(self.agents, self.providers, self.store, reactor,
                                  config.agents.defaults.maxConcurrent,
                                  metrics=self.gateway_metrics,
                                  tools_for=ToolCatalog(config, reactor,
                                                        mcp=self.mcp).for_agent,
                                  session_locks=self.session_locks)
        self.http_auth = CountingAuth(self.auth,
                                      lambda: self.gateway_metrics.auth_failed("http"))
        ws_auth = CountingAuth(self.auth, lambda: self.gateway_metrics.auth_failed("ws"))
        limits = config.gateway.limits
        # One per gateway: a client's HTTP and WebSocket runs share its slots.
        self.client_slots: ClientSlots | RedisClientSlots = ClientSlots(
            limits.perClientConcurrency, limits.perClientQueue)
        if self.redis is not None and self.redis_notices is not None:   # counted across processes
            self.client_slots = RedisClientSlots(
                self.redis, self.redis_notices, reactor, limits.perClientConcurrency,
                limits.perClientQueue, config.session.store.redis.lockLeaseSeconds)
        self.ws_factory = GatewayWSFactory(
            ws_auth, GatewayMethods(self.runner, self.store, self.agents, reactor,
                                    client_slots=self.client_slots, limits=limits,
                                    run_bus=self.run_bus),
            reactor=reactor, max_payload=config.gateway.ws.maxFrameBytes)
        self.gateway_metrics.watch(self.runner, self.ws_factory)
        self.ws_resource = WebSocketResource(self.ws_factory)
        # previous_response_id must survive a reload: the index outlives the routes.
        responses = config.gateway.http.endpoints.responses
        self.response_index: ResponseStore = ResponseIndex(responses.maxStoredResponses,
                                                           responses.maxStoredBytes)
        if self.redis is not None:   # every process resolves every previous_response_id
            self.response_index = RedisResponseIndex(self.redis, reactor,
                                                     responses.maxStoredResponses,
                                                     responses.maxStoredBytes)
        self.openai = self._routes_for(config)
        self.site = GatewaySite(self._root_for(config), self._door_for(config),
                                metrics=self.gateway_metrics, reactor=reactor)
        # A ``--workers`` worker passes one that adopts its parent's listening socket.
        self.endpoint = (endpoint if endpoint is not None
                         else serverFromString(reactor, endpoint_description(config)))
        self.port = None            # the listening port, once startService has bound it
        self._port_waiters: list[defer.Deferred] = []
        self._listen_failure: Optional[Failure] = None

    # -- what one config builds ---------------------------------------------------------

    def _redis_for(self, config: Config) -> Optional[RedisLink]:
        store = config.session.store
        if store.backend != "redis":
            return None
        r = store.redis
        return RedisLink(r.url, self.reactor, key_prefix=r.keyPrefix,
                         connect_timeout=r.connectTimeoutSeconds,
                         command_timeout=r.commandTimeoutSeconds, pool_size=r.poolSize)

    def _providers_for(self, config: Config,
                       previous: Optional[ProviderRegistry] = None) -> ProviderRegistry:
        """``previous``: the registry a reload replaces (it hands on the providers' slots)."""
        return ProviderRegistry(config.models, self.reactor,
                                extra_secrets=(config.gateway.auth.explicit_secret,),
                                metrics=self.gateway_metrics,
                                previous=previous)

    def _routes_for(self, config: Config) -> OpenAIRoutes:
        return OpenAIRoutes(config, self.http_auth, self.agents, self.runner, self.reactor,
                            self.fetcher, client_slots=self.client_slots,
                            response_index=self.response_index)

    def _root_for(self, config: Config) -> GatewayRoot:
        """The resource tree for ``config``: the WebSocket resource (and its connections)
        stays, the routes, CORS policy and /metrics are this config's."""
        http = config.gateway.http
        metrics = config.gateway.metrics
        return GatewayRoot(
            self.ws_resource, auth=self.auth, api_resource=self.openai.resource(),
            health_check=self.redis_health,
            cors=CorsPolicy(http.cors.allowedOrigins, http.sessionHeaders),
            metrics_resource=(MetricsResource(self.gateway_metrics, self.http_auth,
                                              metrics.public)
                              if metrics.enabled else None))

    def _door_for(self, config: Config) -> DoorPolicy:
        http = config.gateway.http
        return DoorPolicy(auth=self.http_auth,
                          max_body_bytes=http.endpoints.chatCompletions.maxBodyBytes,
                          closed_paths=closed_paths(http.endpoints),
                          idle_timeout=http.idleTimeoutSeconds,
                          headers_timeout=http.headersTimeoutSeconds,
                          request_timeout=http.requestTimeoutSeconds)

    def reload(self, config: Config) -> None:
        """Apply a new, already validated config without dropping a connection: agents,
        providers, auth secret, endpoint toggles and limits. Runs in flight finish on what
        they started with, connections and requests in flight keep the site's objects they
        started with. Port and bind need a restart."""
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
        # Built before anything changes: it refuses (ValueError) a bwrap sandbox without bwrap.
        tools_for = ToolCatalog(config, self.reactor, mcp=self.mcp).for_agent
        self.auth.reconfigure(config)
        self.mcp.reconfigure(config.tools.mcp)
        old_providers = self.providers
        limits = config.gateway.limits
        self.agents = AgentRegistry(config)
        self.providers = self._providers_for(config, previous=old_providers)
        self.runner.reconfigure(self.agents, self.providers, tools_for=tools_for)
        self.store.reconfigure(config.session)
        self.ws_factory.methods.reconfigure(self.agents, limits)
        self.ws_factory.set_max_payload(config.gateway.ws.maxFrameBytes)
        self.client_slots.reconfigure(limits.perClientConcurrency, limits.perClientQueue)
        responses = config.gateway.http.endpoints.responses
        self.response_index.resize(responses.maxStoredResponses, responses.maxStoredBytes)
        self.config = config
        self.openai = self._routes_for(config)
        self.site.reconfigure(self._root_for(config), self._door_for(config))
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
        if self.port is not None:
            return defer.succeed(self.port)
        if self._listen_failure is not None:
            return defer.fail(self._listen_failure)
        waiter: defer.Deferred = defer.Deferred()
        self._port_waiters.append(waiter)
        return waiter

    def startService(self):
        super().startService()
        if self.redis is not None:
            # Commands wait (within their bound) for the pool; a failure here is logged,
            # and the pool keeps reconnecting.
            self.redis.connect().addErrback(
                lambda f: self.log.error("{problem}", problem=str(f.value)))
        if self.session_locks is not None:
            self.session_locks.start()
        if self.run_bus is not None:
            self.run_bus.start()
        if self.redis_subscriber is not None:
            # Subscribes every feature's channels, then (notices) loads the auth locks in force.
            self.redis_subscriber.start()
        failed: list[Failure] = []

        def not_listening(failure: Failure) -> None:
            failed.append(failure)
            self._listening_failed(failure)

        self.endpoint.listen(self.site).addCallbacks(self._listening, not_listening)
        if failed:
            # A bind failure (port taken, no such address) is known at once: raise it, so
            # that under twistd the daemon ends with the error and exit status 1 instead of
            # running without a port.
            failed[0].raiseException()

    def _listening(self, port) -> None:
        self.port = port
        waiters, self._port_waiters = self._port_waiters, []
        for waiter in waiters:
            waiter.callback(port)
        self._announce(port)

    def _listening_failed(self, failure: Failure) -> None:
        self.log.error("Cannot listen on {host}:{port}: {error}",
                       host=self.config.gateway.interface, port=self.config.gateway.port,
                       error=str(failure.value))
        self._listen_failure = failure
        waiters, self._port_waiters = self._port_waiters, []
        for waiter in waiters:
            waiter.errback(failure)

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
        if self.port is not None:
            yield self.port.stopListening()
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
        if self.session_locks is not None:
            yield self.session_locks.close()
        if isinstance(self.client_slots, RedisClientSlots):
            self.client_slots.stop()
        if self.run_bus is not None:
            yield defer.Deferred.fromCoroutine(self.run_bus.stop())
        if self.redis_subscriber is not None:
            yield self.redis_subscriber.stop()
        if self.redis is not None:
            yield self.redis.disconnect()
