"""twistd glue: ``twistd -n moltbot-gw [--config PATH] [--port N] [--bind ...]
[--log-format text|json] [--workers N]``.

Loads and validates the config before anything listens, refuses unsafe binds, and hands a
``GatewayService`` to twistd. No gateway logic lives here.
"""
from __future__ import annotations

import signal
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "Path of the JSON5 config file "
                              "(default: $MOLTBOT_CONFIG_PATH or <stateDir>/moltbot.json)."],
        ["port", "p", None, "TCP port for HTTP and WebSocket (overrides gateway.port).", int],
        ["bind", "b", None, 'Address to listen on: "loopback", "lan" or an IP address '
                            "(overrides gateway.bind)."],
        ["log-format", None, "text", 'Log as "text" (twistd\'s lines) or "json" (one JSON '
                                     "object per line, to stdout or twistd's --logfile)."],
        ["workers", "w", 1, "Worker processes sharing the port (default 1: no parent "
                            "process); above 1 needs session.store.backend \"redis\".", int],
    ]

    def postOptions(self):
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(
                f'--log-format must be "text" or "json", got "{self["log-format"]}"')
        if self["workers"] < 1:
            raise usage.UsageError(f"--workers must be 1 or more, got {self['workers']}")
        if self["log-format"] == "json" and self.parent is not None:
            _choose_json_log(self.parent)
        if self.parent is not None and _worker_index() is not None:
            _mark_worker_logs(self.parent, self["log-format"])


def _worker_index():
    from moltbot_gw.workers.worker import WorkerIdentity

    identity = WorkerIdentity.from_environment()
    return identity.index if identity is not None else None


def _mark_worker_logs(twistd_options, log_format: str) -> None:
    """A ``--workers`` worker logs through the observer it would use anyway, wrapped so
    every line names the worker."""
    _worker_log_target["json"] = log_format == "json"
    _worker_log_target["path"] = (twistd_options.get("logfile")
                                  if twistd_options.get("logfile") not in (None, "-") else None)
    twistd_options["logger"] = f"{__name__}.worker_log_observer"


_worker_log_target: dict = {"json": False, "path": None}


def worker_log_observer():
    """The log observer of a ``--workers`` worker (see ``_mark_worker_logs``)."""
    from twisted.logger import textFileLogObserver
    from twisted.python.logfile import LogFile

    from moltbot_gw.workers.worker import worker_log_observer as mark

    if _worker_log_target["json"]:
        inner = json_log_observer()
    else:
        path = _worker_log_target["path"]
        inner = textFileLogObserver(sys.stdout if path is None else LogFile.fromFullPath(path))
    return mark(inner, _worker_index())


def _choose_json_log(twistd_options) -> None:
    """``--log-format json`` fills in twistd's own ``--logger`` option (a log observer
    factory, by name): twistd then logs through ``json_log_observer`` instead of its text
    observer. Runs before twistd resolves that option and builds its logger."""
    if twistd_options.get("logger") is not None:
        raise usage.UsageError("--log-format json and twistd's --logger both choose the log "
                               "observer; give only one")
    path = twistd_options.get("logfile")
    if path and path != "-":
        _json_log_target["path"] = path
    elif path == "-" or twistd_options.get("nodaemon", True):
        _json_log_target["path"] = None                # stdout
    else:
        _json_log_target["path"] = "twistd.log"        # twistd's default for a daemon
    twistd_options["logger"] = f"{__name__}.json_log_observer"


# Where ``json_log_observer`` writes: decided from twistd's options by ``_choose_json_log``
# (twistd calls the factory without arguments).
_json_log_target: dict = {"path": None}


