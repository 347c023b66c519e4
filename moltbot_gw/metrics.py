"""Prometheus metrics of one gateway: a private ``CollectorRegistry`` (several gateways may
share a process), the metric families, and the small recording calls the site, the runner and
the upstream client make. Serving them (``GET /metrics``) is ``web.MetricsResource``'s job.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Callable, Iterator, Optional, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .agents.run import RunCancelled, RunTimedOut
from .auth import Authenticator, AuthOutcome
from .providers.errors import ProviderError
from .request_log import current_request

# Latencies of whole HTTP requests and of upstream calls span milliseconds (health, models)
# to minutes (long streamed answers).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)


def run_outcome(failure_or_result) -> str:
    """``ok``, ``timeout``, ``aborted`` or ``error`` for what a run ended with."""
    value = getattr(failure_or_result, "value", failure_or_result)
    if isinstance(value, RunTimedOut):
        return "timeout"
    if isinstance(value, RunCancelled):
        return "aborted"
    if isinstance(value, BaseException):
        return "error"
    return "ok"


class _Children:
    """Label children cached by label values, so the request path does one dict lookup
    instead of prometheus_client's locked ``labels()`` call."""

    def __init__(self, metric):
        self._metric = metric
        self._cache: dict = {}

    def __call__(self, *values):
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class GatewayMetrics:
    """Every metric of one gateway. Label values are bounded: routes come from a fixed
    table, agents and providers from the config, statuses and error kinds from small sets."""

    def __init__(self):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # what GET /metrics serves: the registry, or a --workers worker's labelled view of it
        self._exposed: Collector = registry
        self.http_requests = _Children(Counter(
            "moltbot_http_requests", "HTTP requests answered, by route and status.",
            ("route", "status"), registry=registry))
        self.http_duration = _Children(Histogram(
            "moltbot_http_request_duration_seconds",
            "Time from request received to response finished, by route.", ("route",),
            buckets=LATENCY_BUCKETS, registry=registry))
        self.runs = _Children(Counter(
            "moltbot_runs", "Agent runs ended, by agent and outcome (ok, error, aborted, "
            "timeout).", ("agent", "outcome"), registry=registry))
        self.runs_active = Gauge("moltbot_runs_active", "Agent runs in progress.",
                                 registry=registry)
        self.sse_streams_active = Gauge(
            "moltbot_sse_streams_active", "HTTP responses streaming server-sent events now.",
            registry=registry)
        self.ws_connections = Gauge("moltbot_ws_connections",
                                    "Open WebSocket connections.", registry=registry)
        self.upstream_duration = _Children(Histogram(
            "moltbot_upstream_request_duration_seconds",
            "Time of model provider HTTP calls until the answer is complete or fails, "
            "by provider.", ("provider",), buckets=LATENCY_BUCKETS, registry=registry))
        self.upstream_errors = _Children(Counter(
            "moltbot_upstream_errors", "Failed model provider HTTP calls, by provider and "
            "error kind.", ("provider", "kind"), registry=registry))
        # source: "provider" (reported by the upstream) or "estimated" (the gateway counted)
        self.tokens_in = _Children(Counter(
            "moltbot_tokens_in", "Prompt tokens of successful runs, by agent and source "
            "(provider: reported by the provider; estimated: counted by the gateway).",
            ("agent", "source"), registry=registry))
        self.tokens_out = _Children(Counter(
            "moltbot_tokens_out", "Completion tokens of successful runs, by agent and source.",
            ("agent", "source"), registry=registry))
        self.auth_failures = _Children(Counter(
            "moltbot_auth_failures", "Refused gateway authentications (wrong or missing "
            "secret, or rate limited), by transport.", ("transport",), registry=registry))

    # -- wiring ------------------------------------------------------------------------

    def watch(self, runner, ws_factory) -> None:
        """Gauges read at scrape time: nothing to keep in step on the hot path."""
        self.runs_active.set_function(lambda: len(runner.active))
        self.ws_connections.set_function(lambda: len(ws_factory.connections))
        # the runner's providers change on a config reload: ask it at each scrape
        self.registry.register(ProviderSlotsCollector(lambda: runner.providers.slot_counts()))

    def label_worker(self, index: int) -> None:
        """A ``--workers`` worker's /metrics are its own: every series it serves carries
        ``worker="N"``, so one worker's counters never pass for another's (docs:
        operations.rst, "Several workers")."""
        self._exposed = WorkerLabelled(self.registry, str(index))

    def exposition(self) -> bytes:
        return generate_latest(self._exposed)

    # -- recording ---------------------------------------------------------------------

    def request_finished(self, route: str, status: int, seconds: float) -> None:
        self.http_requests(route, str(status)).inc()
        self.http_duration(route).observe(seconds)

    def run_started(self, run) -> None:
        """Called by the runner for every run it starts; learns the outcome from the run
        and tells the HTTP request that started it (if any) the agent and token counts."""
        request = current_request.get()
        if request is not None:
            request.moltbot_agent = run.agent_id

        def ended(outcome):
            self.runs(run.agent_id, run_outcome(outcome)).inc()
            usage = getattr(outcome, "usage", None)
            if usage is not None:
                self.tokens_in(run.agent_id, usage.source).inc(max(0, usage.prompt_tokens or 0))
                self.tokens_out(run.agent_id, usage.source).inc(
                    max(0, usage.completion_tokens or 0))
                if request is not None:
                    request.moltbot_tokens = (usage.prompt_tokens, usage.completion_tokens,
                                              usage.source)

        run.on_finish(ended)

    def upstream_call(self, provider: str, result) -> None:
        """Called by the upstream client with the Deferred of one provider HTTP call."""
        started = time.perf_counter()

        def ended(outcome):
            self.upstream_duration(provider).observe(time.perf_counter() - started)
            value = getattr(outcome, "value", None)
            if isinstance(value, ProviderError):
                self.upstream_errors(provider, value.kind).inc()
            return outcome

        result.addBoth(ended)

    def auth_failed(self, transport: str) -> None:
        self.auth_failures(transport).inc()


