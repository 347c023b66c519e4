"""twistd glue: ``twistd -n moltbot-gw [--config PATH] [--port N] [--bind ...]
[--log-format text|json]``.

Loads and validates the config before anything listens, refuses unsafe binds, and hands a
``GatewayService`` to twistd. No gateway logic lives here.
"""
from __future__ import annotations

import signal
import sys

from twisted.application.service import IServiceMaker, MultiService
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
    ]

    def postOptions(self):
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(
                f'--log-format must be "text" or "json", got "{self["log-format"]}"')


def _json_log_observer(options):
    """The JSON-lines observer for ``--log-format json``: every ``twisted.logger`` event as
    one line (``eventAsJSON`` plus the formatted ``text``), to stdout or ``--logfile``."""
    from twisted.logger import ILogObserver, eventAsJSON, formatEvent
    from twisted.python.logfile import LogFile

    parent = getattr(options, "parent", None) or {}
    path = parent.get("logfile") if hasattr(parent, "get") else None
    if path and path != "-":
        out = LogFile.fromFullPath(path)
    elif path == "-" or parent.get("nodaemon", True):
        # the real stdout, captured now: twistd later redirects sys.stdout into the log
        out = sys.stdout
    else:
        out = LogFile.fromFullPath("twistd.log")

    @implementer(ILogObserver)
    def observe(event):
        try:
            text = formatEvent(event)
        except Exception:  # a broken format must not cost the event
            text = None
        out.write(eventAsJSON(dict(event, text=text)) + "\n")
        out.flush()

    return observe


class _LogObserverInstaller(MultiService):
    """Wraps the gateway so twistd uses ``observer``: twistd asks the application for an
    ``ILogObserver`` component before it starts logging, and a plugin's service is the one
    thing that sees the application (in ``setServiceParent``) before that."""

    def __init__(self, service, observer):
        super().__init__()
        self.gateway = service
        self.observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent):
        from twisted.logger import ILogObserver
        from twisted.python.components import Componentized

        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


def _fail(lines) -> None:
    for line in lines:
        print(f"moltbot-gw: {line}", file=sys.stderr)
    raise SystemExit(1)


def _stop_cleanly_on_sigterm(reactor) -> None:
    """twistd re-raises SIGTERM once stopped (exit status -15); for the gateway a requested,
    graceful stop is a success, so stop the reactor without recording the signal."""
    from twisted.logger import Logger

    log = Logger(namespace="moltbot_gw.daemon")

    def handler(signum, frame):
        reactor.callFromThread(log.info, "Received SIGTERM; draining and stopping")
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, handler)


def _reload_on_sighup(reactor, service, load) -> None:
    """SIGHUP re-reads the config file (with the same command-line overrides) and applies
    it without dropping connections; an invalid file is logged and ignored."""
    def handler(signum, frame):
        reactor.callFromThread(service.reload_with, load)

    signal.signal(signal.SIGHUP, handler)


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
        from moltbot_gw.state_dir import StateDirBusy, StateDirLock, prepare_state_dir

        try:
            prepare_state_dir(config.state_dir)
            lock = StateDirLock.acquire(config.state_dir)
        except (StateDirBusy, OSError) as e:
            _fail([str(e)])
        try:
            service = GatewayService(config)
        except ValueError as e:
            _fail([str(e)])
        # Held for the daemon's life: the lock is taken here, by the daemon, not by each
        # GatewayService (tests run several of those in one process on one state dir).
        service.state_dir_lock = lock
        from twisted.internet import reactor

        reactor.callWhenRunning(_stop_cleanly_on_sigterm, reactor)
        reactor.callWhenRunning(lock.write_pid)   # the PID after twistd forked, if it did

        def load():
            return with_overrides(load_config(options["config"]),
                                  port=options["port"], bind=options["bind"])

        reactor.callWhenRunning(_reload_on_sighup, reactor, service, load)
        if options["log-format"] == "json":
            return _LogObserverInstaller(service, _json_log_observer(options))
        return service


serviceMaker = GatewayServiceMaker()