def json_log_observer():
    """The ``--log-format json`` observer: ``twisted.logger``'s ``FileLogObserver`` with the
    JSON-lines formatter of ``moltbot_gw.json_log``, to stdout or twistd's ``--logfile``."""
    from twisted.python.logfile import LogFile

    from moltbot_gw.json_log import json_file_log_observer

    path = _json_log_target["path"]
    # stdout as it is now: twistd later redirects sys.stdout into the log
    out = sys.stdout if path is None else LogFile.fromFullPath(path)
    return json_file_log_observer(out)


def _fail(lines) -> None:
    for line in lines:
        print(f"moltbot-gw: {line}", file=sys.stderr)
    raise SystemExit(1)


def _stop_cleanly_on_sigterm(reactor) -> None:
    """twistd re-raises SIGTERM once stopped (exit status -15); for the gateway a requested,
    graceful stop is a success, so stop the reactor without recording the signal."""
    from twisted.logger import Logger

    log = Logger(namespace="moltbot_gw.daemon")

    requested: list[bool] = []

    def stop() -> None:
        if requested:   # a second SIGTERM (a supervisor and its wrapper both send one)
            log.info("Received SIGTERM again; already draining")
            return
        requested.append(True)
        log.info("Received SIGTERM; draining and stopping")
        reactor.stop()

    def handler(signum, frame):
        reactor.callFromThread(stop)

    signal.signal(signal.SIGTERM, handler)


def _reload_on_sighup(reactor, service, load) -> None:
    """SIGHUP re-reads the config file (with the same command-line overrides) and applies
    it without dropping connections; an invalid file is logged and ignored."""
    def reload():
        from moltbot_gw.gc_tuning import unfreeze_after_reload

        def applied(done):
            if done:
                unfreeze_after_reload(reactor)

        service.reload_with(load).addCallback(applied)

    def handler(signum, frame):
        reactor.callFromThread(reload)

    signal.signal(signal.SIGHUP, handler)


def _tune_gc() -> None:
    """Once the daemon runs (start-up done): see ``moltbot_gw.gc_tuning``."""
    from moltbot_gw.gc_tuning import tune_gc_for_serving

    tune_gc_for_serving()


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "moltbot-gw"
    description = "Serve LLM agents over WebSocket and an OpenAI-compatible HTTP API."
    options = Options

    def makeService(self, options):
        from moltbot_gw.config import ConfigError, load_config, with_overrides
        from moltbot_gw.service import GatewayService

        try:
            config = with_overrides(load_config(options["config"]),
                                    port=options["port"], bind=options["bind"])
        except ConfigError as e:
            _fail(["invalid configuration:"] + ["  " + line for line in e.errors])
        problem = config.gateway.exposure_problem()
        if problem is not None:
            _fail([problem])
        store = config.session.store
        if store.backend == "redis":
            from moltbot_gw.redis.probe import redis_start_problem

            problem = redis_start_problem(store.redis.url, store.redis.connectTimeoutSeconds)
            if problem is not None:
                _fail([problem])
        if _worker_index() is not None:
            return _make_worker(options, config, _worker_index())
        if options["workers"] > 1:
            return _make_worker_parent(options, config)
        lock = _take_state_dir(config)
        try:
            # The lock is taken here, by the daemon, not by each GatewayService (tests run
            # several of those in one process on one state dir); the service holds it.
            service = GatewayService(config, state_dir_lock=lock)
        except ValueError as e:
            _fail([str(e)])
        from twisted.internet import reactor

        reactor.callWhenRunning(_stop_cleanly_on_sigterm, reactor)
        reactor.callWhenRunning(lock.write_pid)   # the PID after twistd forked, if it did
        reactor.callWhenRunning(_reload_on_sighup, reactor, service, _reload_loader(options))
        reactor.callWhenRunning(_tune_gc)
        return service


def _take_state_dir(config):
    """Create the state dir and take its lock (one gateway per state dir), or exit 1 saying
    why. The daemon takes it (a ``--workers`` parent for all its workers), not each
    GatewayService: tests run several of those in one process on one state dir."""
    from moltbot_gw.state_dir import StateDirBusy, StateDirLock, prepare_state_dir

    try:
        prepare_state_dir(config.state_dir)
        return StateDirLock.acquire(config.state_dir)
    except (StateDirBusy, OSError) as e:
        _fail([str(e)])


