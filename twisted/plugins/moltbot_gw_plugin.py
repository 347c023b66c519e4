"""twistd glue: ``twistd -n moltbot-gw [--config PATH] [--port N] [--bind ...]``.

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
    ]


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
        if not config.gateway.is_loopback_only and config.gateway.auth.explicit_secret is None:
            _fail([f"refusing to listen on {config.gateway.interface} without an explicitly "
                   "configured secret: set gateway.auth.token (or CLAWDBOT_GATEWAY_TOKEN), or "
                   "gateway.auth.password, or bind to loopback"])
        try:
            service = GatewayService(config)
        except ValueError as e:
            _fail([str(e)])
        from twisted.internet import reactor

        reactor.callWhenRunning(_stop_cleanly_on_sigterm, reactor)
        return service


serviceMaker = GatewayServiceMaker()