class WorkerLabelled(Collector):
    """A registry's metrics with a ``worker`` label added to every sample."""

    def __init__(self, registry: CollectorRegistry, worker: str):
        self._registry = registry
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [sample._replace(labels={**sample.labels,
                                                        "worker": self._worker})
                                for sample in family.samples]
            yield labelled


class ProviderSlotsCollector(Collector):
    """``moltbot_provider_inflight`` and ``moltbot_provider_queued`` by provider, read from
    the providers' concurrency slots (``models.providers.<id>.maxConcurrent``) at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, tuple[int, int]]]):
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        inflight = GaugeMetricFamily(
            "moltbot_provider_inflight", "Requests to a model provider in progress, by "
            "provider.", labels=("provider",))
        queued = GaugeMetricFamily(
            "moltbot_provider_queued", "Requests waiting for a free slot of a model provider "
            "(maxConcurrent), by provider.", labels=("provider",))
        for provider, (running, waiting) in self._counts().items():
            inflight.add_metric((provider,), running)
            queued.add_metric((provider,), waiting)
        yield inflight
        yield queued


class CountingAuth:
    """``GatewayAuth`` as one transport sees it: the same object underneath, but refused
    attempts are counted as auth failures of that transport. Only what the transports use
    is offered: ``authenticate``, ``charge`` and ``trusted_proxies``."""

    def __init__(self, auth: Authenticator, on_failure: Callable[[], None]):
        self._auth = auth
        self._on_failure = on_failure

    @property
    def trusted_proxies(self) -> Sequence[ipaddress._BaseNetwork]:
        """The proxies whose ``X-Forwarded-For`` is believed (they change on reload)."""
        return self._auth.trusted_proxies

    def authenticate(self, address: str, presented: Optional[str], *,
                     exemptable: bool = True) -> AuthOutcome:
        outcome = self._auth.authenticate(address, presented, exemptable=exemptable)
        if not outcome.ok:
            self._on_failure()
        return outcome

    def charge(self, address: str, *, exemptable: bool = True) -> None:
        """A malformed handshake charged to the limiter is a refused authentication too."""
        self._auth.charge(address, exemptable=exemptable)
        self._on_failure()