def _reload_loader(options):
    from moltbot_gw.config import load_config, with_overrides

    def load():
        return with_overrides(load_config(options["config"]),
                              port=options["port"], bind=options["bind"])
    return load


def _make_worker(options, config, index):
    """Worker ``index`` of a ``--workers`` parent: the normal gateway, serving the
    connections the parent hands it; the parent holds the state dir's lock (and made the
    token)."""
    from twisted.internet import reactor

    from moltbot_gw.service import GatewayService
    from moltbot_gw.workers.dealer import HandedConnectionsEndpoint, listening_address
    from moltbot_gw.workers.worker import CHANNEL_FD, connect_to_parent

    gateway = config.gateway
    endpoint = HandedConnectionsEndpoint(reactor, CHANNEL_FD,
                                         listening_address(gateway.interface, gateway.port))
    try:
        service = GatewayService(config, endpoint=endpoint)
    except ValueError as e:
        _fail([str(e)])
    service.gateway_metrics.label_worker(index)
    reactor.callWhenRunning(_stop_cleanly_on_sigterm, reactor)
    reactor.callWhenRunning(_reload_on_sighup, reactor, service, _reload_loader(options))
    reactor.callWhenRunning(connect_to_parent, reactor, service)
    reactor.callWhenRunning(_tune_gc)
    return service


def _make_worker_parent(options, config):
    """``--workers N`` (N > 1): check what every worker would refuse, once, take the state
    dir, bind the port, and hand twistd the parent that starts the workers."""
    from twisted.internet import reactor

    from moltbot_gw.auth import GatewayAuth
    from moltbot_gw.tools.policy import ToolCatalog
    from moltbot_gw.workers.parent import WorkerParent, bind_listening_socket

    count = options["workers"]
    if config.session.store.backend != "redis":
        _fail([f"sessions live in local files of one process; --workers {count} needs "
               'session.store.backend "redis" (docs/operations.rst)'])
    lock = _take_state_dir(config)
    try:
        GatewayAuth.from_config(config, reactor)   # makes the token once, before the workers
        ToolCatalog(config, reactor)               # e.g. a bwrap sandbox without bwrap
    except ValueError as e:
        _fail([str(e)])
    gateway = config.gateway
    try:
        listening = bind_listening_socket(gateway.interface, gateway.port)
    except OSError as e:
        _fail([f"cannot listen on {gateway.interface}:{gateway.port}: {e.strerror or e}"])
    service = WorkerParent(reactor, listening, count, _worker_argv(options, listening),
                           gateway.shutdownGraceSeconds, state_dir_lock=lock)
    reactor.callWhenRunning(_stop_cleanly_on_sigterm, reactor)
    reactor.callWhenRunning(lock.write_pid)

    def forward_sighup(signum, frame):
        reactor.callFromThread(service.reload_workers)

    reactor.callWhenRunning(signal.signal, signal.SIGHUP, forward_sighup)
    return service


def _worker_argv(options, listening):
    """The command line of one worker: twistd in the foreground, no pidfile, the parent's
    log file and format, its config and bind, and the port the parent actually bound."""
    twistd = options.parent or {}
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile="]
    logfile = twistd.get("logfile")
    if logfile is None and not twistd.get("nodaemon", True):
        logfile = "twistd.log"
    if logfile:
        argv += ["--logfile", logfile]
    argv.append(GatewayServiceMaker.tapname)
    if options["config"]:
        argv += ["--config", options["config"]]
    if options["bind"]:
        argv += ["--bind", options["bind"]]
    argv += ["--port", str(listening.getsockname()[1]), "--log-format", options["log-format"]]
    return argv


serviceMaker = GatewayServiceMaker()
